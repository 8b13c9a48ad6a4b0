"""The reference device's optional TDISP requests (issue 19): P2P streams, SET_MMIO_ATTRIBUTE, VDM."""

from __future__ import annotations

import pytest

from teeio_conformance.contract import ide_km as km
from teeio_conformance.contract.tdisp import codec as td
from teeio_conformance.contract.trace import Trace
from teeio_conformance.reference_impl.device.device import PAGE, VENDOR_ID, Device, DeviceConfig

IV = (0).to_bytes(4, "little") + (1).to_bytes(4, "little")
E = td.ErrorCode


def _send(dev: Device, sid: int | None, msg: td.Request) -> td.Response:
    return td.decode_response(dev.handle_vendor_message(1, td.encode(msg), session_id=sid))


def _key(dev: Device, sid: int, stream: int) -> None:
    for i, d in enumerate(km.Direction):
        for s in km.SubStream:
            slot = km.KeySubStream(key_set=km.KeySet.K0, direction=d, sub_stream=s).to_byte()
            key = bytes([stream, i, int(s)]) * 10 + b"xy"
            ack = km.decode(
                dev.handle_vendor_message(
                    0,
                    km.encode(km.KeyProg(stream_id=stream, key_sub_stream=slot, port_index=0, key=key, iv=IV)),
                    session_id=sid,
                )
            )
            assert isinstance(ack, km.KpAck) and ack.status == km.KpAckStatus.SUCCESS
    for d in km.Direction:
        for s in km.SubStream:
            slot = km.KeySubStream(key_set=km.KeySet.K0, direction=d, sub_stream=s).to_byte()
            go = km.KSetGo(stream_id=stream, key_sub_stream=slot, port_index=0)
            assert dev.handle_vendor_message(0, km.encode(go), session_id=sid) is not None


@pytest.fixture
def running() -> tuple[Device, int, td.InterfaceId]:
    """A device whose PF is in RUN over session ``sid`` (default stream keyed and Secure)."""
    dev = Device(Trace(), DeviceConfig())
    sid = dev.spdm_connect()
    _key(dev, sid, 0)
    dev.ide_enable(True)
    iid = td.InterfaceId(function_id=dev.pf_rid)
    lock = _send(
        dev,
        sid,
        td.LockInterface(
            interface_id=iid, flags=0, default_stream_id=0, mmio_reporting_offset=0, bind_p2p_address_mask=0
        ),
    )
    assert isinstance(lock, td.LockInterfaceResponse)
    start = td.StartInterface(interface_id=iid, start_interface_nonce=lock.start_interface_nonce)
    assert isinstance(_send(dev, sid, start), td.StartInterfaceResponse)
    return dev, sid, iid


def _bound(dev: Device) -> tuple[int, ...]:
    return dev.snapshot().functions[0].p2p_streams


def test_capabilities_advertise_the_optional_requests(running):
    dev, sid, iid = running
    caps = _send(dev, sid, td.GetTdispCapabilities(interface_id=iid, tsm_caps=0))
    bits = int.from_bytes(caps.req_msgs_supported[:2], "little")
    assert bits == 0x0FFE  # 0x81..0x8B
    no_p2p = Device(Trace(), DeviceConfig(p2p_stream_id=None))
    s2 = no_p2p.spdm_connect()
    caps = _send(no_p2p, s2, td.GetTdispCapabilities(interface_id=iid, tsm_caps=0))
    assert int.from_bytes(caps.req_msgs_supported[:2], "little") == 0x0FFE & ~(0b11 << 8)
    bind = _send(no_p2p, s2, td.BindP2PStream(interface_id=iid, p2p_stream_id=1))
    assert bind.error_code in (E.UNSUPPORTED_REQUEST, E.INVALID_INTERFACE_STATE)


def test_bind_needs_the_p2p_stream_keyed_over_the_lock_session_and_secure(running):
    dev, sid, iid = running
    assert _send(dev, sid, td.BindP2PStream(interface_id=iid, p2p_stream_id=1)).error_code == E.INVALID_REQUEST
    _key(dev, sid, 1)
    assert _send(dev, sid, td.BindP2PStream(interface_id=iid, p2p_stream_id=1)).error_code == E.INVALID_REQUEST
    dev.ide_p2p_enable(True)
    for stream in (0, 7):  # the default stream and a stream the device does not have
        assert _send(dev, sid, td.BindP2PStream(interface_id=iid, p2p_stream_id=stream)).error_code == E.INVALID_REQUEST
    assert _bound(dev) == ()
    assert isinstance(_send(dev, sid, td.BindP2PStream(interface_id=iid, p2p_stream_id=1)), td.BindP2PStreamResponse)
    assert _bound(dev) == (1,)
    assert _send(dev, sid, td.BindP2PStream(interface_id=iid, p2p_stream_id=1)).error_code == E.INVALID_REQUEST


def test_unbind_of_an_unbound_stream_is_refused_and_stop_drops_bindings(running):
    dev, sid, iid = running
    assert _send(dev, sid, td.UnbindP2PStream(interface_id=iid, p2p_stream_id=1)).error_code == E.INVALID_REQUEST
    _key(dev, sid, 1)
    dev.ide_p2p_enable(True)
    _send(dev, sid, td.BindP2PStream(interface_id=iid, p2p_stream_id=1))
    assert isinstance(
        _send(dev, sid, td.UnbindP2PStream(interface_id=iid, p2p_stream_id=1)), td.UnbindP2PStreamResponse
    )
    assert _send(dev, sid, td.UnbindP2PStream(interface_id=iid, p2p_stream_id=1)).error_code == E.INVALID_REQUEST
    _send(dev, sid, td.BindP2PStream(interface_id=iid, p2p_stream_id=1))
    assert _bound(dev) == (1,)
    assert isinstance(_send(dev, sid, td.StopInterface(interface_id=iid)), td.StopInterfaceResponse)
    assert _bound(dev) == ()


def test_error_drops_bindings(running):
    dev, sid, iid = running
    _key(dev, sid, 1)
    dev.ide_p2p_enable(True)
    _send(dev, sid, td.BindP2PStream(interface_id=iid, p2p_stream_id=1))
    dev.poison(dev.pf_rid)
    f = dev.snapshot().functions[0]
    assert f.tdi_state is td.TdiState.ERROR and f.p2p_streams == ()


def _report(dev: Device, sid: int, iid: td.InterfaceId) -> td.InterfaceReport:
    rep = _send(dev, sid, td.GetDeviceInterfaceReport(interface_id=iid, offset=0, length=0x400))
    assert rep.remainder_length == 0
    return td.InterfaceReport.decode(rep.portion)


def test_set_mmio_attribute_inside_an_updatable_range_shows_in_the_report(running):
    dev, sid, iid = running
    ranges = _report(dev, sid, iid).mmio_ranges
    tee = next(r for r in ranges if r.attributes & td.RangeAttr.IS_MEM_ATTR_UPDATABLE)
    last = tee.first_page + (tee.number_of_pages - 1) * PAGE
    want = td.MmioRange(
        first_page=last, number_of_pages=1, attributes=tee.attributes | td.RangeAttr.IS_NON_TEE_MEM, range_id=0
    )
    assert isinstance(
        _send(dev, sid, td.SetMmioAttribute(interface_id=iid, mmio_range=want)), td.SetMmioAttributeResponse
    )
    after = _report(dev, sid, iid).mmio_ranges
    assert [r.first_page for r in after] == sorted(r.first_page for r in after)
    hit = [r for r in after if r.first_page == last]
    assert hit and hit[0].number_of_pages == 1 and hit[0].attributes & td.RangeAttr.IS_NON_TEE_MEM
    assert sum(r.number_of_pages for r in after) == sum(r.number_of_pages for r in ranges)
    assert dev.snapshot().functions[0].non_tee_pages == ((last - dev.snapshot().functions[0].bar_base) // PAGE,)


@pytest.mark.parametrize(
    "change",
    ["outside", "register_page", "other_bits", "range_id", "zero_pages"],
)
def test_set_mmio_attribute_bad_range_is_invalid_request_and_changes_nothing(running, change):
    dev, sid, iid = running
    ranges = _report(dev, sid, iid).mmio_ranges
    tee = next(r for r in ranges if r.attributes & td.RangeAttr.IS_MEM_ATTR_UPDATABLE)
    msix = ranges[0]
    want = {
        "outside": td.MmioRange(first_page=tee.first_page + 64 * PAGE, number_of_pages=1, attributes=8, range_id=0),
        "register_page": td.MmioRange(
            first_page=msix.first_page, number_of_pages=1, attributes=msix.attributes, range_id=0
        ),
        "other_bits": td.MmioRange(first_page=tee.first_page, number_of_pages=1, attributes=0x9, range_id=0),
        "range_id": td.MmioRange(first_page=tee.first_page, number_of_pages=1, attributes=0xC, range_id=3),
        "zero_pages": td.MmioRange(first_page=tee.first_page, number_of_pages=0, attributes=0xC, range_id=0),
    }[change]
    before = dev.snapshot()
    resp = _send(dev, sid, td.SetMmioAttribute(interface_id=iid, mmio_range=want))
    assert isinstance(resp, td.TdispError) and resp.error_code == E.INVALID_REQUEST
    assert dev.snapshot() == before
    assert _report(dev, sid, iid).mmio_ranges == ranges


def test_vdm_known_vendor_echoes_and_unknown_gets_vendor_specific_error(running):
    dev, sid, iid = running
    ok = _send(dev, sid, td.VdmRequest(interface_id=iid, registry_id=0, vendor_id=VENDOR_ID, payload=b"abc"))
    assert isinstance(ok, td.VdmResponse) and (ok.registry_id, ok.vendor_id, ok.payload) == (0, VENDOR_ID, b"abc")
    raw = dev.handle_vendor_message(
        1, td.encode(td.VdmRequest(interface_id=iid, registry_id=1, vendor_id=b"\x34\x12", payload=b"")), session_id=sid
    )
    # 16-byte header, ERROR_CODE 0x000000FF, ERROR_DATA 0, then REGISTRY_ID 1, VENDOR_ID_LEN 2, VENDOR_ID
    assert raw[1] == 0x7F and raw[16:20] == (0xFF).to_bytes(4, "little") and raw[20:24] == bytes(4)
    assert raw[24:] == b"\x01\x02\x34\x12"
    bad = _send(dev, sid, td.VdmRequest(interface_id=iid, registry_id=9, vendor_id=b"\x01", payload=b""))
    assert bad.error_code == E.INVALID_REQUEST


def test_optional_requests_outside_run_are_invalid_interface_state():
    dev = Device(Trace(), DeviceConfig())
    sid = dev.spdm_connect()
    iid = td.InterfaceId(function_id=dev.pf_rid)
    rng = td.MmioRange(first_page=0, number_of_pages=1, attributes=0, range_id=0)
    for msg in (
        td.BindP2PStream(interface_id=iid, p2p_stream_id=1),
        td.UnbindP2PStream(interface_id=iid, p2p_stream_id=1),
        td.SetMmioAttribute(interface_id=iid, mmio_range=rng),
    ):
        assert _send(dev, sid, msg).error_code == E.INVALID_INTERFACE_STATE
    # VDM is legal in every state
    vdm = _send(dev, sid, td.VdmRequest(interface_id=iid, registry_id=0, vendor_id=VENDOR_ID, payload=b""))
    assert isinstance(vdm, td.VdmResponse)
