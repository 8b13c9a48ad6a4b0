"""TDISP codec: round trips, byte-exact layouts from the spec tables, and a fuzz of malformed bytes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from reference_impl.device.tdisp import codec as td
from reference_impl.errors import CodecError
from strategies.messages import malformed_tdisp_requests, tdisp_requests, tdisp_responses

IID = td.InterfaceId(function_id=0x3A01)
HDR_REQ = "10{code:02x}0000" + "013a0000" + "0000000000000000"  # version, type, reserved, FUNCTION_ID, reserved


@given(tdisp_requests())
def test_requests_round_trip(msg):
    assert td.decode_request(td.encode(msg)) == msg


@given(tdisp_responses())
def test_responses_round_trip(msg):
    assert td.decode_response(td.encode(msg)) == msg


def _hdr(code: int) -> str:
    return HDR_REQ.format(code=code)


@pytest.mark.parametrize(
    ("msg", "body"),
    [
        (td.GetTdispVersion(interface_id=IID), ""),
        (td.GetTdispCapabilities(interface_id=IID, tsm_caps=0x01020304), "04030201"),  # TSM_CAPS u32
        # FLAGS u16, default stream u8, reserved u8, MMIO_REPORTING_OFFSET u64, BIND_P2P_ADDRESS_MASK u64
        (td.LockInterface(interface_id=IID, flags=0x0005, default_stream_id=2, mmio_reporting_offset=0xD000_0000,
                          bind_p2p_address_mask=0), "0500" "02" "00" "000000d000000000" "0000000000000000"),
        (td.GetDeviceInterfaceReport(interface_id=IID, offset=0x10, length=0x40), "1000" "4000"),  # OFFSET, LENGTH
        (td.GetDeviceInterfaceState(interface_id=IID), ""),
        (td.StartInterface(interface_id=IID, start_interface_nonce=bytes(range(32))), bytes(range(32)).hex()),
        (td.StopInterface(interface_id=IID), ""),
        (td.BindP2PStream(interface_id=IID, p2p_stream_id=7), "07" "00" "0000"),
        (td.UnbindP2PStream(interface_id=IID, p2p_stream_id=7), "07" "00" "0000"),
        # MMIO_RANGE: FIRST_PAGE u64, NUMBER_OF_PAGES u32, RANGE_ATTRIBUTES u16, RANGE_ID u16
        (td.SetMmioAttribute(interface_id=IID, mmio_range=td.MmioRange(first_page=0x1000, number_of_pages=2,
                                                                        attributes=0x4, range_id=1)),
         "0010000000000000" "02000000" "0400" "0100"),
        (td.VdmRequest(interface_id=IID, registry_id=0, vendor_id=b"\x86\x80", payload=b"\xaa"), "00" "02" "8680" "aa"),
    ],
)
def test_request_bytes_match_the_spec_layout(msg, body):
    assert td.encode(msg).hex() == _hdr(msg.code) + body


@pytest.mark.parametrize(
    ("msg", "body"),
    [
        (td.TdispVersion(interface_id=IID, versions=(0x10,)), "01" "10"),  # VERSION_NUM_COUNT, entries
        # DSM_CAPS u32, REQ_MSGS_SUPPORTED[16], LOCK_INTERFACE_FLAGS_SUPPORTED u16, reserved[3],
        # DEV_ADDR_WIDTH u8, NUM_REQ_THIS u8, NUM_REQ_ALL u8
        (td.TdispCapabilities(interface_id=IID, dsm_caps=0, req_msgs_supported=bytes([0xFE]) + bytes(15),
                              lock_interface_flags_supported=0x5, dev_addr_width=52, num_req_this=1, num_req_all=4),
         "00000000" "fe" + "00" * 15 + "0500" "000000" "34" "01" "04"),
        (td.LockInterfaceResponse(interface_id=IID, start_interface_nonce=b"\x11" * 32), "11" * 32),
        (td.DeviceInterfaceReport(interface_id=IID, portion=b"\x01\x02", remainder_length=5), "0200" "0500" "0102"),
        (td.DeviceInterfaceState(interface_id=IID, tdi_state=td.TdiState.RUN), "02"),
        (td.StartInterfaceResponse(interface_id=IID), ""),
        (td.StopInterfaceResponse(interface_id=IID), ""),
        (td.BindP2PStreamResponse(interface_id=IID), ""),
        (td.UnbindP2PStreamResponse(interface_id=IID), ""),
        (td.SetMmioAttributeResponse(interface_id=IID), ""),
        (td.VdmResponse(interface_id=IID, registry_id=1, vendor_id=b"", payload=b""), "01" "00"),
        # ERROR_CODE u32, ERROR_DATA u32 (24 bytes in all, as tee-io-validator ERR(c) expects)
        (td.TdispError(interface_id=IID, error_code=td.ErrorCode.INVALID_INTERFACE_STATE), "04000000" "00000000"),
    ],
)
def test_response_bytes_match_the_spec_layout(msg, body):
    raw = td.encode(msg)
    assert raw.hex() == _hdr(msg.code) + body
    if isinstance(msg, td.TdispError):
        assert len(raw) == 24


def test_interface_report_layout():
    """INTERFACE_INFO, reserved, MSI-X ctl, LNR ctl, TPH ctl, range count, ranges, DSI length + bytes."""
    rep = td.InterfaceReport(interface_info=0x2, msix_message_control=0, lnr_control=0, tph_control=0,
                             mmio_ranges=(td.MmioRange(first_page=0x1000, number_of_pages=3, attributes=0,
                                                       range_id=0),), device_specific_info=b"\xab")
    assert rep.encode().hex() == ("0200" "0000" "0000" "0000" "00000000" "01000000"
                                  "0010000000000000" "03000000" "0000" "0000" "01000000" "ab")
    assert td.InterfaceReport.decode(rep.encode()) == rep


def test_decode_errors_carry_the_code_to_answer_with():
    good = td.encode(td.GetTdispVersion(interface_id=IID))
    with pytest.raises(td.TdispDecodeError) as e:
        td.decode_request(b"\x20" + good[1:])
    assert e.value.code == td.ErrorCode.VERSION_MISMATCH
    with pytest.raises(td.TdispDecodeError) as e:
        td.decode_request(good[:1] + b"\x99" + good[2:])
    assert e.value.code == td.ErrorCode.UNSUPPORTED_REQUEST and e.value.interface_id == IID
    with pytest.raises(td.TdispDecodeError) as e:
        td.decode_request(good + b"\x00")
    assert e.value.code == td.ErrorCode.INVALID_REQUEST


def test_validators_name_the_field():
    with pytest.raises(CodecError, match="start_interface_nonce: expected 32 bytes, got 31"):
        td.StartInterface(interface_id=IID, start_interface_nonce=bytes(31))
    with pytest.raises(CodecError, match="offset: expected an unsigned 16-bit integer"):
        td.GetDeviceInterfaceReport(interface_id=IID, offset=-1, length=1)


@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(malformed_tdisp_requests(valid_function_ids=(0x3A00, 0x3A01)))
def test_fuzz_decoder_raises_only_its_typed_error(raw):
    """10,000 malformed inputs: a valid message or TdispDecodeError, never anything else."""
    try:
        msg = td.decode_request(raw)
    except td.TdispDecodeError:
        return
    assert td.encode(msg) == raw or len(raw) >= 16
