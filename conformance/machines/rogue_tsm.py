"""A misbehaving host TSM for the full-stack machine (issue 14, reach).

The full stack's own TSM is well behaved: one SPDM session per device, the right START nonce, only the
requests it means. A device bug that shows only under a second session, a wrong nonce or a raw request
(the device rules TDISP-xx and IDE-xx judge those in the device machine) stayed invisible while the device
sat inside the stack. These steps put the suite in the place of a second, misbehaving host TSM, through the
SUT contract's *raw device channel* (``contract/tiers.py``: ``Offers.raw_device``; docs/sut-contract.md):
the device's own ``spdm_connect`` / ``spdm_end`` / ``handle_vendor_message``, beside the stack's TSM. A
SUT that does not offer the channel gets none of these steps, and the rules that only they reach in a
whole stack (``Needs(raw_device=True)``) are NOT APPLICABLE to it.

Everything a second session sends is refused by a conforming device without a state change (its LOCK has no
keys, its START is not the locking session's, its STOP is not the owner's, its IDE_KM is dropped), and the
session ends within the step, so the well-behaved TSM goes on as before. Over the TSM's own session only
requests a conforming device refuses are sent (a wrong nonce; a report or START after STOP).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import Bundle, rule

from teeio_conformance.conformance.machines.recording import encode_value, note, recorded
from teeio_conformance.conformance.rules._view import tdisp_exchanges
from teeio_conformance.contract import ide_km as km
from teeio_conformance.contract.errors import InvalidArgument
from teeio_conformance.contract.tdisp import codec as td
from teeio_conformance.contract.tiers import offers_of
from teeio_conformance.strategies.messages import (
    interface_ids,
    malformed_ide_km_requests,
    malformed_tdisp_requests,
    tdisp_requests,
)

__all__ = ["RAW_KINDS", "RogueTsm"]

TDISP, IDE_KM = 1, 0  # PCI-SIG protocol IDs of the vendor-defined messages
IV = (0).to_bytes(4, "little") + (1).to_bytes(4, "little")  # the initial invocation field (KeyProg.5)
RAW_KINDS = ("tdisp", "tdisp_malformed", "ide_km", "ide_km_malformed")
_LOCKED = ("CONFIG_LOCKED", "RUN")


def _bad_key_progs() -> list[tuple[str, bytes]]:
    slot = km.KeySubStream(key_set=km.KeySet.K0, direction=km.Direction.RX, sub_stream=km.SubStream.PR).to_byte()
    key = b"\x69" * 32
    return [
        ("port", km.encode(km.KeyProg(stream_id=0, key_sub_stream=slot, port_index=0xF0, key=key, iv=IV))),
        ("sub_stream", km.encode(km.KeyProg(stream_id=0, key_sub_stream=0x30, port_index=0, key=key, iv=IV))),
        ("iv", km.encode(km.KeyProg(stream_id=0, key_sub_stream=slot, port_index=0, key=key, iv=km.ifv_to_wire(2)))),
    ]


class RogueTsm:
    """Rules of a second, misbehaving host TSM; mixed into :class:`FullStack` (which provides ``stack``,
    ``run``, ``device``, ``device_name``, ``rids``, ``_do``, ``_heal_link``, ``_guest_ready``, ``_vdev``)."""

    # ------------------------------------------------------------------ helpers
    def _raw_offered(self: Any) -> bool:
        """The SUT offers the raw device channel (contract/tiers.py) and its device has the operations."""
        if not offers_of(self.stack).raw_device:
            return False
        return all(callable(getattr(self.device, op, None)) for op in ("spdm_connect", "spdm_end"))

    def _function(self: Any, rid: int) -> Any:
        dev = next((d for d in self.run._snap.devices if d.name == self.device_name), None)
        return None if dev is None else next((f for f in dev.functions if f.rid == rid), None)

    def _live_sessions(self: Any) -> set[int]:
        return {s for d in self.run._snap.devices if d.name == self.device_name for s in d.sessions}

    def _lock_nonce(self: Any, rid: int) -> bytes | None:
        """The START nonce of the last successful LOCK of ``rid`` on the wire (the TSM got it from the device;
        a misbehaving host TSM has it too)."""
        nonce = None
        for _, req, resp in tdisp_exchanges(self.stack.trace.since(0)):
            if isinstance(resp, td.LockInterfaceResponse) and req is not None:
                if req.interface_id.function_id & 0xFFFF == rid:
                    nonce = bytes(resp.start_interface_nonce)
        return nonce

    def _tdisp_raw(self: Any, action: str, sid: int | None, msg: Any) -> None:
        self._do(action, self.device.handle_vendor_message, TDISP, td.encode(msg), session_id=sid)

    def _second_session(self: Any, heal: bool = True) -> int | None:
        """A second SPDM session to the device (the TSM's link up first, unless not ``heal``, so the TSM owns the
        IDE keys), with GET_TDISP_VERSION for every TDI over it, as a TSM names a TDI before other requests (PCIe
        §11.3.6)."""
        if heal:
            self._heal_link()
        sid = self._do("rogue_spdm_connect", self.device.spdm_connect)
        if not isinstance(sid, int):
            return None
        for rid in self.rids:
            self._tdisp_raw(
                "rogue_tdisp_version", sid, td.GetTdispVersion(interface_id=td.InterfaceId(function_id=rid))
            )
        return sid

    def _end(self: Any, sid: int) -> None:
        if sid in self._live_sessions():
            self._do("rogue_spdm_end", self.device.spdm_end, sid)

    def _locked_by_tsm(self: Any, s: Any) -> Any:
        """``s``'s TDI, locked by the TSM as a guest bind has it (link up, VM running, guest bound first)."""
        f = self._function(s.rid)
        if f is not None and f.tdi_state.name == "CONFIG_UNLOCKED":
            self._guest_ready(s.vm)
            guest = self.stack.guests.get(s.vm)
            v = self._vdev(s)
            if guest is not None and v is not None:
                if v.bound:
                    self._do("guest_unbind", guest.disconnect, s.virt_id)
                self._do("guest_bind", guest.connect, s.virt_id)
            f = self._function(s.rid)
        return f

    # ------------------------------------------------------------------ rules
    @rule(s=Bundle("slots"))
    @recorded
    def rogue_tsm_sessions(self: Any, s: Any) -> None:
        """A second host TSM on ``s``'s TDI, locked by the TSM first (a guest bind): START with a wrong nonce
        over the locking session (TDISP-05) and KEY_PROGs with bad fields over it (IDE-02); a state query outside
        any session (TDISP-12); then, from a second SPDM session, a LOCK cut short (TDISP-12, ERR-02), IDE_KM
        QUERY and KEY_PROG while the TSM's session owns the keys (IDE-01), START with the LOCK's own nonce
        (TDISP-15), STOP (TDISP-17) and LOCK of another TDI (TDISP-04, no keys); the session ends.

        Aimed and in one step: each case needs the TDI locked with the TSM's link up, which drawn steps met
        seldom; the device mutants that need these cases are caught from the full stack on 3 of 3 seeds."""
        if not self._raw_offered():
            note("rogue TSM: the SUT offers no raw device channel")
            return
        self._heal_link()
        f = self._locked_by_tsm(s)
        nonce = self._lock_nonce(s.rid)
        iid = td.InterfaceId(function_id=s.rid)
        if f is not None and f.tdi_state.name == "CONFIG_LOCKED" and f.locked_session is not None:
            wrong = bytes(b ^ 0xFF for b in nonce) if nonce else b"\xa5" * 32  # every bit (StartInterface.2)
            msg = td.StartInterface(interface_id=iid, start_interface_nonce=wrong)
            self._tdisp_raw("rogue_start_wrong_nonce", f.locked_session, msg)
        tsm_sid = next((sid for d, sid in self.run._snap.tsm.connected if d == self.device_name), None)
        if tsm_sid in self._live_sessions():
            # over the key owner's own session: KEY_PROGs with a port beyond MaxPortIndex, sub-stream 3 and IFV 2
            # must get a failing KP_ACK and program nothing (IDE-02; validator KeyProg.3-.5)
            for name, bad in _bad_key_progs():
                self._do(
                    f"rogue_key_prog_bad_{name}", self.device.handle_vendor_message, IDE_KM, bad, session_id=tsm_sid
                )
        # TDISP outside any SPDM session (PCIe §11.2.2: TDISP_ERROR, TDISP-12)
        self._tdisp_raw("rogue_tdisp_outside_session", None, td.GetDeviceInterfaceState(interface_id=iid))
        sid = self._second_session()
        if sid is None:
            return
        note("rogue TSM: a second SPDM session")
        lock_bytes = td.encode(
            td.LockInterface(
                interface_id=iid, flags=0, default_stream_id=0, mmio_reporting_offset=0, bind_p2p_address_mask=0
            )
        )
        # a LOCK cut short: TDISP_ERROR, never a crash (TDISP-12, ERR-02)
        self._do("rogue_lock_truncated", self.device.handle_vendor_message, TDISP, lock_bytes[:12], session_id=sid)
        slot = km.KeySubStream(key_set=km.KeySet.K0, direction=km.Direction.RX, sub_stream=km.SubStream.PR)
        for action, msg_km in (
            ("rogue_ide_km_query", km.Query(port_index=0)),
            (
                "rogue_key_prog",
                km.KeyProg(stream_id=0, key_sub_stream=slot.to_byte(), port_index=0, key=b"\x3c" * 32, iv=IV),
            ),
        ):
            self._do(action, self.device.handle_vendor_message, IDE_KM, km.encode(msg_km), session_id=sid)
        f = self._function(s.rid)
        if f is not None and f.tdi_state.name == "CONFIG_LOCKED" and nonce is not None:
            msg = td.StartInterface(interface_id=iid, start_interface_nonce=nonce)
            self._tdisp_raw("rogue_start_other_session", sid, msg)
        f = self._function(s.rid)
        if f is not None and f.tdi_state.name in _LOCKED:
            self._tdisp_raw("rogue_stop_other_session", sid, td.StopInterface(interface_id=iid))
        other = next((r for r in self.rids if (g := self._function(r)) and g.tdi_state.name == "CONFIG_UNLOCKED"), None)
        if other is not None:
            lock = td.LockInterface(
                interface_id=td.InterfaceId(function_id=other),
                flags=0,
                default_stream_id=0,
                mmio_reporting_offset=0,
                bind_p2p_address_mask=0,
            )
            self._tdisp_raw("rogue_lock_second_session", sid, lock)
        self._end(sid)

    @rule(s=Bundle("slots"))
    @recorded
    def rogue_tsm_after_stop(self: Any, s: Any) -> None:
        """``s``'s TDI locked by the TSM (a guest bind), then stopped (the guest unbinds: the TSM sends STOP);
        over the TSM's session the host then asks for its interface report and STARTs it with the stale
        nonce: both illegal in CONFIG_UNLOCKED, INVALID_INTERFACE_STATE and no report (TDISP-01, TDISP-11).
        The issue's "a report asked of a TDI after STOP", which drawn steps never reached."""
        if not self._raw_offered():
            return
        f = self._locked_by_tsm(s)
        if f is None or f.tdi_state.name not in _LOCKED:
            return
        nonce = self._lock_nonce(s.rid)
        guest = self.stack.guests.get(s.vm)
        if guest is None:
            return
        self._do("guest_unbind", guest.disconnect, s.virt_id)
        f = self._function(s.rid)
        tsm_sid = next((sid for d, sid in self.run._snap.tsm.connected if d == self.device_name), None)
        if f is None or f.tdi_state.name != "CONFIG_UNLOCKED" or tsm_sid not in self._live_sessions():
            return
        note("rogue TSM: requests to a TDI after STOP")
        iid = td.InterfaceId(function_id=s.rid)
        self._tdisp_raw(
            "rogue_report_after_stop", tsm_sid, td.GetDeviceInterfaceReport(interface_id=iid, offset=0, length=0x40)
        )
        stale = nonce or b"\xa5" * 32
        self._tdisp_raw(
            "rogue_start_after_stop", tsm_sid, td.StartInterface(interface_id=iid, start_interface_nonce=stale)
        )

    @rule(s=Bundle("slots"), data=st.data())
    @recorded
    def rogue_tsm_raw(self: Any, s: Any, data: Any = None, kind: str | None = None, raw_hex: str | None = None) -> None:
        """Raw bytes from a second SPDM session (opened and ended in the step): a valid TDISP request of any
        type with its fields drawn over their range (``strategies/``), malformed TDISP, a valid IDE_KM request
        or malformed IDE_KM. A conforming device answers malformed TDISP with TDISP_ERROR (TDISP-12), refuses
        what a non-owner may not do and drops its IDE_KM (IDE-01), and changes nothing. The draw is recorded as
        ``kind``/``raw_hex`` (replacing it), so a failure record replays the very bytes."""
        if not self._raw_offered():
            return
        kind, raw = self._raw_draw(s, data, kind, raw_hex)
        sid = self._second_session()
        if sid is None:
            return
        protocol = TDISP if kind.startswith("tdisp") else IDE_KM
        self._do(f"rogue_raw_{kind}", self.device.handle_vendor_message, protocol, raw, session_id=sid)
        self._end(sid)

    def _raw_draw(self: Any, s: Any, data: Any, kind: str | None, raw_hex: str | None) -> tuple[str, bytes]:
        if kind is not None and raw_hex is not None:
            if kind not in RAW_KINDS:
                raise InvalidArgument(f"kind must be one of {RAW_KINDS}, got {kind!r}")
            try:
                return kind, bytes.fromhex(raw_hex)
            except (TypeError, ValueError):
                raise InvalidArgument(f"raw_hex must be a hex string, got {raw_hex!r:.60}") from None
        if data is None:
            raise InvalidArgument("a raw-request step needs drawn data, or kind and raw_hex")
        kind = str(data.draw(st.sampled_from(RAW_KINDS), label="kind"))
        ids = interface_ids(st.sampled_from(self.rids))
        strategy: Any = {
            "tdisp": tdisp_requests(ids).map(td.encode),
            "tdisp_malformed": malformed_tdisp_requests(valid_function_ids=tuple(self.rids)),
            "ide_km": st.builds(
                lambda slot, key: km.encode(km.KeyProg(stream_id=0, key_sub_stream=slot, port_index=0, key=key, iv=IV)),
                st.sampled_from([x.to_byte() for x in km.ALL_SLOTS]),
                st.binary(min_size=km.KEY_LEN, max_size=km.KEY_LEN),
            )
            | st.builds(lambda port: km.encode(km.Query(port_index=port)), st.integers(0, 1)),
            "ide_km_malformed": malformed_ide_km_requests(),
        }[kind]
        raw = bytes(data.draw(strategy, label="bytes"))
        log = self.__dict__.get("replay_log")
        if log:
            log[-1]["kwargs"] = {"s": encode_value(s), "kind": kind, "raw_hex": raw.hex()}
        return kind, raw
