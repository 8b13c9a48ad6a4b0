"""Wire formats between the suite and a device process, as DMTF's spdm-emu lays them out.

Three layers, outermost first:

* **socket frame** (spdm-emu ``command.c``): u32 BE command, u32 BE transport type, u32 BE payload size,
  payload. Commands NORMAL 0x0001, SHUTDOWN 0xFFFE (echoed, then the server exits), CONTINUE 0xFFFD,
  TEST 0xDEAD; transports NONE 0, MCTP 1, PCI_DOE 2, TCP 3.
* **PCI DOE** data object: u16 LE vendor ID 0x0001, u8 type (0 discovery, 1 SPDM, 2 secured SPDM),
  u8 reserved, u32 LE length in dwords including this 8-byte header; the message padded to a dword.
* **SPDM**: GET_VERSION / VERSION, GET_CAPABILITIES / CAPABILITIES, NEGOTIATE_ALGORITHMS / ALGORITHMS
  (VCA), then VENDOR_DEFINED_REQUEST 0xFE / RESPONSE 0x7E carrying PCI-SIG protocols: u16 standard ID
  3, u8 vendor-ID length 2, u16 vendor ID 0x0001, u16 payload length, then a protocol byte
  (0 IDE_KM, 1 TDISP) and the TDISP / IDE_KM message.

Every decoder raises :class:`FramingError` (a CodecError) on bad bytes and nothing else.
"""

from __future__ import annotations

import enum
import struct

import attrs

from reference_impl.errors import CodecError

__all__ = [
    "DOE_HEADER", "FRAME_HEADER", "MAX_PAYLOAD", "SPDM_VERSION", "Command", "DoeType", "FramingError", "SpdmCode",
    "SpdmErrorCode", "Transport", "VendorMessage", "decode_doe", "decode_frame_header", "decode_vendor",
    "encode_doe", "encode_frame", "encode_vendor", "spdm_error",
]

FRAME_HEADER = struct.Struct(">III")
DOE_HEADER = struct.Struct("<HBBI")
MAX_PAYLOAD = 1 << 20
SPDM_VERSION = 0x12
PCI_SIG_STANDARD_ID = 3
PCI_SIG_VENDOR_ID = 0x0001


class FramingError(CodecError):
    """Bytes that are not a valid frame, DOE object or SPDM message."""


class Command(enum.IntEnum):
    NORMAL = 0x0001
    SHUTDOWN = 0xFFFE
    CONTINUE = 0xFFFD
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
    GET_VERSION = 0x84
    VERSION = 0x04
    GET_CAPABILITIES = 0xE1
    CAPABILITIES = 0x61
    NEGOTIATE_ALGORITHMS = 0xE3
    ALGORITHMS = 0x63
    VENDOR_DEFINED_REQUEST = 0xFE
    VENDOR_DEFINED_RESPONSE = 0x7E
    ERROR = 0x7F


class SpdmErrorCode(enum.IntEnum):
    INVALID_REQUEST = 0x01
    BUSY = 0x03
    UNEXPECTED_REQUEST = 0x04
    UNSPECIFIED = 0x05
    UNSUPPORTED_REQUEST = 0x07


def encode_frame(command: int, transport: int, payload: bytes) -> bytes:
    return FRAME_HEADER.pack(command, transport, len(payload)) + payload


def decode_frame_header(data: bytes) -> tuple[int, int, int]:
    """(command, transport, size); the caller then reads ``size`` payload bytes."""
    if len(data) != FRAME_HEADER.size:
        raise FramingError(f"frame header is 12 bytes, got {len(data)}")
    command, transport, size = FRAME_HEADER.unpack(data)
    if size > MAX_PAYLOAD:
        raise FramingError(f"frame payload of {size} bytes exceeds the {MAX_PAYLOAD}-byte limit")
    return command, transport, size


def encode_doe(message: bytes, doe_type: int = DoeType.SPDM) -> bytes:
    padded = message + b"\0" * (-len(message) % 4)
    return DOE_HEADER.pack(PCI_SIG_VENDOR_ID, doe_type, 0, (len(padded) + 8) // 4) + padded


def decode_doe(data: bytes) -> tuple[int, bytes]:
    """(data object type, message with padding kept); the SPDM layer knows its own length."""
    if len(data) < 8 or len(data) % 4:
        raise FramingError(f"DOE object must be at least 8 bytes and a whole number of dwords, got {len(data)}")
    vendor, doe_type, _res, dwords = DOE_HEADER.unpack_from(data)
    if vendor != PCI_SIG_VENDOR_ID:
        raise FramingError(f"DOE vendor ID {vendor:#06x} is not PCI-SIG (0x0001)")
    if dwords * 4 != len(data):
        raise FramingError(f"DOE length {dwords} dwords does not match {len(data)} bytes")
    return doe_type, data[8:]


@attrs.frozen(kw_only=True)
class VendorMessage:
    """An SPDM VENDOR_DEFINED request or response carrying one PCI-SIG protocol message."""

    request: bool
    protocol_id: int
    message: bytes
    version: int = SPDM_VERSION


def encode_vendor(vm: VendorMessage) -> bytes:
    payload = bytes([vm.protocol_id]) + vm.message
    code = SpdmCode.VENDOR_DEFINED_REQUEST if vm.request else SpdmCode.VENDOR_DEFINED_RESPONSE
    return (bytes([vm.version, code, 0, 0]) + struct.pack("<HBH", PCI_SIG_STANDARD_ID, 2, PCI_SIG_VENDOR_ID)
            + struct.pack("<H", len(payload)) + payload)


def decode_vendor(data: bytes, *, request: bool) -> VendorMessage:
    want = SpdmCode.VENDOR_DEFINED_REQUEST if request else SpdmCode.VENDOR_DEFINED_RESPONSE
    if len(data) < 12 or data[1] != want:
        raise FramingError(f"not an SPDM {want.name} ({len(data)} bytes, code {data[1] if len(data) > 1 else None})")
    std, vlen, vendor = struct.unpack_from("<HBH", data, 4)
    if std != PCI_SIG_STANDARD_ID or vlen != 2 or vendor != PCI_SIG_VENDOR_ID:
        raise FramingError(f"vendor-defined message is not PCI-SIG (standard {std}, vendor {vendor:#x})")
    (plen,) = struct.unpack_from("<H", data, 9)
    payload = data[11:11 + plen]
    if len(payload) != plen or plen < 1:
        raise FramingError(f"vendor-defined payload claims {plen} bytes, has {len(payload)}")
    return VendorMessage(request=request, protocol_id=payload[0], message=bytes(payload[1:]), version=data[0])


def spdm_error(code: int, version: int = SPDM_VERSION) -> bytes:
    return bytes([version, SpdmCode.ERROR, code, 0])


def spdm_length(data: bytes) -> int:
    """Length of the SPDM message at the front of ``data`` (DOE pads to a dword)."""
    if len(data) >= 11 and data[1] in (SpdmCode.VENDOR_DEFINED_REQUEST, SpdmCode.VENDOR_DEFINED_RESPONSE):
        return 11 + int.from_bytes(data[9:11], "little")
    return {SpdmCode.GET_VERSION: 4, SpdmCode.VERSION: 8, SpdmCode.GET_CAPABILITIES: 20,
            SpdmCode.CAPABILITIES: 20, SpdmCode.NEGOTIATE_ALGORITHMS: 32, SpdmCode.ALGORITHMS: 32,
            SpdmCode.ERROR: 4}.get(data[1] if len(data) > 1 else -1, len(data))


# Minimal, honest VCA messages (DSP0274 1.2): fixed capability and algorithm selections.
CAPS_FLAGS = 0x0000_0002 | 0x0000_0040  # CERT_CAP, KEY_EX_CAP (advertised; secure sessions are a later step)


def get_version() -> bytes:
    return bytes([0x10, SpdmCode.GET_VERSION, 0, 0])


def version_response() -> bytes:
    return bytes([0x10, SpdmCode.VERSION, 0, 0, 0, 1]) + struct.pack("<H", SPDM_VERSION << 8)


def get_capabilities() -> bytes:
    return bytes([SPDM_VERSION, SpdmCode.GET_CAPABILITIES, 0, 0, 0, 0x10, 0, 0]) + struct.pack("<III", 0, 0x1200,
                                                                                               0x1200)


def capabilities_response() -> bytes:
    return bytes([SPDM_VERSION, SpdmCode.CAPABILITIES, 0, 0, 0, 0x10, 0, 0]) + struct.pack("<III", CAPS_FLAGS,
                                                                                           0x1200, 0x1200)


def negotiate_algorithms() -> bytes:
    return bytes([SPDM_VERSION, SpdmCode.NEGOTIATE_ALGORITHMS, 0, 0]) + struct.pack(
        "<HBBIIQQ", 32, 0x01, 0, 0x0000_0080, 0x0000_0002, 0, 0)  # TPM_ALG_ECDSA_ECC_NIST_P384, SHA-384


def algorithms_response() -> bytes:
    return bytes([SPDM_VERSION, SpdmCode.ALGORITHMS, 0, 0]) + struct.pack(
        "<HBBIIIIQ", 32, 0x01, 0, 0x0000_0004, 0x0000_0080, 0x0000_0002, 0, 0)
