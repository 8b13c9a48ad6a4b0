"""TDISP messages on the wire: bytes <-> frozen attrs values.

Sources: PCIe Base r6.2 §11.3 (message tables 11-3/11-4, error codes Table 11-27) and DMTF libspdm
``include/industry_standard/pci_tdisp.h`` (@1e98c52b). The bytes handled here are the TDISP message
itself, starting with the TDISPVersion byte; the 1-byte PCI protocol ID (0x01) that precedes it inside an
SPDM VENDOR_DEFINED message belongs to the transport. Every message starts with a 16-byte header::

    offset 0  TDISPVersion  u8    0x10 = TDISP 1.0 (major in bits 7:4, minor in bits 3:0)
           1  MessageType   u8    requests 0x81.., responses 0x01.., TDISP_ERROR 0x7F
           2  Reserved      u16
           4  INTERFACE_ID  12 B  FUNCTION_ID u32 (RID 15:0, segment 23:16, segment-valid bit 24)
                                  + 8 reserved bytes (kept as ``InterfaceId.reserved``)

All multi-byte fields are little-endian. Reserved fields encode as zero and are ignored when decoding
(the spec tells a receiver to ignore them). Lengths are exact: a decoder refuses a message that is
shorter or longer than its layout, where variable parts carry their own length fields.

Values that do not fit their field are refused when the value is *built*: every attrs validator raises
:class:`~teeio_conformance.contract.errors.CodecError` (not ``ValueError``) naming the class, the field, what was
expected and what it got, so a bad value can never reach the encoder.
"""

from __future__ import annotations

import enum
import functools
import struct
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Self

import attrs

from teeio_conformance.contract.errors import CodecError

__all__ = [
    "HEADER_LEN",
    "MESSAGE_TYPES",
    "NONCE_LEN",
    "TDISP_VERSION_1_0",
    "BindP2PStream",
    "BindP2PStreamResponse",
    "DeviceInterfaceReport",
    "DeviceInterfaceState",
    "ErrorCode",
    "GetDeviceInterfaceReport",
    "GetDeviceInterfaceState",
    "GetTdispCapabilities",
    "GetTdispVersion",
    "InterfaceId",
    "InterfaceReport",
    "LockFlags",
    "LockInterface",
    "LockInterfaceResponse",
    "MmioRange",
    "RangeAttr",
    "Request",
    "RequestCode",
    "Response",
    "ResponseCode",
    "SetMmioAttribute",
    "SetMmioAttributeResponse",
    "StartInterface",
    "StartInterfaceResponse",
    "StopInterface",
    "StopInterfaceResponse",
    "TdiState",
    "TdispCapabilities",
    "TdispDecodeError",
    "TdispError",
    "TdispVersion",
    "UnbindP2PStream",
    "UnbindP2PStreamResponse",
    "VdmRequest",
    "VdmResponse",
    "decode_request",
    "decode_response",
    "encode",
]

TDISP_VERSION_1_0 = 0x10
NONCE_LEN = 32  # START_INTERFACE_NONCE (PCIe §11.3.8 / §11.3.14)
_HEADER = struct.Struct("<BBHIQ")  # version, message type, reserved, FUNCTION_ID, reserved
HEADER_LEN = _HEADER.size  # 16


class RequestCode(enum.IntEnum):
    """TDISP request message types (PCIe Table 11-3)."""

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
    """TDISP response message types (PCIe Table 11-4)."""

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
    """DEVICE_INTERFACE_STATE.TDI_STATE (PCIe §11.2)."""

    CONFIG_UNLOCKED = 0
    CONFIG_LOCKED = 1
    RUN = 2
    ERROR = 3


class LockFlags(enum.IntFlag):
    """LOCK_INTERFACE_REQUEST FLAGS (libspdm PCI_TDISP_LOCK_INTERFACE_FLAGS_*)."""

    NO_FW_UPDATE = 0x1
    SYSTEM_CACHE_LINE_SIZE = 0x2
    LOCK_MSIX = 0x4
    BIND_P2P = 0x8
    ALL_REQUEST_REDIRECT = 0x10


class RangeAttr(enum.IntFlag):
    """MMIO_RANGE.RANGE_ATTRIBUTES (libspdm PCI_TDISP_MMIO_RANGE_ATTRIBUTES_*)."""

    MSIX_TABLE = 0x1
    MSIX_PBA = 0x2
    IS_NON_TEE_MEM = 0x4
    IS_MEM_ATTR_UPDATABLE = 0x8


class TdispDecodeError(CodecError):
    """Bytes that are not a TDISP message.

    ``code`` is the TDISP_ERROR code a responder should answer with; ``interface_id`` is the header's
    INTERFACE_ID when at least the 16-byte header was present (so the answer can echo it), else None;
    ``message_type`` is the MessageType byte when present.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        interface_id: InterfaceId | None = None,
        message_type: int | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.interface_id = interface_id
        self.message_type = message_type


# ------------------------------------------------------------------------------------------ validators
_Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _uint(bits: int) -> _Validator:
    """An unsigned integer that fits ``bits`` bits (bool refused: it is never a wire field)."""
    top = (1 << bits) - 1

    def check(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
            raise CodecError(
                f"{type(inst).__name__}.{attribute.name}: expected an unsigned {bits}-bit integer "
                f"(0..{top:#x}), got {value!r}"
            )

    return check


def _opt_uint(bits: int) -> _Validator:
    inner = _uint(bits)

    def check(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            inner(inst, attribute, value)

    return check


def _bytes(*, exact: int | None = None, max_len: int | None = None) -> _Validator:
    def check(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        where = f"{type(inst).__name__}.{attribute.name}"
        if not isinstance(value, bytes):
            raise CodecError(f"{where}: expected bytes, got {type(value).__name__}")
        if exact is not None and len(value) != exact:
            raise CodecError(f"{where}: expected exactly {exact} bytes, got {len(value)}")
        if max_len is not None and len(value) > max_len:
            raise CodecError(f"{where}: expected at most {max_len} bytes, got {len(value)}")

    return check


def _instance(kind: type) -> _Validator:
    def check(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, kind):
            raise CodecError(
                f"{type(inst).__name__}.{attribute.name}: expected {kind.__name__}, got {type(value).__name__}"
            )

    return check


def _as_tuple(values: Any, what: str) -> tuple[Any, ...]:
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise CodecError(f"{what}: expected a sequence, got {type(values).__name__}")
    return tuple(values)


def _u8_tuple(values: Iterable[int]) -> tuple[int, ...]:
    return _as_tuple(values, "TdispVersion.versions")


def _check_u8_tuple(inst: Any, attribute: attrs.Attribute[Any], value: tuple[Any, ...]) -> None:
    where = f"{type(inst).__name__}.{attribute.name}"
    if len(value) > 0xFF:
        raise CodecError(f"{where}: a count byte holds at most 255 entries, got {len(value)}")
    for v in value:
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 0xFF:
            raise CodecError(f"{where}: expected unsigned 8-bit entries, got {v!r}")


def _to_tdi_state(value: Any) -> TdiState:
    if isinstance(value, TdiState):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value in TdiState._value2member_map_:
        return TdiState(value)
    raise CodecError(f"DeviceInterfaceState.tdi_state: expected a TDI state 0..3, got {value!r}")


# ------------------------------------------------------------------------------------------ structures
@attrs.frozen(kw_only=True)
class InterfaceId:
    """INTERFACE_ID: which TDI a message is about (PCIe §11.3.2; libspdm pci_tdisp_interface_id_t)."""

    function_id: int = attrs.field(validator=_uint(32))
    reserved: int = attrs.field(default=0, validator=_uint(64))

    SEGMENT_VALID: ClassVar[int] = 1 << 24

    @classmethod
    def for_rid(cls, rid: int, segment: int | None = None) -> InterfaceId:
        """The INTERFACE_ID of Requester ID ``rid``, with the segment-valid bit when ``segment`` is given."""
        if not isinstance(rid, int) or isinstance(rid, bool) or not 0 <= rid <= 0xFFFF:
            raise CodecError(f"InterfaceId.for_rid: rid must be a 16-bit Requester ID, got {rid!r}")
        if segment is None:
            return cls(function_id=rid)
        if not isinstance(segment, int) or isinstance(segment, bool) or not 0 <= segment <= 0xFF:
            raise CodecError(f"InterfaceId.for_rid: segment must be 0..255, got {segment!r}")
        return cls(function_id=rid | segment << 16 | cls.SEGMENT_VALID)

    @property
    def rid(self) -> int:
        return self.function_id & 0xFFFF

    @property
    def segment(self) -> int | None:
        """The segment number, or None when the segment-valid bit is clear."""
        return (self.function_id >> 16) & 0xFF if self.function_id & self.SEGMENT_VALID else None


@attrs.frozen(kw_only=True)
class MmioRange:
    """MMIO_RANGE (PCIe §11.3.11; libspdm pci_tdisp_mmio_range_t): 16 bytes ``<QIHH``."""

    first_page: int = attrs.field(validator=_uint(64))  # byte address of the first 4 KiB page
    number_of_pages: int = attrs.field(validator=_uint(32))
    attributes: int = attrs.field(validator=_uint(16))  # RangeAttr bits
    range_id: int = attrs.field(validator=_uint(16))

    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<QIHH")
    SIZE: ClassVar[int] = 16

    def encode(self) -> bytes:
        return self.LAYOUT.pack(self.first_page, self.number_of_pages, self.attributes, self.range_id)

    @classmethod
    def decode(cls, data: bytes) -> MmioRange:
        if len(data) != cls.SIZE:
            raise CodecError(f"an MMIO_RANGE is {cls.SIZE} bytes, got {len(data)}", code=ErrorCode.INVALID_REQUEST)
        first, count, attributes, range_id = cls.LAYOUT.unpack(data)
        return cls(first_page=first, number_of_pages=count, attributes=attributes, range_id=range_id)


def _check_ranges(inst: Any, attribute: attrs.Attribute[Any], value: tuple[Any, ...]) -> None:
    for r in value:
        if not isinstance(r, MmioRange):
            raise CodecError(f"InterfaceReport.mmio_ranges: expected MmioRange entries, got {type(r).__name__}")
    if len(value) > 0xFFFF_FFFF:
        raise CodecError(f"InterfaceReport.mmio_ranges: at most 2**32-1 ranges, got {len(value)}")


def _ranges_tuple(values: Iterable[MmioRange]) -> tuple[MmioRange, ...]:
    return _as_tuple(values, "InterfaceReport.mmio_ranges")


@attrs.frozen(kw_only=True)
class InterfaceReport:
    """The TDISP device interface report (PCIe §11.3.11; libspdm pci_tdisp_device_interface_report_struct_t).

    What the TDI is, for the TVM to verify before it accepts the device. Layout::

        0  INTERFACE_INFO u16 | 2 reserved u16 | 4 MSI_X_MESSAGE_CONTROL u16 | 6 LNR_CONTROL u16
        8  TPH_CONTROL u32 | 12 MMIO_RANGE_COUNT u32 | 16 MMIO_RANGE[count] (16 B each)
        .. DEVICE_SPECIFIC_INFO_LEN u32 | DEVICE_SPECIFIC_INFO bytes
    """

    interface_info: int = attrs.field(validator=_uint(16))
    msix_message_control: int = attrs.field(validator=_uint(16))
    lnr_control: int = attrs.field(validator=_uint(16))
    tph_control: int = attrs.field(validator=_uint(32))
    mmio_ranges: tuple[MmioRange, ...] = attrs.field(converter=_ranges_tuple, validator=_check_ranges)
    device_specific_info: bytes = attrs.field(validator=_bytes(max_len=0xFFFF_FFFF))

    _HEAD: ClassVar[struct.Struct] = struct.Struct("<HHHHII")  # 16 bytes
    _LEN: ClassVar[struct.Struct] = struct.Struct("<I")

    def encode(self) -> bytes:
        head = self._HEAD.pack(
            self.interface_info,
            0,
            self.msix_message_control,
            self.lnr_control,
            self.tph_control,
            len(self.mmio_ranges),
        )
        ranges = b"".join(r.encode() for r in self.mmio_ranges)
        return head + ranges + self._LEN.pack(len(self.device_specific_info)) + self.device_specific_info

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> InterfaceReport:
        """The report from its bytes; :class:`CodecError` when lengths and counts disagree."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise CodecError(f"an interface report must be bytes, got {type(data).__name__}")
        data = bytes(data)
        head, tail = cls._HEAD.size, cls._LEN.size
        if len(data) < head + tail:
            raise CodecError(f"interface report of {len(data)} bytes is shorter than its {head + tail}-byte minimum")
        info, _reserved, msix, lnr, tph, count = cls._HEAD.unpack_from(data)
        need = head + MmioRange.SIZE * count + tail
        if len(data) < need:
            raise CodecError(f"interface report claims {count} MMIO ranges but has only {len(data)} bytes")
        ranges = tuple(
            MmioRange.decode(data[off : off + MmioRange.SIZE])
            for off in range(head, head + MmioRange.SIZE * count, MmioRange.SIZE)
        )
        (dsi_len,) = cls._LEN.unpack_from(data, need - tail)
        if len(data) != need + dsi_len:
            raise CodecError(f"interface report is {len(data)} bytes but its counts and lengths say {need + dsi_len}")
        return cls(
            interface_info=info,
            msix_message_control=msix,
            lnr_control=lnr,
            tph_control=tph,
            mmio_ranges=ranges,
            device_specific_info=data[need:],
        )


# ------------------------------------------------------------------------------------------ messages
@attrs.frozen(kw_only=True)
class _Message:
    """Common part of every TDISP message: header fields plus a body layout.

    Fixed-layout bodies are described by ``_FMT`` (a little-endian struct format; ``x`` marks reserved
    bytes) and ``_FIELDS`` (the attribute names of its non-pad items); variable bodies override
    ``_encode_body`` / ``_decode_body``.
    """

    code: ClassVar[int]
    _FMT: ClassVar[str] = ""
    _FIELDS: ClassVar[tuple[str, ...]] = ()
    _LAYOUT: ClassVar[struct.Struct] = struct.Struct("<")

    interface_id: InterfaceId = attrs.field(validator=_instance(InterfaceId))
    version: int = attrs.field(default=TDISP_VERSION_1_0, validator=_uint(8))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._LAYOUT = struct.Struct("<" + cls._FMT)

    def _encode_body(self) -> bytes:
        return self._LAYOUT.pack(*(getattr(self, f) for f in self._FIELDS))

    @classmethod
    def _decode_body(cls, body: bytes, common: dict[str, Any]) -> Self:
        layout = cls._LAYOUT
        if len(body) != layout.size:
            raise CodecError(
                f"{cls.__name__}: body must be {layout.size} bytes, got {len(body)}",
                code=ErrorCode.INVALID_REQUEST,
            )
        return cls(**common, **dict(zip(cls._FIELDS, layout.unpack(body), strict=True)))


# ----------------------------------------------------------------- requests (PCIe Table 11-3)
@attrs.frozen(kw_only=True)
class GetTdispVersion(_Message):
    """GET_TDISP_VERSION: header only."""

    code: ClassVar[int] = RequestCode.GET_TDISP_VERSION


@attrs.frozen(kw_only=True)
class GetTdispCapabilities(_Message):
    """GET_TDISP_CAPABILITIES: 16 TSM_CAPS u32."""

    code: ClassVar[int] = RequestCode.GET_TDISP_CAPABILITIES
    _FMT = "I"
    _FIELDS = ("tsm_caps",)

    tsm_caps: int = attrs.field(default=0, validator=_uint(32))


@attrs.frozen(kw_only=True)
class LockInterface(_Message):
    """LOCK_INTERFACE_REQUEST: 16 FLAGS u16, 18 default stream ID u8, 19 reserved u8,
    20 MMIO_REPORTING_OFFSET u64, 28 BIND_P2P_ADDRESS_MASK u64 (36 bytes in all)."""

    code: ClassVar[int] = RequestCode.LOCK_INTERFACE
    _FMT = "HBxQQ"
    _FIELDS = ("flags", "default_stream_id", "mmio_reporting_offset", "bind_p2p_address_mask")

    flags: int = attrs.field(validator=_uint(16))
    default_stream_id: int = attrs.field(validator=_uint(8))
    mmio_reporting_offset: int = attrs.field(validator=_uint(64))
    bind_p2p_address_mask: int = attrs.field(validator=_uint(64))


@attrs.frozen(kw_only=True)
class GetDeviceInterfaceReport(_Message):
    """GET_DEVICE_INTERFACE_REPORT: 16 OFFSET u16, 18 LENGTH u16."""

    code: ClassVar[int] = RequestCode.GET_DEVICE_INTERFACE_REPORT
    _FMT = "HH"
    _FIELDS = ("offset", "length")

    offset: int = attrs.field(validator=_uint(16))
    length: int = attrs.field(validator=_uint(16))


@attrs.frozen(kw_only=True)
class GetDeviceInterfaceState(_Message):
    """GET_DEVICE_INTERFACE_STATE: header only."""

    code: ClassVar[int] = RequestCode.GET_DEVICE_INTERFACE_STATE


@attrs.frozen(kw_only=True)
class StartInterface(_Message):
    """START_INTERFACE_REQUEST: 16 START_INTERFACE_NONCE (32 bytes)."""

    code: ClassVar[int] = RequestCode.START_INTERFACE
    _FMT = f"{NONCE_LEN}s"
    _FIELDS = ("start_interface_nonce",)

    start_interface_nonce: bytes = attrs.field(validator=_bytes(exact=NONCE_LEN))


@attrs.frozen(kw_only=True)
class StopInterface(_Message):
    """STOP_INTERFACE_REQUEST: header only."""

    code: ClassVar[int] = RequestCode.STOP_INTERFACE


@attrs.frozen(kw_only=True)
class BindP2PStream(_Message):
    """BIND_P2P_STREAM_REQUEST: 16 P2P_STREAM_ID u8 [, 17 STREAM_CONFIG u8].

    PCIe r6.2 (and libspdm before the TDISP XT update) has only the stream ID; libspdm @1e98c52b adds
    STREAM_CONFIG (bit 0 XT enable). ``stream_config=None`` is the 1-byte form, an int the 2-byte form,
    so both decode and re-encode to the same bytes.
    """

    code: ClassVar[int] = RequestCode.BIND_P2P_STREAM

    p2p_stream_id: int = attrs.field(validator=_uint(8))
    stream_config: int | None = attrs.field(default=None, validator=_opt_uint(8))

    def _encode_body(self) -> bytes:
        if self.stream_config is None:
            return bytes([self.p2p_stream_id])
        return bytes([self.p2p_stream_id, self.stream_config])

    @classmethod
    def _decode_body(cls, body: bytes, common: dict[str, Any]) -> Self:
        if len(body) not in (1, 2):
            raise CodecError(
                f"BindP2PStream: body must be 1 or 2 bytes, got {len(body)}", code=ErrorCode.INVALID_REQUEST
            )
        config = body[1] if len(body) == 2 else None
        return cls(**common, p2p_stream_id=body[0], stream_config=config)


@attrs.frozen(kw_only=True)
class UnbindP2PStream(_Message):
    """UNBIND_P2P_STREAM_REQUEST: 16 P2P_STREAM_ID u8."""

    code: ClassVar[int] = RequestCode.UNBIND_P2P_STREAM
    _FMT = "B"
    _FIELDS = ("p2p_stream_id",)

    p2p_stream_id: int = attrs.field(validator=_uint(8))


@attrs.frozen(kw_only=True)
class SetMmioAttribute(_Message):
    """SET_MMIO_ATTRIBUTE_REQUEST: 16 one MMIO_RANGE (16 bytes)."""

    code: ClassVar[int] = RequestCode.SET_MMIO_ATTRIBUTE

    mmio_range: MmioRange = attrs.field(validator=_instance(MmioRange))

    def _encode_body(self) -> bytes:
        return self.mmio_range.encode()

    @classmethod
    def _decode_body(cls, body: bytes, common: dict[str, Any]) -> Self:
        return cls(**common, mmio_range=MmioRange.decode(body))


def _vdm_encode(registry_id: int, vendor_id: bytes, payload: bytes) -> bytes:
    """VDM_REQUEST / VDM_RESPONSE body: 16 REGISTRY_ID u8, 17 VENDOR_ID_LEN u8, VENDOR_ID, data."""
    return bytes([registry_id, len(vendor_id)]) + vendor_id + payload


def _vdm_decode(body: bytes) -> dict[str, Any]:
    if len(body) < 2 or len(body) < 2 + body[1]:
        raise CodecError(
            f"VDM body of {len(body)} bytes is too short for its REGISTRY_ID, VENDOR_ID_LEN and vendor ID",
            code=ErrorCode.INVALID_REQUEST,
        )
    n = body[1]
    return {"registry_id": body[0], "vendor_id": body[2 : 2 + n], "payload": body[2 + n :]}


@attrs.frozen(kw_only=True)
class VdmRequest(_Message):
    """VDM_REQUEST: a vendor-defined request (REGISTRY_ID 0 PCI-SIG, 1 CXL)."""

    code: ClassVar[int] = RequestCode.VDM

    registry_id: int = attrs.field(validator=_uint(8))  # 0 PCI-SIG, 1 CXL
    vendor_id: bytes = attrs.field(validator=_bytes(max_len=0xFF))
    payload: bytes = attrs.field(validator=_bytes())

    def _encode_body(self) -> bytes:
        return _vdm_encode(self.registry_id, self.vendor_id, self.payload)

    @classmethod
    def _decode_body(cls, body: bytes, common: dict[str, Any]) -> Self:
        return cls(**common, **_vdm_decode(body))


# ----------------------------------------------------------------- responses (PCIe Table 11-4)
@attrs.frozen(kw_only=True)
class TdispVersion(_Message):
    """TDISP_VERSION: 16 VERSION_NUM_COUNT u8, then that many version bytes."""

    code: ClassVar[int] = ResponseCode.TDISP_VERSION

    versions: tuple[int, ...] = attrs.field(converter=_u8_tuple, validator=_check_u8_tuple)

    def _encode_body(self) -> bytes:
        return bytes([len(self.versions), *self.versions])

    @classmethod
    def _decode_body(cls, body: bytes, common: dict[str, Any]) -> Self:
        if not body or len(body) != 1 + body[0]:
            raise CodecError(
                f"TDISP_VERSION: VERSION_NUM_COUNT does not match a body of {len(body)} bytes",
                code=ErrorCode.INVALID_REQUEST,
            )
        return cls(**common, versions=tuple(body[1:]))


@attrs.frozen(kw_only=True)
class TdispCapabilities(_Message):
    """TDISP_CAPABILITIES: 16 DSM_CAPS u32, 20 REQ_MSGS_SUPPORTED[16], 36 LOCK_INTERFACE_FLAGS_SUPPORTED u16,
    38 reserved[3], 41 DEV_ADDR_WIDTH u8, 42 NUM_REQ_THIS u8, 43 NUM_REQ_ALL u8 (44 bytes in all)."""

    code: ClassVar[int] = ResponseCode.TDISP_CAPABILITIES
    _FMT = "I16sH3xBBB"
    _FIELDS = (
        "dsm_caps",
        "req_msgs_supported",
        "lock_interface_flags_supported",
        "dev_addr_width",
        "num_req_this",
        "num_req_all",
    )

    dsm_caps: int = attrs.field(validator=_uint(32))
    req_msgs_supported: bytes = attrs.field(validator=_bytes(exact=16))  # bit n = request code 0x80+n
    lock_interface_flags_supported: int = attrs.field(validator=_uint(16))
    dev_addr_width: int = attrs.field(validator=_uint(8))
    num_req_this: int = attrs.field(validator=_uint(8))
    num_req_all: int = attrs.field(validator=_uint(8))


@attrs.frozen(kw_only=True)
class LockInterfaceResponse(_Message):
    """LOCK_INTERFACE_RESPONSE: 16 START_INTERFACE_NONCE (32 bytes)."""

    code: ClassVar[int] = ResponseCode.LOCK_INTERFACE
    _FMT = f"{NONCE_LEN}s"
    _FIELDS = ("start_interface_nonce",)

    start_interface_nonce: bytes = attrs.field(validator=_bytes(exact=NONCE_LEN))


@attrs.frozen(kw_only=True)
class DeviceInterfaceReport(_Message):
    """DEVICE_INTERFACE_REPORT: 16 PORTION_LENGTH u16, 18 REMAINDER_LENGTH u16, 20 report bytes.

    PORTION_LENGTH is not a field: it is ``len(portion)`` and must match on decode.
    """

    code: ClassVar[int] = ResponseCode.DEVICE_INTERFACE_REPORT

    portion: bytes = attrs.field(validator=_bytes(max_len=0xFFFF))
    remainder_length: int = attrs.field(validator=_uint(16))

    def _encode_body(self) -> bytes:
        return struct.pack("<HH", len(self.portion), self.remainder_length) + self.portion

    @classmethod
    def _decode_body(cls, body: bytes, common: dict[str, Any]) -> Self:
        if len(body) < 4:
            raise CodecError(
                f"DEVICE_INTERFACE_REPORT body of {len(body)} bytes has no room for its two lengths",
                code=ErrorCode.INVALID_REQUEST,
            )
        portion_length, remainder = struct.unpack_from("<HH", body)
        if len(body) != 4 + portion_length:
            raise CodecError(
                f"DEVICE_INTERFACE_REPORT: PORTION_LENGTH {portion_length} but {len(body) - 4} bytes follow",
                code=ErrorCode.INVALID_REQUEST,
            )
        return cls(**common, portion=body[4:], remainder_length=remainder)


@attrs.frozen(kw_only=True)
class DeviceInterfaceState(_Message):
    """DEVICE_INTERFACE_STATE: 16 TDI_STATE u8 (0..3; anything else does not decode)."""

    code: ClassVar[int] = ResponseCode.DEVICE_INTERFACE_STATE
    _FMT = "B"
    _FIELDS = ("tdi_state",)

    tdi_state: TdiState = attrs.field(converter=_to_tdi_state)


@attrs.frozen(kw_only=True)
class StartInterfaceResponse(_Message):
    code: ClassVar[int] = ResponseCode.START_INTERFACE


@attrs.frozen(kw_only=True)
class StopInterfaceResponse(_Message):
    code: ClassVar[int] = ResponseCode.STOP_INTERFACE


@attrs.frozen(kw_only=True)
class BindP2PStreamResponse(_Message):
    code: ClassVar[int] = ResponseCode.BIND_P2P_STREAM


@attrs.frozen(kw_only=True)
class UnbindP2PStreamResponse(_Message):
    code: ClassVar[int] = ResponseCode.UNBIND_P2P_STREAM


@attrs.frozen(kw_only=True)
class SetMmioAttributeResponse(_Message):
    code: ClassVar[int] = ResponseCode.SET_MMIO_ATTRIBUTE


@attrs.frozen(kw_only=True)
class VdmResponse(_Message):
    """VDM_RESPONSE: the vendor-defined answer, same layout as the request."""

    code: ClassVar[int] = ResponseCode.VDM

    registry_id: int = attrs.field(validator=_uint(8))
    vendor_id: bytes = attrs.field(validator=_bytes(max_len=0xFF))
    payload: bytes = attrs.field(validator=_bytes())

    def _encode_body(self) -> bytes:
        return _vdm_encode(self.registry_id, self.vendor_id, self.payload)

    @classmethod
    def _decode_body(cls, body: bytes, common: dict[str, Any]) -> Self:
        return cls(**common, **_vdm_decode(body))


@attrs.frozen(kw_only=True)
class TdispError(_Message):
    """TDISP_ERROR: 16 ERROR_CODE u32, 20 ERROR_DATA u32, 24 EXTENDED_ERROR_DATA (optional bytes).

    ``error_code`` is kept as the raw integer so codes outside :class:`ErrorCode` still decode.
    """

    code: ClassVar[int] = ResponseCode.TDISP_ERROR

    error_code: int = attrs.field(validator=_uint(32))
    error_data: int = attrs.field(default=0, validator=_uint(32))
    extended_error_data: bytes = attrs.field(default=b"", validator=_bytes())

    def _encode_body(self) -> bytes:
        return struct.pack("<II", self.error_code, self.error_data) + self.extended_error_data

    @classmethod
    def _decode_body(cls, body: bytes, common: dict[str, Any]) -> Self:
        if len(body) < 8:
            raise CodecError(
                f"TDISP_ERROR body of {len(body)} bytes is shorter than ERROR_CODE + ERROR_DATA",
                code=ErrorCode.INVALID_REQUEST,
            )
        error_code, error_data = struct.unpack_from("<II", body)
        return cls(**common, error_code=error_code, error_data=error_data, extended_error_data=body[8:])


Request = (
    GetTdispVersion
    | GetTdispCapabilities
    | LockInterface
    | GetDeviceInterfaceReport
    | GetDeviceInterfaceState
    | StartInterface
    | StopInterface
    | BindP2PStream
    | UnbindP2PStream
    | SetMmioAttribute
    | VdmRequest
)
Response = (
    TdispVersion
    | TdispCapabilities
    | LockInterfaceResponse
    | DeviceInterfaceReport
    | DeviceInterfaceState
    | StartInterfaceResponse
    | StopInterfaceResponse
    | BindP2PStreamResponse
    | UnbindP2PStreamResponse
    | SetMmioAttributeResponse
    | VdmResponse
    | TdispError
)

_REQUESTS: tuple[type[_Message], ...] = (
    GetTdispVersion,
    GetTdispCapabilities,
    LockInterface,
    GetDeviceInterfaceReport,
    GetDeviceInterfaceState,
    StartInterface,
    StopInterface,
    BindP2PStream,
    UnbindP2PStream,
    SetMmioAttribute,
    VdmRequest,
)
_RESPONSES: tuple[type[_Message], ...] = (
    TdispVersion,
    TdispCapabilities,
    LockInterfaceResponse,
    DeviceInterfaceReport,
    DeviceInterfaceState,
    StartInterfaceResponse,
    StopInterfaceResponse,
    BindP2PStreamResponse,
    UnbindP2PStreamResponse,
    SetMmioAttributeResponse,
    VdmResponse,
    TdispError,
)
_REQUEST_BY_CODE: dict[int, type[_Message]] = {int(c.code): c for c in _REQUESTS}
_RESPONSE_BY_CODE: dict[int, type[_Message]] = {int(c.code): c for c in _RESPONSES}
MESSAGE_TYPES: dict[int, type] = {**_REQUEST_BY_CODE, **_RESPONSE_BY_CODE}


def encode(msg: Request | Response) -> bytes:
    """The message's wire bytes (header + body); reserved fields are zero."""
    if not isinstance(msg, _Message):
        raise CodecError(f"not a TDISP message: {type(msg).__name__}")
    iid = msg.interface_id
    return _HEADER.pack(msg.version, msg.code, 0, iid.function_id, iid.reserved) + msg._encode_body()


def _decode(data: bytes | bytearray | memoryview, what: str) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TdispDecodeError(
            f"a TDISP {what} must be bytes, got {type(data).__name__}", code=ErrorCode.INVALID_REQUEST
        )
    return _decode_bytes(bytes(data), what)


@functools.lru_cache(maxsize=1024)
def _decode_bytes(data: bytes, what: str) -> Any:
    """:func:`_decode` of immutable bytes, kept: a message is decoded by its sender, its receiver and several
    rules, and every message is a frozen value (a failure is not kept, so it is raised afresh each time)."""
    table = _REQUEST_BY_CODE if what == "request" else _RESPONSE_BY_CODE
    if len(data) < HEADER_LEN:
        raise TdispDecodeError(
            f"TDISP {what} of {len(data)} bytes is shorter than the {HEADER_LEN}-byte header",
            code=ErrorCode.INVALID_REQUEST,
            message_type=data[1] if len(data) > 1 else None,
        )
    version, message_type, _reserved, function_id, reserved64 = _HEADER.unpack_from(data)
    iid = InterfaceId(function_id=function_id, reserved=reserved64)
    if version >> 4 != TDISP_VERSION_1_0 >> 4 and not _version_mismatch_error(what, message_type, data):
        raise TdispDecodeError(
            f"TDISP version {version:#04x} is not 1.x",
            code=ErrorCode.VERSION_MISMATCH,
            interface_id=iid,
            message_type=message_type,
        )
    cls = table.get(message_type)
    if cls is None:
        raise TdispDecodeError(
            f"unknown TDISP {what} code {message_type:#04x}",
            code=ErrorCode.UNSUPPORTED_REQUEST,
            interface_id=iid,
            message_type=message_type,
        )
    try:
        return cls._decode_body(data[HEADER_LEN:], {"interface_id": iid, "version": version})
    except CodecError as exc:
        raise TdispDecodeError(
            str(exc), code=ErrorCode.INVALID_REQUEST, interface_id=iid, message_type=message_type
        ) from None


def _version_mismatch_error(what: str, message_type: int, data: bytes) -> bool:
    """A TDISP_ERROR VERSION_MISMATCH in another version than 1.x: well formed, since a responder may
    answer a request in a version it does not speak in that version's header (PCIe §11.3.1, Table 11-28)."""
    return (
        what == "response"
        and message_type == ResponseCode.TDISP_ERROR
        and len(data) >= HEADER_LEN + 8
        and struct.unpack_from("<I", data, HEADER_LEN)[0] == ErrorCode.VERSION_MISMATCH
    )


def decode_request(data: bytes | bytearray | memoryview) -> Request:
    """A request from its bytes; :class:`TdispDecodeError` carrying the code to answer with otherwise."""
    msg: Request = _decode(data, "request")
    return msg


def decode_response(data: bytes | bytearray | memoryview) -> Response:
    """A response from its bytes; :class:`TdispDecodeError` otherwise."""
    msg: Response = _decode(data, "response")
    return msg
