"""Responder fuzz: malformed TDISP / IDE_KM bytes get a spec error answer and never change the device.

One device per test, taken to a locked TDI with keys over an SPDM session; every malformed message is
answered (TDISP_ERROR, or a non-success KP_ACK / a dropped message for IDE_KM) and the device's
snapshot stays exactly the same.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from teeio_conformance.contract import ide_km as km
from teeio_conformance.contract.tdisp import codec as td
from teeio_conformance.contract.trace import Trace
from teeio_conformance.reference_impl.device.device import Device, DeviceConfig
from teeio_conformance.strategies.messages import malformed_ide_km_requests, malformed_tdisp_requests

IV = (0).to_bytes(4, "little") + (1).to_bytes(4, "little")


def _locked_device() -> tuple[Device, int]:
    dev = Device(Trace(enabled=False), DeviceConfig(num_vfs=1))
    sid = dev.spdm_connect()
    slots = [km.KeySubStream(km.KeySet.K0, d, s) for d in km.Direction for s in km.SubStream]
    for i, slot in enumerate(slots):
        dev.handle_vendor_message(
            0,
            km.encode(km.KeyProg(stream_id=0, key_sub_stream=slot.to_byte(), port_index=0, key=bytes([i]) * 32, iv=IV)),
            session_id=sid,
        )
    for slot in slots:
        dev.handle_vendor_message(
            0, km.encode(km.KSetGo(stream_id=0, key_sub_stream=slot.to_byte(), port_index=0)), session_id=sid
        )
    dev.ide_enable(True)
    lock = td.LockInterface(
        interface_id=td.InterfaceId(function_id=dev.pf_rid),
        flags=0,
        default_stream_id=0,
        mmio_reporting_offset=0,
        bind_p2p_address_mask=0,
    )
    resp = td.decode_response(dev.handle_vendor_message(1, td.encode(lock), session_id=sid))
    assert isinstance(resp, td.LockInterfaceResponse)
    return dev, sid


class _Fresh:
    """A locked device, rebuilt whenever a (valid) mutated message legitimately changed its state."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.dev, self.sid = _locked_device()
        self.base = self.dev.snapshot()


TDISP = _Fresh()
IDE = _Fresh()
RIDS = TDISP.dev.rids()
CHANGES_STATE = (td.StopInterfaceResponse, td.StartInterfaceResponse, td.LockInterfaceResponse)


@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(malformed_tdisp_requests(valid_function_ids=RIDS))
def test_malformed_tdisp_gets_an_error_and_changes_nothing(raw):
    answer = TDISP.dev.handle_vendor_message(1, raw, session_id=TDISP.sid)
    resp = td.decode_response(answer)
    try:
        td.decode_request(raw)
    except td.TdispDecodeError:
        assert isinstance(resp, td.TdispError), f"malformed request answered {type(resp).__name__}"
    if isinstance(resp, CHANGES_STATE):
        TDISP.reset()  # a mutation that happens to be a valid STOP/START/LOCK
    else:
        assert TDISP.dev.snapshot() == TDISP.base


@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(malformed_ide_km_requests())
def test_malformed_ide_km_gets_a_status_and_changes_nothing(raw):
    answer = IDE.dev.handle_vendor_message(0, raw, session_id=IDE.sid)
    if answer is not None:
        msg = km.decode(answer)
        assert isinstance(msg, km.KpAck | km.KGoStopAck | km.QueryResp)
        if isinstance(msg, km.KpAck):
            assert msg.status != km.KpAckStatus.SUCCESS or raw[:1] == bytes([km.ObjectId.KEY_PROG])
    if raw[:1] in (bytes([km.ObjectId.KEY_PROG]), bytes([km.ObjectId.K_SET_STOP])) and answer:
        IDE.reset()  # a valid KEY_PROG / K_SET_STOP changes key slots legitimately
    else:
        assert IDE.dev.snapshot() == IDE.base
