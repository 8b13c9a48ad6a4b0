"""``report.txt``: the run as a plain log, in the shape DMTF's spdm-emu / tee-io-validator users read.

One line per rule and profile, verdict first (``[PASS] FLOW-01 ...``), so ``grep '^\\[FAIL\\]'`` finds
what broke; then each failure in full (source, shrunk program, swimlane chart, replay command); the
last line is the totals, ``N passed, N failed, N not exercised`` (counted over rule x profile lines).
"""

from __future__ import annotations

from teeio_conformance.reports.model import Report, Status
from teeio_conformance.reports.swimlane import render_text
from teeio_conformance.reports.writer import replay_test_filename

__all__ = ["render"]

_TAG = {
    Status.PASS: "[PASS]",
    Status.FAIL: "[FAIL]",
    Status.NOT_EXERCISED: "[NOT EXERCISED]",
    Status.NOT_APPLICABLE: "[NOT APPLICABLE]",
}


def render(report: Report) -> str:
    run = report.run
    out = [
        "teeio-conformance report",
        f"SUT: {run.sut}",
        f"Profiles: {', '.join(run.profiles) or '-'}",
        f"Hypothesis {run.hypothesis or '?'}, settings profile {run.settings_profile or '?'}, "
        f"seed {run.seed or '-'}; {run.steps} machine steps; workers: {', '.join(run.workers) or '-'}",
    ]
    if run.started or run.finished:
        out.append(f"Run: {run.started or '?'} .. {run.finished or '?'}")
    out.append(f"Outcome: {report.outcome.headline()} (exit status {report.exit_status()})")
    out += [f"  [{e.kind.upper()}] {e.test + ': ' if e.test else ''}{e.message}" for e in report.outcome.events]
    width = max((len(v.rule_id) for v in report.verdicts), default=8)
    for column in report.columns:
        out += ["", f"== profile {column} =="]
        for v in report.verdicts:
            pv = v.by_profile.get(column)
            if pv is None:
                continue
            line = (
                f"{_TAG[pv.status]:<17}{v.rule_id:<{width}} {v.title}  "
                f"(checked {pv.checked}, exercised {pv.exercised}, failed {pv.failed})"
            )
            out.append(line)
            if pv.status is Status.FAIL:
                out.append(f"{'':17}{'':<{width}} -> {report.explain(v, column)}")
    if report.failures:
        out += ["", f"== failures ({len(report.failures)}) =="]
    for f in report.failures:
        fv = report.verdict(f.rule_id)
        first = report.same_as(f)
        if first is not None:  # the same rule, machine and steps as a failure shown in full above
            out += [
                "",
                f"[FAIL] {f.rule_id} {f.rule_title or (fv.title if fv else '')}",
                f"  profile {f.profile}, test {f.test}: the same failure (rule and shrunk steps) as {first.test}",
                f"  replay: {f.replay_command()}   (from the report directory)",
            ]
            continue
        out += [
            "",
            f"[FAIL] {f.rule_id} {f.rule_title or (fv.title if fv else '')}",
            f"  profile {f.profile}, machine {f.machine}, test {f.test}",
            f"  broken by step {f.action!r}: {f.message}",
            f"  source: {(fv.source if fv else '') or f.rule_source}",
            "  shrunk program:",
        ]
        out += [f"    {line}" for line in f.program_lines()]
        if f.trace:
            chart = render_text(
                [dict(e) for e in f.trace],
                title=f"swimlane of the failing example ('!' marks seq {f.cited_seq}, the crossing the message cites)",
                mark_seq=f.cited_seq,
            )
            out += ["", *("  " + line if line else "" for line in chart.rstrip("\n").split("\n"))]
        out += [
            "",
            f"  replay: {report.replay_command(f)}",
            f"  regression test: pytest failures/{replay_test_filename(f.name)}",
        ]
    out += ["", report.summary_line()]
    return "\n".join(out) + "\n"
