"""``report.html``: one self-contained page (inline CSS, no scripts, no external assets).

Read top to bottom the way an implementer handed a failure reads it: the summary grid (rule x profile,
coloured by verdict, each FAIL cell linking to its failure), then every failure with the rule's text
and source, the swimlane chart of the failing example in the flow's columns (the violating step
marked), the shrunk program, and the command that replays it on their build.

This module only builds plain view data; the markup lives in ``templates/report.html.j2`` (Jinja2 with
autoescaping on -- SUT messages and trace arguments are untrusted text).
"""

from __future__ import annotations

from typing import Any

import jinja2

from teeio_conformance.reports.model import Failure, Report, Status
from teeio_conformance.reports.swimlane import LANE_TITLES, LANES, render_text, rows
from teeio_conformance.reports.writer import replay_test_filename

__all__ = ["render", "swimlane_view"]

_CSS_STATUS = {Status.PASS: "pass", Status.FAIL: "fail", Status.NOT_EXERCISED: "notex", Status.NOT_APPLICABLE: "notap"}


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("teeio_conformance.reports", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _lane(name: Any) -> int:
    return LANES.index(name) if name in LANES else -1


def swimlane_view(
    trace: list[dict[str, Any]], mark_seq: int | None, step_start: int | None = None
) -> list[dict[str, Any]]:
    """Rows of the chart as cells per lane: ``caller`` (the dot), ``callee`` (arrow + operation),
    ``span`` (the line between them) or empty; ``mark_seq`` (the crossing the message cites) is marked,
    and rows from ``step_start`` (the violating step's first crossing; default ``mark_seq``) on flagged."""
    if step_start is None:
        step_start = mark_seq
    out = []
    for r in rows(trace):
        src, dst = _lane(r["caller"]), _lane(r["callee"])
        refused = r["outcome"] != "ok"
        label = r["operation"] + (f" \u2717 {r['error']}" if refused else "")
        cells: list[dict[str, str]] = [{"kind": "", "text": ""} for _ in LANES]
        note = ""
        if dst < 0:
            note = f"{r['caller']} \u2192 {r['callee']}.{label}"
        else:
            lo, hi = (min(src, dst), max(src, dst)) if src >= 0 else (0, dst)
            for i in range(lo, hi + 1):
                cells[i] = {"kind": "span", "text": ""}
            if src >= 0 and src != dst:
                cells[src] = {"kind": "caller", "text": "\u25cf"}
            arrow = "\u25b6 " if src < 0 or src <= dst else "\u25c0 "
            cells[dst] = {"kind": "callee", "text": arrow + label}
            if src < 0 and r["caller"] != "harness":
                note = f"from {r['caller']}"
        seq = r["seq"]
        out.append(
            {
                "seq": seq,
                "step": r["step"] or "",
                "cells": cells,
                "refused": refused,
                "note": note,
                "from_harness": r["caller"] == "harness",
                "marked": mark_seq is not None and seq == mark_seq,
                "in_violating_step": step_start is not None and isinstance(seq, int) and seq >= step_start,
            }
        )
    return out


def _failure_view(report: Report, f: Failure) -> dict[str, Any]:
    v = report.verdict(f.rule_id)
    trace = [dict(e) for e in f.trace]
    first = report.same_as(f)
    return {
        "same_as": None if first is None else {"anchor": f"failure-{first.name}", "test": first.test},
        "anchor": f"failure-{f.name}",
        "f": f,
        "title": f.rule_title or (v.title if v else ""),
        "source": (v.source if v else "") or f.rule_source,
        "doc": v.doc if v else "",
        "level": v.level if v else "",
        "area": _area_text(v.area) if v else "",
        "validator_cases": list(v.validator_cases) if v else [],
        "program": f.program_lines(),
        "replay": report.replay_command(f),
        "pytest_file": f"failures/{replay_test_filename(f.name)}",
        "rows": swimlane_view(trace, f.cited_seq, f.violating_seq),
        "chart": render_text(trace, title="", mark_seq=f.cited_seq) if trace else "",
    }


def _area_text(name: str) -> str:
    from teeio_conformance.conformance.rules import Area

    try:
        return f"{name} \u2014 {Area[name].value}"
    except KeyError:
        return name


def _grid(report: Report) -> list[dict[str, Any]]:
    """Grid rows grouped by area: an area heading, then one row per rule with one cell per profile."""
    out: list[dict[str, Any]] = []
    area = None
    for v in report.verdicts:
        if v.area != area:
            area = v.area
            out.append({"heading": _area_text(area)})
        cells = []
        for column in report.columns:
            pv = v.by_profile.get(column)
            if pv is None:
                cells.append(
                    {
                        "css": "na",
                        "text": "n/a",
                        "title": f"{v.rule_id} does not apply to {column}",
                        "href": None,
                    }
                )
                continue
            first = next(iter(report.failures_for(v.rule_id, column)), None)
            cells.append(
                {
                    "css": _CSS_STATUS[pv.status],
                    "text": pv.status.label,
                    "title": f"{column}: {report.explain(v, column)}",
                    "href": f"#failure-{first.name}" if first else None,
                    "counts": f"{pv.exercised}/{pv.checked}",
                }
            )
        out.append({"heading": None, "v": v, "cells": cells})
    return out


def render(report: Report) -> str:
    counts = report.counts()
    template = _environment().get_template("report.html.j2")
    return template.render(
        run=report.run,
        columns=report.columns,
        grid=_grid(report),
        counts={s.label: counts[s] for s in Status},
        summary=report.summary_line(),
        outcome=report.outcome,
        exit_status=report.exit_status(),
        failures=[_failure_view(report, f) for f in report.failures],
        lanes=[LANE_TITLES[name] for name in LANES],
    )
