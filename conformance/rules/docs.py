"""Generate ``docs/rules.md`` from the catalogue: ``python -m teeio_conformance.conformance.rules.docs``.

A test compares the checked-in file with this output, so the catalogue is written once.
"""

from __future__ import annotations

import sys

from . import CATALOGUE
from ._model import Area

__all__ = ["render_markdown"]


def render_markdown() -> str:
    lines = [
        "# Rule catalogue",
        "",
        "Generated from `conformance/rules/` by `python -m teeio_conformance.conformance.rules.docs`;",
        "do not edit by hand.",
        f"{len(CATALOGUE)} rules. Level: MUST (every platform), SHOULD, PROFILE (the listed platforms' own",
        "requirement). Validator cases are intel/tee-io-validator's case IDs the rule covers.",
        "Every key a source cites (flow step, flow corr., rules-seed fact, [REFERENCE]) is resolved in",
        "`docs/flow.md`.",
        "",
    ]
    for area in Area:
        rules = [r for r in CATALOGUE if r.area is area]
        if not rules:
            continue
        lines += [
            f"## {area.name}: {area.value}",
            "",
            "| ID | Level | Profiles | Rule | Source | Validator cases |",
            "|---|---|---|---|---|---|",
        ]
        for r in rules:
            cases = ", ".join(r.validator_cases) or "-"
            lines.append(
                f"| {r.id} | {r.level.value} | {', '.join(sorted(r.profiles))} | {r.title} | "
                f"{r.source.replace('|', '/')} | {cases} |"
            )
        lines.append("")
    lines += _trace_tier()
    return "\n".join(lines)


def _trace_tier() -> list[str]:
    """The rules a recorded trace can feed (docs/sut-contract.md, "Tiers"): every other rule needs snapshots."""
    out = [
        "## Rules a recorded trace can check",
        "",
        "These need trace events only (`check-trace`); every other rule reads snapshots and is NOT APPLICABLE to a",
        "trace. Crossings `*`: any crossing of the stack.",
        "",
        "| ID | Crossings it reads | Typed errors |",
        "|---|---|---|",
    ]
    for r in CATALOGUE:
        if r.needs.trace_only:
            crossings = "*" if r.needs.crossings is None else ", ".join(sorted(r.needs.crossings)) or "-"
            out.append(f"| {r.id} | {crossings} | {'yes' if r.needs.errors else 'no'} |")
    return [*out, ""]


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(render_markdown())
