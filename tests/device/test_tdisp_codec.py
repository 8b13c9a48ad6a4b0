"""TDISP codec: round trips, byte-exact layouts from the spec tables, decode errors, validators, fuzz.

Layouts: PCIe Base r6.2 §11.3 Tables 11-3/11-4 and libspdm include/industry_standard/pci_tdisp.h.
Byte strings start at the TDISPVersion byte (the PCI protocol-ID byte is the transport's).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teeio_conformance.contract.errors import CodecError
from teeio_conformance.contract.tdisp import codec as td
from teeio_conformance.strategies.messages import (
    interface_reports,
    malformed_tdisp_requests,
    tdisp_requests,
    tdisp_responses,
)

# FUNCTION_ID 0x0102_3A01: RID 0x3A01 (bus 0x3A, device 0, function 1), segment 2, segment-valid bit 24.
IID = td.InterfaceId.for_rid(0x3A01, segment=2)


def hx(*fields: str) -> bytes:
    """Bytes from hex fields written one per spec field (spaces ignored)."""
    return bytes.fromhex("".join(fields).replace(" ", ""))


def header(code: int) -> bytes:
    return hx(
        "10",  # 0  TDISPVersion: 1.0
        f"{code:02x}",  # 1  MessageType
        "0000",  # 2  Reserved u16
        "013a0201",  # 4  INTERFACE_ID.FUNCTION_ID u32 LE = 0x01023A01
        "0000000000000000",  # 8  INTERFACE_ID reserved (8 bytes)
    )


NONCE = bytes(range(32))

REQUEST_LAYOUTS = [
    pytest.param(td.GetTdispVersion(interface_id=IID), b"", id="GET_TDISP_VERSION"),
    pytest.param(
        td.GetTdispCapabilities(interface_id=IID, tsm_caps=0x01020304),
        hx("04030201"),  # 16 TSM_CAPS u32
        id="GET_TDISP_CAPABILITIES",
    ),
    pytest.param(
        td.LockInterface(
            interface_id=IID,
            flags=int(td.LockFlags.NO_FW_UPDATE | td.LockFlags.LOCK_MSIX),
            default_stream_id=2,
            mmio_reporting_offset=0xD000_0000,
            bind_p2p_address_mask=0xFFFF_0000_0000_0000,
        ),
        hx(
            "0500",  # 16 FLAGS u16: NO_FW_UPDATE | LOCK_MSIX
            "02",  # 18 default Stream ID u8
            "00",  # 19 reserved u8
            "000000d000000000",  # 20 MMIO_REPORTING_OFFSET u64
            "000000000000ffff",  # 28 BIND_P2P_ADDRESS_MASK u64
        ),
        id="LOCK_INTERFACE_REQUEST",
    ),
    pytest.param(
        td.GetDeviceInterfaceReport(interface_id=IID, offset=0x10, length=0x400),
        hx(
            "1000",  # 16 OFFSET u16
            "0004",  # 18 LENGTH u16
        ),
        id="GET_DEVICE_INTERFACE_REPORT",
    ),
    pytest.param(td.GetDeviceInterfaceState(interface_id=IID), b"", id="GET_DEVICE_INTERFACE_STATE"),
    pytest.param(
        td.StartInterface(interface_id=IID, start_interface_nonce=NONCE),
        NONCE,  # 16 START_INTERFACE_NONCE (32 bytes)
        id="START_INTERFACE_REQUEST",
    ),
    pytest.param(td.StopInterface(interface_id=IID), b"", id="STOP_INTERFACE_REQUEST"),
    pytest.param(
        td.BindP2PStream(interface_id=IID, p2p_stream_id=7),
        hx("07"),  # 16 P2P_STREAM_ID u8 (PCIe r6.2 form)
        id="BIND_P2P_STREAM_REQUEST",
    ),
    pytest.param(
        td.BindP2PStream(interface_id=IID, p2p_stream_id=7, stream_config=1),
        hx(
            "07",  # 16 P2P_STREAM_ID u8
            "01",  # 17 STREAM_CONFIG u8: XT enable (libspdm @1e98c52b form)
        ),
        id="BIND_P2P_STREAM_REQUEST-xt",
    ),
    pytest.param(
        td.UnbindP2PStream(interface_id=IID, p2p_stream_id=7),
        hx("07"),  # 16 P2P_STREAM_ID u8
        id="UNBIND_P2P_STREAM_REQUEST",
    ),
    pytest.param(
        td.SetMmioAttribute(
            interface_id=IID,
            mmio_range=td.MmioRange(
                first_page=0x1_2345_6000,
                number_of_pages=2,
                attributes=int(td.RangeAttr.IS_NON_TEE_MEM),
                range_id=1,
            ),
        ),
        hx(
            "0060452301000000",  # 16 MMIO_RANGE.FIRST_PAGE u64
            "02000000",  # 24 NUMBER_OF_PAGES u32
            "0400",  # 28 RANGE_ATTRIBUTES u16: IS_NON_TEE_MEM
            "0100",  # 30 RANGE_ID u16
        ),
        id="SET_MMIO_ATTRIBUTE_REQUEST",
    ),
    pytest.param(
        td.VdmRequest(interface_id=IID, registry_id=0, vendor_id=b"\x86\x80", payload=b"\xaa\xbb"),
        hx(
            "00",  # 16 REGISTRY_ID u8: PCI-SIG
            "02",  # 17 VENDOR_ID_LEN u8
            "8680",  # 18 VENDOR_ID
            "aabb",  # 20 vendor data
        ),
        id="VDM_REQUEST",
    ),
]

RESPONSE_LAYOUTS = [
    pytest.param(
        td.TdispVersion(interface_id=IID, versions=(0x10, 0x11)),
        hx(
            "02",  # 16 VERSION_NUM_COUNT u8
            "10",  # 17 VERSION_NUM_ENTRY[0]
            "11",  # 18 VERSION_NUM_ENTRY[1]
        ),
        id="TDISP_VERSION",
    ),
    pytest.param(
        td.TdispCapabilities(
            interface_id=IID,
            dsm_caps=0x1,
            req_msgs_supported=bytes([0xFE, 0x0F]) + bytes(14),
            lock_interface_flags_supported=0x5,
            dev_addr_width=52,
            num_req_this=1,
            num_req_all=4,
        ),
        hx(
            "01000000",  # 16 DSM_CAPS u32
            "fe0f" + "00" * 14,  # 20 REQ_MSGS_SUPPORTED[16]: bit n = code 0x80+n
            "0500",  # 36 LOCK_INTERFACE_FLAGS_SUPPORTED u16
            "000000",  # 38 reserved[3]
            "34",  # 41 DEV_ADDR_WIDTH u8 = 52
            "01",  # 42 NUM_REQ_THIS u8
            "04",  # 43 NUM_REQ_ALL u8
        ),
        id="TDISP_CAPABILITIES",
    ),
    pytest.param(
        td.LockInterfaceResponse(interface_id=IID, start_interface_nonce=b"\x11" * 32),
        hx("11" * 32),  # 16 START_INTERFACE_NONCE (32 bytes)
        id="LOCK_INTERFACE_RESPONSE",
    ),
    pytest.param(
        td.DeviceInterfaceReport(interface_id=IID, portion=b"\x01\x02\x03", remainder_length=0x105),
        hx(
            "0300",  # 16 PORTION_LENGTH u16
            "0501",  # 18 REMAINDER_LENGTH u16
            "010203",  # 20 REPORT bytes
        ),
        id="DEVICE_INTERFACE_REPORT",
    ),
    pytest.param(
        td.DeviceInterfaceState(interface_id=IID, tdi_state=td.TdiState.RUN),
        hx("02"),  # 16 TDI_STATE u8: RUN
        id="DEVICE_INTERFACE_STATE",
    ),
    pytest.param(td.StartInterfaceResponse(interface_id=IID), b"", id="START_INTERFACE_RESPONSE"),
    pytest.param(td.StopInterfaceResponse(interface_id=IID), b"", id="STOP_INTERFACE_RESPONSE"),
    pytest.param(td.BindP2PStreamResponse(interface_id=IID), b"", id="BIND_P2P_STREAM_RESPONSE"),
    pytest.param(td.UnbindP2PStreamResponse(interface_id=IID), b"", id="UNBIND_P2P_STREAM_RESPONSE"),
    pytest.param(td.SetMmioAttributeResponse(interface_id=IID), b"", id="SET_MMIO_ATTRIBUTE_RESPONSE"),
    pytest.param(
        td.VdmResponse(interface_id=IID, registry_id=1, vendor_id=b"\x98\x1e", payload=b""),
        hx(
            "01",  # 16 REGISTRY_ID u8: CXL
            "02",  # 17 VENDOR_ID_LEN u8
            "981e",  # 18 VENDOR_ID
        ),
        id="VDM_RESPONSE",
    ),
    pytest.param(
        td.TdispError(interface_id=IID, error_code=td.ErrorCode.INVALID_INTERFACE_STATE),
        hx(
            "04000000",  # 16 ERROR_CODE u32: INVALID_INTERFACE_STATE
            "00000000",  # 20 ERROR_DATA u32
        ),
        id="TDISP_ERROR",
    ),
    pytest.param(
        td.TdispError(
            interface_id=IID,
            error_code=td.ErrorCode.VENDOR_SPECIFIC_ERROR,
            error_data=0x0A0B0C0D,
            extended_error_data=bytes.fromhex("00028680ee"),
        ),
        hx(
            "ff000000",  # 16 ERROR_CODE u32: VENDOR_SPECIFIC_ERROR
            "0d0c0b0a",  # 20 ERROR_DATA u32
            "00",  # 24 EXTENDED_ERROR_DATA.REGISTRY_ID
            "02",  # 25 VENDOR_ID_LEN
            "8680",  # 26 VENDOR_ID
            "ee",  # 28 vendor error data
        ),
        id="TDISP_ERROR-extended",
    ),
]


# ------------------------------------------------------------------------------------- byte-exact layouts
def test_a_whole_message_field_by_field() -> None:
    """GET_DEVICE_INTERFACE_STATE for RID 0x3A01 in segment 2, every byte written out."""
    want = hx(
        "10",  # 0  TDISPVersion 1.0
        "85",  # 1  MessageType GET_DEVICE_INTERFACE_STATE
        "0000",  # 2  Reserved
        "01",  # 4  FUNCTION_ID[7:0]   RID low byte (device 0, function 1)
        "3a",  # 5  FUNCTION_ID[15:8]  RID bus 0x3A
        "02",  # 6  FUNCTION_ID[23:16] segment 2
        "01",  # 7  FUNCTION_ID[31:24] bit 24: segment valid
        "0000000000000000",  # 8  INTERFACE_ID reserved
    )
    assert td.encode(td.GetDeviceInterfaceState(interface_id=IID)) == want
    assert td.decode_request(want) == td.GetDeviceInterfaceState(interface_id=IID)


@pytest.mark.parametrize(("msg", "body"), REQUEST_LAYOUTS)
def test_request_bytes_match_the_spec_layout(msg: td.Request, body: bytes) -> None:
    raw = td.encode(msg)
    assert raw == header(msg.code) + body
    assert td.decode_request(raw) == msg


@pytest.mark.parametrize(("msg", "body"), RESPONSE_LAYOUTS)
def test_response_bytes_match_the_spec_layout(msg: td.Response, body: bytes) -> None:
    raw = td.encode(msg)
    assert raw == header(msg.code) + body
    assert td.decode_response(raw) == msg


def test_tdisp_error_without_extended_data_is_24_bytes() -> None:
    """tee-io-validator checks sizeof(TDISP_ERROR) == 24 when no extended data is sent."""
    assert len(td.encode(td.TdispError(interface_id=IID, error_code=td.ErrorCode.INVALID_REQUEST))) == 24


def test_every_message_type_has_a_layout_test() -> None:
    tested = {type(p.values[0]) for p in (*REQUEST_LAYOUTS, *RESPONSE_LAYOUTS)}
    assert tested == set(td.MESSAGE_TYPES.values())


def test_interface_report_layout() -> None:
    rep = td.InterfaceReport(
        interface_info=0x2,
        msix_message_control=0x8003,
        lnr_control=0,
        tph_control=0x11,
        mmio_ranges=(
            td.MmioRange(
                first_page=0xD000_0000,
                number_of_pages=1,
                attributes=int(td.RangeAttr.MSIX_TABLE | td.RangeAttr.IS_NON_TEE_MEM),
                range_id=0,
            ),
            td.MmioRange(first_page=0xD000_1000, number_of_pages=3, attributes=0, range_id=2),
        ),
        device_specific_info=b"\xab\xcd",
    )
    want = hx(
        "0200",  # 0  INTERFACE_INFO u16: DMA_WITHOUT_PASID
        "0000",  # 2  reserved u16
        "0380",  # 4  MSI_X_MESSAGE_CONTROL u16
        "0000",  # 6  LNR_CONTROL u16
        "11000000",  # 8  TPH_CONTROL u32
        "02000000",  # 12 MMIO_RANGE_COUNT u32
        "000000d000000000",  # 16 MMIO_RANGE[0].FIRST_PAGE u64
        "01000000",  # 24 MMIO_RANGE[0].NUMBER_OF_PAGES u32
        "0500",  # 28 MMIO_RANGE[0].RANGE_ATTRIBUTES u16: MSIX_TABLE | IS_NON_TEE_MEM
        "0000",  # 30 MMIO_RANGE[0].RANGE_ID u16
        "001000d000000000",  # 32 MMIO_RANGE[1].FIRST_PAGE u64
        "03000000",  # 40 MMIO_RANGE[1].NUMBER_OF_PAGES u32
        "0000",  # 44 MMIO_RANGE[1].RANGE_ATTRIBUTES u16
        "0200",  # 46 MMIO_RANGE[1].RANGE_ID u16
        "02000000",  # 48 DEVICE_SPECIFIC_INFO_LEN u32
        "abcd",  # 52 DEVICE_SPECIFIC_INFO
    )
    assert rep.encode() == want
    assert td.InterfaceReport.decode(want) == rep


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "shorter than"),
        (bytes(19), "shorter than"),
        (hx("0000 0000 00000000 00000000 01000000", "00000000"), "claims 1 MMIO ranges"),
        (hx("0000 0000 00000000 00000000 00000000", "05000000", "0102"), "counts and lengths say 25"),
        (hx("0000 0000 00000000 00000000 00000000", "00000000", "ff"), "counts and lengths say 20"),
        (hx("0000 0000 00000000 00000000 ffffffff", "00000000"), "claims 4294967295 MMIO ranges"),
    ],
)
def test_interface_report_refuses_inconsistent_bytes(raw: bytes, why: str) -> None:
    with pytest.raises(CodecError, match=why):
        td.InterfaceReport.decode(raw)


def test_interface_report_refuses_what_is_not_bytes() -> None:
    with pytest.raises(CodecError, match="must be bytes, got int"):
        td.InterfaceReport.decode(20)  # type: ignore[arg-type]


def test_interface_id_helpers() -> None:
    assert td.InterfaceId.for_rid(0x3A01) == td.InterfaceId(function_id=0x3A01)
    assert IID.function_id == 0x0102_3A01 and IID.rid == 0x3A01 and IID.segment == 2
    assert td.InterfaceId.for_rid(0x3A01).segment is None
    with pytest.raises(CodecError, match="16-bit Requester ID"):
        td.InterfaceId.for_rid(0x1_0000)
    with pytest.raises(CodecError, match=r"segment must be 0\.\.255"):
        td.InterfaceId.for_rid(1, segment=256)


def test_message_types_cover_every_code() -> None:
    assert set(td.MESSAGE_TYPES) == set(td.RequestCode) | set(td.ResponseCode)
    for code, cls in td.MESSAGE_TYPES.items():
        assert cls.code == code  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------- round trips
VERSIONS_1X = st.integers(0x10, 0x1F)  # any minor of major 1 decodes


@given(tdisp_requests(versions=VERSIONS_1X))
def test_requests_round_trip(msg: td.Request) -> None:
    raw = td.encode(msg)
    assert td.decode_request(raw) == msg
    assert td.encode(td.decode_request(raw)) == raw


@given(tdisp_responses(versions=VERSIONS_1X))
def test_responses_round_trip(msg: td.Response) -> None:
    raw = td.encode(msg)
    assert td.decode_response(raw) == msg
    assert td.encode(td.decode_response(raw)) == raw


@given(interface_reports())
def test_interface_reports_round_trip(rep: td.InterfaceReport) -> None:
    assert td.InterfaceReport.decode(rep.encode()) == rep


# ------------------------------------------------------------------------------------- decode errors
GOOD = td.encode(td.GetTdispVersion(interface_id=IID))
LOCK = td.encode(
    td.LockInterface(interface_id=IID, flags=0, default_stream_id=0, mmio_reporting_offset=0, bind_p2p_address_mask=0)
)
E = td.ErrorCode


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        pytest.param(b"\x20" + GOOD[1:], E.VERSION_MISMATCH, id="version-2.0"),
        pytest.param(b"\x00" + GOOD[1:], E.VERSION_MISMATCH, id="version-0.0"),
        pytest.param(b"\xf1" + GOOD[1:], E.VERSION_MISMATCH, id="version-15.1"),
        pytest.param(GOOD[:1] + b"\x99" + GOOD[2:], E.UNSUPPORTED_REQUEST, id="unknown-code"),
        pytest.param(GOOD[:1] + b"\x8c" + GOOD[2:], E.UNSUPPORTED_REQUEST, id="SET_TDISP_CONFIG-unsupported"),
        pytest.param(GOOD[:1] + b"\x01" + GOOD[2:], E.UNSUPPORTED_REQUEST, id="response-code-as-request"),
        pytest.param(GOOD + b"\x00", E.INVALID_REQUEST, id="over-long"),
        pytest.param(LOCK[:-1], E.INVALID_REQUEST, id="truncated-body"),
        pytest.param(LOCK + b"\x00", E.INVALID_REQUEST, id="over-long-body"),
        pytest.param(header(0x88), E.INVALID_REQUEST, id="bind-without-stream-id"),
        pytest.param(header(0x88) + b"\x01\x00\x00", E.INVALID_REQUEST, id="bind-3-bytes"),
        pytest.param(header(0x89) + b"\x01\x00", E.INVALID_REQUEST, id="unbind-2-bytes"),
        pytest.param(header(0x8B) + b"\x00", E.INVALID_REQUEST, id="vdm-without-vendor-id-len"),
        pytest.param(header(0x8B) + b"\x00\x03\x86\x80", E.INVALID_REQUEST, id="vdm-vendor-id-len-lies"),
    ],
)
def test_decode_errors_carry_the_code_to_answer_with(raw: bytes, code: td.ErrorCode) -> None:
    with pytest.raises(td.TdispDecodeError) as e:
        td.decode_request(raw)
    assert e.value.code == code
    assert e.value.interface_id == IID  # parsed from the header, to be echoed in TDISP_ERROR
    assert e.value.message_type == raw[1]


@pytest.mark.parametrize("n", [0, 1, 2, 15])
def test_a_short_header_has_no_interface_id(n: int) -> None:
    with pytest.raises(td.TdispDecodeError) as e:
        td.decode_request(GOOD[:n])
    assert e.value.code == E.INVALID_REQUEST and e.value.interface_id is None


@pytest.mark.parametrize(
    ("code", "body", "why"),
    [
        pytest.param(0x01, hx("02", "10"), "VERSION_NUM_COUNT", id="version-count-2-with-1-entry"),
        pytest.param(0x01, b"", "VERSION_NUM_COUNT", id="version-without-count"),
        pytest.param(0x04, hx("0300", "0000", "0102"), "PORTION_LENGTH 3 but 2", id="report-portion-lies"),
        pytest.param(0x04, hx("0000"), "no room for its two lengths", id="report-without-lengths"),
        pytest.param(0x05, hx("04"), "TDI state 0..3, got 4", id="state-4"),
        pytest.param(0x02, bytes(27), "body must be 28 bytes", id="capabilities-short"),
    ],
)
def test_response_length_fields_must_agree(code: int, body: bytes, why: str) -> None:
    with pytest.raises(td.TdispDecodeError, match=why):
        td.decode_response(header(code) + body)


def test_a_version_response_may_list_no_versions() -> None:
    assert td.decode_response(header(0x01) + hx("00")) == td.TdispVersion(interface_id=IID, versions=())


def test_short_tdisp_error_does_not_decode() -> None:
    with pytest.raises(td.TdispDecodeError, match="ERROR_CODE"):
        td.decode_response(header(0x7F) + bytes(7))


def test_requests_ignore_non_zero_reserved_bytes() -> None:
    """Reserved fields: sent as zero, ignored on receipt (PCIe §11.3); the INTERFACE_ID's 8 reserved
    bytes are kept in the value so a responder can echo them."""
    raw = bytearray(LOCK)
    raw[2:4] = b"\xff\xff"  # header reserved
    raw[19] = 0xEE  # LOCK_INTERFACE reserved byte
    raw[8:16] = b"\x01" * 8  # INTERFACE_ID reserved
    msg = td.decode_request(bytes(raw))
    assert isinstance(msg, td.LockInterface)
    assert msg.interface_id == td.InterfaceId(function_id=IID.function_id, reserved=0x0101010101010101)
    assert td.encode(msg)[2:4] == b"\0\0" and td.encode(msg)[19] == 0


def test_decoders_accept_bytearray_and_memoryview_and_refuse_other_types() -> None:
    assert td.decode_request(bytearray(GOOD)) == td.decode_request(memoryview(GOOD))
    with pytest.raises(td.TdispDecodeError):
        td.decode_request(GOOD.hex())  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="not a TDISP message"):
        td.encode(object())  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- validators
@pytest.mark.parametrize(
    ("build", "match"),
    [
        (
            lambda: td.StartInterface(interface_id=IID, start_interface_nonce=bytes(31)),
            "StartInterface.start_interface_nonce: expected exactly 32 bytes, got 31",
        ),
        (
            lambda: td.LockInterfaceResponse(interface_id=IID, start_interface_nonce="x" * 32),  # type: ignore[arg-type]
            "start_interface_nonce: expected bytes, got str",
        ),
        (
            lambda: td.GetDeviceInterfaceReport(interface_id=IID, offset=-1, length=1),
            r"GetDeviceInterfaceReport.offset: expected an unsigned 16-bit integer \(0..0xffff\), got -1",
        ),
        (
            lambda: td.GetDeviceInterfaceReport(interface_id=IID, offset=0, length=0x10000),
            "length: expected an unsigned 16-bit integer",
        ),
        (
            lambda: td.LockInterface(
                interface_id=IID,
                flags=0,
                default_stream_id=256,
                mmio_reporting_offset=0,
                bind_p2p_address_mask=0,
            ),
            "default_stream_id: expected an unsigned 8-bit",
        ),
        (
            lambda: td.LockInterface(
                interface_id=IID,
                flags=0,
                default_stream_id=0,
                mmio_reporting_offset=2**64,
                bind_p2p_address_mask=0,
            ),
            "mmio_reporting_offset: expected an unsigned 64-bit",
        ),
        (lambda: td.GetTdispCapabilities(interface_id=IID, tsm_caps=True), "tsm_caps: .* got True"),
        (lambda: td.GetTdispVersion(interface_id=IID, version=0x100), "version: expected an unsigned 8-bit"),
        (
            lambda: td.GetTdispVersion(interface_id=0x3A01),  # type: ignore[arg-type]
            "interface_id: expected InterfaceId, got int",
        ),
        (lambda: td.InterfaceId(function_id=2**32), "function_id: expected an unsigned 32-bit"),
        (lambda: td.BindP2PStream(interface_id=IID, p2p_stream_id=1, stream_config=300), "stream_config"),
        (
            lambda: td.TdispVersion(interface_id=IID, versions=(0x10, 0x100)),
            "versions: expected unsigned 8-bit",
        ),
        (
            lambda: td.TdispVersion(interface_id=IID, versions=0x10),  # type: ignore[arg-type]
            "TdispVersion.versions: expected a sequence, got int",
        ),
        (lambda: td.TdispVersion(interface_id=IID, versions=(0x10,) * 256), "at most 255 entries, got 256"),
        (
            lambda: td.TdispCapabilities(
                interface_id=IID,
                dsm_caps=0,
                req_msgs_supported=bytes(15),
                lock_interface_flags_supported=0,
                dev_addr_width=0,
                num_req_this=0,
                num_req_all=0,
            ),
            "req_msgs_supported: expected exactly 16 bytes, got 15",
        ),
        (
            lambda: td.DeviceInterfaceReport(interface_id=IID, portion=bytes(0x10000), remainder_length=0),
            "portion: expected at most 65535 bytes",
        ),
        (
            lambda: td.DeviceInterfaceState(interface_id=IID, tdi_state=4),
            "DeviceInterfaceState.tdi_state: expected a TDI state 0..3, got 4",
        ),
        (
            lambda: td.VdmRequest(interface_id=IID, registry_id=0, vendor_id=bytes(256), payload=b""),
            "vendor_id: expected at most 255 bytes",
        ),
        (lambda: td.TdispError(interface_id=IID, error_code=-1), "error_code: expected an unsigned 32-bit"),
        (
            lambda: td.SetMmioAttribute(interface_id=IID, mmio_range=(0, 1, 0, 0)),  # type: ignore[arg-type]
            "mmio_range: expected MmioRange",
        ),
        (
            lambda: td.MmioRange(first_page=0, number_of_pages=0, attributes=0x1_0000, range_id=0),
            "MmioRange.attributes: expected an unsigned 16-bit",
        ),
        (
            lambda: td.InterfaceReport(
                interface_info=0,
                msix_message_control=0,
                lnr_control=0,
                tph_control=0,
                mmio_ranges=[1],  # type: ignore[list-item]
                device_specific_info=b"",
            ),
            "expected MmioRange entries",
        ),
    ],
)
def test_validators_refuse_out_of_range_fields_naming_them(build: object, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        build()  # type: ignore[operator]


def test_tdi_state_is_normalised_to_the_enum() -> None:
    msg = td.DeviceInterfaceState(interface_id=IID, tdi_state=2)
    assert msg.tdi_state is td.TdiState.RUN


# ------------------------------------------------------------------------------------- fuzz
_RESERVED = {0: {2, 3}, td.RequestCode.LOCK_INTERFACE: {2, 3, 19}}
FUZZ_EXAMPLES = 10_000


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(malformed_tdisp_requests(valid_function_ids=(0x3A00, 0x3A01)))
def test_fuzz_decoders_raise_only_their_typed_error(raw: bytes) -> None:
    """10,000 malformed inputs: each decoder returns a message or raises TdispDecodeError, nothing else.

    A refusal carries one of the three codes a malformed request earns and echoes the header's
    INTERFACE_ID when there is one; a message that does decode re-encodes to the same bytes except
    for reserved fields (which encode as zero).
    """
    try:
        msg = td.decode_request(raw)
    except td.TdispDecodeError as exc:
        assert exc.code in (E.INVALID_REQUEST, E.VERSION_MISMATCH, E.UNSUPPORTED_REQUEST)
        if len(raw) >= td.HEADER_LEN:
            assert exc.interface_id is not None
            assert exc.interface_id.function_id == int.from_bytes(raw[4:8], "little")
        else:
            assert exc.interface_id is None and exc.code == E.INVALID_REQUEST
    else:
        again = td.encode(msg)
        assert len(again) == len(raw)
        skip = _RESERVED.get(msg.code, _RESERVED[0])
        assert [b for i, b in enumerate(again) if i not in skip] == [b for i, b in enumerate(raw) if i not in skip]
        assert td.decode_request(again) == msg
    try:
        td.decode_response(raw)
    except td.TdispDecodeError:
        pass
