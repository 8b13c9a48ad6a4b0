"""IDE_KM messages on the wire: bytes <-> frozen attrs values.

Sources: PCIe Base r6.2 §6.33.3 (IDE_KM) and DMTF libspdm ``include/industry_standard/pci_idekm.h``
(@064203de). The bytes handled here start with the IDE_KM Object ID; the 1-byte PCI protocol ID (0x00)
that precedes them inside an SPDM VENDOR_DEFINED message belongs to the transport. Layouts (offsets in
bytes, multi-byte fields little-endian)::

    QUERY          0 object_id, 1 reserved, 2 port_index                                    3 bytes
    QUERY_RESP     0 object_id, 1 reserved, 2 port_index, 3 dev_func_num, 4 bus_num,
                   5 segment, 6 max_port_index, 7.. IDE capability/register words (u32)     7 + 4n
    KEY_PROG       0 object_id, 1 reserved[2], 3 stream_id, 4 reserved, 5 key_sub_stream,
                   6 port_index, 7 KEY (8 DW = 32 B), 39 IFV (2 DW = 8 B)                  47 bytes
    KP_ACK         0 object_id, 1 reserved[2], 3 stream_id, 4 status, 5 key_sub_stream,
                   6 port_index                                                             7 bytes
    K_SET_GO / K_SET_STOP / K_GOSTOP_ACK
                   0 object_id, 1 reserved[2], 3 stream_id, 4 reserved, 5 key_sub_stream,
                   6 port_index                                                             7 bytes

key_sub_stream: bit 0 key set (K0/K1), bit 1 direction (Rx 0 / Tx 1), bits 7:4 sub-stream (PR 0, NPR 1,
CPL 2); bits 3:2 reserved. Messages keep it as the *raw byte*, so a malformed value can be carried,
decoded and echoed in the answer; :meth:`KeySubStream.from_byte` is where it is judged.

Key and IFV byte order (tee-io-validator ``doc/key_byte_order.md``): the message carries KEY as DW7..DW0
and IFV as DW1, DW0, each DWORD little-endian. ``KeyProg.key`` / ``KeyProg.iv`` hold the wire bytes
exactly as sent; :func:`key_to_wire` / :func:`key_from_wire` convert to and from the AES-GCM key in its
natural (PCIe Appendix L) order, and :attr:`KeyProg.ifv` / :func:`ifv_to_wire` handle the IFV value.

Values that do not fit their field are refused when built: validators raise
:class:`~teeio_conformance.contract.errors.CodecError` with ``code=KpAckStatus.UNSUPPORTED_VALUE``, naming the field.
"""

from __future__ import annotations

import enum
import functools
import struct
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import attrs

from teeio_conformance.contract.errors import CodecError

__all__ = [
    "ALL_SLOTS",
    "IV_LEN",
    "KEY_LEN",
    "KEY_PROG_LEN",
    "OBJECT_TYPES",
    "Direction",
    "IdeKmDecodeError",
    "IdeKmMessage",
    "KGoStopAck",
    "KSetGo",
    "KSetStop",
    "KeyProg",
    "KeySet",
    "KeySubStream",
    "KpAck",
    "KpAckStatus",
    "ObjectId",
    "Query",
    "QueryResp",
    "SubStream",
    "decode",
    "encode",
    "ifv_to_wire",
    "key_from_wire",
    "key_to_wire",
]

KEY_LEN = 32  # AES-256 key, 8 DW
IV_LEN = 8  # IFV, 2 DW
_STREAM_HEAD = struct.Struct("<BxxBBBB")  # object_id, reserved[2], stream_id, status|reserved, kss, port
KEY_PROG_LEN = _STREAM_HEAD.size + KEY_LEN + IV_LEN  # 47
_QUERY_LEN = 3
_QUERY_RESP_HEAD = 7


class ObjectId(enum.IntEnum):
    """IDE_KM Object IDs (libspdm PCI_IDE_KM_OBJECT_ID_*)."""

    QUERY = 0x00
    QUERY_RESP = 0x01
    KEY_PROG = 0x02
    KP_ACK = 0x03
    K_SET_GO = 0x04
    K_SET_STOP = 0x05
    K_GOSTOP_ACK = 0x06


class KpAckStatus(enum.IntEnum):
    """KP_ACK Status (libspdm PCI_IDE_KM_KP_ACK_STATUS_*)."""

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
    """Bytes that are not an IDE_KM message.

    ``code`` is a :class:`KpAckStatus` (INCORRECT_LENGTH for length problems, UNSUPPORTED_VALUE
    otherwise); ``object_id`` is the first byte when present; ``partial`` holds whichever of
    stream_id / key_sub_stream / port_index could be read, so a responder can answer a truncated
    KEY_PROG with a KP_ACK echoing them (tee-io-validator KeyProg case 2.2).
    """

    def __init__(
        self,
        message: str,
        *,
        code: int,
        object_id: int | None = None,
        partial: dict[str, int] | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.object_id = object_id
        self.partial: dict[str, int] = dict(partial or {})


# ------------------------------------------------------------------------------------------ validators
_Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _fits(value: Any, bits: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << bits


def _uint(bits: int) -> _Validator:
    def check(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not _fits(value, bits):
            raise CodecError(
                f"{type(inst).__name__}.{attribute.name}: expected an unsigned {bits}-bit integer "
                f"(0..{(1 << bits) - 1:#x}), got {value!r}",
                code=KpAckStatus.UNSUPPORTED_VALUE,
            )

    return check


_u8 = _uint(8)


def _exact_bytes(n: int) -> _Validator:
    def check(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        where = f"{type(inst).__name__}.{attribute.name}"
        if not isinstance(value, bytes):
            raise CodecError(
                f"{where}: expected {n} bytes, got {type(value).__name__}", code=KpAckStatus.UNSUPPORTED_VALUE
            )
        if len(value) != n:
            raise CodecError(
                f"{where}: expected exactly {n} bytes, got {len(value)}", code=KpAckStatus.INCORRECT_LENGTH
            )

    return check


def _words(values: Iterable[int]) -> tuple[int, ...]:
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise CodecError(
            f"QueryResp.ide_registers: expected a sequence of u32 words, got {type(values).__name__}",
            code=KpAckStatus.UNSUPPORTED_VALUE,
        )
    return tuple(values)


def _check_words(inst: Any, attribute: attrs.Attribute[Any], value: tuple[Any, ...]) -> None:
    for w in value:
        if not _fits(w, 32):
            raise CodecError(
                f"{type(inst).__name__}.{attribute.name}: expected unsigned 32-bit register words, got {w!r}",
                code=KpAckStatus.UNSUPPORTED_VALUE,
            )


def _to_enum(kind: type[enum.IntEnum], name: str, value: Any) -> Any:
    if isinstance(value, kind):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value in kind._value2member_map_:
        return kind(value)
    members = ", ".join(f"{m.name}={m.value}" for m in kind)
    raise CodecError(
        f"KeySubStream.{name}: expected a {kind.__name__} ({members}), got {value!r}",
        code=KpAckStatus.UNSUPPORTED_VALUE,
    )


def _to_key_set(value: Any) -> KeySet:
    result: KeySet = _to_enum(KeySet, "key_set", value)
    return result


def _to_direction(value: Any) -> Direction:
    result: Direction = _to_enum(Direction, "direction", value)
    return result


def _to_sub_stream(value: Any) -> SubStream:
    result: SubStream = _to_enum(SubStream, "sub_stream", value)
    return result


# ------------------------------------------------------------------------------------------ key slots
@attrs.frozen
class KeySubStream:
    """One of the 12 key slots of a stream on a port: key set x direction x sub-stream."""

    key_set: KeySet = attrs.field(converter=_to_key_set)
    direction: Direction = attrs.field(converter=_to_direction)
    sub_stream: SubStream = attrs.field(converter=_to_sub_stream)

    def to_byte(self) -> int:
        """bit 0 key set, bit 1 direction (Tx = 1), bits 7:4 sub-stream (libspdm PCI_IDE_KM_KEY_*)."""
        return int(self.key_set) | int(self.direction) << 1 | int(self.sub_stream) << 4

    @classmethod
    def from_byte(cls, b: int) -> KeySubStream:
        """The slot a key_sub_stream byte names; CodecError(UNSUPPORTED_VALUE) for reserved bits or
        a sub-stream other than PR/NPR/CPL (tee-io-validator KeyProg case 2.4)."""
        if not _fits(b, 8):
            raise CodecError(f"key_sub_stream must be a byte, got {b!r}", code=KpAckStatus.UNSUPPORTED_VALUE)
        if b & 0x0C:
            raise CodecError(f"key_sub_stream {b:#04x}: reserved bits 3:2 are set", code=KpAckStatus.UNSUPPORTED_VALUE)
        if b >> 4 > SubStream.CPL:
            raise CodecError(
                f"key_sub_stream {b:#04x}: sub-stream {b >> 4} is not PR(0), NPR(1) or CPL(2)",
                code=KpAckStatus.UNSUPPORTED_VALUE,
            )
        return cls(KeySet(b & 1), Direction(b >> 1 & 1), SubStream(b >> 4))

    def __str__(self) -> str:
        return f"{self.key_set.name}/{self.direction.name}/{self.sub_stream.name}"


ALL_SLOTS: tuple[KeySubStream, ...] = tuple(KeySubStream(k, d, s) for k in KeySet for d in Direction for s in SubStream)


# ------------------------------------------------------------------------------------------ key bytes
def _swap_dwords(data: bytes) -> bytes:
    return b"".join(data[i : i + 4][::-1] for i in range(0, len(data), 4))


def key_to_wire(aes_key: bytes) -> bytes:
    """KEY_PROG key bytes for an AES-256 key given in natural order (PCIe Appendix L).

    The message holds DW7 first and each DWORD little-endian, which reverses every 4-byte group
    (tee-io-validator doc/key_byte_order.md).
    """
    if not isinstance(aes_key, bytes) or len(aes_key) != KEY_LEN:
        raise CodecError(f"an AES-256 key is {KEY_LEN} bytes, got {aes_key!r:.40}", code=KpAckStatus.INCORRECT_LENGTH)
    return _swap_dwords(aes_key)


def key_from_wire(wire_key: bytes) -> bytes:
    """The AES-256 key in natural order from KEY_PROG's key bytes (inverse of :func:`key_to_wire`)."""
    return key_to_wire(wire_key)


def ifv_to_wire(ifv: int) -> bytes:
    """KEY_PROG IFV bytes for a 64-bit invocation field: DW1 (high) then DW0 (low), each little-endian."""
    if not _fits(ifv, 64):
        raise CodecError(f"an IFV is an unsigned 64-bit value, got {ifv!r}", code=KpAckStatus.UNSUPPORTED_VALUE)
    return struct.pack("<II", ifv >> 32, ifv & 0xFFFF_FFFF)


# ------------------------------------------------------------------------------------------ messages
@attrs.frozen(kw_only=True)
class Query:
    """QUERY: ask a port for its IDE capability and registers."""

    object_id: ClassVar[int] = ObjectId.QUERY
    port_index: int = attrs.field(validator=_u8)


@attrs.frozen(kw_only=True)
class QueryResp:
    """QUERY_RESP: where the port sits and its IDE extended capability, as u32 register words."""

    object_id: ClassVar[int] = ObjectId.QUERY_RESP
    port_index: int = attrs.field(validator=_u8)
    dev_func_num: int = attrs.field(validator=_u8)
    bus_num: int = attrs.field(validator=_u8)
    segment: int = attrs.field(validator=_u8)
    max_port_index: int = attrs.field(validator=_u8)
    ide_registers: tuple[int, ...] = attrs.field(default=(), converter=_words, validator=_check_words)


@attrs.frozen(kw_only=True)
class KeyProg:
    """KEY_PROG: one key + IFV for one slot of one stream; ``key``/``iv`` are the wire bytes."""

    object_id: ClassVar[int] = ObjectId.KEY_PROG
    stream_id: int = attrs.field(validator=_u8)
    key_sub_stream: int = attrs.field(validator=_u8)  # raw byte, see KeySubStream.from_byte
    port_index: int = attrs.field(validator=_u8)
    key: bytes = attrs.field(validator=_exact_bytes(KEY_LEN), repr=False)
    iv: bytes = attrs.field(validator=_exact_bytes(IV_LEN), repr=False)

    @property
    def ifv(self) -> int:
        """The 64-bit invocation field the IV carries (DW1 << 32 | DW0)."""
        high, low = struct.unpack("<II", self.iv)
        return int(high) << 32 | int(low)

    @property
    def aes_key(self) -> bytes:
        """The key in natural AES-GCM order."""
        return key_from_wire(self.key)


@attrs.frozen(kw_only=True)
class KpAck:
    """KP_ACK: the answer to KEY_PROG, echoing stream, slot byte and port; ``status`` a KpAckStatus."""

    object_id: ClassVar[int] = ObjectId.KP_ACK
    stream_id: int = attrs.field(validator=_u8)
    status: int = attrs.field(validator=_u8)
    key_sub_stream: int = attrs.field(validator=_u8)
    port_index: int = attrs.field(validator=_u8)


@attrs.frozen(kw_only=True)
class KSetGo:
    """K_SET_GO: start using the named key set for that direction and sub-stream."""

    object_id: ClassVar[int] = ObjectId.K_SET_GO
    stream_id: int = attrs.field(validator=_u8)
    key_sub_stream: int = attrs.field(validator=_u8)
    port_index: int = attrs.field(validator=_u8)


@attrs.frozen(kw_only=True)
class KSetStop:
    """K_SET_STOP: stop using (and forget) the named key set."""

    object_id: ClassVar[int] = ObjectId.K_SET_STOP
    stream_id: int = attrs.field(validator=_u8)
    key_sub_stream: int = attrs.field(validator=_u8)
    port_index: int = attrs.field(validator=_u8)


@attrs.frozen(kw_only=True)
class KGoStopAck:
    """K_GOSTOP_ACK: the answer to K_SET_GO and K_SET_STOP, echoing their fields."""

    object_id: ClassVar[int] = ObjectId.K_GOSTOP_ACK
    stream_id: int = attrs.field(validator=_u8)
    key_sub_stream: int = attrs.field(validator=_u8)
    port_index: int = attrs.field(validator=_u8)


IdeKmMessage = Query | QueryResp | KeyProg | KpAck | KSetGo | KSetStop | KGoStopAck
OBJECT_TYPES: dict[int, type] = {
    int(c.object_id): c for c in (Query, QueryResp, KeyProg, KpAck, KSetGo, KSetStop, KGoStopAck)
}
_STREAM_MESSAGES = (
    ObjectId.KEY_PROG,
    ObjectId.KP_ACK,
    ObjectId.K_SET_GO,
    ObjectId.K_SET_STOP,
    ObjectId.K_GOSTOP_ACK,
)
_GO_STOP: dict[int, type[KSetGo] | type[KSetStop] | type[KGoStopAck]] = {
    ObjectId.K_SET_GO: KSetGo,
    ObjectId.K_SET_STOP: KSetStop,
    ObjectId.K_GOSTOP_ACK: KGoStopAck,
}


def encode(msg: IdeKmMessage) -> bytes:
    """The message's wire bytes; reserved fields are zero."""
    if isinstance(msg, Query):
        return bytes([ObjectId.QUERY, 0, msg.port_index])
    if isinstance(msg, QueryResp):
        head = bytes(
            [
                ObjectId.QUERY_RESP,
                0,
                msg.port_index,
                msg.dev_func_num,
                msg.bus_num,
                msg.segment,
                msg.max_port_index,
            ]
        )
        return head + struct.pack(f"<{len(msg.ide_registers)}I", *msg.ide_registers)
    if isinstance(msg, KeyProg):
        head = _STREAM_HEAD.pack(ObjectId.KEY_PROG, msg.stream_id, 0, msg.key_sub_stream, msg.port_index)
        return head + msg.key + msg.iv
    if isinstance(msg, KpAck):
        return _STREAM_HEAD.pack(ObjectId.KP_ACK, msg.stream_id, msg.status, msg.key_sub_stream, msg.port_index)
    if isinstance(msg, KSetGo | KSetStop | KGoStopAck):
        return _STREAM_HEAD.pack(msg.object_id, msg.stream_id, 0, msg.key_sub_stream, msg.port_index)
    raise CodecError(f"not an IDE_KM message: {type(msg).__name__}", code=KpAckStatus.UNSUPPORTED_VALUE)


def _partial(oid: int, data: bytes) -> dict[str, int]:
    """The echo fields a truncated or malformed message still carries."""
    spots: tuple[tuple[str, int], ...]
    if oid in _STREAM_MESSAGES:
        spots = (("stream_id", 3), ("key_sub_stream", 5), ("port_index", 6))
    elif oid in (ObjectId.QUERY, ObjectId.QUERY_RESP):
        spots = (("port_index", 2),)
    else:
        spots = ()
    return {name: data[off] for name, off in spots if len(data) > off}


def decode(data: bytes | bytearray | memoryview) -> IdeKmMessage:
    """Any IDE_KM message from its bytes; :class:`IdeKmDecodeError` with the readable fields otherwise.

    Reserved bytes are ignored; lengths are exact (QUERY_RESP: 7 bytes plus whole register words).
    The key_sub_stream byte and KP_ACK status are not judged here (see :meth:`KeySubStream.from_byte`).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise IdeKmDecodeError(
            f"an IDE_KM message must be bytes, got {type(data).__name__}", code=KpAckStatus.UNSUPPORTED_VALUE
        )
    return _decode_bytes(bytes(data))


@functools.lru_cache(maxsize=1024)
def _decode_bytes(data: bytes) -> IdeKmMessage:
    """:func:`decode` of immutable bytes, kept: a message is decoded by its sender, its receiver and several
    rules, and every value it gives is frozen (a failure is not kept, so it is raised afresh each time)."""
    if not data:
        raise IdeKmDecodeError("empty IDE_KM message: no object ID", code=KpAckStatus.INCORRECT_LENGTH)
    oid = data[0]
    partial = _partial(oid, data)

    def wrong_length(want: str) -> IdeKmDecodeError:
        name = ObjectId(oid).name
        return IdeKmDecodeError(
            f"{name} must be {want}, got {len(data)} bytes",
            code=KpAckStatus.INCORRECT_LENGTH,
            object_id=oid,
            partial=partial,
        )

    if oid == ObjectId.QUERY:
        if len(data) != _QUERY_LEN:
            raise wrong_length(f"{_QUERY_LEN} bytes")
        return Query(port_index=data[2])
    if oid == ObjectId.QUERY_RESP:
        extra = len(data) - _QUERY_RESP_HEAD
        if extra < 0 or extra % 4:
            raise wrong_length(f"{_QUERY_RESP_HEAD} bytes plus whole 4-byte register words")
        port, dev_func, bus, segment, max_port = data[2:_QUERY_RESP_HEAD]
        words = struct.unpack(f"<{extra // 4}I", data[_QUERY_RESP_HEAD:])
        return QueryResp(
            port_index=port,
            dev_func_num=dev_func,
            bus_num=bus,
            segment=segment,
            max_port_index=max_port,
            ide_registers=words,
        )
    if oid == ObjectId.KEY_PROG:
        if len(data) != KEY_PROG_LEN:
            raise wrong_length(f"{KEY_PROG_LEN} bytes")
        _oid, stream_id, _reserved, kss, port = _STREAM_HEAD.unpack_from(data)
        key_end = _STREAM_HEAD.size + KEY_LEN
        return KeyProg(
            stream_id=stream_id,
            key_sub_stream=kss,
            port_index=port,
            key=data[_STREAM_HEAD.size : key_end],
            iv=data[key_end:],
        )
    if oid in _STREAM_MESSAGES:
        if len(data) != _STREAM_HEAD.size:
            raise wrong_length(f"{_STREAM_HEAD.size} bytes")
        _oid, stream_id, middle, kss, port = _STREAM_HEAD.unpack(data)
        if oid == ObjectId.KP_ACK:
            return KpAck(stream_id=stream_id, status=middle, key_sub_stream=kss, port_index=port)
        return _GO_STOP[oid](stream_id=stream_id, key_sub_stream=kss, port_index=port)
    raise IdeKmDecodeError(
        f"unknown IDE_KM object ID {oid:#04x}",
        code=KpAckStatus.UNSUPPORTED_VALUE,
        object_id=oid,
        partial=partial,
    )
