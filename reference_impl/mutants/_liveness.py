"""Liveness mutants (issue 14): stacks that break nothing safety rules see, but cannot do the lifecycle.

Each does less than the lifecycle needs at one phase, by a code path of its own, and must be caught by
that phase's LIVE rule (``conformance/rules/liveness.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from teeio_conformance.contract.tdisp import codec as td
from teeio_conformance.reference_impl.device.device import Device
from teeio_conformance.reference_impl.device.ide.stream import StreamState
from teeio_conformance.reference_impl.vfio import Vfio
from teeio_conformance.reference_impl.vmm import Vmm


class VmmRunDoesNothing(Vmm):
    """KVM run is never issued: the VMM returns from run() and the VM stays created."""

    def run(self, vm: str) -> None:
        return None


class DeviceRefusesLock(Device):
    """The device answers every LOCK_INTERFACE with TDISP_ERROR BUSY -- a transient refusal the spec allows
    once, here forever, so no TDI is ever locked."""

    def _on_lock_interface(self, fn: Any, req: Any, sid: int) -> td.Response:
        return td.TdispError(interface_id=req.interface_id, error_code=td.ErrorCode.BUSY)


class DeviceDropsTrustedDma(Device):
    """A T=1 DMA request from a RUN TDI is silently dropped by the device: nothing reaches the guest."""

    def issue_dma(self, rid: int, address: int, payload: bytes, *, t_bit: bool) -> None:
        if t_bit and self.ide.state is StreamState.SECURE:
            return None  # on a Secure stream (elsewhere the refusal stands, as IDE-06 wants)
        return super().issue_dma(rid, address, payload, t_bit=t_bit)


class VmmStopDoesNothing(Vmm):
    """VM stop returns without stopping the VM or releasing anything."""

    def stop_vm(self, vm: str) -> None:
        return None


class VfioNeverRecovers(Vfio):
    """The TSM's 'enable MMIO' callback after TDI free does nothing: the dmabuf stays revoked (no step 49)."""

    def recover_mmio(self, rid: int) -> int:
        return 0


def mutants(m: Callable[..., Any]) -> list[Any]:
    full = "full_stack"
    return [
        m(
            "vmm-run-does-nothing",
            "LIVE-01",
            full,
            "tdx",
            VmmRunDoesNothing.__doc__,
            overrides={"vmm_factory": VmmRunDoesNothing},
        ),
        m("device-refuses-lock", "LIVE-02", full, "tdx", DeviceRefusesLock.__doc__, device=DeviceRefusesLock),
        m(
            "device-drops-trusted-dma",
            "LIVE-03",
            full,
            "sev-tio",
            DeviceDropsTrustedDma.__doc__,
            device=DeviceDropsTrustedDma,
        ),
        m(
            "vmm-stop-does-nothing",
            "LIVE-04",
            full,
            "cca",
            VmmStopDoesNothing.__doc__,
            overrides={"vmm_factory": VmmStopDoesNothing},
        ),
        m(
            "vfio-never-recovers",
            "LIVE-05",
            full,
            "tdx",
            VfioNeverRecovers.__doc__,
            overrides={"vfio_factory": VfioNeverRecovers},
        ),
    ]
