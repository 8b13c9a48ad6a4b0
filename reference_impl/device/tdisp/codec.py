"""TDISP messages on the wire: bytes <-> frozen attrs values (PCIe r6.2 §11.3, libspdm pci_tdisp.h).

Every message starts with the 16-byte header::

    offset 0  TDISPVersion   u8   0x10 = TDISP 1.0 (major[7:4], minor[3:0])
           1  MessageType    u8   request 0x81.., response 0x01.., TDISP_ERROR 0x7F
           2  Reserved       u16
           4  INTERFACE_ID   12 B = FUNCTION_ID u32 (RID[15:0], segment[23:16], segment-valid bit 24)
                                    + 8 reserved bytes

All multi-byte fields are little-endian. Lengths are exact: a decoder refuses a message that is
shorter or longer than its type's layout (variable parts carry their own lengths).
"""

from __future__ import annotations

import enum
import struct
from typing import Any, ClassVar

import attrs

from reference_impl.errors import CodecError

__all__ = [
    "MESSAGE_TYPES", "TDISP_VERSION_1_0", "BindP2PStream", "BindP2PStreamResponse", "DeviceInterfaceReport",
    "DeviceInterfaceState", "ErrorCode", "GetDeviceInterfaceReport", "GetDeviceInterfaceState",
    "GetTdispCapabilities", "GetTdispVersion", "InterfaceId", "InterfaceReport", "LockFlags", "LockInterface",
    "LockInterfaceResponse", "MmioRange", "RangeAttr", "Request", "RequestCode", "Response", "ResponseCode",
    "SetMmioAttribute", "SetMmioAttributeResponse", "StartInterface", "StartInterfaceResponse", "StopInterface",
    "StopInterfaceResponse", "TdiState", "TdispCapabilities", "TdispDecodeError", "TdispError", "TdispVersion",
    "UnbindP2PStream", "UnbindP2PStreamResponse", "VdmRequest", "VdmResponse", "decode_request", "decode_response",
    "encode",
]

TDISP_VERSION_1_0 = 0x10
HEADER = struct.Struct("<BBHIQ")  # version, type, reserved, function_id, reserved
HEADER_LEN = HEADER.size  # 16


class RequestCode(enum.IntEnum):
    GET_TDISP_VERSION = 0x81
    GET_TDISP_CAPABILITIES = 0x82
    LOCK_INTERFACE = 0x83
    GET_DEVICE_INTERFACE_REPORT = 0x84
    GET_DEVICE_INTERFACE_STATE = 0x85
    START_INTERFACE = 0x86
    STOP_INTERFACE = 0x87
    BIND_P2P_STREAM = 0x88
    UNBIND_P2P_STREAM = 0x89
    SET_MMIO_ATTRIBUTE = 0x8A
    VDM = 0x8B


class ResponseCode(enum.IntEnum):
    TDISP_VERSION = 0x01
    TDISP_CAPABILITIES = 0x02
    LOCK_INTERFACE = 0x03
    DEVICE_INTERFACE_REPORT = 0x04
    DEVICE_INTERFACE_STATE = 0x05
    START_INTERFACE = 0x06
    STOP_INTERFACE = 0x07
    BIND_P2P_STREAM = 0x08
    UNBIND_P2P_STREAM = 0x09
    SET_MMIO_ATTRIBUTE = 0x0A
    VDM = 0x0B
    TDISP_ERROR = 0x7F


class ErrorCode(enum.IntEnum):
    """TDISP_ERROR codes (PCIe Table 11-27)."""

    INVALID_REQUEST = 0x0001
    BUSY = 0x0003
    INVALID_INTERFACE_STATE = 0x0004
    UNSPECIFIED = 0x0005
    UNSUPPORTED_REQUEST = 0x0007
    VERSION_MISMATCH = 0x0041
    VENDOR_SPECIFIC_ERROR = 0x00FF
    INVALID_INTERFACE = 0x0101
    INVALID_NONCE = 0x0102
    INSUFFICIENT_ENTROPY = 0x0103
    INVALID_DEVICE_CONFIGURATION = 0x0104


class TdiState(enum.IntEnum):
    CONFIG_UNLOCKED = 0
    CONFIG_LOCKED = 1
    RUN = 2
    ERROR = 3


class LockFlags(enum.IntFlag):
    NO_FW_UPDATE = 0x1
    SYSTEM_CACHE_LINE_SIZE = 0x2
    LOCK_MSIX = 0x4
    BIND_P2P = 0x8
    ALL_REQUEST_REDIRECT = 0x10


class RangeAttr(enum.IntFlag):
    MSIX_TABLE = 0x1
    MSIX_PBA = 0x2
    IS_NON_TEE_MEM = 0x4
    IS_MEM_ATTR_UPDATABLE = 0x8


class TdispDecodeError(CodecError):
    """Bytes that are not a TDISP message; ``code`` is the TDISP_ERROR code to answer with."""

    def __init__(self, message: str, *, code: int | None = None, interface_id: InterfaceId | None = None) -> None:
        super().__init__(message, code=code)
        self.interface_id = interface_id


def _as_tuple(values: Any) -> tuple[Any, ...]:
    return tuple(values)


def _uint(bits: int) -> Any:
    limit = 1 << bits

    def check(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < limit:
            raise CodecError(f"{type(inst).__name__}.{attribute.name}: expected an unsigned {bits}-bit integer, "
                             f"got {value!r}")

    return check


def _bytes(length: int | None = None, max_len: int | None = None) -> Any:
    def check(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, bytes):
            raise CodecError(f"{type(inst).__name__}.{attribute.name}: expected bytes, got {type(value).__name__}")
        if length is not None and len(value) != length:
            raise CodecError(f"{type(inst).__name__}.{attribute.name}: expected {length} bytes, got {len(value)}")
        if max_len is not None and len(value) > max_len:
            raise CodecError(f"{type(inst).__name__}.{attribute.name}: at most {max_len} bytes, got {len(value)}")

    return check


@attrs.frozen(kw_only=True)
class InterfaceId:
    function_id: int = attrs.field(validator=_uint(32))
    reserved: int = attrs.field(default=0, validator=_uint(64))

    @classmethod
    def for_rid(cls, rid: int, segment: int | None = None) -> InterfaceId:
        if segment is None:
            return cls(function_id=rid & 0xFFFF)
        return cls(function_id=(rid & 0xFFFF) | (segment & 0xFF) << 16 | 1 << 24)


@attrs.frozen(kw_only=True)
class MmioRange:
    first_page: int = attrs.field(validator=_uint(64))
    number_of_pages: int = attrs.field(validator=_uint(32))
    attributes: int = attrs.field(validator=_uint(16))
    range_id: int = attrs.field(validator=_uint(16))

    _S: ClassVar[struct.Struct] = struct.Struct("<QIHH")

    def encode(self) -> bytes:
        return self._S.pack(self.first_page, self.number_of_pages, self.attributes, self.range_id)

    @classmethod
    def decode(cls, data: bytes) -> MmioRange:
        if len(data) != cls._S.size:
            raise CodecError(f"MMIO_RANGE is {cls._S.size} bytes, got {len(data)}", code=ErrorCode.INVALID_REQUEST)
        a, b, c, d = cls._S.unpack(data)
        return cls(first_page=a, number_of_pages=b, attributes=c, range_id=d)


@attrs.frozen(kw_only=True)
class InterfaceReport:
    """DEVICE_INTERFACE_REPORT body (PCIe §11.3.11): what the TDI is, for the guest to verify."""

    interface_info: int = attrs.field(validator=_uint(16))
    msix_message_control: int = attrs.field(validator=_uint(16))
    lnr_control: int = attrs.field(validator=_uint(16))
    tph_control: int = attrs.field(validator=_uint(32))
    mmio_ranges: tuple[MmioRange, ...] = attrs.field(converter=_as_tuple)
    device_specific_info: bytes = attrs.field(validator=_bytes())

    _HEAD: ClassVar[struct.Struct] = struct.Struct("<HHHHII")

    def encode(self) -> bytes:
        head = self._HEAD.pack(self.interface_info, 0, self.msix_message_control, self.lnr_control,
                               self.tph_control, len(self.mmio_ranges))
        body = b"".join(r.encode() for r in self.mmio_ranges)
        return head + body + struct.pack("<I", len(self.device_specific_info)) + self.device_specific_info

    @classmethod
    def decode(cls, data: bytes) -> InterfaceReport:
        if len(data) < cls._HEAD.size + 4:
            raise CodecError(f"interface report too short: {len(data)} bytes", code=ErrorCode.INVALID_REQUEST)
        info, _res, msix, lnr, tph, count = cls._HEAD.unpack_from(data)
        off = cls._HEAD.size
        if len(data) < off + 16 * count + 4:
            raise CodecError(f"interface report claims {count} ranges but has {len(data)} bytes",
                             code=ErrorCode.INVALID_REQUEST)
        ranges = tuple(MmioRange.decode(data[off + 16 * i: off + 16 * (i + 1)]) for i in range(count))
        off += 16 * count
        (dlen,) = struct.unpack_from("<I", data, off)
        off += 4
        if len(data) != off + dlen:
            raise CodecError(f"interface report length {len(data)} != {off + dlen} from its fields",
                             code=ErrorCode.INVALID_REQUEST)
        return cls(interface_info=info, msix_message_control=msix, lnr_control=lnr, tph_control=tph,
                   mmio_ranges=ranges, device_specific_info=bytes(data[off:]))


# ---------------------------------------------------------------------------------------- messages
_Body = tuple[struct.Struct | None, tuple[str, ...]]


def _msg(code: int, fmt: str | None = None, fields: tuple[str, ...] = ()) -> Any:
    """Class decorator: a message with a fixed-layout body ``fmt`` holding ``fields`` (or a custom one)."""

    def deco(cls: Any) -> Any:
        cls.code = code
        cls._body = (struct.Struct("<" + fmt) if fmt is not None else None, fields)
        return cls

    return deco


@attrs.frozen(kw_only=True)
class _Message:
    code: ClassVar[int]
    _body: ClassVar[_Body]
    interface_id: InterfaceId
    version: int = attrs.field(default=TDISP_VERSION_1_0, validator=_uint(8))

    def _encode_body(self) -> bytes:
        st, fields = self._body
        if st is None:
            return b""
        return st.pack(*(getattr(self, f) for f in fields))

    @classmethod
    def _decode_body(cls, body: bytes, common: dict[str, Any]) -> Any:
        st, fields = cls._body
        size = 0 if st is None else st.size
        if len(body) != size:
            raise TdispDecodeError(f"{cls.__name__} body must be {size} bytes, got {len(body)}",
                                   code=ErrorCode.INVALID_REQUEST, interface_id=common["interface_id"])
        values = dict(zip(fields, st.unpack(body), strict=True)) if st is not None else {}
        values = {k: v for k, v in values.items() if not k.startswith("_")}
        return cls(**common, **values)


@_msg(RequestCode.GET_TDISP_VERSION)
@attrs.frozen(kw_only=True)
class GetTdispVersion(_Message):
    pass


@_msg(RequestCode.GET_TDISP_CAPABILITIES, "I", ("tsm_caps",))
@attrs.frozen(kw_only=True)
class GetTdispCapabilities(_Message):
    tsm_caps: int = attrs.field(default=0, validator=_uint(32))


@_msg(RequestCode.LOCK_INTERFACE, "HBBQQ", ("flags", "default_stream_id", "_reserved", "mmio_reporting_offset",
                                          "bind_p2p_address_mask"))
@attrs.frozen(kw_only=True)
class LockInterface(_Message):
    flags: int = attrs.field(validator=_uint(16))
    default_stream_id: int = attrs.field(validator=_uint(8))
    mmio_reporting_offset: int = attrs.field(validator=_uint(64))
    bind_p2p_address_mask: int = attrs.field(validator=_uint(64))
    _reserved: ClassVar[int] = 0


@_msg(RequestCode.GET_DEVICE_INTERFACE_REPORT, "HH", ("offset", "length"))
@attrs.frozen(kw_only=True)
class GetDeviceInterfaceReport(_Message):
    offset: int = attrs.field(validator=_uint(16))
    length: int = attrs.field(validator=_uint(16))


@_msg(RequestCode.GET_DEVICE_INTERFACE_STATE)
@attrs.frozen(kw_only=True)
class GetDeviceInterfaceState(_Message):
    pass


@_msg(RequestCode.START_INTERFACE, "32s", ("start_interface_nonce",))
@attrs.frozen(kw_only=True)
class StartInterface(_Message):
    start_interface_nonce: bytes = attrs.field(validator=_bytes(32))


@_msg(RequestCode.STOP_INTERFACE)
@attrs.frozen(kw_only=True)
class StopInterface(_Message):
    pass


@_msg(RequestCode.BIND_P2P_STREAM, "BBH", ("p2p_stream_id", "_r1", "_r2"))
@attrs.frozen(kw_only=True)
class BindP2PStream(_Message):
    p2p_stream_id: int = attrs.field(validator=_uint(8))
    _r1: ClassVar[int] = 0
    _r2: ClassVar[int] = 0


@_msg(RequestCode.UNBIND_P2P_STREAM, "BBH", ("p2p_stream_id", "_r1", "_r2"))
@attrs.frozen(kw_only=True)
class UnbindP2PStream(_Message):
    p2p_stream_id: int = attrs.field(validator=_uint(8))
    _r1: ClassVar[int] = 0
    _r2: ClassVar[int] = 0


@_msg(RequestCode.SET_MMIO_ATTRIBUTE)
@attrs.frozen(kw_only=True)
class SetMmioAttribute(_Message):
    mmio_range: MmioRange

    def _encode_body(self) -> bytes:
        return self.mmio_range.encode()

    @classmethod
    def _decode_body(cls, body: bytes, common: dict[str, Any]) -> Any:
        try:
            return cls(**common, mmio_range=MmioRange.decode(body))
        except CodecError as exc:
            raise TdispDecodeError(str(exc), code=ErrorCode.INVALID_REQUEST, interface_id=common["interface_id"]) \
                from None


class _VdmMixin:
    registry_id: int
    vendor_id: bytes
    payload: bytes

    def _encode_body(self) -> bytes:
        return bytes([self.registry_id, len(self.vendor_id)]) + self.vendor_id + self.payload

    @classmethod
    def _decode_body(cls, body: bytes, common: dict[str, Any]) -> Any:
        if len(body) < 2 or len(body) < 2 + body[1]:
            raise TdispDecodeError("VDM body too short for its vendor ID", code=ErrorCode.INVALID_REQUEST,
                                   interface_id=common["interface_id"])
        n = body[1]
        make: Any = cls
        return make(**common, registry_id=body[0], vendor_id=bytes(body[2:2 + n]), payload=bytes(body[2 + n:]))


@_msg(RequestCode.VDM)
@attrs.frozen(kw_only=True)
class VdmRequest(_VdmMixin, _Message):
    registry_id: int = attrs.field(validator=_uint(8))
    vendor_id: bytes = attrs.field(validator=_bytes(max_len=255))
    payload: bytes = attrs.field(validator=_bytes())


@_msg(ResponseCode.VDM)
@attrs.frozen(kw_only=True)
class VdmResponse(_VdmMixin, _Message):
    registry_id: int = attrs.field(validator=_uint(8))
    vendor_id: bytes = attrs.field(validator=_bytes(max_len=255))
    payload: bytes = attrs.field(validator=_bytes())


@_msg(ResponseCode.TDISP_VERSION)
@attrs.frozen(kw_only=True)
class TdispVersion(_Message):
    versions: tuple[int, ...] = attrs.field(converter=_as_tuple)

    def _encode_body(self) -> bytes:
        return bytes([len(self.versions), *self.versions])

    @classmethod
    def _decode_body(cls, body: bytes, common: dict[str, Any]) -> Any:
        if not body or len(body) != 1 + body[0]:
            raise TdispDecodeError("TDISP_VERSION count does not match its length", code=ErrorCode.INVALID_REQUEST,
                                   interface_id=common["interface_id"])
        return cls(**common, versions=tuple(body[1:]))


@_msg(ResponseCode.TDISP_CAPABILITIES, "I16sH3xBBB", ("dsm_caps", "req_msgs_supported",
                                                       "lock_interface_flags_supported", "dev_addr_width",
                                                       "num_req_this", "num_req_all"))
@attrs.frozen(kw_only=True)
class TdispCapabilities(_Message):
    dsm_caps: int = attrs.field(validator=_uint(32))
    req_msgs_supported: bytes = attrs.field(validator=_bytes(16))
    lock_interface_flags_supported: int = attrs.field(validator=_uint(16))
    dev_addr_width: int = attrs.field(validator=_uint(8))
    num_req_this: int = attrs.field(validator=_uint(8))
    num_req_all: int = attrs.field(validator=_uint(8))


@_msg(ResponseCode.LOCK_INTERFACE, "32s", ("start_interface_nonce",))
@attrs.frozen(kw_only=True)
class LockInterfaceResponse(_Message):
    start_interface_nonce: bytes = attrs.field(validator=_bytes(32))


@_msg(ResponseCode.DEVICE_INTERFACE_REPORT)
@attrs.frozen(kw_only=True)
class DeviceInterfaceReport(_Message):
    portion: bytes = attrs.field(validator=_bytes(max_len=0xFFFF))
    remainder_length: int = attrs.field(validator=_uint(16))

    def _encode_body(self) -> bytes:
        return struct.pack("<HH", len(self.portion), self.remainder_length) + self.portion

    @classmethod
    def _decode_body(cls, body: bytes, common: dict[str, Any]) -> Any:
        if len(body) < 4:
            raise TdispDecodeError("DEVICE_INTERFACE_REPORT too short", code=ErrorCode.INVALID_REQUEST,
                                   interface_id=common["interface_id"])
        plen, rem = struct.unpack_from("<HH", body)
        if len(body) != 4 + plen:
            raise TdispDecodeError(f"PORTION_LENGTH {plen} does not match {len(body) - 4} bytes",
                                   code=ErrorCode.INVALID_REQUEST, interface_id=common["interface_id"])
        return cls(**common, portion=bytes(body[4:]), remainder_length=rem)


@_msg(ResponseCode.DEVICE_INTERFACE_STATE, "B", ("tdi_state",))
@attrs.frozen(kw_only=True)
class DeviceInterfaceState(_Message):
    tdi_state: int = attrs.field(validator=_uint(8))


@_msg(ResponseCode.START_INTERFACE)
@attrs.frozen(kw_only=True)
class StartInterfaceResponse(_Message):
    pass


@_msg(ResponseCode.STOP_INTERFACE)
@attrs.frozen(kw_only=True)
class StopInterfaceResponse(_Message):
    pass


@_msg(ResponseCode.BIND_P2P_STREAM)
@attrs.frozen(kw_only=True)
class BindP2PStreamResponse(_Message):
    pass


@_msg(ResponseCode.UNBIND_P2P_STREAM)
@attrs.frozen(kw_only=True)
class UnbindP2PStreamResponse(_Message):
    pass


@_msg(ResponseCode.SET_MMIO_ATTRIBUTE)
@attrs.frozen(kw_only=True)
class SetMmioAttributeResponse(_Message):
    pass


@_msg(ResponseCode.TDISP_ERROR, "II", ("error_code", "error_data"))
@attrs.frozen(kw_only=True)
class TdispError(_Message):
    error_code: int = attrs.field(validator=_uint(32))
    error_data: int = attrs.field(default=0, validator=_uint(32))
    extended_error_data: bytes = attrs.field(default=b"", validator=_bytes())

    def _encode_body(self) -> bytes:
        return struct.pack("<II", self.error_code, self.error_data) + self.extended_error_data

    @classmethod
    def _decode_body(cls, body: bytes, common: dict[str, Any]) -> Any:
        if len(body) < 8:
            raise TdispDecodeError("TDISP_ERROR too short", code=ErrorCode.INVALID_REQUEST,
                                   interface_id=common["interface_id"])
        code, data = struct.unpack_from("<II", body)
        return cls(**common, error_code=code, error_data=data, extended_error_data=bytes(body[8:]))


Request = Any
Response = Any

_REQUESTS = (GetTdispVersion, GetTdispCapabilities, LockInterface, GetDeviceInterfaceReport, GetDeviceInterfaceState,
             StartInterface, StopInterface, BindP2PStream, UnbindP2PStream, SetMmioAttribute, VdmRequest)
_RESPONSES = (TdispVersion, TdispCapabilities, LockInterfaceResponse, DeviceInterfaceReport, DeviceInterfaceState,
              StartInterfaceResponse, StopInterfaceResponse, BindP2PStreamResponse, UnbindP2PStreamResponse,
              SetMmioAttributeResponse, VdmResponse, TdispError)
MESSAGE_TYPES: dict[int, type] = {c.code: c for c in (*_REQUESTS, *_RESPONSES)}
_REQ_BY_CODE: dict[int, Any] = {c.code: c for c in _REQUESTS}
_RESP_BY_CODE: dict[int, Any] = {c.code: c for c in _RESPONSES}


def encode(msg: Any) -> bytes:
    """The message's wire bytes."""
    if not isinstance(msg, _Message):
        raise CodecError(f"not a TDISP message: {type(msg).__name__}")
    iid = msg.interface_id
    return HEADER.pack(msg.version, msg.code, 0, iid.function_id, iid.reserved) + msg._encode_body()


def _decode(data: bytes, table: dict[int, Any], what: str) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TdispDecodeError(f"TDISP {what} must be bytes, got {type(data).__name__}",
                               code=ErrorCode.INVALID_REQUEST)
    data = bytes(data)
    if len(data) < HEADER_LEN:
        raise TdispDecodeError(f"TDISP {what} of {len(data)} bytes is shorter than the 16-byte header",
                               code=ErrorCode.INVALID_REQUEST)
    version, code, _res, fid, res64 = HEADER.unpack_from(data)
    iid = InterfaceId(function_id=fid, reserved=res64)
    if version >> 4 != 1:
        raise TdispDecodeError(f"TDISP version {version:#04x} is not 1.x", code=ErrorCode.VERSION_MISMATCH,
                               interface_id=iid)
    cls = table.get(code)
    if cls is None:
        raise TdispDecodeError(f"unknown TDISP {what} code {code:#04x}", code=ErrorCode.UNSUPPORTED_REQUEST,
                               interface_id=iid)
    try:
        return cls._decode_body(data[HEADER_LEN:], {"interface_id": iid, "version": version})
    except TdispDecodeError:
        raise
    except CodecError as exc:
        raise TdispDecodeError(str(exc), code=ErrorCode.INVALID_REQUEST, interface_id=iid) from None


def decode_request(data: bytes) -> Any:
    """A request from its bytes; :class:`TdispDecodeError` (with the code to answer) otherwise."""
    return _decode(data, _REQ_BY_CODE, "request")


def decode_response(data: bytes) -> Any:
    """A response from its bytes; :class:`TdispDecodeError` otherwise."""
    return _decode(data, _RESP_BY_CODE, "response")
