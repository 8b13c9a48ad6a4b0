"""Wire formats between the suite and a device process, laid out as DMTF's spdm-emu does.

Three layers, outermost first:

* **socket frame** (spdm-emu ``spdm_emu_common/command.c``): u32 BE command, u32 BE transport type,
  u32 BE payload size, payload. Commands NORMAL 0x0001, CONTINUE 0xFFFD, SHUTDOWN 0xFFFE,
  UNKNOWN 0xFFFF (spdm-emu's answer to a command it does not know), TEST 0xDEAD; transports NONE 0,
  MCTP 1, PCI_DOE 2, TCP 3.
* **PCI DOE data object** (PCIe 6.x §6.30.1): u16 LE vendor ID 0x0001, u8 data object type
  (0 discovery, 1 SPDM, 2 secured SPDM), u8 reserved, u32 LE length in dwords including this 8-byte
  header (bits 17:0; 0 means 2^18); the message padded to a dword.
* **SPDM** (DSP0274 1.2): GET_VERSION / VERSION, GET_CAPABILITIES / CAPABILITIES,
  NEGOTIATE_ALGORITHMS / ALGORITHMS (together "VCA"), ERROR, and VENDOR_DEFINED_REQUEST 0xFE /
  RESPONSE 0x7E carrying PCI-SIG protocols (PCIe 6.x §6.31.3): u16 standard ID 3 (PCI-SIG), u8
  vendor-ID length 2, u16 vendor ID 0x0001, u16 payload length, then the payload: one protocol-ID
  byte (0 IDE_KM, 1 TDISP) and the TDISP / IDE_KM message.

Every decoder raises :class:`FramingError` (a CodecError) on bad bytes and nothing else; its ``code``
is the SPDM error code a responder answers with (InvalidRequest for malformed bytes,
UnsupportedRequest for a request it does not implement). Constructors of the value types raise
InvalidArgument for out-of-range fields.
"""

from __future__ import annotations

import enum
import socket
import struct
from collections.abc import Callable
from typing import Any, ClassVar, TypeAlias

import attrs

from teeio_conformance.contract.errors import CodecError, InvalidArgument

__all__ = [
    "DEFAULT_SESSION_SIZES",
    "DOE_HEADER",
    "FRAME_HEADER",
    "MAX_PAYLOAD",
    "SPDM_VERSION",
    "SPDM_VERSION_10",
    "AlgStruct",
    "Algorithms",
    "Capabilities",
    "Command",
    "DoeDiscoveryRequest",
    "DoeDiscoveryResponse",
    "DoeType",
    "Frame",
    "FramingError",
    "GetCapabilities",
    "GetVersion",
    "NegotiateAlgorithms",
    "SessionSizes",
    "SpdmCode",
    "SpdmError",
    "SpdmErrorCode",
    "SpdmMessage",
    "StreamReader",
    "Transport",
    "VendorMessage",
    "Version",
    "decode_doe",
    "decode_frame_header",
    "decode_spdm",
    "decode_vendor",
    "encode_doe",
    "encode_frame",
    "encode_vendor",
    "get_capabilities",
    "get_version",
    "negotiate_algorithms",
    "spdm_error",
    "spdm_length",
    "strip_doe_padding",
]

FRAME_HEADER = struct.Struct(">III")
DOE_HEADER = struct.Struct("<HBBI")
MAX_PAYLOAD = 1 << 20
"""Largest frame payload accepted: one maximal DOE object (2^18 dwords). Larger closes the connection."""
DOE_VENDOR_PCI_SIG = 0x0001
DOE_MAX_DWORDS = 1 << 18
SPDM_VERSION_10 = 0x10
SPDM_VERSION = 0x12
PCI_SIG_STANDARD_ID = 3
PCI_SIG_VENDOR_ID = 0x0001
VENDOR_HEADER = struct.Struct("<HBHH")  # standard ID, vendor-ID length, vendor ID, payload length
MAX_VENDOR_MESSAGE = 0xFFFF - 1  # u16 payload length, less the protocol-ID byte
NEGOTIATE_MAX_LENGTH_12 = 0x80  # DSP0274 1.2: NEGOTIATE_ALGORITHMS is at most 128 bytes
MAX_EXT_ALGS_12 = 0x14  # DSP0274 1.2: A' + E' at most 20
MIN_DATA_TRANSFER_SIZE_12 = 42  # DSP0274 1.2 MinDataTransferSize


class FramingError(CodecError):
    """Bytes that are not a valid frame, DOE object or SPDM message."""


class Command(enum.IntEnum):
    NORMAL = 0x0001
    CONTINUE = 0xFFFD
    SHUTDOWN = 0xFFFE
    UNKNOWN = 0xFFFF
    TEST = 0xDEAD


class Transport(enum.IntEnum):
    NONE = 0
    MCTP = 1
    PCI_DOE = 2
    TCP = 3


class DoeType(enum.IntEnum):
    DISCOVERY = 0
    SPDM = 1
    SECURED_SPDM = 2


class SpdmCode(enum.IntEnum):
    VERSION = 0x04
    CAPABILITIES = 0x61
    ALGORITHMS = 0x63
    VENDOR_DEFINED_RESPONSE = 0x7E
    ERROR = 0x7F
    GET_VERSION = 0x84
    GET_CAPABILITIES = 0xE1
    NEGOTIATE_ALGORITHMS = 0xE3
    VENDOR_DEFINED_REQUEST = 0xFE


class SpdmErrorCode(enum.IntEnum):
    INVALID_REQUEST = 0x01
    BUSY = 0x03
    UNEXPECTED_REQUEST = 0x04
    UNSPECIFIED = 0x05
    UNSUPPORTED_REQUEST = 0x07
    VERSION_MISMATCH = 0x41


class AlgType(enum.IntEnum):
    """AlgType of the algorithm structure tables (DSP0274 1.2 NEGOTIATE_ALGORITHMS)."""

    DHE = 2
    AEAD = 3
    REQ_BASE_ASYM_ALG = 4
    KEY_SCHEDULE = 5


# Capability flags (DSP0274 1.2 CAPABILITIES Flags) and algorithm bits used by the fixed selection.
CAP_CHAL = 0x0000_0004
CAP_MEAS_SIG = 0x0000_0010
CAP_KEY_EX = 0x0000_0200
HASH_SHA_256 = 0x01
HASH_SHA_384 = 0x02
ASYM_ECDSA_P256 = 0x10
ASYM_ECDSA_P384 = 0x80
MEAS_SPEC_DMTF = 0x01


# --- validators
def _uint(bits: int) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    limit = (1 << bits) - 1

    def check(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
            raise InvalidArgument(
                f"{type(inst).__name__}.{attribute.name} must be an integer in 0..{limit:#x}, got {value!r}"
            )

    return check


def _uints(bits: int, max_count: int) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    limit = (1 << bits) - 1

    def check(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if (
            not isinstance(value, tuple)
            or len(value) > max_count
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= limit for v in value)
        ):
            raise InvalidArgument(
                f"{type(inst).__name__}.{attribute.name} must be a tuple of at most {max_count} "
                f"integers in 0..{limit:#x}, got {value!r}"
            )

    return check


def _blob(max_len: int) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, bytes) or len(value) > max_len:
            got = f"{len(value)} bytes" if isinstance(value, bytes | bytearray) else repr(type(value).__name__)
            raise InvalidArgument(
                f"{type(inst).__name__}.{attribute.name} must be bytes of at most {max_len} bytes, got {got}"
            )

    return check


def _flag(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{type(inst).__name__}.{attribute.name} must be a bool, got {value!r}")


def _need(data: bytes, size: int, what: str, *, exact: bool = True) -> None:
    if len(data) < size or (exact and len(data) != size):
        raise FramingError(
            f"{what} must be {'exactly' if exact else 'at least'} {size} bytes, got {len(data)}",
            code=SpdmErrorCode.INVALID_REQUEST,
        )


# --- socket frame
@attrs.frozen(kw_only=True)
class Frame:
    """One spdm-emu socket frame (both directions use the same layout)."""

    command: int = attrs.field(validator=_uint(32))
    transport: int = attrs.field(default=Transport.PCI_DOE, validator=_uint(32))
    payload: bytes = attrs.field(default=b"", validator=_blob(MAX_PAYLOAD))

    def encode(self) -> bytes:
        return FRAME_HEADER.pack(self.command, self.transport, len(self.payload)) + self.payload

    @classmethod
    def decode(cls, data: bytes) -> Frame:
        """A whole frame; its size field must match the bytes that follow."""
        command, transport, size = decode_frame_header(data[: FRAME_HEADER.size])
        if len(data) - FRAME_HEADER.size != size:
            raise FramingError(f"frame says {size} payload bytes, {len(data) - FRAME_HEADER.size} follow")
        return cls(command=command, transport=transport, payload=bytes(data[FRAME_HEADER.size :]))


def encode_frame(command: int, transport: int, payload: bytes) -> bytes:
    return Frame(command=command, transport=transport, payload=payload).encode()


def decode_frame_header(data: bytes) -> tuple[int, int, int]:
    """(command, transport, size) of a frame header; the reader then takes ``size`` payload bytes."""
    if len(data) != FRAME_HEADER.size:
        raise FramingError(f"a frame header is {FRAME_HEADER.size} bytes, got {len(data)}")
    command, transport, size = FRAME_HEADER.unpack(data)
    if size > MAX_PAYLOAD:
        raise FramingError(f"frame payload of {size} bytes exceeds the {MAX_PAYLOAD}-byte limit")
    return command, transport, size


class StreamReader:
    """Exact-size reads from a stream socket, buffered: one ``recv`` usually brings a whole frame.

    Re-arms TCP_QUICKACK (Linux) before each receive: without it the kernel's delayed ACK stalls
    every small request/response round trip for ~40 ms.
    """

    _QUICKACK = getattr(socket, "TCP_QUICKACK", None)

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()

    def read_exact(self, n: int) -> bytes | None:
        """``n`` bytes, or None when the peer closed before they all came. Socket errors propagate."""
        while len(self._buf) < n:
            if self._QUICKACK is not None:
                self._sock.setsockopt(socket.IPPROTO_TCP, self._QUICKACK, 1)
            chunk = self._sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                return None
            self._buf += chunk
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def frame_waiting(self) -> bool:
        """Is a whole frame already buffered (the peer pipelined it), so reading it will not block?"""
        if len(self._buf) < FRAME_HEADER.size:
            return False
        size = FRAME_HEADER.unpack_from(self._buf)[2]
        return len(self._buf) >= FRAME_HEADER.size + size


# --- PCI DOE
def encode_doe(message: bytes, doe_type: int = DoeType.SPDM) -> bytes:
    """A DOE data object carrying ``message``, zero-padded to a dword (PCIe 6.x §6.30.1)."""
    if not 0 <= doe_type <= 0xFF:
        raise InvalidArgument(f"DOE data object type must be in 0..0xff, got {doe_type}")
    padded = bytes(message) + b"\0" * (-len(message) % 4)
    dwords = len(padded) // 4 + 2
    if dwords > DOE_MAX_DWORDS:
        raise InvalidArgument(f"DOE data object of {dwords} dwords exceeds the 2^18-dword limit")
    return DOE_HEADER.pack(DOE_VENDOR_PCI_SIG, doe_type, 0, dwords % DOE_MAX_DWORDS) + padded


def decode_doe(data: bytes) -> tuple[int, bytes]:
    """(data object type, body with its padding kept): only the layer inside knows its own length."""
    if len(data) < DOE_HEADER.size or len(data) % 4:
        raise FramingError(
            f"a DOE object is at least 8 bytes and a whole number of dwords, got {len(data)} bytes",
            code=SpdmErrorCode.INVALID_REQUEST,
        )
    vendor, doe_type, _reserved, length = DOE_HEADER.unpack_from(data)
    dwords = (length & (DOE_MAX_DWORDS - 1)) or DOE_MAX_DWORDS  # bits 31:18 reserved; 0 means 2^18
    if vendor != DOE_VENDOR_PCI_SIG:
        raise FramingError(f"DOE vendor ID {vendor:#06x} is not PCI-SIG (0x0001)", code=SpdmErrorCode.INVALID_REQUEST)
    if dwords * 4 != len(data):
        raise FramingError(
            f"DOE length field says {dwords} dwords, the object is {len(data)} bytes",
            code=SpdmErrorCode.INVALID_REQUEST,
        )
    return doe_type, bytes(data[DOE_HEADER.size :])


@attrs.frozen(kw_only=True)
class DoeDiscoveryRequest:
    """DOE discovery request body: the index of the data object protocol asked about."""

    index: int = attrs.field(validator=_uint(8))

    def encode(self) -> bytes:
        return bytes([self.index, 0, 0, 0])

    @classmethod
    def decode(cls, body: bytes) -> DoeDiscoveryRequest:
        _need(body, 4, "DOE discovery request body")
        return cls(index=body[0])


@attrs.frozen(kw_only=True)
class DoeDiscoveryResponse:
    """DOE discovery response body: one supported (vendor, type) and the next index (0 = last)."""

    vendor_id: int = attrs.field(default=DOE_VENDOR_PCI_SIG, validator=_uint(16))
    data_object_type: int = attrs.field(validator=_uint(8))
    next_index: int = attrs.field(validator=_uint(8))

    def encode(self) -> bytes:
        return struct.pack("<HBB", self.vendor_id, self.data_object_type, self.next_index)

    @classmethod
    def decode(cls, body: bytes) -> DoeDiscoveryResponse:
        _need(body, 4, "DOE discovery response body")
        vendor, dot, nxt = struct.unpack("<HBB", body)
        return cls(vendor_id=vendor, data_object_type=dot, next_index=nxt)


# --- SPDM VCA
def _header(data: bytes, code: int, what: str) -> int:
    if len(data) < 4 or data[1] != code:
        got = f"code {data[1]:#04x}" if len(data) > 1 else f"{len(data)} bytes"
        raise FramingError(f"not an SPDM {what} ({got})", code=SpdmErrorCode.INVALID_REQUEST)
    return data[0]


@attrs.frozen(kw_only=True)
class GetVersion:
    """GET_VERSION: always SPDM 1.0 framing (DSP0274 §10.3)."""

    version: int = attrs.field(default=SPDM_VERSION_10, validator=_uint(8))

    def encode(self) -> bytes:
        return bytes([self.version, SpdmCode.GET_VERSION, 0, 0])

    @classmethod
    def decode(cls, data: bytes) -> GetVersion:
        version = _header(data, SpdmCode.GET_VERSION, "GET_VERSION")
        _need(data, 4, "GET_VERSION")
        return cls(version=version)


@attrs.frozen(kw_only=True)
class Version:
    """VERSION: the version number entries (bits 15:12 major, 11:8 minor, 7:4 update, 3:0 alpha)."""

    entries: tuple[int, ...] = attrs.field(default=(SPDM_VERSION << 8,), validator=_uints(16, 255))
    version: int = attrs.field(default=SPDM_VERSION_10, validator=_uint(8))

    def encode(self) -> bytes:
        return bytes([self.version, SpdmCode.VERSION, 0, 0, 0, len(self.entries)]) + struct.pack(
            f"<{len(self.entries)}H", *self.entries
        )

    @classmethod
    def decode(cls, data: bytes) -> Version:
        version = _header(data, SpdmCode.VERSION, "VERSION")
        _need(data, 6, "VERSION", exact=False)
        count = data[5]
        _need(data, 6 + 2 * count, f"VERSION with {count} entries")
        if count == 0:
            raise FramingError("VERSION lists no version entries", code=SpdmErrorCode.INVALID_REQUEST)
        return cls(entries=struct.unpack_from(f"<{count}H", data, 6), version=version)

    @property
    def versions(self) -> tuple[int, ...]:
        """The entries as SPDMVersion bytes (major.minor, e.g. 0x12)."""
        return tuple(e >> 8 for e in self.entries)


_CAPS = struct.Struct("<BBHIII")  # reserved, CTExponent, reserved, Flags, DataTransferSize, MaxSPDMmsgSize


@attrs.frozen(kw_only=True)
class _CapabilitiesBase:
    ct_exponent: int = attrs.field(default=0, validator=_uint(8))
    flags: int = attrs.field(default=0, validator=_uint(32))
    data_transfer_size: int = attrs.field(default=0x1200, validator=_uint(32))
    max_spdm_msg_size: int = attrs.field(default=0x1200, validator=_uint(32))
    version: int = attrs.field(default=SPDM_VERSION, validator=_uint(8))

    _code: ClassVar[SpdmCode] = SpdmCode.GET_CAPABILITIES

    def encode(self) -> bytes:
        return bytes([self.version, self._code, 0, 0]) + _CAPS.pack(
            0, self.ct_exponent, 0, self.flags, self.data_transfer_size, self.max_spdm_msg_size
        )

    @classmethod
    def _decode(cls, data: bytes) -> dict[str, int]:
        version = _header(data, cls._code, cls._code.name)
        _need(data, 4 + _CAPS.size, f"SPDM 1.2 {cls._code.name}")
        _r, ct, _r2, flags, dts, mms = _CAPS.unpack_from(data, 4)
        return {
            "version": version,
            "ct_exponent": ct,
            "flags": flags,
            "data_transfer_size": dts,
            "max_spdm_msg_size": mms,
        }


@attrs.frozen(kw_only=True)
class GetCapabilities(_CapabilitiesBase):
    """GET_CAPABILITIES, SPDM 1.2 layout (20 bytes)."""

    _code = SpdmCode.GET_CAPABILITIES

    @classmethod
    def decode(cls, data: bytes) -> GetCapabilities:
        return cls(**cls._decode(data))


@attrs.frozen(kw_only=True)
class Capabilities(_CapabilitiesBase):
    """CAPABILITIES, SPDM 1.2 layout (20 bytes)."""

    _code = SpdmCode.CAPABILITIES

    @classmethod
    def decode(cls, data: bytes) -> Capabilities:
        return cls(**cls._decode(data))


@attrs.frozen(kw_only=True)
class AlgStruct:
    """One algorithm structure table: AlgType, a 2-byte AlgSupported bit mask, extended algorithms."""

    alg_type: int = attrs.field(validator=_uint(8))
    supported: int = attrs.field(default=0, validator=_uint(16))
    ext: tuple[int, ...] = attrs.field(default=(), validator=_uints(32, 15))

    def encode(self) -> bytes:
        return (
            bytes([self.alg_type, (2 << 4) | len(self.ext)])
            + struct.pack("<H", self.supported)
            + struct.pack(f"<{len(self.ext)}I", *self.ext)
        )


def _decode_alg_structs(data: bytes, offset: int, count: int, end: int) -> tuple[AlgStruct, ...]:
    out: list[AlgStruct] = []
    for _ in range(count):
        if offset + 2 > end:
            raise FramingError(
                "algorithm structure tables run past the message length", code=SpdmErrorCode.INVALID_REQUEST
            )
        alg_type, alg_count = data[offset], data[offset + 1]
        fixed, ext = alg_count >> 4, alg_count & 0xF
        if fixed != 2:
            raise FramingError(
                f"algorithm structure AlgType {alg_type} has {fixed} fixed bytes, expected 2",
                code=SpdmErrorCode.INVALID_REQUEST,
            )
        if alg_type not in tuple(AlgType) or (out and alg_type <= out[-1].alg_type):
            raise FramingError(
                f"algorithm structure AlgType {alg_type} is unknown or out of order",
                code=SpdmErrorCode.INVALID_REQUEST,
            )
        size = 4 + 4 * ext
        if offset + size > end:
            raise FramingError(
                "algorithm structure tables run past the message length", code=SpdmErrorCode.INVALID_REQUEST
            )
        (supported,) = struct.unpack_from("<H", data, offset + 2)
        out.append(
            AlgStruct(alg_type=alg_type, supported=supported, ext=struct.unpack_from(f"<{ext}I", data, offset + 4))
        )
        offset += size
    if offset != end:
        raise FramingError(
            f"{end - offset} stray bytes after the algorithm structure tables",
            code=SpdmErrorCode.INVALID_REQUEST,
        )
    return tuple(out)


_NEG = struct.Struct("<HBBII12xBBH")  # Length, MeasSpec, OtherParams, BaseAsym, BaseHash, rsvd, A', E', rsvd


@attrs.frozen(kw_only=True)
class NegotiateAlgorithms:
    """NEGOTIATE_ALGORITHMS, SPDM 1.2 layout: 32 fixed bytes, extended algorithms, structure tables."""

    measurement_specification: int = attrs.field(default=0, validator=_uint(8))
    other_params_support: int = attrs.field(default=0, validator=_uint(8))
    base_asym_algo: int = attrs.field(default=0, validator=_uint(32))
    base_hash_algo: int = attrs.field(default=0, validator=_uint(32))
    ext_asym: tuple[int, ...] = attrs.field(default=(), validator=_uints(32, MAX_EXT_ALGS_12))
    ext_hash: tuple[int, ...] = attrs.field(default=(), validator=_uints(32, MAX_EXT_ALGS_12))
    alg_structs: tuple[AlgStruct, ...] = ()
    version: int = attrs.field(default=SPDM_VERSION, validator=_uint(8))

    def encode(self) -> bytes:
        tail = (
            struct.pack(f"<{len(self.ext_asym)}I", *self.ext_asym)
            + struct.pack(f"<{len(self.ext_hash)}I", *self.ext_hash)
            + b"".join(s.encode() for s in self.alg_structs)
        )
        length = 4 + _NEG.size + len(tail)
        if length > 0xFFFF:
            raise InvalidArgument(f"NEGOTIATE_ALGORITHMS of {length} bytes does not fit its u16 Length field")
        return (
            bytes([self.version, SpdmCode.NEGOTIATE_ALGORITHMS, len(self.alg_structs), 0])
            + _NEG.pack(
                length,
                self.measurement_specification,
                self.other_params_support,
                self.base_asym_algo,
                self.base_hash_algo,
                len(self.ext_asym),
                len(self.ext_hash),
                0,
            )
            + tail
        )

    @classmethod
    def decode(cls, data: bytes) -> NegotiateAlgorithms:
        version = _header(data, SpdmCode.NEGOTIATE_ALGORITHMS, "NEGOTIATE_ALGORITHMS")
        _need(data, 32, "NEGOTIATE_ALGORITHMS", exact=False)
        length, mspec, other, asym, hsh, n_asym, n_hash, _r = _NEG.unpack_from(data, 4)
        if length != len(data) or length > NEGOTIATE_MAX_LENGTH_12:
            raise FramingError(
                f"NEGOTIATE_ALGORITHMS Length {length} does not match its {len(data)} bytes "
                f"(at most {NEGOTIATE_MAX_LENGTH_12})",
                code=SpdmErrorCode.INVALID_REQUEST,
            )
        if n_asym + n_hash > MAX_EXT_ALGS_12 or 32 + 4 * (n_asym + n_hash) > length:
            raise FramingError(
                f"NEGOTIATE_ALGORITHMS claims {n_asym}+{n_hash} extended algorithms",
                code=SpdmErrorCode.INVALID_REQUEST,
            )
        ext = struct.unpack_from(f"<{n_asym + n_hash}I", data, 32)
        structs = _decode_alg_structs(data, 32 + 4 * (n_asym + n_hash), data[2], length)
        return cls(
            measurement_specification=mspec,
            other_params_support=other,
            base_asym_algo=asym,
            base_hash_algo=hsh,
            ext_asym=ext[:n_asym],
            ext_hash=ext[n_asym:],
            alg_structs=structs,
            version=version,
        )


_ALG = struct.Struct("<HBBIII12xBBH")  # Length, MeasSpecSel, OtherSel, MeasHash, AsymSel, HashSel, rsvd, counts


@attrs.frozen(kw_only=True)
class Algorithms:
    """ALGORITHMS, SPDM 1.2 layout: 36 fixed bytes, selected extended algorithms, structure tables."""

    measurement_specification_sel: int = attrs.field(default=0, validator=_uint(8))
    other_params_selection: int = attrs.field(default=0, validator=_uint(8))
    measurement_hash_algo: int = attrs.field(default=0, validator=_uint(32))
    base_asym_sel: int = attrs.field(default=0, validator=_uint(32))
    base_hash_sel: int = attrs.field(default=0, validator=_uint(32))
    ext_asym_sel: tuple[int, ...] = attrs.field(default=(), validator=_uints(32, 1))
    ext_hash_sel: tuple[int, ...] = attrs.field(default=(), validator=_uints(32, 1))
    alg_structs: tuple[AlgStruct, ...] = ()
    version: int = attrs.field(default=SPDM_VERSION, validator=_uint(8))

    def encode(self) -> bytes:
        tail = (
            struct.pack(f"<{len(self.ext_asym_sel)}I", *self.ext_asym_sel)
            + struct.pack(f"<{len(self.ext_hash_sel)}I", *self.ext_hash_sel)
            + b"".join(s.encode() for s in self.alg_structs)
        )
        length = 4 + _ALG.size + len(tail)
        return (
            bytes([self.version, SpdmCode.ALGORITHMS, len(self.alg_structs), 0])
            + _ALG.pack(
                length,
                self.measurement_specification_sel,
                self.other_params_selection,
                self.measurement_hash_algo,
                self.base_asym_sel,
                self.base_hash_sel,
                len(self.ext_asym_sel),
                len(self.ext_hash_sel),
                0,
            )
            + tail
        )

    @classmethod
    def decode(cls, data: bytes) -> Algorithms:
        version = _header(data, SpdmCode.ALGORITHMS, "ALGORITHMS")
        _need(data, 36, "ALGORITHMS", exact=False)
        length, mspec, other, mhash, asym, hsh, n_asym, n_hash, _r = _ALG.unpack_from(data, 4)
        if length != len(data):
            raise FramingError(
                f"ALGORITHMS Length {length} does not match its {len(data)} bytes",
                code=SpdmErrorCode.INVALID_REQUEST,
            )
        if n_asym > 1 or n_hash > 1 or 36 + 4 * (n_asym + n_hash) > length:
            raise FramingError(
                f"ALGORITHMS selects {n_asym}+{n_hash} extended algorithms (at most one each)",
                code=SpdmErrorCode.INVALID_REQUEST,
            )
        ext = struct.unpack_from(f"<{n_asym + n_hash}I", data, 36)
        structs = _decode_alg_structs(data, 36 + 4 * (n_asym + n_hash), data[2], length)
        return cls(
            measurement_specification_sel=mspec,
            other_params_selection=other,
            measurement_hash_algo=mhash,
            base_asym_sel=asym,
            base_hash_sel=hsh,
            ext_asym_sel=ext[:n_asym],
            ext_hash_sel=ext[n_asym:],
            alg_structs=structs,
            version=version,
        )


_ERROR_EXTENDED: dict[int, int | None] = {0x42: 4, 0xFF: None}  # extended data bytes; None: any


@attrs.frozen(kw_only=True)
class SpdmError:
    """ERROR: param1 is the error code, param2 the error data (e.g. the unsupported request code), then
    extended error data: 4 bytes for ResponseNotReady (0x42), any for a vendor-defined error (0xFF),
    none otherwise (DSP0274 1.2 ERROR)."""

    code: int = attrs.field(validator=_uint(8))
    data: int = attrs.field(default=0, validator=_uint(8))
    version: int = attrs.field(default=SPDM_VERSION, validator=_uint(8))
    extended: bytes = attrs.field(default=b"", validator=_blob(0xFFFF))

    def __attrs_post_init__(self) -> None:
        want = _ERROR_EXTENDED.get(self.code, 0)
        if want is not None and len(self.extended) != want:
            raise InvalidArgument(
                f"SpdmError.extended must be {want} bytes for error code {self.code:#04x}, got {len(self.extended)}"
            )

    def encode(self) -> bytes:
        return bytes([self.version, SpdmCode.ERROR, self.code, self.data]) + self.extended

    @classmethod
    def decode(cls, data: bytes) -> SpdmError:
        version = _header(data, SpdmCode.ERROR, "ERROR")
        want = _ERROR_EXTENDED.get(data[2], 0)
        if want is not None:
            _need(data, 4 + want, f"ERROR {data[2]:#04x}")
        return cls(code=data[2], data=data[3], version=version, extended=bytes(data[4:]))

    @property
    def name(self) -> str:
        try:
            return SpdmErrorCode(self.code).name
        except ValueError:
            return f"error {self.code:#04x}"


def spdm_error(code: int, version: int = SPDM_VERSION, data: int = 0) -> bytes:
    return SpdmError(code=code, data=data, version=version).encode()


# --- vendor defined
@attrs.frozen(kw_only=True)
class VendorMessage:
    """An SPDM VENDOR_DEFINED request or response carrying one PCI-SIG protocol message."""

    request: bool = attrs.field(validator=_flag)
    protocol_id: int = attrs.field(validator=_uint(8))
    message: bytes = attrs.field(validator=_blob(MAX_VENDOR_MESSAGE))
    version: int = attrs.field(default=SPDM_VERSION, validator=_uint(8))

    def encode(self) -> bytes:
        code = SpdmCode.VENDOR_DEFINED_REQUEST if self.request else SpdmCode.VENDOR_DEFINED_RESPONSE
        payload = bytes([self.protocol_id]) + self.message
        return (
            bytes([self.version, code, 0, 0])
            + VENDOR_HEADER.pack(PCI_SIG_STANDARD_ID, 2, PCI_SIG_VENDOR_ID, len(payload))
            + payload
        )

    @classmethod
    def decode(cls, data: bytes, *, request: bool) -> VendorMessage:
        want = SpdmCode.VENDOR_DEFINED_REQUEST if request else SpdmCode.VENDOR_DEFINED_RESPONSE
        version = _header(data, want, want.name)
        _need(data, 4 + VENDOR_HEADER.size, want.name, exact=False)
        std, vlen = struct.unpack_from("<HB", data, 4)
        if std != PCI_SIG_STANDARD_ID or vlen != 2:
            raise FramingError(
                f"{want.name} for standard {std} with a {vlen}-byte vendor ID is not PCI-SIG's "
                "(standard 3, 2-byte vendor ID)",
                code=SpdmErrorCode.UNSUPPORTED_REQUEST,
            )
        _std, _vlen, vendor, plen = VENDOR_HEADER.unpack_from(data, 4)
        if vendor != PCI_SIG_VENDOR_ID:
            raise FramingError(
                f"{want.name} vendor ID {vendor:#06x} is not PCI-SIG (0x0001)",
                code=SpdmErrorCode.UNSUPPORTED_REQUEST,
            )
        if plen < 1 or len(data) != 4 + VENDOR_HEADER.size + plen:
            raise FramingError(
                f"{want.name} payload length {plen} does not match the "
                f"{len(data) - 4 - VENDOR_HEADER.size} bytes that follow (at least 1, the protocol ID)",
                code=SpdmErrorCode.INVALID_REQUEST,
            )
        start = 4 + VENDOR_HEADER.size
        return cls(request=request, protocol_id=data[start], message=bytes(data[start + 1 :]), version=version)


def encode_vendor(vm: VendorMessage) -> bytes:
    return vm.encode()


def decode_vendor(data: bytes, *, request: bool) -> VendorMessage:
    return VendorMessage.decode(data, request=request)


# --- dispatch
SpdmMessage: TypeAlias = (
    GetVersion | Version | GetCapabilities | Capabilities | NegotiateAlgorithms | Algorithms | SpdmError | VendorMessage
)

_DECODERS: dict[int, Callable[[bytes], SpdmMessage]] = {
    SpdmCode.GET_VERSION: GetVersion.decode,
    SpdmCode.VERSION: Version.decode,
    SpdmCode.GET_CAPABILITIES: GetCapabilities.decode,
    SpdmCode.CAPABILITIES: Capabilities.decode,
    SpdmCode.NEGOTIATE_ALGORITHMS: NegotiateAlgorithms.decode,
    SpdmCode.ALGORITHMS: Algorithms.decode,
    SpdmCode.ERROR: SpdmError.decode,
    SpdmCode.VENDOR_DEFINED_REQUEST: lambda d: VendorMessage.decode(d, request=True),
    SpdmCode.VENDOR_DEFINED_RESPONSE: lambda d: VendorMessage.decode(d, request=False),
}


def decode_spdm(data: bytes) -> SpdmMessage:
    """Any SPDM message this transport knows; an unknown code is UnsupportedRequest."""
    if len(data) < 4:
        raise FramingError(f"an SPDM message is at least 4 bytes, got {len(data)}", code=SpdmErrorCode.INVALID_REQUEST)
    decoder = _DECODERS.get(data[1])
    if decoder is None:
        raise FramingError(f"SPDM request code {data[1]:#04x} is not supported", code=SpdmErrorCode.UNSUPPORTED_REQUEST)
    return decoder(data)


@attrs.frozen
class SessionSizes:
    """The sizes the length of a session message in the clear depends on: digest (DIGESTS, FINISH), ECDHE
    exchange data and signature (KEY_EXCHANGE, KEY_EXCHANGE_RSP). They come from the negotiated cipher suite
    (``spdm.CipherSuite.session_sizes``); the default is the reference suite's (SHA-384, secp384r1, P-384)."""

    hash: int = 48
    dhe: int = 96
    sig: int = 96


DEFAULT_SESSION_SIZES = SessionSizes()


def spdm_length(data: bytes, sizes: SessionSizes = DEFAULT_SESSION_SIZES) -> int:
    """Length of the SPDM message at the front of ``data``, from its header (DOE pads to a dword); a
    session message's length also depends on the connection's cipher suite (``sizes``).

    For a code this module does not know, and for a vendor-defined ERROR (whose extended data has no
    length field), the whole of ``data``, padding included. The result may exceed ``len(data)``
    for a truncated message; the decoder then reports it.
    """
    if len(data) < 2:
        return len(data)
    code = data[1]
    if code in (SpdmCode.VENDOR_DEFINED_REQUEST, SpdmCode.VENDOR_DEFINED_RESPONSE) and len(data) >= 7:
        at = 7 + data[6]
        return at + 2 + int.from_bytes(data[at : at + 2], "little") if len(data) >= at + 2 else len(data)
    if code in (SpdmCode.NEGOTIATE_ALGORITHMS, SpdmCode.ALGORITHMS) and len(data) >= 6:
        return int.from_bytes(data[4:6], "little")
    if code == SpdmCode.VERSION and len(data) >= 6:
        return 6 + 2 * data[5]
    if code in (SpdmCode.GET_CAPABILITIES, SpdmCode.CAPABILITIES):
        return 4 + _CAPS.size  # the 1.2 layout; older versions are refused before their length matters
    if code == SpdmCode.ERROR and len(data) >= 3:
        extended = _ERROR_EXTENDED.get(data[2], 0)
        return len(data) if extended is None else 4 + extended
    if code == SpdmCode.GET_VERSION:
        return 4
    session = _session_length(code, data, sizes)
    return len(data) if session is None else session


def _session_length(code: int, data: bytes, sizes: SessionSizes) -> int | None:
    """Lengths of the session messages (DSP0274 1.2 §10.6-§10.19) under the suite's sizes."""
    h, dhe, sig = sizes.hash, sizes.dhe, sizes.sig

    def u16(at: int) -> int | None:
        return int.from_bytes(data[at : at + 2], "little") if len(data) >= at + 2 else None

    if code in (0x81, 0xEC, 0x6C, 0xE9, 0x69, 0x65):  # GET_DIGESTS, END_SESSION(_ACK), KEY_UPDATE(_ACK), FINISH_RSP
        return 4
    if code == 0x82:  # GET_CERTIFICATE
        return 8
    if code == 0x01 and len(data) >= 4:  # DIGESTS: one digest per slot in the mask
        return 4 + h * bin(data[3]).count("1")
    if code == 0x02:  # CERTIFICATE
        n = u16(4)
        return None if n is None else 8 + n
    if code == 0xE5 and len(data) >= 3:  # FINISH, with a signature when Param1 bit 0 says so
        return 4 + (sig if data[2] & 1 else 0) + h
    if code == 0xE4:  # KEY_EXCHANGE
        n = u16(40 + dhe)
        return None if n is None else 40 + dhe + 2 + n
    if code == 0x64:  # KEY_EXCHANGE_RSP (no measurement summary hash)
        n = u16(40 + dhe)
        return None if n is None else 40 + dhe + 2 + n + sig + h
    return None


def strip_doe_padding(body: bytes, sizes: SessionSizes = DEFAULT_SESSION_SIZES) -> bytes:
    """The SPDM message inside a DOE body, without the 0-3 bytes of dword padding (``sizes``: see
    :func:`spdm_length`)."""
    n = spdm_length(body, sizes)
    if n < len(body) - 3:
        raise FramingError(
            f"DOE object carries {len(body) - n} bytes after its {n}-byte SPDM message (padding is at most 3)",
            code=SpdmErrorCode.INVALID_REQUEST,
        )
    return body[:n]


# --- requester defaults
def get_version() -> bytes:
    return GetVersion().encode()


def get_capabilities() -> bytes:
    """The requester's GET_CAPABILITIES: no optional capabilities yet (secure sessions come later)."""
    return GetCapabilities(
        ct_exponent=0,
        flags=0,
        data_transfer_size=MAX_PAYLOAD - DOE_HEADER.size,
        max_spdm_msg_size=MAX_PAYLOAD - DOE_HEADER.size,
    ).encode()


def negotiate_algorithms() -> bytes:
    """Offers DMTF measurements, ECDSA P-256/P-384 and SHA-256/384 (what a session would later use)."""
    return NegotiateAlgorithms(
        measurement_specification=MEAS_SPEC_DMTF,
        base_asym_algo=ASYM_ECDSA_P256 | ASYM_ECDSA_P384,
        base_hash_algo=HASH_SHA_256 | HASH_SHA_384,
    ).encode()
