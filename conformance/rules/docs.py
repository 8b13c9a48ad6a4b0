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
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(render_markdown())
