"""Mutants of the model's depth (issue 19): the CC vIOMMU, the profile data that acts, and faults."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from teeio_conformance.contract.tdisp import codec as td
from teeio_conformance.reference_impl.iommufd import Iommufd, ObjKind
from teeio_conformance.reference_impl.tsm import Tsm
from teeio_conformance.reference_impl.vfio import Vfio

# ------------------------------------------------------------------ CC vIOMMU


class TsmProgramsIommuDirectly(Tsm):
    """The TSM programs and clears the IOMMU's T=1 translation itself, bypassing IOMMUFD's CC vIOMMU
    (the reference before issue 19)."""

    def _guest_accept_dma(self, ctx: Any, request: Any) -> None:
        self._iommu.set_trusted(ctx.rid, ctx.vm)
        ctx.trusted_dma = True


class IommufdViommuNotCc(Iommufd):
    """vIOMMUs are allocated without CC state and bind does not ask for one: trusted DMA is then
    programmed for a vdevice whose vIOMMU never took over T=1 translation."""

    def viommu_alloc(self, hwpt: int, vm: str, *, cc: bool = True) -> int:
        return super().viommu_alloc(hwpt, vm, cc=False)

    def vdevice_tsm_bind(self, vdevice: int) -> None:
        vi = self._objs[self._vdev(vdevice).parent]  # type: ignore[index]
        was, vi.cc = vi.cc, True  # skip the CC check
        try:
            super().vdevice_tsm_bind(vdevice)
        finally:
            vi.cc = was


class TsmUnbindNoDmaCallback(Tsm):
    """Unbind frees the TDI without IOMMUFD's disable-DMA callback (steps 45-46 skipped): the T=1
    translation is left to whoever tears the vdevice down later."""

    def unbind(self, rid: int) -> None:
        ctx = self._ctx(rid)
        if ctx.trusted_dma:
            ctx.trusted_dma = False  # forget it, so the reference path skips the callback
        super().unbind(rid)


class IommufdCallbackDisablesViommu(Iommufd):
    """The disable callback disables the whole CC vIOMMU (step 46 as drawn): its CC state goes, and so
    does the T=1 translation of every vdevice on it, while the VM runs."""

    def cc_disable_dma(self, rid: int) -> None:
        super().cc_disable_dma(rid)
        v = self._vdev_of(rid)
        if v is None:
            return
        vi = self._objs.get(v.parent)  # type: ignore[arg-type]
        if vi is None:
            return
        vi.cc = False
        for o in self._objs.values():
            if o.kind is ObjKind.VDEVICE and o.parent == vi.id and o.trusted:
                self._iommu.clear_trusted(o.rid)
                o.trusted = False


# ------------------------------------------------------------------ profile data that acts


class TsmOpensDmaWithStart(Tsm):
    """SEV-TIO: the TSM opens T=1 DMA with the START it sends at attest, as if the profile did not keep DMA
    blocked until the guest enables it."""

    def __init__(self, trace: Any, profile: Any, **kw: Any) -> None:
        super().__init__(trace, attrs.evolve(profile, dma_blocked_until_guest_enables=False), **kw)


class TsmQueuesUnbounded(Tsm):
    """The TSM queues any number of host TDISP requests per TDI (the outstanding-request limit unread)."""

    def __init__(self, trace: Any, profile: Any, **kw: Any) -> None:
        super().__init__(trace, attrs.evolve(profile, max_outstanding_per_tdi=64), **kw)


class TsmGuestUsesHostWhitelist(Tsm):
    """The TSM lets a guest originate whatever the host may (its check takes the host's whitelist too), and
    sends STOP and LOCK for the guest: a TD can stop its TDI behind the TSM's back."""

    def _check_guest_may(self, request: str | None) -> None:
        if request not in self.profile.host_tdisp_requests:
            super()._check_guest_may(request)

    def _guest_tdisp(self, ctx: Any, request: Any) -> str:
        name = request.payload.decode("ascii", errors="replace")
        self._check_guest_may(name)
        if name == "STOP_INTERFACE":
            return type(self._tdisp(ctx.rid, td.StopInterface(interface_id=self._iid(ctx.rid)))).__name__
        if name == "LOCK_INTERFACE":
            return type(self._lock(ctx.rid, 0)).__name__
        return super()._guest_tdisp(ctx, request)


# ------------------------------------------------------------------ BUSY and retry


class TsmBusyIsRefusal(Tsm):
    """The TSM takes a BUSY answer as a refusal: no retry, and the call fails with -EINVAL."""

    def _tdisp(self, rid: int, request: Any) -> Any:
        ctx = self._ctx(rid)
        sid = self._sessions.get(ctx.device)
        if sid is None:
            return super()._tdisp(rid, request)
        raw = self._devices[ctx.device].handle_vendor_message(1, td.encode(request), session_id=sid)
        resp = td.decode_response(raw)
        if isinstance(resp, td.TdispError) and resp.error_code == td.ErrorCode.BUSY:
            from teeio_conformance.contract.errors import InvalidState

            raise InvalidState(f"device refused {type(request).__name__}: BUSY")
        return resp


# ------------------------------------------------------------------ faults


class TsmBindNoRollback(Tsm):
    """Bind does not unlock the TDI again when a step after LOCK fails (a firmware error in VFIO or KVM):
    the TDI stays locked with no binding (the reference before the fail-nth walk)."""

    def _teardown_step(self, fn: Any, *args: Any) -> None:
        if getattr(fn, "__name__", "") == "_stop" and self._rolling_back:
            return None
        super()._teardown_step(fn, *args)

    _rolling_back = False

    def bind(self, rid: int, vm: str | None, virt_id: int | None = None) -> None:
        self._rolling_back = True
        try:
            super().bind(rid, vm, virt_id)
        finally:
            self._rolling_back = False


class IommufdBindKeepsCcOnRefusal(Iommufd):
    """A refused bind (the device could not LOCK) leaves the vdevice set up in its CC vIOMMU: the refusal
    changed state (found reachable through the device's INSUFFICIENT_ENTROPY fault)."""

    def vdevice_tsm_bind(self, vdevice: int) -> None:
        v = self._vdev(vdevice)
        vi = self._objs[v.parent]  # type: ignore[index]
        if vi.cc and not v.cc:
            self._iommu.cc_attach(v.rid, vi.id, v.vm)
            v.cc = True
        self._tsm.bind(v.rid, v.vm, v.virt_id)
        v.bound = True


class VfioRemoveDropsFiles(Vfio):
    """On surprise removal VFIO forgets the gone device's files without its close path: the TDIs stay bound,
    the dmabufs valid and mapped, the vdevices alive, the session kept."""

    def pci_remove(self, device: str) -> None:
        dev = self._devices.get(device)
        for fd in [f.fd for f in self._fds.values() if f.device is dev]:
            del self._fds[fd]


def mutants(m: Callable[..., Any]) -> list[Any]:
    full = "full_stack"
    return [
        m(
            "tsm-programs-iommu-directly",
            "CCV-01",
            full,
            "tdx",
            TsmProgramsIommuDirectly.__doc__,
            overrides={"tsm_factory": TsmProgramsIommuDirectly},
        ),
        m(
            "iommufd-viommu-not-cc",
            "CCV-02",
            full,
            "sev-tio",
            IommufdViommuNotCc.__doc__,
            overrides={"iommufd_factory": IommufdViommuNotCc},
        ),
        m(
            "tsm-unbind-no-dma-callback",
            "CCV-03",
            full,
            "cca",
            TsmUnbindNoDmaCallback.__doc__,
            overrides={"tsm_factory": TsmUnbindNoDmaCallback},
        ),
        m(
            "iommufd-callback-disables-viommu",
            "CCV-04",
            full,
            "tdx",
            IommufdCallbackDisablesViommu.__doc__,
            overrides={"iommufd_factory": IommufdCallbackDisablesViommu},
        ),
        m(
            "tsm-opens-dma-with-start",
            "PROF-01",
            full,
            "sev-tio",
            TsmOpensDmaWithStart.__doc__,
            overrides={"tsm_factory": TsmOpensDmaWithStart},
        ),
        m(
            "tsm-queues-unbounded",
            "PROF-02",
            full,
            "cca",
            TsmQueuesUnbounded.__doc__,
            overrides={"tsm_factory": TsmQueuesUnbounded},
        ),
        m(
            "tsm-guest-uses-host-whitelist",
            "PROF-03",
            full,
            "tdx",
            TsmGuestUsesHostWhitelist.__doc__,
            overrides={"tsm_factory": TsmGuestUsesHostWhitelist},
        ),
        m(
            "tsm-busy-is-refusal",
            "RETRY-01",
            full,
            "tdx",
            TsmBusyIsRefusal.__doc__,
            overrides={"tsm_factory": TsmBusyIsRefusal},
        ),
        m(
            "tsm-bind-no-rollback",
            "DOWN-05",
            full,
            "sev-tio",
            TsmBindNoRollback.__doc__,
            overrides={"tsm_factory": TsmBindNoRollback},
        ),
        m(
            "vfio-remove-drops-files",
            "DOWN-06",
            full,
            "cca",
            VfioRemoveDropsFiles.__doc__,
            overrides={"vfio_factory": VfioRemoveDropsFiles},
        ),
        m(
            "iommufd-bind-keeps-cc-on-refusal",
            "ERR-01",
            full,
            "tdx",
            IommufdBindKeepsCcOnRefusal.__doc__,
            overrides={"iommufd_factory": IommufdBindKeepsCcOnRefusal},
        ),
    ]
