"""The device side of IDE_KM: answers QUERY, KEY_PROG, K_SET_GO and K_SET_STOP for one DSM.

Sources: PCIe r6.2 §6.33.3 (IDE_KM), §11.4.5 (keys over the TDISP session), libspdm ``pci_idekm.h``,
spdm-emu's sample IDE_KM responder, and the tee-io-validator cases (teeio-validator-cases.md §3).

Session binding (PCIe §11.4.5; validator SpdmSession.1/.2; rules-seed E.70): IDE_KM is accepted from one
SPDM session at a time. The first session whose KEY_PROG succeeds owns key programming; while it lives,
every IDE_KM message from another session -- QUERY included -- is dropped (no response). Messages
outside a secure session (``session_id`` None) are dropped too. When the owner session ends
(:meth:`IdeKmResponder.session_ended`) ownership is released and every stream keyed over it goes
Insecure with their keys discarded, so they need fresh KEY_PROGs (a K_SET_GO of an old key is then a
GO on an empty slot, see below).

Answers, and the choices made where the spec leaves room:

* Malformed KEY_PROG -> KP_ACK with the decoder's status (INCORRECT_LENGTH for a wrong length,
  validator KeyProg.2), echoing stream / key_sub_stream / port where they could be read (0 otherwise).
* KEY_PROG checks, in order: port beyond MaxPortIndex -> UNSUPPORTED_PORT_INDEX (KeyProg.3); stream not
  configured on that port -> UNSUPPORTED_VALUE (KeyProg.6); bad sub-stream or reserved bits ->
  UNSUPPORTED_VALUE (KeyProg.4); IFV other than the initial value 1, i.e. IV words other than {0, 1} ->
  UNSUPPORTED_VALUE (KeyProg.5: the validator sends second words 2..7 and expects this; the doc would
  also refuse 0). Every refusal leaves the device as it was.
* K_SET_GO / K_SET_STOP answer K_GOSTOP_ACK echoing stream, key_sub_stream and port (KSetGo.x,
  KSetStop.x). K_GOSTOP_ACK has no status field, so an ACK can only mean "done"; hence:

  - K_SET_GO on a slot with no key is **dropped** (no response, nothing changes): acknowledging it would
    claim a key set is live when none is, and a requester (the TSM) learns of the refusal at once
    rather than from a later Insecure stream. spdm-emu's responder likewise sends no K_GOSTOP_ACK when
    its device library refuses a GO (the handler returns an error status instead).
  - K_SET_STOP on an empty or inactive slot is acknowledged: the requested end state (that slot not in
    use) already holds, so the ACK is truthful and STOP stays idempotent, as teardown paths expect.
  - Malformed GO/STOP (wrong length, unknown port or stream, bad sub-stream) is dropped; spdm-emu
    sends no K_GOSTOP_ACK for these either.

* QUERY for a port beyond MaxPortIndex is dropped (no object can say "no such port"; answering would
  break the QUERY_RESP invariant MaxPortIndex >= PortIndex that the validator's Query cases check).
* Responses (QUERY_RESP, KP_ACK, K_GOSTOP_ACK) and unknown object IDs sent as requests are dropped.
* KEY_PROG onto a slot whose set is active is accepted and takes effect at once (the validator never
  exercises it); the other end, still on the old key, will then fail integrity -- the host's mistake.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from teeio_conformance.contract import ide_km as km
from teeio_conformance.contract.errors import CodecError, InvalidArgument
from teeio_conformance.reference_impl.device.ide.stream import IdeStreamEndpoint, StreamSnapshot

__all__ = ["EXPECTED_IFV", "IDE_CAP_IDE_KM", "IDE_CAP_SELECTIVE", "IdeKmResponder", "IdeKmSnapshot"]

EXPECTED_IFV = (0).to_bytes(4, "little") + (1).to_bytes(4, "little")  # IFV words {0, 1}: IFV = 1
# IDE Capability register bits (PCIe §7.9.26; Linux include/uapi/linux/pci_regs.h PCI_IDE_CAP_*)
IDE_CAP_SELECTIVE = 1 << 1
IDE_CAP_IDE_KM = 1 << 6
_IDE_CAP_SEL_STREAMS_SHIFT = 16  # number of selective streams supported, minus one (bits 23:16)
# decoder codes a refusal may carry (never SUCCESS: a malformed KEY_PROG is never acknowledged as done)
_FAILURE_STATUS = {int(s): s for s in km.KpAckStatus if s is not km.KpAckStatus.SUCCESS}


@attrs.frozen(kw_only=True)
class IdeKmSnapshot:
    """Plain-data view: who owns key programming, which session keyed which stream, every stream end."""

    owner_session: int | None
    keyed_by: tuple[tuple[int, int, int], ...]  # (port, stream, session)
    streams: tuple[tuple[int, StreamSnapshot], ...]  # (port, snapshot)


class IdeKmResponder:
    """IDE_KM for device function 0 of one DSM; ``ports`` maps port index -> stream ID -> stream end."""

    def __init__(
        self,
        *,
        ports: Mapping[int, Mapping[int, IdeStreamEndpoint]],
        dev_func_num: int,
        bus_num: int,
        segment: int,
        max_port_index: int,
        ide_registers: tuple[int, ...] | None = None,
    ) -> None:
        for name, value in (
            ("dev_func_num", dev_func_num),
            ("bus_num", bus_num),
            ("segment", segment),
            ("max_port_index", max_port_index),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFF:
                raise InvalidArgument(f"IdeKmResponder {name}: expected a byte 0..255, got {value!r}")
        self.ports: dict[int, dict[int, IdeStreamEndpoint]] = {p: dict(s) for p, s in ports.items()}
        for port, streams in self.ports.items():
            if not 0 <= port <= max_port_index:
                raise InvalidArgument(f"IdeKmResponder ports: port {port} is beyond max_port_index {max_port_index}")
            for sid, end in streams.items():
                if end.stream_id != sid:
                    raise InvalidArgument(
                        f"IdeKmResponder ports[{port}]: stream {sid} maps to an end of stream {end.stream_id}"
                    )
        self.dev_func_num = dev_func_num
        self.bus_num = bus_num
        self.segment = segment
        self.max_port_index = max_port_index
        self.ide_registers = self._default_registers() if ide_registers is None else tuple(ide_registers)
        self.owner_session: int | None = None  # plain attribute: mutants reassign it
        self._keyed_by: dict[tuple[int, int], int] = {}  # (port, stream) -> session that keyed it

    def _default_registers(self) -> tuple[int, int]:
        """IDE Capability (selective streams, IDE_KM, AES-GCM-256, stream count - 1) and IDE Control (0)."""
        count = max((len(s) for s in self.ports.values()), default=1)
        cap = IDE_CAP_SELECTIVE | IDE_CAP_IDE_KM | (max(count, 1) - 1) << _IDE_CAP_SEL_STREAMS_SHIFT
        return (cap, 0)

    # ------------------------------------------------------------------ session binding
    def session_ended(self, session_id: int) -> None:
        """The SPDM session ended: it no longer owns key programming, and the streams keyed over it go
        Insecure with their keys discarded -- keys never outlive the session that set them (§11.4.5)."""
        for (port, stream), sid in list(self._keyed_by.items()):
            if sid == session_id:
                end = self.ports[port][stream]
                end.mark_insecure(f"SPDM session {session_id} ended")
                for slot in km.ALL_SLOTS:
                    end.stop(slot)
                del self._keyed_by[(port, stream)]
        if self.owner_session == session_id:
            self.owner_session = None

    # ------------------------------------------------------------------ dispatch
    def handle(self, data: bytes, *, session_id: int | None) -> bytes | None:
        """One IDE_KM request in, its encoded response out; None when the message is dropped."""
        if session_id is None or self.owner_session not in (None, session_id):
            return None  # PCIe §11.4.5: only the owner session's IDE_KM is answered
        try:
            msg = km.decode(data)
        except km.IdeKmDecodeError as exc:
            return self._refuse_undecodable(exc)
        except CodecError as exc:  # a value some message type refused: same answer, nothing echoed
            oid = data[0] if isinstance(data, bytes | bytearray) and data else None
            return self._refuse_undecodable(km.IdeKmDecodeError(str(exc), code=exc.code or 0, object_id=oid))
        if isinstance(msg, km.Query):
            return self._query(msg)
        if isinstance(msg, km.KeyProg):
            return km.encode(self._key_prog(msg, session_id))
        if isinstance(msg, km.KSetGo | km.KSetStop):
            return self._go_stop(msg)
        return None  # a response object sent as a request

    def _refuse_undecodable(self, exc: km.IdeKmDecodeError) -> bytes | None:
        if exc.object_id != km.ObjectId.KEY_PROG:
            return None
        status = _FAILURE_STATUS.get(-1 if exc.code is None else exc.code, km.KpAckStatus.UNSPECIFIED_FAILURE)
        p = exc.partial
        return km.encode(
            km.KpAck(
                stream_id=p.get("stream_id", 0),
                status=status,
                key_sub_stream=p.get("key_sub_stream", 0),
                port_index=p.get("port_index", 0),
            )
        )

    # ------------------------------------------------------------------ QUERY
    def _query(self, msg: km.Query) -> bytes | None:
        if msg.port_index > self.max_port_index:
            return None
        return km.encode(
            km.QueryResp(
                port_index=msg.port_index,
                dev_func_num=self.dev_func_num,
                bus_num=self.bus_num,
                segment=self.segment,
                max_port_index=self.max_port_index,
                ide_registers=self.ide_registers,
            )
        )

    # ------------------------------------------------------------------ KEY_PROG
    def _key_prog(self, msg: km.KeyProg, session_id: int) -> km.KpAck:
        status = self._key_prog_status(msg)
        if status is km.KpAckStatus.SUCCESS:
            slot = km.KeySubStream.from_byte(msg.key_sub_stream)
            self.ports[msg.port_index][msg.stream_id].program_key(slot, msg.key, msg.iv)
            self.owner_session = session_id
            self._keyed_by[(msg.port_index, msg.stream_id)] = session_id
        return km.KpAck(
            stream_id=msg.stream_id,
            status=status,
            key_sub_stream=msg.key_sub_stream,
            port_index=msg.port_index,
        )

    def _key_prog_status(self, msg: km.KeyProg) -> km.KpAckStatus:
        """The KP_ACK status for a decoded KEY_PROG (validator KeyProg.3-.6), checked before any change."""
        if msg.port_index > self.max_port_index:
            return km.KpAckStatus.UNSUPPORTED_PORT_INDEX
        if self._stream(msg.port_index, msg.stream_id) is None:
            return km.KpAckStatus.UNSUPPORTED_VALUE
        try:
            km.KeySubStream.from_byte(msg.key_sub_stream)
        except CodecError:
            return km.KpAckStatus.UNSUPPORTED_VALUE
        if msg.iv != EXPECTED_IFV:
            return km.KpAckStatus.UNSUPPORTED_VALUE
        return km.KpAckStatus.SUCCESS

    def _stream(self, port: int, stream_id: int) -> IdeStreamEndpoint | None:
        return self.ports.get(port, {}).get(stream_id)

    # ------------------------------------------------------------------ K_SET_GO / K_SET_STOP
    def _go_stop(self, msg: km.KSetGo | km.KSetStop) -> bytes | None:
        stream = self._stream(msg.port_index, msg.stream_id)
        if stream is None:
            return None
        try:
            slot = km.KeySubStream.from_byte(msg.key_sub_stream)
        except CodecError:
            return None
        if isinstance(msg, km.KSetGo):
            if not stream.is_programmed(slot):
                return None  # nothing to make live: dropped, see the module docstring
            stream.go(slot)
        else:
            stream.stop(slot)
        return km.encode(
            km.KGoStopAck(stream_id=msg.stream_id, key_sub_stream=msg.key_sub_stream, port_index=msg.port_index)
        )

    # ------------------------------------------------------------------ views
    def snapshot(self) -> IdeKmSnapshot:
        return IdeKmSnapshot(
            owner_session=self.owner_session,
            keyed_by=tuple(sorted((p, s, sid) for (p, s), sid in self._keyed_by.items())),
            streams=tuple((p, self.ports[p][s].snapshot()) for p in sorted(self.ports) for s in sorted(self.ports[p])),
        )
