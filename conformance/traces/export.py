"""``teeio-conformance export-trace``: the trace of a run or a replay, in the recorded-trace schema.

Two sources:

* ``--flow``: the lifecycle scenario (``DEFAULT_SCENARIO``, the same as ``teeio-conformance flow``) played on
  a fresh stack from ``--sut`` (default: the reference), one step per top-level call;
* ``--record FILE``: a failure record's steps replayed on its machine (or on ``--sut``), each event tagged with
  the machine step it belongs to, up to and including the step that failed.

What comes out is what ``check-trace`` reads; the round trip (export, then check) judges by the same rule IDs
as the live run (tests/unit/test_traces.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from teeio_conformance.contract.errors import StackError
from teeio_conformance.contract.tiers import TRACE_ONLY
from teeio_conformance.contract.trace import Trace
from teeio_conformance.contract.trace_file import TraceFileError, TraceHeader, encode_event, write_trace

__all__ = ["add_arguments", "export_flow", "export_record", "run"]


def _lines(trace: Trace, marks: list[tuple[int, str]] | None) -> list[dict[str, Any]]:
    events = list(trace)
    if marks is None:
        return [encode_event(e) for e in events]
    out = []
    bounds = [m for m, _ in marks]
    for e in events:
        i = 0
        while i + 1 < len(bounds) and bounds[i + 1] <= e.seq:
            i += 1
        if not bounds or e.seq < bounds[0]:
            out.append(encode_event(e, action="setup", action_seq=0))
        else:
            out.append(encode_event(e, action=marks[i][1], action_seq=i + 1))
    return out


def export_flow(
    fh: IO[str], *, profile: str, sut: str | None = None, scenario: str | None = None
) -> tuple[int, str | None]:
    """Play the lifecycle scenario on a fresh stack and write its trace; (events written, what the scenario
    raised or None). A SUT that refuses a call partway still gets the trace up to it."""
    from teeio_conformance.conformance.sut import DEFAULT_SCENARIO, DEFAULT_SUT, load_factory

    stack = load_factory(sut or DEFAULT_SUT)(profile=profile)
    play: Callable[..., Any] = load_factory(scenario or DEFAULT_SCENARIO)
    problem = None
    try:
        play(stack)
    except Exception as exc:  # the trace so far is the point; the error is said, not raised
        problem = f"{type(exc).__name__}: {exc}"
    header = TraceHeader(profile=profile, offers=TRACE_ONLY, source=f"flow on {sut or DEFAULT_SUT}")
    return write_trace(fh, header, _lines(stack.trace, None)), problem


def export_record(fh: IO[str], record: str | Path, *, sut: str | None = None) -> tuple[int, str | None]:
    """Replay a failure record's steps and write the trace, each event tagged with its machine step; (events
    written, the rule or error the replay stopped at, or None)."""
    from teeio_conformance.conformance.harness import verdicts_untouched
    from teeio_conformance.conformance.replay import _classify, prepare

    prepared = prepare(record, sut)
    marks: list[tuple[int, str]] = []
    stopped = None
    with verdicts_untouched():
        machine = prepared.machine()
        runner = machine.run
        trace = runner.stack.trace
        original = runner.step

        def step(action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
            marks.append((len(trace), action))
            return original(action, fn, *args, **kwargs)

        runner.step = step
        for method, kwargs in prepared.steps:
            try:
                getattr(machine, method)(**kwargs)
            except Exception as exc:
                rule_id, detail = _classify(exc)
                stopped = f"{rule_id}: {detail}"
                break
    header = TraceHeader(
        profile=prepared.failure.profile, offers=TRACE_ONLY, source=f"replay of {record} on {prepared.sut}"
    )
    return write_trace(fh, header, _lines(trace, marks)), stopped


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from teeio_conformance.contract.profiles import PROFILES

    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--flow", action="store_true", help="the lifecycle scenario on a fresh stack (as `flow`)")
    src.add_argument("--record", metavar="FILE", help="a failure record (failures/*.json) replayed step by step")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="tdx", help="with --flow")
    parser.add_argument("--sut", default=None, help="module:factory (default: the reference, or the record's SUT)")
    parser.add_argument("-o", "--output", default="-", metavar="FILE", help="where to write the ndjson (default: -)")


def run(args: argparse.Namespace) -> int:
    """0 when written; 2 for an unusable record, SUT or output (one line on stderr)."""
    from teeio_conformance.conformance.sut import SutLoadError

    out: IO[str]
    try:
        out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        sys.stderr.write(f"teeio-conformance export-trace: cannot write {args.output}: {exc.strerror or exc}\n")
        return 2
    try:
        if args.flow:
            n, problem = export_flow(out, profile=args.profile, sut=args.sut)
        else:
            n, problem = export_record(out, args.record, sut=args.sut)
    except (SutLoadError, TraceFileError, StackError, OSError) as exc:
        sys.stderr.write(f"teeio-conformance export-trace: {exc}\n")
        return 2
    finally:
        if out is not sys.stdout:
            out.close()
    where = "stdout" if args.output == "-" else args.output
    note = f"; stopped at {problem}" if problem else ""
    sys.stderr.write(f"teeio-conformance export-trace: {n} events to {where}{note}\n")
    return 0
