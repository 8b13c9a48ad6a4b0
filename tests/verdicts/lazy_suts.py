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


__all__ = ["fixed_nonce", "never_recovers", "refuses_lock", "refuses_reports", "start_does_nothing"]
