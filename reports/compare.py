"""``teeio-conformance compare OLD.json NEW.json``: which rules changed verdict, per profile.

For two SUTs (the reference against a vendor's stack) or one SUT before and after a fix. Reads only
the wptreport part of ``report.json`` (results -> subtests), so the diff is about verdicts, not counts.

Kinds of change, worst first:

* ``regression`` -- FAIL now, and not FAIL before (including a rule the old report did not have);
* ``fixed`` -- FAIL before, PASS now;
* ``changed`` -- anything else that moved (PASS <-> NOT EXERCISED: coverage gained or lost; FAIL -> NOT EXERCISED:
  no longer failing but no longer exercised either, so not proof of a fix; a rule only one side has; NOT APPLICABLE
  (wpt's PRECONDITION_FAILED): the SUT no longer offers what the rule needs).

Exit status of the command: 1 when there is a regression, 0 otherwise, 2 for an unusable input file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from teeio_conformance.reports.model import ReportInputError
from teeio_conformance.reports.writer import TEST_PREFIX, read_report_json

__all__ = [
    "Change",
    "Comparison",
    "add_arguments",
    "compare_files",
    "compare_reports",
    "render_text",
    "run",
    "verdicts_of",
]

KINDS = ("regression", "fixed", "changed")


@attrs.frozen(kw_only=True)
class Change:
    rule_id: str
    profile: str
    old: str | None  # PASS | FAIL | NOT EXERCISED, or None when the old report has no such verdict
    new: str | None
    kind: str = attrs.field(validator=attrs.validators.in_(KINDS))
    message: str | None = None  # the new report's message (or the old one's when the verdict went away)

    def to_json(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "profile": self.profile,
            "old": self.old,
            "new": self.new,
            "kind": self.kind,
            "message": self.message,
        }


def _changes(values: Iterable[Change]) -> tuple[Change, ...]:
    return tuple(values)


@attrs.frozen(kw_only=True)
class Comparison:
    old_sut: str
    new_sut: str
    changes: tuple[Change, ...] = attrs.field(converter=_changes)
    unchanged: int
    only_old: tuple[str, ...] = ()  # profiles only the old report ran
    only_new: tuple[str, ...] = ()

    def of_kind(self, kind: str) -> list[Change]:
        return [c for c in self.changes if c.kind == kind]

    @property
    def regressions(self) -> list[Change]:
        return self.of_kind("regression")

    def to_json(self) -> dict[str, Any]:
        return {
            "old_sut": self.old_sut,
            "new_sut": self.new_sut,
            "unchanged": self.unchanged,
            "only_old_profiles": list(self.only_old),
            "only_new_profiles": list(self.only_new),
            "counts": {k: len(self.of_kind(k)) for k in KINDS},
            "changes": [c.to_json() for c in self.changes],
        }


# report.json's results are wptreport's, which says NOTRUN; every other format (and this one) NOT EXERCISED
_LABEL = {"NOTRUN": "NOT EXERCISED"}


def verdicts_of(data: Mapping[str, Any]) -> dict[tuple[str, str], tuple[str, str | None]]:
    """(profile, rule_id) -> (status, message) from a report.json's results."""
    out = {}
    for result in data["results"]:
        test = str(result["test"])
        profile = test[len(TEST_PREFIX) :] if test.startswith(TEST_PREFIX) else test
        for sub in result["subtests"]:
            status = str(sub["status"])
            out[(profile, str(sub["name"]))] = (_LABEL.get(status, status), sub.get("message"))
    return out


def _kind(old: str | None, new: str | None) -> str:
    if new == "FAIL" and old != "FAIL":
        return "regression"
    if old == "FAIL" and new == "PASS":
        return "fixed"
    return "changed"


def compare_reports(old: Mapping[str, Any], new: Mapping[str, Any]) -> Comparison:
    """Compare two (schema-valid) report.json documents verdict by verdict."""
    a, b = verdicts_of(old), verdicts_of(new)
    changes, unchanged = [], 0
    for key in sorted(a.keys() | b.keys(), key=lambda k: (k[1], k[0])):
        (old_status, old_msg), (new_status, new_msg) = a.get(key, (None, None)), b.get(key, (None, None))
        if old_status == new_status:
            unchanged += 1
            continue
        changes.append(
            Change(
                rule_id=key[1],
                profile=key[0],
                old=old_status,
                new=new_status,
                kind=_kind(old_status, new_status),
                message=new_msg if new_status is not None else old_msg,
            )
        )
    order = {k: i for i, k in enumerate(KINDS)}
    changes.sort(key=lambda c: (order[c.kind], c.rule_id, c.profile))
    pa, pb = {k[0] for k in a}, {k[0] for k in b}
    return Comparison(
        old_sut=str(old["run_info"]["sut"]),
        new_sut=str(new["run_info"]["sut"]),
        changes=changes,
        unchanged=unchanged,
        only_old=tuple(sorted(pa - pb)),
        only_new=tuple(sorted(pb - pa)),
    )


def compare_files(old_path: str, new_path: str) -> Comparison:
    return compare_reports(read_report_json(old_path), read_report_json(new_path))


_HEADINGS = {
    "regression": "Regressions (FAIL now, not before)",
    "fixed": "Fixed (FAIL before, PASS now)",
    "changed": "Other changes",
}


def render_text(cmp: Comparison, *, old_name: str = "OLD", new_name: str = "NEW") -> str:
    lines = [f"compare {old_name} (SUT {cmp.old_sut}) -> {new_name} (SUT {cmp.new_sut})"]
    width = max((len(c.rule_id) for c in cmp.changes), default=8)
    pwidth = max((len(c.profile) for c in cmp.changes), default=7)
    whole = {(p, "old") for p in cmp.only_old} | {(p, "new") for p in cmp.only_new}
    for profile, side in sorted(whole):
        n = sum(1 for c in cmp.changes if c.profile == profile)
        lines.append(
            f"profile {profile} was run only in {old_name if side == 'old' else new_name} ({n} verdicts; "
            f"listed below only where they FAIL)"
        )
    for kind in KINDS:
        found = [
            c
            for c in cmp.of_kind(kind)
            if "FAIL" in (c.old, c.new) or (c.profile, "old" if c.new is None else "new") not in whole
        ]
        if not found:
            continue
        lines += ["", f"{_HEADINGS[kind]} ({len(found)}):"]
        for c in found:
            move = f"{c.old or '(absent)'} -> {c.new or '(absent)'}"
            tail = f"  {' '.join(c.message.split())[:160]}" if c.message and kind != "changed" else ""
            lines.append(f"  {c.rule_id:<{width}} {c.profile:<{pwidth}} {move:<30}{tail}".rstrip())
    lines += [
        "",
        f"{len(cmp.changes) + cmp.unchanged} verdicts compared: {len(cmp.regressions)} regression(s), "
        f"{len(cmp.of_kind('fixed'))} fixed, {len(cmp.of_kind('changed'))} other change(s), "
        f"{cmp.unchanged} unchanged",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- CLI: teeio-conformance compare


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", metavar="OLD.json", help="report.json of the earlier run (or the other SUT)")
    parser.add_argument("new", metavar="NEW.json", help="report.json of the later run")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")


def run(args: argparse.Namespace) -> int:
    """Print the changes; 1 if any rule regressed, 0 if none did, 2 for an unusable file."""
    try:
        cmp = compare_files(args.old, args.new)
    except ReportInputError as exc:
        sys.stderr.write(f"teeio-conformance compare: {exc}\n")
        return 2
    if args.json:
        json.dump({"old": args.old, "new": args.new, **cmp.to_json()}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_text(cmp, old_name=args.old, new_name=args.new))
    return 1 if cmp.regressions else 0
