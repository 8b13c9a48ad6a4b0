"""Mutants of the model's depth (issue 19): the CC vIOMMU, the profile data that acts, and faults."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from teeio_conformance.reference_impl.iommufd import Iommufd, ObjKind
from teeio_conformance.reference_impl.tsm import Tsm

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
    ]
