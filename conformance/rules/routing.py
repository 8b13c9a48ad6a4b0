"""Routing: a guest's request reaches the TDI it names.

The guest knows its devices only by their virtual PCI IDs; the VMM turns the ID in a GHCI call into the
vdevice allocated for it (IOMMU_VDEVICE_ALLOC's ``virt_id``), and IOMMUFD acts on that vdevice's TDI. A VMM
that looks the ID up wrongly binds, attests, accepts or unbinds another of the VM's devices -- every step
succeeds, so no ordering or lifetime rule sees it.
"""

from __future__ import annotations

from teeio_conformance.contract.tiers import Needs

from ._model import HELD, Area, Level, Observation, make_rule
from ._view import objects

GHCI = frozenset({"ghci_bind", "ghci_guest_request", "ghci_unbind"})


def ghci_reaches_named_vdevice(o: Observation) -> str | None:
    """Each GHCI call for (VM, virtual ID) acts on the vdevice allocated with that virtual ID for that VM."""
    if not any(e.callee == "vmm" and e.operation in GHCI for e in o.events):
        return None
    known = {v.id: v for snap in (o.before, o.after) for v in objects(snap, "vdevice")}
    hit = False
    for e in o.events:
        if e.callee != "iommufd" or not e.operation.startswith("vdevice_") or not e.arguments:
            continue
        p = o.parent(e)
        if p is None or p.callee != "vmm" or p.operation not in GHCI or len(p.arguments) < 2:
            continue
        v = known.get(e.arguments[0])
        if v is None:
            continue
        hit = True
        vm, virt = p.arguments[0], p.arguments[1]
        if (v.vm, v.virt_id) != (vm, virt):
            return (
                f"{vm}'s {p.operation} for virtual ID {virt:#x} went to vdevice {v.id}, "
                f"virtual ID {v.virt_id:#x} of {v.vm}"
            )
    return HELD if hit else None


RULES = [
    make_rule(
        "FLOW-20",
        "a guest's GHCI request acts on the vdevice of the virtual ID it names",
        Area.FLOW,
        Level.MUST,
        "flow steps 13 14 21 22 26 27; flow corr. 4; rules-seed A.11",
        ghci_reaches_named_vdevice,
        on=[f"vmm.{op}" for op in sorted(GHCI)],
        needs=Needs(
            crossings={f"vmm.{op}" for op in GHCI}
            | {f"iommufd.vdevice_{op}" for op in ("tsm_bind", "guest_request", "host_start", "tsm_unbind")},
            errors=False,
            snapshots=("iommufd",),
        ),
    ),
]
