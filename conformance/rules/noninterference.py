"""CONF-04 / CONF-05: the host's view, and another VM's, do not depend on a guest's secrets (noninterference).

Judged differentially by ``conformance/noninterference.py`` and ``conformance/isolation.py`` (two runs of the
same steps with different secrets), not step by step: these entries put the rules in the catalogue, the docs
and the reports.
"""

from __future__ import annotations

from ._model import Area, Level, Observation, Rule, make_rule

__all__ = ["RULES"]


def conf_noninterference(o: Observation) -> str | None:
    """Judged by the differential test over whole examples; a single step says nothing."""
    return None


RULES: list[Rule] = [
    make_rule(
        "CONF-04",
        "what the host observes does not depend on the guests' secrets (noninterference)",
        Area.CONF,
        Level.MUST,
        "confidential computing threat model; rules-seed F.78; issue 14 (a leak that transforms what it leaks)",
        conf_noninterference,
        on={"harness.noninterference"},  # never a traced operation: no step checks it
    ),
    make_rule(
        "CONF-05",
        "what a VM observes does not depend on another VM's secrets (isolation as noninterference)",
        Area.CONF,
        Level.MUST,
        "rules-seed F.75/F.76 (a TDI and its private MMIO belong to one VM); flow step 35 (private MMIO and DMA "
        "of the bound VM only); confidential computing threat model (a TVM is isolated from other VMs); issue 14 "
        "(VM B's view must not depend on VM A's secrets)",
        conf_noninterference,
        on={"harness.isolation"},  # never a traced operation: no step checks it
    ),
]
