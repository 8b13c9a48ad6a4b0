"""Lazy and lying stacks, written as a user outside the project would: small subclasses of the reference
actors wired with ``build_stack``'s factory arguments, each offered as a ``--sut`` factory.

None of them does anything unsafe; each fails to do what the lifecycle needs, or claims to have done
it. ``test_lazy_suts.py`` runs ``teeio-conformance run --sut tests.verdicts.lazy_suts:<name>`` on each and
expects a non-zero exit and a named rule's FAIL.
"""

from __future__ import annotations

from typing import Any

from teeio_conformance.contract.tdisp import codec as td
from teeio_conformance.reference_impl.device.device import Device, DeviceConfig
from teeio_conformance.reference_impl.stack import StackConfig, build_stack
from teeio_conformance.reference_impl.tsm import Tsm
from teeio_conformance.reference_impl.vfio import Vfio


def _stack(profile: str, num_devices: int, num_vfs: int, trace: bool = True, **overrides: Any) -> Any:
    devices = tuple(DeviceConfig(num_vfs=num_vfs, seed=1 + i) for i in range(num_devices))
    return build_stack(StackConfig(profile=profile, devices=devices, trace=trace), **overrides)


class _RefusesLock(Device):
    def _on_lock_interface(self, fn: Any, req: Any, sid: int) -> td.Response:
        return td.TdispError(interface_id=req.interface_id, error_code=td.ErrorCode.UNSPECIFIED)


class _RefusesReports(Device):
    def _on_get_device_interface_report(self, fn: Any, req: Any, sid: int) -> td.Response:
        return td.TdispError(interface_id=req.interface_id, error_code=td.ErrorCode.INVALID_REQUEST)


class _StartDoesNothing(Device):
    """START answers success and changes nothing (the TDI stays CONFIG_LOCKED)."""

    def _on_start_interface(self, fn: Any, req: Any, sid: int) -> td.Response:
        return td.StartInterfaceResponse(interface_id=req.interface_id)


class _NeverRecovers(Vfio):
    """The TSM's 'enable MMIO' callback after TDI free does nothing: the dmabuf stays revoked."""

    def recover_mmio(self, rid: int) -> int:
        return 0


class _FixedNonceTsm(Tsm):
    """The TSM has the device sign evidence over a fixed nonce, not the guest's."""

    def guest_request(self, rid: int, vm: str, request: Any) -> Any:
        if getattr(request, "kind", "") == "report":
            request = type(request)(kind="report", nonce=b"\0" * 32)
        return super().guest_request(rid, vm, request)


def refuses_lock(*, profile: str = "tdx", num_devices: int = 1, num_vfs: int = 1, trace: bool = True) -> Any:
    """The device answers every LOCK_INTERFACE with TDISP_ERROR."""
    return _stack(profile, num_devices, num_vfs, trace, device_factory=_RefusesLock)


def refuses_reports(*, profile: str = "tdx", num_devices: int = 1, num_vfs: int = 1, trace: bool = True) -> Any:
    """The device refuses every GET_DEVICE_INTERFACE_REPORT."""
    return _stack(profile, num_devices, num_vfs, trace, device_factory=_RefusesReports)


def start_does_nothing(*, profile: str = "tdx", num_devices: int = 1, num_vfs: int = 1, trace: bool = True) -> Any:
    """START returns success and does nothing."""
    return _stack(profile, num_devices, num_vfs, trace, device_factory=_StartDoesNothing)


def never_recovers(*, profile: str = "tdx", num_devices: int = 1, num_vfs: int = 1, trace: bool = True) -> Any:
    """VFIO's recover does nothing: the device is never a workable shared device again."""
    return _stack(profile, num_devices, num_vfs, trace, vfio_factory=_NeverRecovers)


def fixed_nonce(*, profile: str = "tdx", num_devices: int = 1, num_vfs: int = 1, trace: bool = True) -> Any:
    """The TSM gets evidence signed over a fixed nonce."""
    return _stack(profile, num_devices, num_vfs, trace, tsm_factory=_FixedNonceTsm)


__all__ = [
    "acks_bad_key_prog",
    "fixed_nonce",
    "never_recovers",
    "refuses_lock",
    "refuses_reports",
    "start_does_nothing",
    "wrong_dsm_caps",
]


# ---------------------------------------------------------------------------- lying devices
class _AcksBadKeyProg(Device):
    """Every decodable KEY_PROG it answers gets KP_ACK SUCCESS -- bad port, stream, sub-stream or IV alike."""

    def handle_vendor_message(self, protocol_id: int, message: bytes, *, session_id: int | None) -> bytes | None:
        from teeio_conformance.contract import ide_km as km

        answer = super().handle_vendor_message(protocol_id, message, session_id=session_id)
        if protocol_id != 0 or answer is None or message[:1] != bytes([km.ObjectId.KEY_PROG]):
            return answer
        try:
            req = km.decode(bytes(message))
        except Exception:
            return answer  # undecodable: the honest answer stands
        ack = km.KpAck(
            stream_id=req.stream_id,
            status=km.KpAckStatus.SUCCESS,
            key_sub_stream=req.key_sub_stream,
            port_index=req.port_index,
        )
        return km.encode(ack)


class _WrongDsmCaps(Device):
    """GET_TDISP_CAPABILITIES claims a DSM capability TDISP 1.0 does not define, and a 48-bit address width."""

    def _on_get_tdisp_capabilities(self, fn: Any, req: Any, sid: int) -> td.Response:
        good: Any = super()._on_get_tdisp_capabilities(fn, req, sid)
        return td.TdispCapabilities(
            interface_id=req.interface_id,
            dsm_caps=0x3,
            req_msgs_supported=good.req_msgs_supported,
            lock_interface_flags_supported=good.lock_interface_flags_supported,
            dev_addr_width=48,
            num_req_this=good.num_req_this,
            num_req_all=good.num_req_all,
        )


def acks_bad_key_prog(*, profile: str = "tdx", num_devices: int = 1, num_vfs: int = 1, trace: bool = True) -> Any:
    return _stack(profile, num_devices, num_vfs, trace, device_factory=_AcksBadKeyProg)


def wrong_dsm_caps(*, profile: str = "tdx", num_devices: int = 1, num_vfs: int = 1, trace: bool = True) -> Any:
    return _stack(profile, num_devices, num_vfs, trace, device_factory=_WrongDsmCaps)
