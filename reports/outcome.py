"""How a run ended, beside the rule verdicts: so no report says "0 failed" of a run that was not clean.

A run ends in one of five ways (:class:`RunStatus`): it completed; the SUT hung and the watchdog
ended it; the user interrupted it; the suite itself failed (an internal error: a test that broke
outside any SUT step, a crashed worker, pytest's own internal error); or it never started (bad options,
nothing to collect). What the SUT did wrong -- a broken rule, an error, a BaseException it raised, a
factory that could not build it, a hang -- is a failure record as always; the outcome says whether the
verdicts cover the whole run.

The plugin writes the outcome into each ``verdicts-<worker>.json`` (key ``outcome``); merging takes the
gravest status and all events. Every writer shows it, and :func:`exit_status` is the run's exit status.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

__all__ = ["EXIT_STATUS", "RunEvent", "RunOutcome", "RunStatus", "exit_status", "write_not_started"]


class RunStatus(enum.Enum):
    COMPLETE = "complete"
    HUNG = "hung"
    INTERRUPTED = "interrupted"
    INTERNAL_ERROR = "internal-error"
    NOT_STARTED = "not-started"

    @property
    def label(self) -> str:
        return self.value.replace("-", " ").upper()


_GRAVITY = [RunStatus.COMPLETE, RunStatus.HUNG, RunStatus.INTERRUPTED, RunStatus.INTERNAL_ERROR, RunStatus.NOT_STARTED]

EXIT_STATUS = {
    RunStatus.HUNG: 1,  # the SUT's failure (SUT-HANG), as a broken rule is
    RunStatus.INTERRUPTED: 2,  # pytest's "interrupted"
    RunStatus.INTERNAL_ERROR: 3,  # pytest's "internal error": the suite, not the SUT
    RunStatus.NOT_STARTED: 4,  # pytest's "usage error": nothing ran
}
"""Exit status per way of ending; a complete run exits 1 if anything failed, else 0."""


@attrs.frozen(kw_only=True)
class RunEvent:
    """Something that happened to the run rather than to a rule: what, in which test, and why."""

    kind: str  # the RunStatus value it implies ("interrupted", "internal-error", ...)
    message: str
    test: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "test": self.test, "message": self.message}


def _events(values: Iterable[RunEvent]) -> tuple[RunEvent, ...]:
    return tuple(values)


@attrs.frozen(kw_only=True)
class RunOutcome:
    status: RunStatus = RunStatus.COMPLETE
    events: tuple[RunEvent, ...] = attrs.field(default=(), converter=_events)

    @property
    def clean(self) -> bool:
        return self.status is RunStatus.COMPLETE and not self.events

    def headline(self) -> str:
        """One line: ``run complete`` or ``RUN INTERRUPTED: <first event>``."""
        if self.status is RunStatus.COMPLETE:
            return "run complete" if not self.events else f"run complete, with {len(self.events)} event(s)"
        first = next((e for e in self.events if e.kind == self.status.value), None)
        return f"RUN {self.status.label}" + (f": {first.message}" if first else "")

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status.value, "events": [e.to_json() for e in self.events]}

    @classmethod
    def from_json(cls, data: Any, origin: str) -> RunOutcome:
        from teeio_conformance.reports.model import ReportInputError

        if not isinstance(data, Mapping):
            raise ReportInputError(f"{origin}: field 'outcome' must be an object, got {type(data).__name__}")
        try:
            status = RunStatus(data.get("status", "complete"))
        except ValueError:
            known = ", ".join(s.value for s in RunStatus)
            raise ReportInputError(
                f"{origin}: outcome.status must be one of {known}, got {data.get('status')!r}"
            ) from None
        raw = data.get("events", [])
        if not isinstance(raw, list):
            raise ReportInputError(f"{origin}: outcome.events must be a list")
        events = []
        for i, e in enumerate(raw):
            if not (
                isinstance(e, Mapping)
                and isinstance(e.get("kind"), str)
                and isinstance(e.get("message"), str)
                and isinstance(e.get("test"), str | None)
            ):
                raise ReportInputError(f"{origin}: outcome.events[{i}] must be {{kind: str, message: str, test}}")
            events.append(RunEvent(kind=e["kind"], message=e["message"], test=e.get("test")))
        return cls(status=status, events=events)

    @classmethod
    def merge(cls, outcomes: Iterable[RunOutcome]) -> RunOutcome:
        """The gravest status of the parts, and all their events (each once, in order)."""
        status = RunStatus.COMPLETE
        events: dict[RunEvent, None] = {}
        for o in outcomes:
            if _GRAVITY.index(o.status) > _GRAVITY.index(status):
                status = o.status
            events.update(dict.fromkeys(o.events))
        return cls(status=status, events=events)


def exit_status(outcome: RunOutcome, *, failed: bool) -> int:
    """The run's exit status: by how it ended, else 1 if a rule or the SUT failed, else 0."""
    return EXIT_STATUS.get(outcome.status, 1 if failed else 0)


def write_not_started(report_dir: str | os.PathLike[str], message: str, *, sut: str, profiles: Sequence[str]) -> bool:
    """When a run left nothing in ``report_dir`` (pytest stopped before the suite started: a bad option,
    nothing collected), write a verdicts file that says so, so the report still tells why. False if the
    run wrote its own."""
    root = Path(report_dir)
    if any(root.glob("verdicts-*.json")):
        return False
    root.mkdir(parents=True, exist_ok=True)
    data = {
        "checked": {},
        "exercised": {},
        "failed": {},
        "steps": 0,
        "sut": sut,
        "profiles": list(profiles),
        "outcome": RunOutcome(
            status=RunStatus.NOT_STARTED, events=[RunEvent(kind=RunStatus.NOT_STARTED.value, message=message)]
        ).to_json(),
    }
    (root / "verdicts-main.json").write_text(json.dumps(data, indent=1), encoding="utf-8")
    return True
