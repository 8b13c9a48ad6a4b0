"""CONF-04: the host's view does not depend on the guests' secrets (noninterference).

Judged differentially by ``conformance/noninterference.py`` (two runs of the same steps with different
secrets), not step by step: this entry puts the rule in the catalogue, the docs and the reports.
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
]
