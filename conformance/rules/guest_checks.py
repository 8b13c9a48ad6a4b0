"""Guest-side duties issue 14 found uncovered: the guest accepts a TDI only after it has attested it.

ATT-04 judges what a successful attest accepted (this request's nonce, ranges inside the vBAR: stale or
mismatched evidence is refused); this rule judges that accept never comes without one. Accept tells the TSM
to map the TDI's MMIO private and to open trusted DMA: a guest that does so for a TDI it never verified trusts
whatever device the host put there.
"""

from __future__ import annotations

from typing import Any

from ._model import HELD, Area, Level, Observation, Rule, make_rule

__all__ = ["RULES"]


def _requests_under(o: Observation, parent: Any, kinds: frozenset[str]) -> list[tuple[str, int]]:
    """(vm, virt_id) of each guest request of ``kinds`` the guest sent (through the VMM) inside ``parent``."""
    out = []
    for e in o.events:
        if e.callee != "vmm" or e.operation != "ghci_guest_request" or len(e.arguments) < 3:
            continue
        if getattr(e.arguments[2], "kind", None) in kinds and parent in o.ancestors(e):
            out.append((e.arguments[0], e.arguments[1]))
    return out


def att_accept_after_attest(o: Observation) -> str | None:
    """Every accept request the guest sends (accept-MMIO, accept-DMA) is for a function it attested since it
    last bound it: attested before the step (its own record) or by a successful attest earlier in the step.
    Judged at each guest accept."""
    accepts = [e for e in o.events if e.callee == "guest" and e.operation == "accept"]
    if not accepts:
        return None
    attested = {(g.vm, v.virt_id) for g in getattr(o.before, "guests", ()) for v in g.vdevs if v.bound and v.attested}
    for e in o.events:
        if e.callee != "guest":
            continue
        if e.operation == "attest" and e.ok:
            attested.update(_requests_under(o, e, frozenset({"report"})))
        elif e.operation == "disconnect":
            for u in o.events:
                if u.callee == "vmm" and u.operation == "ghci_unbind" and e in o.ancestors(u):
                    attested.discard((u.arguments[0], u.arguments[1]))
        elif e.operation == "accept":
            for vm, virt_id in _requests_under(o, e, frozenset({"accept_mmio", "accept_dma"})):
                if (vm, virt_id) not in attested:
                    return (
                        f"the guest of {vm} asked to accept function {virt_id:#x}, which it has not attested "
                        "(accept only what a verified report describes)"
                    )
    return HELD


RULES: list[Rule] = [
    make_rule(
        "ATT-05",
        "the guest accepts a function only after attesting it (a verified report since its bind)",
        Area.ATT,
        Level.MUST,
        "flow steps 24-25 (verify, then accept); rules-seed C.56/C.57; [TDXC-ARCH] §3.4.4; issue 14 (guest-side "
        "evidence checks: accepting only after attest)",
        att_accept_after_attest,
        on={"guest.accept"},
    ),
]
