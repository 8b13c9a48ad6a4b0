"""The device machine: a TDISP / IDE_KM responder driven directly, compared with the state table.

The machine plays the TSM's part by hand -- opening SPDM sessions, programming IDE keys, sending
every TDISP request (valid, out of state, with wrong nonces, malformed bytes) -- and the host's
part in faults (config writes, FLR, poison, IDE failures, session end, TLPs). After every step the
TDISP and IDE rules replay the spec's state table over the messages and compare it with the device.
"""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, multiple, rule

from teeio_conformance.conformance.harness import StepRunner, build_sut
from teeio_conformance.conformance.machines.recording import note, recorded, score
from teeio_conformance.conformance.rules import CATALOGUE
from teeio_conformance.conformance.sut import DEFAULT_DEVICE, load_factory
from teeio_conformance.contract import ide_km as km
from teeio_conformance.contract.errors import InvalidArgument, StackError, Unsupported
from teeio_conformance.contract.ide_stream import IdeStreamEndpoint, StreamState, Tlp
from teeio_conformance.contract.tdisp import codec as td
from teeio_conformance.contract.tiers import offers_of
from teeio_conformance.contract.trace import Trace
from teeio_conformance.strategies.messages import malformed_ide_km_requests, malformed_tdisp_requests

__all__ = ["DEVICE_RULES", "DeviceMachine", "DeviceMachineConfig", "DeviceStack"]

DEVICE_RULES = frozenset(r.id for r in CATALOGUE if r.area.name in ("TDISP", "IDE", "ERR")) - {
    "IDE-06",
    "IDE-08",
    "IDE-10",
}
IV = (0).to_bytes(4, "little") + (1).to_bytes(4, "little")
FAULTS = ("poison", "config_write_command", "config_write_bar0", "config_write_msix_control", "ide_failure")
P2P_STREAM = 1
"""The stream ID the machine keys for peer-to-peer (the reference keeps its P2P stream there)."""
UNKEYED_STREAM = 7
"""A stream ID the machine never keys: a BIND to it must be refused."""
VENDOR_PROBES = (b"\xfe\xff", b"\x34\x12")
"""Vendor IDs for VDM requests: the reference's own protocol, and one no device here speaks."""


def _acked(raw: bytes | None) -> bool:
    """Did the device accept a KEY_PROG (KP_ACK with status SUCCESS)?"""
    if raw is None:
        return False
    try:
        ack = km.decode(raw)
    except StackError:
        return False
    return isinstance(ack, km.KpAck) and ack.status == km.KpAckStatus.SUCCESS


@attrs.frozen
class DeviceOnlySnapshot:
    profile: str
    devices: tuple[Any, ...]


class DeviceStack:
    """A device alone, with the shape of a stack as far as the device rules look."""

    def __init__(self, device_factory: Any, profile: str, timeout: float = 5.0) -> None:
        self.trace = Trace()
        self.profile = profile
        self.device = build_sut(device_factory, timeout, self.trace, profile)
        self.devices = {self.device.name: self.device}
        self.offers = offers_of(self.device)  # what the device says it can show (contract/tiers.py)

    def snapshot(self) -> DeviceOnlySnapshot:
        return DeviceOnlySnapshot(profile=self.profile, devices=(self.device.snapshot(),))


def reference_device(trace: Trace, profile: str) -> Any:
    """The default device: the factory :data:`~teeio_conformance.conformance.sut.DEFAULT_DEVICE` names, loaded by
    name so the machine itself never imports the reference."""
    return load_factory(DEFAULT_DEVICE)(trace, profile)


@attrs.frozen
class DeviceMachineConfig:
    device_factory: Any = reference_device
    profile: str = "tdx"
    only: frozenset[str] | None = None
    timeout: float = 5.0


class DeviceMachine(RuleBasedStateMachine):
    config: DeviceMachineConfig = DeviceMachineConfig()

    sessions = Bundle("sessions")

    def __init__(self) -> None:
        super().__init__()
        cfg = self.config
        self.stack = DeviceStack(cfg.device_factory, cfg.profile, cfg.timeout)
        self.device = self.stack.device
        only = DEVICE_RULES if cfg.only is None else cfg.only & DEVICE_RULES | cfg.only
        self.run = StepRunner(self.stack, cfg.profile, only=only, timeout=cfg.timeout)
        self.rids = list(self.device.rids())
        self.nonces: dict[int, bytes] = {}
        self.locked_by: dict[int, int] = {}  # rid -> the session of our last successful LOCK
        self.ended: set[int] = set()  # sessions this machine ended (they stay drawable: the device must refuse)
        self.keyed: list[int] = []  # sessions a KEY_PROG of ours was acked over, first first (the key owner)
        self._key_counter = 0
        self._programmed_sets: set[int] = set()  # key sets this example sent KEY_PROGs for (go_unprogrammed)
        self.link = IdeStreamEndpoint(stream_id=0, rid_base=min(self.rids), rid_limit=max(self.rids))

    def teardown(self) -> None:
        self.run.finish()
        try:
            total = sum(f.tdi_state.value for d in self.run._snap.devices for f in d.functions)
        except (AttributeError, TypeError):  # a SUT's odd snapshot must not crash the machine's own teardown
            total = 0
        score(float(total), label="sum of TDI states")

    def _do(self, action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        result, error = self.run.step(action, fn, *args, **kwargs)
        note(f"{action}: {'refused ' + type(error).__name__ if error else 'ok'}")
        return None if error else result

    def _key_owner(self) -> int | None:
        """The first live session a KEY_PROG of ours was acked over (the device's key owner, as far as this
        machine knows), or None."""
        live = {s for d in self.run._snap.devices for s in d.sessions}
        return next((s for s in self.keyed if s in live and s not in self.ended), None)

    def _gone(self, sid: int | None) -> bool:
        """Can no message go over ``sid`` any more? Only for a responder without secure sessions
        (``--device-plaintext``), where a session is its connection: once the machine ended it, nothing can
        be sent "over" it, and nothing outside a session is possible either. In process, and inside secure
        sessions, a message over an ended session reaches the device as one outside any session, which it
        must refuse (TDISP-12), so it is sent."""
        return sid in self.ended and not getattr(self.device, "secure", True)

    def _end(self, sid: int) -> None:
        self.ended.add(sid)
        if sid in self.keyed:
            self.keyed.remove(sid)
        self._do("spdm_end", self.device.spdm_end, sid)

    def _tdisp(self, action: str, sid: int | None, msg: Any) -> Any:
        if self._gone(sid):
            return None
        raw = self._do(action, self.device.handle_vendor_message, 1, td.encode(msg), session_id=sid)
        try:
            return td.decode_response(raw) if raw is not None else None
        except StackError:
            return None

    def _send_all(self, action: str, sid: int | None, requests: list[tuple[int, bytes]]) -> list[Any]:
        """(protocol, message) requests none of which depends on another's answer, over ``sid``, as one step.

        Each request is still a crossing of its own, so the rules judge every answer and the model replays
        them in order; the step's snapshot is taken once, after the last. A device that takes several
        requests at once (over a socket that answers in order: one round trip) gets them so, any other one
        by one. Every request is sent even if one is refused; the answers (None where there is none, all
        None if the step failed)."""
        answers: list[Any] = [None] * len(requests)
        if self._gone(sid) or not requests:
            return answers

        def go() -> None:
            answers[:] = self._vendor_batch(sid, requests)

        self._do(action, go)
        return answers

    def _vendor_batch(self, sid: int | None, requests: list[tuple[int, bytes]]) -> list[Any]:
        """Inside a step: every request sent (at once where the device takes that), the answers; the first
        refusal is raised once all are sent."""
        batch = getattr(self.device, "handle_vendor_messages", None)
        if batch is not None:
            return list(batch(tuple(requests), session_id=sid))
        answers: list[Any] = []
        first: StackError | None = None
        for protocol_id, message in requests:
            try:
                answers.append(self.device.handle_vendor_message(protocol_id, message, session_id=sid))
            except StackError as exc:
                answers.append(None)
                first = first or exc
        if first is not None:
            raise first
        return answers

    def _tdisp_all(self, action: str, sid: int | None, msgs: list[Any]) -> list[Any]:
        """TDISP requests as one step (:meth:`_send_all`); their decoded responses (None where none)."""
        out: list[Any] = []
        for raw in self._send_all(action, sid, [(1, td.encode(m)) for m in msgs]):
            try:
                out.append(td.decode_response(raw) if isinstance(raw, bytes | bytearray) else None)
            except StackError:
                out.append(None)
        return out

    # ------------------------------------------------------------------ the TSM polling its TDIs
    @rule()
    @recorded
    def poll(self) -> None:
        """GET_DEVICE_INTERFACE_STATE and GET_TDISP_VERSION to every TDI over the newest live session, and
        the whole interface report of every TDI that says it is locked -- or a report request, which must be
        refused, of every TDI that says it is not (a derandomized search that drew no such request let a
        device serving reports in CONFIG_UNLOCKED pass).

        Queries change nothing and must tell the truth, so polling is always safe -- which is why it is
        this machine's first rule (Hypothesis favours the first rule in its order: no target, fewest
        arguments)."""
        live = [s for d in self.run._snap.devices for s in d.sessions]
        if not live:
            return
        asks: list[Any] = []
        for rid in self.rids:
            iid = td.InterfaceId(function_id=rid)
            asks += [td.GetDeviceInterfaceState(interface_id=iid), td.GetTdispVersion(interface_id=iid)]
        states = self._tdisp_all("tdisp_state_and_version", max(live), asks)[::2]
        for rid, state in zip(self.rids, states, strict=True):
            iid = td.InterfaceId(function_id=rid)
            if isinstance(state, td.DeviceInterfaceState) and state.tdi_state in (
                td.TdiState.CONFIG_LOCKED,
                td.TdiState.RUN,
            ):
                self._report_whole(max(live), rid)
            elif isinstance(state, td.DeviceInterfaceState):  # no report outside LOCKED/RUN (TDISP-11)
                report = td.GetDeviceInterfaceReport(interface_id=iid, offset=0, length=0x40)
                self._tdisp("tdisp_report_unlocked", max(live), report)

    def _report_whole(self, sid: int, rid: int) -> None:
        """The whole interface report as one step, read portion by portion (GET_DEVICE_INTERFACE_REPORT
        with OFFSET moving on while REMAINDER_LENGTH is not 0, PCIe §11.3.10-§11.3.11), so the rules can
        put it back together and judge its content (TDISP-16) whatever portion size the device serves."""
        iid = td.InterfaceId(function_id=rid)
        if self._gone(sid):
            return

        def go() -> None:
            offset = 0
            for _ in range(64):
                raw = self.device.handle_vendor_message(
                    1,
                    td.encode(td.GetDeviceInterfaceReport(interface_id=iid, offset=offset, length=0x400)),
                    session_id=sid,
                )
                try:
                    resp = td.decode_response(raw) if raw is not None else None
                except StackError:
                    return
                if not isinstance(resp, td.DeviceInterfaceReport) or not resp.portion or not resp.remainder_length:
                    return
                offset += len(resp.portion)
                if offset > 0xFFFF:
                    return

        self._do("tdisp_report_whole", go)

    # ------------------------------------------------------------------ sessions and keys
    @rule(target=sessions)
    @recorded
    def open_session(self) -> Any:
        sid = self._connect()
        return multiple() if sid is None else sid  # a session that did not open is never used

    def _connect(self) -> int | None:
        """Open an SPDM session, then GET_TDISP_VERSION for every TDI over it, as a TSM does before any
        other TDISP request (PCIe §11.3.6; DMTF spdm-emu refuses a TDI until it has been named so)."""
        sid: int | None = self._do("spdm_connect", self.device.spdm_connect)
        if sid is not None:
            versions = [td.GetTdispVersion(interface_id=td.InterfaceId(function_id=rid)) for rid in self.rids]
            self._tdisp_all("tdisp_version", sid, versions)
        return sid

    @rule(fn=st.integers(0, 1))
    @recorded
    def tdisp_before_version(self, fn: int) -> None:
        """State queries over a fresh session before any GET_TDISP_VERSION, to ``fn``'s TDI first, then to
        every other: the named case of a TSM that skips the version exchange. The right answer or a
        TDISP_ERROR are both accepted; no state change. Every TDI in one step, since the session it opens
        costs far more than the questions."""
        sid = self._do("spdm_connect", self.device.spdm_connect)
        if sid is not None:
            first = fn % len(self.rids)
            order = [self.rids[first], *(r for i, r in enumerate(self.rids) if i != first)]
            asks = [td.GetDeviceInterfaceState(interface_id=td.InterfaceId(function_id=rid)) for rid in order]
            self._tdisp_all("tdisp_state_before_version", sid, asks)

    @rule(fn=st.integers(0, 1))
    @recorded
    def tdisp_outside_session(self, fn: int) -> None:
        """A state query with no SPDM session at all (in the clear, over a socket): TDISP is spoken only
        inside a secure session (PCIe §11.2.2), so it must get a TDISP_ERROR (TDISP-12). Not for a responder
        driven without sessions (``--device-plaintext``): there every message is outside one."""
        if not getattr(self.device, "secure", True):
            return
        iid = td.InterfaceId(function_id=self.rids[fn % len(self.rids)])
        self._tdisp("tdisp_outside_session", None, td.GetDeviceInterfaceState(interface_id=iid))

    @rule(target=sessions, fn=st.integers(0, 1), stage=st.sampled_from(["running", "locked", "keyed"]))
    @recorded
    def bring_up(self, fn: int, stage: str) -> Any:
        """A session with keys, then LOCK and START of one TDI, as one step (each message checked).

        Deepest stage first, so failures shrink to one deep bring-up (see the full-stack machine's)."""
        sid = self._bring_up(fn, stage)
        return multiple() if sid is None else sid

    def _bring_up(self, fn: int, stage: str, *, reuse: bool = False) -> Any:
        """Keys, then LOCK (``locked``) and START (``running``) of ``fn``'s TDI, over a new session -- or, with
        ``reuse``, over the live session that holds the device's keys if there is one, as a TSM brings up one
        TDI after another over its one session with the device (re-keying the stream first). The aimed rules
        that only need a TDI in a state reuse; ``bring_up`` itself always opens a session."""
        sid = self._key_owner() if reuse else None
        if sid is None:
            sid = self._connect()
        if sid is None:
            return None
        self._program_keys(sid, 0)
        if stage in ("locked", "running"):
            self._lock(sid, fn)
        if stage == "running":
            # first with every nonce bit inverted, which must be refused (validator StartInterface.2): drawn
            # apart, a wrong nonce over the locking session of a CONFIG_LOCKED TDI was too rare to reach. Both
            # in one step: neither depends on the other's answer, and the rules judge each START's
            self._tdisp_all(
                "START_INTERFACE_bad_then_good", sid, [self._start_msg(fn, False), self._start_msg(fn, True)]
            )
        return sid

    @rule(sid=sessions)
    @recorded
    def end_session(self, sid: int) -> None:
        self._end(sid)

    @rule(running=st.booleans())
    @recorded
    def end_locking_session(self, running: bool) -> None:
        """END_SESSION of the session that locked a TDI in RUN (``running``) or CONFIG_LOCKED (brought there
        first if none is): the TDI must go to ERROR (TDISP-09; PCIe §11.4.5 -- the session that bound it is
        gone) and stay there until a STOP (TDISP-08), whatever comes over the other sessions.

        Aimed: with ``end_session`` drawing any session, the locking one while its TDI is still locked, a
        ``ci`` search over the socket (where config writes, FLR and TLPs cannot reach the device, so a
        session's end is the only tracked change) reached neither rule."""
        f = self._locked_tdi(running)
        if f is not None:
            note(f"END_SESSION of the session that locked a {f.tdi_state.name} TDI")
            self._end(f.locked_session)

    @rule(sid=sessions, key_set=st.sampled_from([0, 1]))
    @recorded
    def program_keys(self, sid: int, key_set: int) -> None:
        self._program_keys(sid, key_set)

    def _program_keys(self, sid: int, key_set: int) -> None:
        self._programmed_sets.add(key_set)
        self._program_keys_now(sid, key_set)

    def _program_keys_now(self, sid: int, key_set: int) -> None:
        """QUERY, KEY_PROG x6, K_SET_GO x6 and stream enable, as one TSM step.

        The machine keeps the root port's side of the stream (``self.link``): every key the device
        acknowledges is programmed there for the opposite direction, so the machine can send the device
        IDE-protected TLPs -- and tampered ones."""
        if self._gone(sid):
            return

        def go() -> None:
            slots = [
                km.KeySubStream(key_set=km.KeySet(key_set), direction=d, sub_stream=s)
                for d in km.Direction
                for s in km.SubStream
            ]
            keys = []
            for _slot in slots:
                self._key_counter += 1
                keys.append(self._key_counter.to_bytes(4, "little") * 8)
            requests = [
                km.encode(km.Query(port_index=0)),
                *(
                    km.encode(km.KeyProg(stream_id=0, key_sub_stream=slot.to_byte(), port_index=0, key=key, iv=IV))
                    for slot, key in zip(slots, keys, strict=True)
                ),
                *(km.encode(km.KSetGo(stream_id=0, key_sub_stream=slot.to_byte(), port_index=0)) for slot in slots),
            ]
            # none of these requests depends on another's answer: a device that takes several at once (over a
            # socket, in one round trip) gets them so, each still a crossing of its own; else one by one
            answers = self._vendor_batch(sid, [(0, r) for r in requests])
            progs, gos = answers[1 : 1 + len(slots)], answers[1 + len(slots) :]
            if any(_acked(raw) for raw in progs) and sid not in self.keyed:
                self.keyed.append(sid)
            for slot, key, raw in zip(slots, keys, progs, strict=True):
                if _acked(raw):
                    mirror = km.KeySubStream(
                        key_set=slot.key_set, direction=km.Direction(1 - slot.direction), sub_stream=slot.sub_stream
                    )
                    self.link.program_key(mirror, key, IV)
            for slot, raw in zip(slots, gos, strict=True):
                mirror = km.KeySubStream(
                    key_set=slot.key_set, direction=km.Direction(1 - slot.direction), sub_stream=slot.sub_stream
                )
                if raw is not None and self.link.is_programmed(mirror):
                    self.link.go(mirror)
            try:
                self.device.ide_enable(True)
            except Unsupported:  # a device behind a socket: its link is not ours to switch on
                return
            self.link.enable()

        self._do("program_ide_keys", go)

    @rule(protocol=st.sampled_from(["ide_km", "tdisp"]), cut=st.integers(1, 12))
    @recorded
    def truncated(self, protocol: str, cut: int) -> None:
        """A well-formed request cut ``cut`` bytes short, over a live session (opened if there is none):
        a KEY_PROG must get a KP_ACK with a failing status (IDE-02; validator KeyProg.2), a LOCK_INTERFACE
        a TDISP_ERROR (TDISP-12); neither may crash the responder (ERR-02) or change anything.

        A rule of its own: random malformed bytes are seldom a request only slightly short, and a ``ci``
        search missed a device acknowledging every KEY_PROG with SUCCESS on 2 of 6 seeds, and one that
        crashes on a short TDISP request on 1 of 6."""
        live = [sid for d in self.run._snap.devices for sid in d.sessions]
        sid = live[-1] if live else self._connect()
        if sid is None:
            return
        if protocol == "ide_km":
            slot = km.KeySubStream(key_set=km.KeySet(0), direction=km.Direction(0), sub_stream=km.SubStream(0))
            full = km.encode(km.KeyProg(stream_id=0, key_sub_stream=slot.to_byte(), port_index=0, key=bytes(32), iv=IV))
            self._do("key_prog_truncated", self.device.handle_vendor_message, 0, full[:-cut], session_id=sid)
            return
        lock = td.LockInterface(
            interface_id=td.InterfaceId(function_id=self.rids[0]),
            flags=0,
            default_stream_id=0,
            mmio_reporting_offset=0,
            bind_p2p_address_mask=0,
        )
        full = td.encode(lock)
        self._do(
            "lock_truncated", self.device.handle_vendor_message, 1, full[: max(len(full) - cut, 1)], session_id=sid
        )

    # ------------------------------------------------------------------ TDISP requests
    @rule(sid=sessions, fn=st.integers(0, 1))
    @recorded
    def lock(self, sid: int, fn: int) -> None:
        self._lock(sid, fn)

    def _lock(self, sid: int, fn: int) -> None:
        rid = self.rids[fn % len(self.rids)]
        resp = self._tdisp(
            "LOCK_INTERFACE",
            sid,
            td.LockInterface(
                interface_id=td.InterfaceId(function_id=rid),
                flags=0,
                default_stream_id=0,
                mmio_reporting_offset=0,
                bind_p2p_address_mask=0,
            ),
        )
        if isinstance(resp, td.LockInterfaceResponse):
            self.nonces[rid] = resp.start_interface_nonce
            self.locked_by[rid] = sid

    @rule()
    @recorded
    def lock_locked(self) -> None:
        """LOCK_INTERFACE again to a TDI that is CONFIG_LOCKED or RUN, over the session that locked it:
        illegal in both states (TDISP-01). ``lock`` reaches it only when its drawn session and function
        happen to meet a locked TDI; aimed, every draw of this rule tests the case."""
        f = next(
            (
                f
                for d in self.run._snap.devices
                for f in d.functions
                if f.tdi_state in (td.TdiState.CONFIG_LOCKED, td.TdiState.RUN) and f.locked_session is not None
            ),
            None,
        )
        if f is not None:
            note(f"LOCK of a {f.tdi_state.name} TDI")
            self._lock(f.locked_session, self.rids.index(f.rid))

    @rule(sid=sessions, fn=st.integers(0, 1), good=st.booleans())
    @recorded
    def start(self, sid: int, fn: int, good: bool) -> None:
        self._start(sid, fn, good)

    def _start(self, sid: int, fn: int, good: bool) -> None:
        self._tdisp("START_INTERFACE", sid, self._start_msg(fn, good))

    def _start_msg(self, fn: int, good: bool) -> td.StartInterface:
        rid = self.rids[fn % len(self.rids)]
        nonce = self.nonces.get(rid, bytes(32))
        if not good:
            nonce = bytes(b ^ 0xFF for b in nonce)  # every bit inverted (validator StartInterface.2)
        return td.StartInterface(interface_id=td.InterfaceId(function_id=rid), start_interface_nonce=nonce)

    @rule(sid=sessions, fn=st.integers(0, 1))
    @recorded
    def stop(self, sid: int, fn: int) -> None:
        rid = self.rids[fn % len(self.rids)]
        self._tdisp("STOP_INTERFACE", sid, td.StopInterface(interface_id=td.InterfaceId(function_id=rid)))

    @rule(running=st.booleans())
    @recorded
    def stop_locked(self, running: bool) -> None:
        """STOP_INTERFACE to a TDI in RUN (``running``) or CONFIG_LOCKED over the session that locked it:
        it must go to CONFIG_UNLOCKED (TDISP-07; validator StopInterface cases).

        Aimed: with session and function both drawn, a ``ci`` search stopped a RUN TDI on only 4 of 6
        seeds, and a version that only looked for a locked TDI found one in 0 of 288 draws; so a TDI is
        brought to the state first if none is in it (:meth:`_locked_tdi`). Folded into one rule with
        the queries below, STOP of a RUN TDI was drawn too seldom again (5 of 6 seeds)."""
        f = self._locked_tdi(running)
        if f is not None:
            note(f"STOP of a {f.tdi_state.name} TDI over its locking session")
            self._tdisp(
                "STOP_INTERFACE", f.locked_session, td.StopInterface(interface_id=td.InterfaceId(function_id=f.rid))
            )

    @rule()
    @recorded
    def relock(self) -> None:
        """STOP and LOCK again of a CONFIG_LOCKED TDI (brought there first if none is) over its locking
        session, which holds the keys: the second LOCK must return a fresh START nonce (TDISP-06).

        A rule of its own: other rules reach a second LOCK of one TDI mostly over a new session, which
        a device refuses while another session owns the keys -- over the socket, a full ``ci`` run
        against a device that reuses its nonce never got a second successful LOCK."""
        f = self._locked_tdi(False)
        if f is None:
            return
        note("STOP and LOCK again over the locking session")
        self._tdisp(
            "STOP_INTERFACE", f.locked_session, td.StopInterface(interface_id=td.InterfaceId(function_id=f.rid))
        )
        self._lock(f.locked_session, self.rids.index(f.rid))

    @rule(running=st.booleans())
    @recorded
    def query_locked(self, running: bool) -> None:
        """The four queries, in turn, to a TDI in RUN or CONFIG_LOCKED over its locking session: a state
        query must say the state and leave it there (TDISP-02), a report be served (TDISP-11),
        capabilities list the mandatory requests (TDISP-14), and none may change the state. Aimed like
        :meth:`stop_locked`; all four in one step because, drawn as an argument, the state query of a
        RUN TDI was missed on 1 of 6 seeds."""
        f = self._locked_tdi(running)
        if f is None:
            return
        note(f"queries to a {f.tdi_state.name} TDI over its locking session")
        iid = td.InterfaceId(function_id=f.rid)
        queries = [
            td.GetDeviceInterfaceState(interface_id=iid),
            td.GetDeviceInterfaceReport(interface_id=iid, offset=0, length=0x40),
            td.GetTdispCapabilities(interface_id=iid, tsm_caps=0),
            td.GetTdispVersion(interface_id=iid),
        ]
        self._tdisp_all("tdisp_state_report_caps_version", f.locked_session, queries)

    def _locked_tdi(self, running: bool) -> Any:
        """A TDI in RUN (``running``) or CONFIG_LOCKED with its locking session; if none is, one brought
        there first (keys, LOCK, START), each message checked. None if no TDI can be."""
        state = td.TdiState.RUN if running else td.TdiState.CONFIG_LOCKED
        f = self._tdi_in(state)
        if f is None:
            unlocked = self._tdi_in(td.TdiState.CONFIG_UNLOCKED)
            if unlocked is None:
                return None
            self._bring_up(self.rids.index(unlocked.rid), "running" if running else "locked", reuse=True)
            f = self._tdi_in(state)
        return f

    def _tdi_in(self, state: td.TdiState, exclude: Any = ()) -> Any:
        """The first of :meth:`_tdis_in`, or None."""
        return next(iter(self._tdis_in(state, exclude)), None)

    def _tdis_in(self, state: td.TdiState, exclude: Any = ()) -> list[Any]:
        """The TDIs in ``state`` (with their locking session, unless unlocked). A device behind a socket
        does not say which session locked a TDI; the machine knows the session of its own last LOCK."""
        out = []
        for d in self.run._snap.devices:
            for f in d.functions:
                if f.tdi_state is not state or f.rid in exclude:
                    continue
                if state is td.TdiState.CONFIG_UNLOCKED:
                    out.append(f)
                    continue
                sid = f.locked_session if f.locked_session is not None else self.locked_by.get(f.rid)
                if sid is not None:
                    out.append(attrs.evolve(f, locked_session=sid))
        return out

    @rule(
        sid=sessions,
        fn=st.integers(0, 1),
        kind=st.sampled_from(["state", "version", "caps", "report", "report_whole", "report_bad_offset"]),
    )
    @recorded
    def query(self, sid: int, fn: int, kind: str) -> None:
        iid = td.InterfaceId(function_id=self.rids[fn % len(self.rids)])
        msg: Any = {
            "state": td.GetDeviceInterfaceState(interface_id=iid),
            "version": td.GetTdispVersion(interface_id=iid),
            "caps": td.GetTdispCapabilities(interface_id=iid, tsm_caps=0),
            "report": td.GetDeviceInterfaceReport(interface_id=iid, offset=0, length=0x40),
            "report_bad_offset": td.GetDeviceInterfaceReport(interface_id=iid, offset=0xFFFF, length=1),
        }.get(kind)
        if msg is None:  # report_whole: every portion, as one step
            self._report_whole(sid, iid.function_id)
            return
        self._tdisp(f"tdisp_{kind}", sid, msg)

    @rule(sid=sessions, data=st.data())
    @recorded
    def malformed_tdisp(self, sid: int, data: Any = None, raw_hex: str | None = None) -> None:
        """Malformed TDISP bytes. The drawn bytes are recorded as ``raw_hex`` (replacing the draw), so a
        failure record replays the very bytes that failed."""
        raw = self._malformed_bytes(data, raw_hex, malformed_tdisp_requests(valid_function_ids=tuple(self.rids)), sid)
        if self._gone(sid):
            return
        self._do("malformed_tdisp", self.device.handle_vendor_message, 1, raw, session_id=sid)

    @rule(sid=sessions, data=st.data())
    @recorded
    def malformed_ide_km(self, sid: int, data: Any = None, raw_hex: str | None = None) -> None:
        raw = self._malformed_bytes(data, raw_hex, malformed_ide_km_requests(), sid)
        if self._gone(sid):
            return
        self._do("malformed_ide_km", self.device.handle_vendor_message, 0, raw, session_id=sid)

    def _malformed_bytes(self, data: Any, raw_hex: str | None, strategy: Any, sid: int) -> bytes:
        if raw_hex is not None:
            try:
                return bytes.fromhex(raw_hex)
            except (TypeError, ValueError):
                raise InvalidArgument(f"raw_hex must be a hex string, got {raw_hex!r:.60}") from None
        if data is None:
            raise InvalidArgument("a malformed-message step needs drawn data or raw_hex")
        raw: bytes = data.draw(strategy, label="bytes")
        log = self.__dict__.get("replay_log")
        if log:
            log[-1]["kwargs"] = {"sid": sid, "raw_hex": raw.hex()}
        return raw

    # ------------------------------------------------------------------ faults and TLPs
    @rule(fn=st.integers(0, 1))
    @recorded
    def flr(self, fn: int) -> None:
        """Function-level reset (of the PF: every VF's TDI is reset with it)."""
        self._do("flr", self.device.flr, self.rids[fn % len(self.rids)])

    @rule(kind=st.sampled_from(FAULTS), fn=st.integers(0, 1))
    @recorded
    def fault(self, kind: str, fn: int) -> None:
        """A tracked event on one function (poisoned TLP, config write) or an IDE failure."""
        if kind == "ide_failure":
            self._do("ide_failure", self.device.ide_failure, "injected")
        else:
            self._tracked_event(kind, self.rids[fn % len(self.rids)])

    @rule(kind=st.sampled_from((*FAULTS[:-1], "flr")), running=st.booleans())
    @recorded
    def fault_on_locked(self, kind: str, running: bool) -> None:
        """The same tracked events, and an FLR, aimed at a TDI that is CONFIG_LOCKED or RUN (if any is).

        Random sequences seldom keep a TDI locked long enough for ``fault`` or ``flr`` to pick it (re-keying,
        a stop, a T=0 TLP all move it on), yet a tracked change to a locked TDI is what TDISP-09 is about
        (the FLR is here since a drawn ``flr`` stopped meeting a locked TDI once the machine had another rule)."""
        locked = self._locked()
        if locked:
            state = td.TdiState.RUN if running else td.TdiState.CONFIG_LOCKED
            rid = next((f.rid for f in self._tdis_in(state) if f.rid in locked), locked[0])  # RUN, or CONFIG_LOCKED
            note("tracked event on a locked TDI")
            self._tracked_event(kind, rid)

    @rule()
    @recorded
    def pf_flr_under_locked_vf(self) -> None:
        """An FLR of the PF while a VF's TDI is CONFIG_LOCKED or RUN: every VF is reset with its PF, so
        the VF's TDI must go to ERROR (TDISP-10). A rule of its own, without arguments, because an argument
        value among the faults was drawn too seldom in a ``ci`` run to reach this case at all; and it
        locks a VF first if none is, since after later machine changes it found one once per profile."""
        pfs = [f.rid for d in self.run._snap.devices for f in d.functions if f.is_pf]
        if not pfs:
            return
        if not any(rid not in pfs for rid in self._locked()):  # lock a VF first, so every draw tests it
            vf = self._tdi_in(td.TdiState.CONFIG_UNLOCKED, exclude=pfs)
            if vf is None:
                return
            self._bring_up(self.rids.index(vf.rid), "locked", reuse=True)
        if any(rid not in pfs for rid in self._locked()):
            note("PF FLR under a locked VF")
            self._do("flr", self.device.flr, pfs[0])

    def _locked(self) -> list[int]:
        return [
            f.rid
            for d in self.run._snap.devices
            for f in d.functions
            if f.tdi_state in (td.TdiState.CONFIG_LOCKED, td.TdiState.RUN)
        ]

    @rule(fn=st.integers(0, 1))
    @recorded
    def start_from_other_session(self, fn: int) -> None:
        """START with the right nonce to a CONFIG_LOCKED TDI (``fn``'s if it is locked, else the first
        that is; with none, ``fn``'s after a LOCK), sent over a live session that is *not* the one that
        locked it -- opened first if there is none. The nonce is bound to the locking session (TDISP-15).

        Aimed rather than drawn: with the session and the function both drawn, a ``ci`` run met this
        case in one machine version and never in the next."""
        rid = self.rids[fn % len(self.rids)]
        locked = self._tdis_in(td.TdiState.CONFIG_LOCKED)
        if not locked:  # take one there first, so every draw tests the case
            self._bring_up(fn % len(self.rids), "locked", reuse=True)
            locked = self._tdis_in(td.TdiState.CONFIG_LOCKED)
            if not locked:
                return
        f = next((f for f in locked if f.rid == rid), locked[0])
        others = [sid for d in self.run._snap.devices for sid in d.sessions if sid != f.locked_session]
        sid = others[-1] if others else self._connect()
        if sid is not None:
            note("START over a session other than the locking one")
            self._start(sid, self.rids.index(f.rid), True)

    def _tracked_event(self, kind: str, rid: int) -> None:
        if kind.startswith("config_write_"):
            register = kind.removeprefix("config_write_")
            value = {"command": 0x6, "bar0": 0xF000_0000}.get(register, 0)
            self._do(kind, self.device.config_write, rid, register, value)
        else:
            self._do(kind, getattr(self.device, kind), rid)

    @rule(fn=st.integers(0, 1), tamper=st.booleans())
    @recorded
    def protected_tlp(self, fn: int, tamper: bool) -> None:
        """A T=1 MMIO read sent IDE-protected over the machine's end of the stream -- intact, or with one
        ciphertext bit flipped on the way (the device must fail its integrity check and go Insecure)."""
        if self.link.state is not StreamState.SECURE:
            return
        rid = self.rids[fn % len(self.rids)]
        base, _ = self.device.bar_range(rid)
        tlp = Tlp(
            kind="MRd",
            requester_id=rid,
            address=base + 4096,
            t_bit=True,
            payload=(8).to_bytes(4, "little"),
            stream_id=0,
        )
        packet = self.link.protect(tlp)
        if tamper:
            flipped = bytes([packet.ciphertext[0] ^ 0x01]) + packet.ciphertext[1:]
            packet = attrs.evolve(packet, ciphertext=flipped)
        self._do(f"protected_mmio_read{'_tampered' if tamper else ''}", self.device.receive, packet)

    @rule(fn=st.integers(0, 1), t_bit=st.booleans())
    @recorded
    def tlp(self, fn: int, t_bit: bool) -> None:
        rid = self.rids[fn % len(self.rids)]
        base, _ = self.device.bar_range(rid)
        tlp = Tlp(
            kind="MRd",
            requester_id=rid,
            address=base + 4096,
            t_bit=t_bit,
            payload=(8).to_bytes(4, "little"),
            stream_id=0 if t_bit else None,
        )
        self._do(f"mmio_read_t{int(t_bit)}", self.device.receive, tlp)

    # ------------------------------------------------------------------ progress probes (issue 14)
    @rule()
    @recorded
    def key_prog_bad_fields(self) -> None:
        """From every live session (connecting one if none is): QUERY(0), then a KEY_PROG with a port beyond
        MaxPortIndex, one with sub-stream 3 and one with IFV 2 -- each must get a failing KP_ACK from the
        session that may program keys (IDE-02; validator KeyProg.3-.5), and the QUERY a QUERY_RESP (IDE-05).

        A rule of its own and aimed: as malformed bytes drawn over a random session, a device acking every
        KEY_PROG with SUCCESS passed a whole ``ci`` run (the draws rarely came from the key owner)."""
        sessions = sorted({s for d in self.run._snap.devices for s in d.sessions})
        if not sessions:
            sid = self._do("spdm_connect", self.device.spdm_connect)
            if not isinstance(sid, int):
                return
            sessions = [sid]
        slot = km.KeySubStream(key_set=km.KeySet.K0, direction=km.Direction.RX, sub_stream=km.SubStream.PR).to_byte()
        bad = (
            ("port", km.KeyProg(stream_id=0, key_sub_stream=slot, port_index=0xF0, key=bytes(32), iv=IV)),
            ("sub_stream", km.KeyProg(stream_id=0, key_sub_stream=0x30, port_index=0, key=bytes(32), iv=IV)),
            ("iv", km.KeyProg(stream_id=0, key_sub_stream=slot, port_index=0, key=bytes(32), iv=km.ifv_to_wire(2))),
        )
        for sid in sessions:
            requests = [(0, km.encode(km.Query(port_index=0))), *((0, km.encode(msg)) for _name, msg in bad)]
            self._send_all("ide_km_query_then_key_prog_bad_" + "_".join(n for n, _ in bad), sid, requests)

    @rule()
    @recorded
    def ide_km_sweep(self) -> None:
        """From every live session (connecting one and keying the stream if none is): QUERY of port 0, then of
        the MaxPortIndex its QUERY_RESP names (validator Query.2: answered up to the maximum the device gave),
        then the stream disabled and K_SET_STOP of every slot of both key sets (KSetStop.1-4: each acked by
        the key owner) -- IDE-05 and IDE-04 judge the answers.

        Aimed: no drawn step sent a K_SET_STOP or a QUERY above port 0, so a device that dropped every
        K_SET_STOP, or claimed ports it then ignored, passed a whole ``ci`` run."""
        sessions = sorted({s for d in self.run._snap.devices for s in d.sessions})
        if not sessions:
            sid = self._do("spdm_connect", self.device.spdm_connect)
            if not isinstance(sid, int):
                return
            self._program_keys(sid, 0)
            sessions = [sid]
        send = self.device.handle_vendor_message
        for sid in sessions:
            raw = self._do("ide_km_query", send, 0, km.encode(km.Query(port_index=0)), session_id=sid)
            try:
                resp = km.decode(bytes(raw)) if isinstance(raw, bytes | bytearray) else None
            except StackError:
                resp = None
            if isinstance(resp, km.QueryResp) and resp.max_port_index > 0:
                top = km.Query(port_index=resp.max_port_index)
                self._do("ide_km_query_max_port", send, 0, km.encode(top), session_id=sid)
        self._do("ide_disable", self.device.ide_enable, False)  # over a socket: refused, and left as it is
        self.link.disable()
        stops = [
            (0, km.encode(km.KSetStop(stream_id=0, key_sub_stream=slot.to_byte(), port_index=0)))
            for slot in (
                km.KeySubStream(key_set=key_set, direction=d, sub_stream=sub)
                for key_set in km.KeySet
                for d in km.Direction
                for sub in km.SubStream
            )
        ]
        for sid in sessions:
            self._send_all("ide_km_k_set_stop_every_slot", sid, stops)

    @rule(fn=st.integers(0, 1))
    @recorded
    def stop_from_other_session(self, fn: int) -> None:
        """STOP to a CONFIG_LOCKED or RUN TDI (``fn``'s if it is, else the first that is; with none, ``fn``'s
        after a LOCK) over a live session that did not lock it -- opened first if there is none. The
        locking session owns the TDI while it lives (TDISP-17)."""
        rid = self.rids[fn % len(self.rids)]
        locked = self._tdis_in(td.TdiState.CONFIG_LOCKED) + self._tdis_in(td.TdiState.RUN)
        if not locked:
            self._bring_up(fn % len(self.rids), "locked", reuse=True)
            locked = self._tdis_in(td.TdiState.CONFIG_LOCKED)
            if not locked:
                return
        f = next((f for f in locked if f.rid == rid), locked[0])
        owner = f.locked_session if f.locked_session is not None else self.locked_by.get(f.rid)
        others = [sid for d in self.run._snap.devices for sid in d.sessions if sid != owner]
        sid = others[-1] if others else self._do("spdm_connect", self.device.spdm_connect)
        if isinstance(sid, int):
            note("STOP over a session other than the locking one")
            self._tdisp("STOP_INTERFACE", sid, td.StopInterface(interface_id=td.InterfaceId(function_id=f.rid)))

    # ------------------------------------------------------------------ IDE gaps (issue 14)
    @rule(fn=st.integers(0, 1))
    @recorded
    def replayed_tlp(self, fn: int) -> None:
        """An IDE-protected T=0 read of ``fn``'s registers, then the very same packet again (a replay on the
        wire): the device must take the first and refuse the second as an integrity failure (IDE-09). Over a
        Secure link, brought up first (session, keys) if there is none."""
        if self.link.state is not StreamState.SECURE:
            if (
                self._bring_up(fn % len(self.rids), "keyed", reuse=True) is None
                or self.link.state is not StreamState.SECURE
            ):
                return
        rid = self.rids[fn % len(self.rids)]
        base, _ = self.device.bar_range(rid)
        tlp = Tlp(
            kind="MRd", requester_id=rid, address=base, t_bit=False, payload=(4).to_bytes(4, "little"), stream_id=0
        )
        packet = self.link.protect(tlp)
        self._do("protected_register_read", self.device.receive, packet)
        note("the same protected TLP again (replayed)")
        self._do("protected_register_read_replayed", self.device.receive, packet)

    @rule(direction=st.sampled_from([0, 1]), sub=st.sampled_from([0, 1, 2]))
    @recorded
    def go_unprogrammed(self, direction: int, sub: int) -> None:
        """K_SET_GO of a slot of a key set this example never programmed, over every live session (one opened
        if there is none): no KEY_PROG filled it, so no K_GOSTOP_ACK may come back (IDE-11)."""
        fresh = [k for k in (1, 0) if k not in self._programmed_sets]
        if not fresh:
            return
        sessions = sorted({s for d in self.run._snap.devices for s in d.sessions})
        if not sessions:
            sid = self._do("spdm_connect", self.device.spdm_connect)
            if not isinstance(sid, int):
                return
            sessions = [sid]
        slot = km.KeySubStream(
            key_set=km.KeySet(fresh[0]), direction=km.Direction(direction), sub_stream=km.SubStream(sub)
        )
        msg = km.encode(km.KSetGo(stream_id=0, key_sub_stream=slot.to_byte(), port_index=0))
        for sid in sessions:
            self._do("k_set_go_unprogrammed", self.device.handle_vendor_message, 0, msg, session_id=sid)

    # ------------------------------------------------------------------ optional requests (issue 19)
    def _p2p_keys(self, sid: int) -> None:
        """KEY_PROG and K_SET_GO of key set 0 on the P2P stream :data:`P2P_STREAM` over ``sid``, then its enable
        bit: the machine plays the peer device's end (it keeps no copy: no TLP goes over the stream here)."""
        slots = [
            km.KeySubStream(key_set=km.KeySet.K0, direction=d, sub_stream=s) for d in km.Direction for s in km.SubStream
        ]
        requests = []
        for slot in slots:
            self._key_counter += 1
            key = self._key_counter.to_bytes(4, "little") * 8
            msg = km.KeyProg(stream_id=P2P_STREAM, key_sub_stream=slot.to_byte(), port_index=0, key=key, iv=IV)
            requests.append((0, km.encode(msg)))
        for slot in slots:
            requests.append(
                (0, km.encode(km.KSetGo(stream_id=P2P_STREAM, key_sub_stream=slot.to_byte(), port_index=0)))
            )
        self._vendor_batch(sid, requests)  # independent of each other's answers: at once where the device allows
        enable = getattr(self.device, "ide_p2p_enable", None)
        if enable is not None:
            try:
                enable(True)
            except StackError:  # no P2P stream (then BIND is refused, and the rules say whether rightly)
                return

    def _send(self, sid: int | None, msg: Any) -> Any:
        """One TDISP request inside a step (no step of its own); its decoded answer or None."""
        raw = self.device.handle_vendor_message(1, td.encode(msg), session_id=sid)
        try:
            return td.decode_response(raw) if raw is not None else None
        except StackError:
            return None

    @rule(leave=st.sampled_from(["stop", "flr", "poison"]))
    @recorded
    def p2p_streams(self, leave: str) -> None:
        """P2P stream binding on a TDI in RUN (brought there first if none is), over its locking session, as one
        step: the capabilities, a BIND of a stream never keyed and an UNBIND of one not bound (both must be
        refused: P2P-01, P2P-02), the P2P stream keyed and enabled, then BIND, BIND again, UNBIND, UNBIND again
        and BIND -- each judged. Then the TDI leaves RUN with the stream bound (``leave``: STOP, or an FLR or a
        poisoned TLP that moves it to ERROR) and must drop it (P2P-03). (A fourth choice kept the binding for
        later steps; with it a random ``dev`` run of 100 examples once never exercised P2P-03 on one profile,
        and an unexercised MUST rule fails the run.)

        Aimed and in one step: a BIND is legal only in RUN and needs the keys of the TDI's locking session,
        which random messages over random sessions almost never meet."""
        f = self._locked_tdi(True)
        if f is None:
            return
        sid, iid = f.locked_session, td.InterfaceId(function_id=f.rid)

        def go() -> None:
            self._send(sid, td.GetTdispCapabilities(interface_id=iid, tsm_caps=0))
            self._send(sid, td.BindP2PStream(interface_id=iid, p2p_stream_id=UNKEYED_STREAM))
            self._send(sid, td.UnbindP2PStream(interface_id=iid, p2p_stream_id=P2P_STREAM))
            self._p2p_keys(sid)
            for msg in (td.BindP2PStream, td.BindP2PStream, td.UnbindP2PStream, td.UnbindP2PStream, td.BindP2PStream):
                self._send(sid, msg(interface_id=iid, p2p_stream_id=P2P_STREAM))

        note("P2P stream bind/unbind cycle on a RUN TDI")
        self._do("p2p_stream_cycle", go)
        if leave == "stop":
            self._tdisp("STOP_INTERFACE", sid, td.StopInterface(interface_id=iid))
        elif leave in ("flr", "poison"):
            self._do(leave, getattr(self.device, leave), f.rid)

    def _read_report(self, sid: int, iid: td.InterfaceId) -> td.InterfaceReport | None:
        """The whole interface report, portion by portion, inside the current step (None if refused)."""
        buf, offset = b"", 0
        for _ in range(64):
            resp = self._send(sid, td.GetDeviceInterfaceReport(interface_id=iid, offset=offset, length=0x400))
            if not isinstance(resp, td.DeviceInterfaceReport) or not resp.portion:
                return None
            buf += resp.portion
            offset += len(resp.portion)
            if not resp.remainder_length:
                try:
                    return td.InterfaceReport.decode(buf)
                except StackError:
                    return None
        return None

    @rule()
    @recorded
    def mmio_attribute(self) -> None:
        """SET_MMIO_ATTRIBUTE on a TDI in RUN (brought there first if none is), as one step: the report is read,
        the last page of an updatable range (the last range if none says so) is made non-TEE memory, the report
        read again, the page made TEE memory again, the report read again, and a range past every reported one
        sent: each judged (MMIOATTR-01: a valid change succeeds and shows in the report, a bad range gets
        INVALID_REQUEST). Last a VDM of an unknown vendor (VDM-01) and a START, illegal in RUN (TDISP-01)."""
        f = self._locked_tdi(True)
        if f is None:
            return
        sid, iid = f.locked_session, td.InterfaceId(function_id=f.rid)

        def go() -> None:
            self._send(sid, td.GetTdispCapabilities(interface_id=iid, tsm_caps=0))
            report = self._read_report(sid, iid)
            if report is None or not report.mmio_ranges:
                return
            ranges = report.mmio_ranges
            r = next((r for r in ranges if r.attributes & td.RangeAttr.IS_MEM_ATTR_UPDATABLE), ranges[-1])
            page = r.first_page + (r.number_of_pages - 1) * 4096 if r.number_of_pages else r.first_page
            for attr in (r.attributes | td.RangeAttr.IS_NON_TEE_MEM, r.attributes & ~td.RangeAttr.IS_NON_TEE_MEM):
                one = td.MmioRange(first_page=page, number_of_pages=1, attributes=int(attr), range_id=r.range_id)
                self._send(sid, td.SetMmioAttribute(interface_id=iid, mmio_range=one))
                self._read_report(sid, iid)
            last = max(ranges, key=lambda x: x.first_page)
            past = (last.first_page + (last.number_of_pages + 16) * 4096) % 2**64 & ~0xFFF
            bad = td.MmioRange(first_page=past, number_of_pages=1, attributes=r.attributes, range_id=r.range_id)
            self._send(sid, td.SetMmioAttribute(interface_id=iid, mmio_range=bad))
            # and, to a TDI in RUN, which random draws seldom meet: a vendor request of an unknown vendor (VDM-01)
            # and START once more, illegal in RUN (TDISP-01)
            self._send(sid, td.VdmRequest(interface_id=iid, registry_id=0, vendor_id=VENDOR_PROBES[1], payload=b""))
            self._send(sid, td.StartInterface(interface_id=iid, start_interface_nonce=bytes(32)))

        note("SET_MMIO_ATTRIBUTE on a RUN TDI")
        self._do("mmio_attribute_cycle", go)

    @rule(fn=st.integers(0, 1))
    @recorded
    def optional_requests_any_state(self, fn: int) -> None:
        """BIND_P2P_STREAM, UNBIND_P2P_STREAM, SET_MMIO_ATTRIBUTE and vendor-defined requests to ``fn``'s TDI in
        whatever state it is, over its locking session if it has one (else the newest live session, one opened
        if there is none): outside RUN the first three must get INVALID_INTERFACE_STATE and change nothing
        (TDISP-01); in RUN the rules above judge them. The VDMs (legal in every state) go to the vendor protocol
        of :data:`VENDOR_PROBES`' first vendor, to one no device here speaks, and to the CXL registry: each must
        get a VDM_RESPONSE naming its vendor or a well-formed TDISP_ERROR (VDM-01). The capabilities first, so
        the rules know what the device serves."""
        rid = self.rids[fn % len(self.rids)]
        f = next((f for d in self.run._snap.devices for f in d.functions if f.rid == rid), None)
        live = [s for d in self.run._snap.devices for s in d.sessions]
        sid = getattr(f, "locked_session", None) or self.locked_by.get(rid) or (max(live) if live else None)
        if sid is None or sid not in live:
            sid = max(live) if live else self._connect()
        if sid is None:
            return
        iid = td.InterfaceId(function_id=rid)
        try:
            base, _ = self.device.bar_range(rid)
        except StackError:  # a device behind a socket does not show its BARs: any page will do out of RUN
            base = 0
        page = td.MmioRange(first_page=base + 4096, number_of_pages=1, attributes=0, range_id=0)

        def go() -> None:
            for msg in (
                td.GetTdispCapabilities(interface_id=iid, tsm_caps=0),
                td.BindP2PStream(interface_id=iid, p2p_stream_id=P2P_STREAM),
                td.UnbindP2PStream(interface_id=iid, p2p_stream_id=P2P_STREAM),
                td.SetMmioAttribute(interface_id=iid, mmio_range=page),
                *(
                    td.VdmRequest(interface_id=iid, registry_id=registry, vendor_id=vendor, payload=b"probe")
                    for registry, vendor in ((0, VENDOR_PROBES[0]), (0, VENDOR_PROBES[1]), (1, VENDOR_PROBES[1]))
                ),
            ):
                self._send(sid, msg)

        self._do(f"optional_requests_{getattr(getattr(f, 'tdi_state', None), 'name', 'unknown').lower()}", go)
