"""``teeio-conformance check-trace FILE``: judge a recorded trace by every rule that needs only a trace.

A live run checks each machine step as it happens; here the steps come from the file. A step is the events
of one machine action when the file says so (``action_seq``, as ``export-trace`` writes), else one top-level
crossing with everything nested under it (what a syscall log or an adapter's recorder gives). Each step is
handed to the same :class:`~teeio_conformance.conformance.rules.Checker` a live run uses, with the same rule
IDs, under what the file offers (its header's ``offers``; by default every crossing and typed errors, no
snapshots): a rule that needs snapshots is NOT APPLICABLE, never a PASS.

A step's error is rebuilt from its top-level crossing's ``error`` (a class of the contract's error tree by
name, or an exception class of that name), so ERR-02 judges a recorded ``KeyError`` as it judges a live one.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import attrs

from teeio_conformance.contract import errors as _errors
from teeio_conformance.contract.errors import StackError
from teeio_conformance.contract.tiers import TRACE_ONLY, Offers
from teeio_conformance.contract.trace import Event
from teeio_conformance.contract.trace_file import TracedEvent, TraceFileError, TraceHeader, read_trace

__all__ = ["TraceCheck", "TraceFailure", "add_arguments", "check_events", "load_any", "run", "steps_of", "write_report"]

_SEQ = re.compile(r"\bseq (\d+)")
_ERROR_TYPES: dict[str, type[BaseException]] = {}


@attrs.frozen(kw_only=True)
class TraceFailure:
    rule_id: str
    title: str
    source: str
    message: str
    file: str
    line: int  # line of the trace file
    origin: str | None  # where the recorder saw the offending event (an importer's log line)
    action: str
    seq: int
    events: tuple[Event, ...]  # the offending step's events

    @property
    def where(self) -> str:
        """``FILE:LINE`` of the offending event, and where it was recorded if that is another file's line."""
        here = f"{self.file}:{self.line}"
        return here + (f" (recorded at {self.origin})" if self.origin and self.origin != here else "")


@attrs.frozen(kw_only=True)
class TraceCheck:
    """What checking one trace under one profile found."""

    name: str
    profile: str
    offers: Offers
    steps: int
    applied: frozenset[str]  # the rules that judged it (applicable to the profile and the file's offers)
    checked: dict[str, int]
    exercised: dict[str, int]
    failed: dict[str, int]
    not_applicable: frozenset[str]
    failures: tuple[TraceFailure, ...]

    @property
    def ok(self) -> bool:
        """No rule failed (NOT APPLICABLE and NOT EXERCISED never fail a check)."""
        return not self.failures


def _error_of(ev: Event) -> BaseException | None:
    if ev.ok or not ev.error:
        return None
    cls = getattr(_errors, ev.error, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        cls = _ERROR_TYPES.get(ev.error)
        if cls is None:
            cls = _ERROR_TYPES[ev.error] = type(ev.error, (Exception,), {"__module__": "recorded"})
    return cls(ev.message)


def steps_of(events: Sequence[TracedEvent]) -> list[list[TracedEvent]]:
    """The file's events cut into steps: by ``action_seq`` where given, else one per top-level crossing."""
    if not events:
        return []
    if all(t.action_seq is not None for t in events):
        out: list[list[TracedEvent]] = []
        for t in events:
            if not out or out[-1][0].action_seq != t.action_seq:
                out.append([])
            out[-1].append(t)
        return out
    root = min(t.event.depth for t in events)
    out = []
    for t in events:
        if not out or t.event.depth <= root:
            out.append([])
        out[-1].append(t)
    return out


def _offending(message: str, step: list[TracedEvent]) -> TracedEvent:
    m = _SEQ.search(message)
    if m is not None:
        seq = int(m.group(1))
        hit = next((t for t in step if t.event.seq == seq), None)
        if hit is not None:
            return hit
    return step[0]


def check_events(
    events: Sequence[TracedEvent],
    *,
    profile: str,
    offers: Offers = TRACE_ONLY,
    name: str = "trace",
    only: frozenset[str] | None = None,
) -> TraceCheck:
    """Check ``events`` step by step; every rule's first failure is kept (a trace is not cut short)."""
    from teeio_conformance.conformance.rules import CATALOGUE, Checker, Observation

    checker = Checker(CATALOGUE, profile, only=only, offers=offers)
    history: list[Event] = []
    failures: dict[str, TraceFailure] = {}
    steps = steps_of(events)
    for step in steps:
        evs = [t.event for t in step]
        top = min(e.depth for e in evs)
        roots = [e for e in evs if e.depth == top]
        error = next((err for err in (_error_of(e) for e in reversed(roots)) if err is not None), None)
        action = step[0].action or f"{roots[0].callee}.{roots[0].operation}"
        obs = Observation(
            profile=profile,
            action=action,
            events=evs,
            history=history,
            before=None,
            after=None,
            error=error,
            carry=checker.carry,
        )
        for rule, message in checker.check(obs):
            if rule.id in failures:
                continue
            hit = _offending(message, step)
            failures[rule.id] = TraceFailure(
                rule_id=rule.id,
                title=rule.title,
                source=rule.source,
                message=message,
                file=name,
                line=hit.line,
                origin=hit.origin,
                action=action,
                seq=hit.event.seq,
                events=tuple(evs),
            )
        history.extend(evs)  # after the checks: an observation's history is what came before its step
    return TraceCheck(
        name=name,
        profile=profile,
        offers=offers,
        steps=len(steps),
        applied=frozenset(r.id for r in checker.rules),
        checked=dict(checker.checked),
        exercised=dict(checker.exercised),
        failed=dict(checker.failed),
        not_applicable=checker.not_applicable,
        failures=tuple(sorted(failures.values(), key=lambda f: (f.line, f.rule_id))),
    )


def load_any(path: str | Path) -> tuple[TraceHeader, list[TracedEvent]]:
    """Read a trace file (ndjson, ``teeio-trace/1``) or a syscall log (``strace -f``), told apart by the first
    non-blank line: JSON is a trace file, anything else a syscall log imported on the fly."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise TraceFileError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise TraceFileError(f"{p}: not UTF-8 text") from exc
    first = next((line for line in text.splitlines() if line.strip()), "")
    if first.lstrip().startswith("{"):
        return read_trace(text.splitlines(), name=str(p))
    from teeio_conformance.conformance.traces.strace import import_strace

    return import_strace(text.splitlines(), name=str(p))


# ------------------------------------------------------------------------------------------ reports


def _iso_now() -> str:
    return _dt.datetime.now(tz=_dt.UTC).isoformat(timespec="seconds")


def write_report(result: TraceCheck, report_dir: str | Path, *, started: str | None = None) -> list[Path]:
    """The run's verdicts and failures in the plugin's shape, then every report format (report.json, junit.xml,
    report.txt, report.html) through the same writers a live run uses."""
    from teeio_conformance.reports import writer
    from teeio_conformance.reports.model import load_report_dir

    root = Path(report_dir)
    (root / "failures").mkdir(parents=True, exist_ok=True)
    sut = f"trace:{result.name}"
    counts = {
        "checked": result.checked,
        "exercised": result.exercised,
        "failed": result.failed,
        "not_applicable": dict.fromkeys(sorted(result.not_applicable), 1),
    }
    verdicts = {
        "sut": sut,
        "profiles": [result.profile],
        "steps": result.steps,
        "run": {"started": started or _iso_now(), "finished": _iso_now(), "settings_profile": "check-trace"},
        "by_profile": {result.profile: counts},
        **counts,
    }
    (root / "verdicts-trace.json").write_text(json.dumps(verdicts, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    for i, f in enumerate(result.failures):
        record = {
            "format": "teeio-failure/1",
            "test": "check-trace",
            "machine": "trace",
            "profile": result.profile,
            "sut": sut,
            "rule_id": f.rule_id,
            "rule_title": f.title,
            "rule_source": f.source,
            "message": f"{f.message} -- at {f.where}",
            "action": f"{f.action} ({f.where})",
            "steps": [],
            "program": [f"# {f.where}: the step that broke {f.rule_id}"],
            "trace": [e.to_json() for e in f.events],
            "violating_seq": f.seq,
        }
        name = f"trace-{f.rule_id}-{i}"
        (root / "failures" / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return writer.write_all(load_report_dir(root), root)


# ------------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from teeio_conformance.contract.profiles import PROFILES

    parser.add_argument("file", metavar="FILE", help="a trace file (ndjson, teeio-trace/1) or an `strace -f` log")
    parser.add_argument(
        "--profile", choices=sorted(PROFILES), default=None, help="platform profile (default: the file's, else tdx)"
    )
    parser.add_argument("--report-dir", default=None, metavar="DIR", help="also write every report format here")


def run(args: argparse.Namespace) -> int:
    """0: no rule failed; 1: a rule failed; 2: the file is not a trace (one line on stderr)."""
    started = _iso_now()
    try:
        header, events = load_any(args.file)
        profile = args.profile or header.profile or "tdx"
        result = check_events(events, profile=profile, offers=header.offers or TRACE_ONLY, name=str(args.file))
        written = []
        if args.report_dir:
            written = write_report(result, args.report_dir, started=started)
    except (TraceFileError, StackError) as exc:
        sys.stderr.write(f"teeio-conformance check-trace: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"teeio-conformance check-trace: {exc}\n")
        return 2
    for f in result.failures:
        sys.stdout.write(f"FAIL {f.rule_id} {f.title}: {f.message} -- at {f.where}\n")
    judged = result.applied
    passed = sum(1 for r in judged if result.exercised.get(r) and not result.failed.get(r))
    unexercised = sum(1 for r in judged if not result.exercised.get(r))
    sys.stdout.write(
        f"{args.file}: {len(events)} events in {result.steps} steps, profile {result.profile}: "
        f"{passed} PASS, {len(result.failures)} FAIL, {unexercised} NOT EXERCISED, "
        f"{len(result.not_applicable)} NOT APPLICABLE\n"
    )
    if written:
        sys.stdout.write(f"wrote {len(written)} files into {args.report_dir}\n")
    return 1 if result.failures else 0


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - the CLI calls run()
    parser = argparse.ArgumentParser(prog="teeio-conformance check-trace")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
