"""Host rules that issue 14 found uncovered: the VFIO reset path, and guest requests from a VM that does not own
the TDI.

A VFIO reset (VFIO_DEVICE_RESET: an FLR of the function) must first take the function out of confidential use
and out of every importer's hands -- unbind the TDI (which STOPs it) and revoke the function's dmabufs, so KVM
unmaps the BAR -- and only then reset the device (rules-seed B.30, B.34, Q10). Both are read from the order of
the crossings inside the reset, so the rules judge the path, not only where it ends.
"""

from __future__ import annotations

from typing import Any

from ._model import HELD, Area, Level, Observation, Rule, fold_history, make_rule
from ._view import bound_vm

__all__ = ["RULES"]

M = Level.MUST


def _resets(o: Observation) -> list[tuple[Any, Any, list[Any]]]:
    """(reset event, the FLR it issued, the reset's events before that FLR) for every VFIO reset of the step
    whose FLR reached a device."""
    out = []
    for r in o.ops("vfio", "reset"):
        inside = [e for e in o.events if e.seq > r.seq and r in o.ancestors(e)]
        flr = next((e for e in inside if e.callee == "device" and e.operation == "flr"), None)
        if flr is not None:
            out.append((r, flr, [e for e in inside if e.seq < flr.seq]))
    return out


def mmio_reset_revokes_first(o: Observation) -> str | None:
    """Before the FLR of a VFIO reset, every dmabuf of the function that an importer holds is revoked (each
    importer told to unmap), after any recover that ran earlier in the reset. A device being reset must not
    be mapped into a VM: the FLR changes what its BAR answers underneath the mapping."""
    resets = _resets(o)
    if not resets:
        return None
    for _reset, flr, before_flr in resets:
        rid = flr.arguments[0]
        held = [d for d in o.before.vfio.dmabufs if d.rid == rid and d.attachments and not d.revoked]
        recovered_at = max(
            (e.seq for e in before_flr if e.callee == "vfio" and e.operation == "recover_mmio" and e.ok),
            default=-1,
        )
        for d in held:
            revoked = any(
                e.callee == "vfio"
                and e.operation == "revoke_mmio_dmabuf"
                and e.ok
                and e.arguments[:1] == (d.dmabuf,)
                and e.seq > recovered_at
                for e in before_flr
            )
            if not revoked:
                return f"VFIO reset of {rid:#06x} issued the FLR while dmabuf {d.dmabuf} was still valid and imported"
    return HELD


def down_reset_unbinds_first(o: Observation) -> str | None:
    """Before the FLR of a VFIO reset, a TDI bound to a VM is unbound by the TSM (STOP, revoke, unmap, free:
    flow steps 40-47); the FLR comes after, never under a locked TDI. Judged at each reset of a bound TDI."""
    resets = _resets(o)
    owners = bound_vm(o.before)
    judged = False
    for _reset, flr, before_flr in resets:
        rid = flr.arguments[0]
        if owners.get(rid) is None:
            continue
        judged = True
        if not any(
            e.callee == "tsm" and e.operation == "unbind" and e.ok and e.arguments[:1] == (rid,) for e in before_flr
        ):
            return f"VFIO reset of {rid:#06x} issued the FLR while the TDI was bound to {owners[rid]} (no unbind first)"
    return HELD if judged else None


def life_guest_request_owner(o: Observation) -> str | None:
    """A guest request is carried out only for the VM the TDI is bound to; one naming another VM is refused
    (-EPERM) and changes nothing. Judged at each request naming a VM other than the bound one."""
    owners = bound_vm(o.before)
    hits = [
        e
        for e in o.ops("tsm", "guest_request")
        if len(e.arguments) >= 2 and owners.get(e.arguments[0]) not in (None, e.arguments[1])
    ]
    if not hits:
        return None
    for e in hits:
        if e.ok:
            return (
                f"a guest request for TDI {e.arguments[0]:#06x} from {e.arguments[1]} was carried out; the TDI is "
                f"bound to {owners[e.arguments[0]]}"
            )
        if e.error != "PermissionDenied":
            return f"a guest request from {e.arguments[1]}, not the TDI's VM, failed with {e.error}, not -EPERM"
    return HELD


RULES: list[Rule] = [
    make_rule(
        "MMIO-09",
        "a VFIO reset revokes the function's imported dmabufs before the FLR",
        Area.MMIO,
        M,
        "[VFIO-DMABUF] (revoke on reset); rules-seed B.30/B.34/Q10; issue 14 (the device-reset paths of VFIO)",
        mmio_reset_revokes_first,
        on={"vfio.reset"},
    ),
    make_rule(
        "DOWN-07",
        "a VFIO reset unbinds (STOPs) a bound TDI before the FLR",
        Area.DOWN,
        M,
        "flow steps 40-47 before the reset; rules-seed B.34/Q10/F.80; [XY-0524]; issue 14 (unbind, STOP before FLR)",
        down_reset_unbinds_first,
        on={"vfio.reset"},
    ),
    make_rule(
        "LIFE-15",
        "a guest request is carried out only for the VM its TDI is bound to",
        Area.LIFE,
        M,
        "[PCI-TSM] pci_tsm_guest_req; rules-seed A.20/F.75; flow steps 23, 28, 33; issue 14 (guest requests "
        "checked against the VM the TDI is bound to)",
        life_guest_request_owner,
        on={"tsm.guest_request"},
    ),
]


def _note_ran(ran: frozenset[str], e: Any) -> frozenset[str]:
    """The VMs that have run (a successful KVM run), until destroyed."""
    if e.callee == "kvm" and e.ok and e.arguments:
        if e.operation == "run":
            return ran | {e.arguments[0]}
        if e.operation == "destroy_vm":
            return ran - {e.arguments[0]}
    return ran


def flow_import_before_run(o: Observation) -> str | None:
    """Steps 2-6 -- open the function in VFIO, export its MMIO dmabuf, create the memslot and import the dmabuf
    into it -- come before KVM run (step 10): the guest sees its vPCI functions from boot and enumerates them
    (step 11) through that memslot. A VMM's dmabuf-backed memslot for a VM that has already run breaks the
    order. Memslots the suite creates as a raw host (caller ``harness``) probe KVM, which may accept them."""
    slots = [e for e in o.ops("kvm", "create_memslot", ok=True) if e.caller != "harness" and len(e.arguments) >= 3]
    slots = [e for e in slots if e.arguments[2] is not None]
    if not slots:
        return None
    ran: frozenset[str] = fold_history(o, "reset.ran_vms", frozenset, _note_ran)
    for ev in o.events:
        if ev in slots and ev.arguments[0] in ran:
            return f"the MMIO dmabuf {ev.arguments[2]} was imported into a memslot of {ev.arguments[0]} after it ran"
        ran = _note_ran(ran, ev)
    return HELD


RULES.append(
    make_rule(
        "FLOW-14",
        "a function's MMIO dmabuf is exported and imported into its memslot before the VM runs",
        Area.FLOW,
        M,
        "flow steps 2-6 before 10; flow corr. 1 (setup before KVM run); rules-seed A.1/B.26; issue 14 (steps 2-6 "
        "and 11 before KVM run)",
        flow_import_before_run,
        on={"kvm.create_memslot"},
    )
)
