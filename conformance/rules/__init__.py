"""The rule catalogue: every lifecycle rule with its ID, level, profiles and source.

``docs/rules.md`` is generated from :data:`CATALOGUE` (``python -m teeio_conformance.conformance.rules.docs``); the
two cannot drift apart because the docs are never written by hand.
"""

from __future__ import annotations

from . import attestation, device, guest_checks, host, ide, liveness, noninterference, p2p, reset, routing
from ._model import HELD, Area, Checker, Level, Observation, Rule, RuleViolation, applicable, violation_type

__all__ = [
    "BY_ID",
    "CATALOGUE",
    "HELD",
    "Area",
    "Checker",
    "Level",
    "Observation",
    "Rule",
    "RuleViolation",
    "applicable",
    "violation_type",
]

CATALOGUE: tuple[Rule, ...] = tuple(
    sorted(
        [
            *host.RULES,
            *device.RULES,
            *liveness.RULES,
            *attestation.RULES,
            *noninterference.RULES,
            *ide.RULES,
            *reset.RULES,
            *guest_checks.RULES,
            *routing.RULES,
            *p2p.RULES,
        ],
        key=lambda r: (r.area.name, r.id),
    )
)
BY_ID: dict[str, Rule] = {r.id: r for r in CATALOGUE}

if len(BY_ID) != len(CATALOGUE):  # pragma: no cover - a duplicated ID is a programming error
    raise RuntimeError("duplicate rule IDs in the catalogue")
