"""IDE_KM messages on the wire (PCIe §6.33.3, libspdm pci_idekm.h): bytes <-> frozen attrs values.

Layouts (little-endian; the 1-byte PCI protocol ID that precedes them in SPDM is the transport's)::

    QUERY          object_id, reserved, port_index                                     3 bytes
    QUERY_RESP     object_id, reserved, port_index, dev_func_num, bus_num, segment,
                   max_port_index, IDE register words (u32 each)                        7 + 4n
    KEY_PROG       object_id, reserved[2], stream_id, reserved, key_sub_stream,
                   port_index, key (8 DW = 32 B), IFV (2 DW = 8 B)                      47
    KP_ACK         object_id, reserved[2], stream_id, status, key_sub_stream, port_index 7
    K_SET_GO / K_SET_STOP / K_GOSTOP_ACK
                   object_id, reserved[2], stream_id, reserved, key_sub_stream,
                   port_index                                                           7

key_sub_stream: bit 0 key set (K0/K1), bit 1 direction (Rx 0 / Tx 1), bits 7:4 sub-stream
(PR 0, NPR 1, CPL 2). Key and IFV bytes are kept exactly as sent.
"""

from __future__ import annotations

import enum
import struct
from typing import Any, ClassVar

import attrs

from reference_impl.errors import CodecError

__all__ = ["ALL_SLOTS", "Direction", "IdeKmDecodeError", "KGoStopAck", "KSetGo", "KSetStop", "KeyProg", "KeySet",
           "KeySubStream", "KpAck", "KpAckStatus", "ObjectId", "Query", "QueryResp", "SubStream", "decode", "encode"]


class ObjectId(enum.IntEnum):
    QUERY = 0x00
    QUERY_RESP = 0x01
    KEY_PROG = 0x02
    KP_ACK = 0x03
    K_SET_GO = 0x04
    K_SET_STOP = 0x05
    K_GOSTOP_ACK = 0x06


class KpAckStatus(enum.IntEnum):
    SUCCESS = 0
    INCORRECT_LENGTH = 1
    UNSUPPORTED_PORT_INDEX = 2
    UNSUPPORTED_VALUE = 3
    UNSPECIFIED_FAILURE = 4


class KeySet(enum.IntEnum):
    K0 = 0
    K1 = 1


class Direction(enum.IntEnum):
    RX = 0
    TX = 1


class SubStream(enum.IntEnum):
    PR = 0
    NPR = 1
    CPL = 2


class IdeKmDecodeError(CodecError):
    """Bytes that are not an IDE_KM message; ``partial`` holds the fields that could be read."""

    def __init__(self, message: str, *, code: int, object_id: int | None = None,
                 partial: dict[str, int] | None = None) -> None:
        super().__init__(message, code=code)
        self.object_id = object_id
        self.partial = partial or {}


@attrs.frozen
class KeySubStream:
    key_set: KeySet
    direction: Direction
    sub_stream: SubStream

    def to_byte(self) -> int:
        return int(self.key_set) | int(self.direction) << 1 | int(self.sub_stream) << 4

    @classmethod
    def from_byte(cls, b: int) -> KeySubStream:
        if b & 0x0C or (b >> 4) > 2:
            raise CodecError(f"key/sub-stream byte {b:#04x}: reserved bits or sub-stream > 2",
                             code=KpAckStatus.UNSUPPORTED_VALUE)
        return cls(KeySet(b & 1), Direction(b >> 1 & 1), SubStream(b >> 4))

    def __str__(self) -> str:
        return f"{self.key_set.name}/{self.direction.name}/{self.sub_stream.name}"


ALL_SLOTS: tuple[KeySubStream, ...] = tuple(KeySubStream(k, d, s) for k in KeySet for d in Direction for s in SubStream)


def _as_tuple(values: Any) -> tuple[int, ...]:
    return tuple(values)


def _u8(inst: Any, a: attrs.Attribute[Any], v: Any) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 0xFF:
        raise CodecError(f"{type(inst).__name__}.{a.name}: expected an unsigned 8-bit integer, got {v!r}")


def _len(n: int) -> Any:
    def check(inst: Any, a: attrs.Attribute[Any], v: Any) -> None:
        if not isinstance(v, bytes) or len(v) != n:
            raise CodecError(f"{type(inst).__name__}.{a.name}: expected {n} bytes, got {v!r:.40}")

    return check


_SHORT = struct.Struct("<BHBBBB")  # object_id, reserved, stream_id, reserved|status, key_sub_stream, port_index


@attrs.frozen(kw_only=True)
class Query:
    object_id: ClassVar[int] = ObjectId.QUERY
    port_index: int = attrs.field(validator=_u8)


@attrs.frozen(kw_only=True)
class QueryResp:
    object_id: ClassVar[int] = ObjectId.QUERY_RESP
    port_index: int = attrs.field(validator=_u8)
    dev_func_num: int = attrs.field(validator=_u8)
    bus_num: int = attrs.field(validator=_u8)
    segment: int = attrs.field(validator=_u8)
    max_port_index: int = attrs.field(validator=_u8)
    ide_registers: tuple[int, ...] = attrs.field(converter=_as_tuple, default=())


@attrs.frozen(kw_only=True)
class KeyProg:
    object_id: ClassVar[int] = ObjectId.KEY_PROG
    stream_id: int = attrs.field(validator=_u8)
    key_sub_stream: int = attrs.field(validator=_u8)
    port_index: int = attrs.field(validator=_u8)
    key: bytes = attrs.field(validator=_len(32), repr=False)
    iv: bytes = attrs.field(validator=_len(8), repr=False)


@attrs.frozen(kw_only=True)
class KpAck:
    object_id: ClassVar[int] = ObjectId.KP_ACK
    stream_id: int = attrs.field(validator=_u8)
    status: int = attrs.field(validator=_u8)
    key_sub_stream: int = attrs.field(validator=_u8)
    port_index: int = attrs.field(validator=_u8)


@attrs.frozen(kw_only=True)
class KSetGo:
    object_id: ClassVar[int] = ObjectId.K_SET_GO
    stream_id: int = attrs.field(validator=_u8)
    key_sub_stream: int = attrs.field(validator=_u8)
    port_index: int = attrs.field(validator=_u8)


@attrs.frozen(kw_only=True)
class KSetStop:
    object_id: ClassVar[int] = ObjectId.K_SET_STOP
    stream_id: int = attrs.field(validator=_u8)
    key_sub_stream: int = attrs.field(validator=_u8)
    port_index: int = attrs.field(validator=_u8)


@attrs.frozen(kw_only=True)
class KGoStopAck:
    object_id: ClassVar[int] = ObjectId.K_GOSTOP_ACK
    stream_id: int = attrs.field(validator=_u8)
    key_sub_stream: int = attrs.field(validator=_u8)
    port_index: int = attrs.field(validator=_u8)


IdeKmMessage = Query | QueryResp | KeyProg | KpAck | KSetGo | KSetStop | KGoStopAck


def encode(msg: Any) -> bytes:
    if isinstance(msg, Query):
        return bytes([ObjectId.QUERY, 0, msg.port_index])
    if isinstance(msg, QueryResp):
        head = bytes([ObjectId.QUERY_RESP, 0, msg.port_index, msg.dev_func_num, msg.bus_num, msg.segment,
                      msg.max_port_index])
        return head + b"".join(struct.pack("<I", w & 0xFFFFFFFF) for w in msg.ide_registers)
    if isinstance(msg, KeyProg):
        return _SHORT.pack(ObjectId.KEY_PROG, 0, msg.stream_id, 0, msg.key_sub_stream, msg.port_index) + msg.key \
            + msg.iv
    if isinstance(msg, KpAck):
        return _SHORT.pack(ObjectId.KP_ACK, 0, msg.stream_id, msg.status, msg.key_sub_stream, msg.port_index)
    if isinstance(msg, KSetGo | KSetStop | KGoStopAck):
        return _SHORT.pack(msg.object_id, 0, msg.stream_id, 0, msg.key_sub_stream, msg.port_index)
    raise CodecError(f"not an IDE_KM message: {type(msg).__name__}")


def decode(data: bytes) -> Any:
    """Any IDE_KM message from its bytes; :class:`IdeKmDecodeError` with the readable fields otherwise."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise IdeKmDecodeError(f"IDE_KM message must be bytes, got {type(data).__name__}",
                               code=KpAckStatus.INCORRECT_LENGTH)
    data = bytes(data)
    if not data:
        raise IdeKmDecodeError("empty IDE_KM message", code=KpAckStatus.INCORRECT_LENGTH)
    oid = data[0]
    partial: dict[str, int] = {}
    if oid in (ObjectId.KEY_PROG, ObjectId.KP_ACK, ObjectId.K_SET_GO, ObjectId.K_SET_STOP, ObjectId.K_GOSTOP_ACK):
        for name, off in (("stream_id", 3), ("key_sub_stream", 5), ("port_index", 6)):
            if len(data) > off:
                partial[name] = data[off]

    def fail(why: str, code: int = KpAckStatus.INCORRECT_LENGTH) -> IdeKmDecodeError:
        return IdeKmDecodeError(why, code=code, object_id=oid, partial=partial)

    if oid == ObjectId.QUERY:
        if len(data) != 3:
            raise fail(f"QUERY is 3 bytes, got {len(data)}")
        return Query(port_index=data[2])
    if oid == ObjectId.QUERY_RESP:
        if len(data) < 7 or (len(data) - 7) % 4:
            raise fail(f"QUERY_RESP is 7 bytes plus whole register words, got {len(data)}")
        words = struct.unpack(f"<{(len(data) - 7) // 4}I", data[7:])
        return QueryResp(port_index=data[2], dev_func_num=data[3], bus_num=data[4], segment=data[5],
                         max_port_index=data[6], ide_registers=words)
    if oid == ObjectId.KEY_PROG:
        if len(data) != 47:
            raise fail(f"KEY_PROG is 47 bytes, got {len(data)}")
        _o, _r, sid, _r2, kss, port = _SHORT.unpack_from(data)
        return KeyProg(stream_id=sid, key_sub_stream=kss, port_index=port, key=data[7:39], iv=data[39:47])
    if oid in (ObjectId.KP_ACK, ObjectId.K_SET_GO, ObjectId.K_SET_STOP, ObjectId.K_GOSTOP_ACK):
        if len(data) != 7:
            raise fail(f"{ObjectId(oid).name} is 7 bytes, got {len(data)}")
        _o, _r, sid, mid, kss, port = _SHORT.unpack(data)
        if oid == ObjectId.KP_ACK:
            return KpAck(stream_id=sid, status=mid, key_sub_stream=kss, port_index=port)
        cls: Any = {int(ObjectId.K_SET_GO): KSetGo, int(ObjectId.K_SET_STOP): KSetStop,
                    int(ObjectId.K_GOSTOP_ACK): KGoStopAck}[oid]
        return cls(stream_id=sid, key_sub_stream=kss, port_index=port)
    raise fail(f"unknown IDE_KM object ID {oid:#04x}", KpAckStatus.UNSUPPORTED_VALUE)
