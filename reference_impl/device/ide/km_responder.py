"""The device side of IDE_KM: answers QUERY, KEY_PROG, K_SET_GO and K_SET_STOP.

Session binding (PCIe §11.4.5; tee-io-validator SpdmSession.1/.2): keys are accepted from one SPDM
session at a time. The first session that programs a key owns key programming; IDE_KM from any other
session is dropped (no response) while the owner lives, and messages outside a secure session are
dropped too. When the owner session ends, every stream keyed over it goes Insecure.

A message that is refused never changes state. Status choices follow the validator's cases:
truncated KEY_PROG -> INCORRECT_LENGTH echoing what could be read (KeyProg.2); port beyond
MaxPortIndex -> UNSUPPORTED_PORT_INDEX (KeyProg.3); bad sub-stream (KeyProg.4), IFV other than
{0, 1} (KeyProg.5) or unknown stream (KeyProg.6) -> UNSUPPORTED_VALUE. K_SET_GO on a slot with no
key is answered with K_GOSTOP_ACK but changes nothing (a requester learns from the stream state).
"""

from __future__ import annotations

from reference_impl.device.ide import km_codec as km
from reference_impl.device.ide.stream import IdeStreamEndpoint
from reference_impl.errors import CodecError, InvalidState

__all__ = ["IdeKmResponder"]

EXPECTED_IFV = (0).to_bytes(4, "little") + (1).to_bytes(4, "little")


class IdeKmResponder:
    def __init__(self, *, ports: dict[int, dict[int, IdeStreamEndpoint]], dev_func_num: int, bus_num: int,
                 segment: int, max_port_index: int) -> None:
        self.ports = ports
        self.dev_func_num = dev_func_num
        self.bus_num = bus_num
        self.segment = segment
        self.max_port_index = max_port_index
        self.owner_session: int | None = None
        self._keyed_by: dict[tuple[int, int], int] = {}  # (port, stream) -> session that keyed it

    def session_ended(self, session_id: int) -> None:
        for (port, stream), sid in list(self._keyed_by.items()):
            if sid == session_id:
                self.ports[port][stream].mark_insecure(f"SPDM session {session_id} ended")
                del self._keyed_by[(port, stream)]
        if self.owner_session == session_id:
            self.owner_session = None

    def handle(self, data: bytes, *, session_id: int | None) -> bytes | None:
        if session_id is None or (self.owner_session is not None and session_id != self.owner_session):
            return None  # not ours to answer (PCIe §11.4.5)
        try:
            msg = km.decode(data)
        except km.IdeKmDecodeError as exc:
            return self._refuse(exc)
        if isinstance(msg, km.Query):
            if msg.port_index > self.max_port_index:
                return None  # no such port: the validator's Query cases never send one; dropped
            return km.encode(km.QueryResp(port_index=msg.port_index, dev_func_num=self.dev_func_num,
                                          bus_num=self.bus_num, segment=self.segment,
                                          max_port_index=self.max_port_index, ide_registers=(0x1, 0x0)))
        if isinstance(msg, km.KeyProg):
            return km.encode(self._key_prog(msg, session_id))
        if isinstance(msg, km.KSetGo | km.KSetStop):
            return self._go_stop(msg, session_id)
        return None  # responses sent to a responder are not answered

    def _refuse(self, exc: km.IdeKmDecodeError) -> bytes | None:
        if exc.object_id != km.ObjectId.KEY_PROG:
            return None
        p = exc.partial
        status = int(exc.code or km.KpAckStatus.INCORRECT_LENGTH)
        return km.encode(km.KpAck(stream_id=p.get("stream_id", 0), status=status,
                                  key_sub_stream=p.get("key_sub_stream", 0), port_index=p.get("port_index", 0)))

    def _ack(self, msg: km.KeyProg, status: km.KpAckStatus) -> km.KpAck:
        return km.KpAck(stream_id=msg.stream_id, status=status, key_sub_stream=msg.key_sub_stream,
                        port_index=msg.port_index)

    def _key_prog(self, msg: km.KeyProg, session_id: int) -> km.KpAck:
        if msg.port_index > self.max_port_index or msg.port_index not in self.ports:
            return self._ack(msg, km.KpAckStatus.UNSUPPORTED_PORT_INDEX)
        stream = self.ports[msg.port_index].get(msg.stream_id)
        if stream is None:
            return self._ack(msg, km.KpAckStatus.UNSUPPORTED_VALUE)
        try:
            slot = km.KeySubStream.from_byte(msg.key_sub_stream)
        except CodecError:
            return self._ack(msg, km.KpAckStatus.UNSUPPORTED_VALUE)
        if msg.iv != EXPECTED_IFV:
            return self._ack(msg, km.KpAckStatus.UNSUPPORTED_VALUE)
        stream.program_key(slot, msg.key, msg.iv)
        self.owner_session = session_id
        self._keyed_by[(msg.port_index, msg.stream_id)] = session_id
        return self._ack(msg, km.KpAckStatus.SUCCESS)

    def _go_stop(self, msg: km.KSetGo | km.KSetStop, session_id: int) -> bytes | None:
        ack = km.KGoStopAck(stream_id=msg.stream_id, key_sub_stream=msg.key_sub_stream, port_index=msg.port_index)
        stream = self.ports.get(msg.port_index, {}).get(msg.stream_id)
        if stream is None:
            return km.encode(ack)
        try:
            slot = km.KeySubStream.from_byte(msg.key_sub_stream)
        except CodecError:
            return km.encode(ack)
        if isinstance(msg, km.KSetGo):
            try:
                stream.go(slot)
            except InvalidState:
                pass  # no key in that slot: acknowledged, nothing changes
        else:
            stream.stop(slot)
        return km.encode(ack)
