"""What a run produced, as frozen values: run info, one verdict per rule and profile, the failures.

The plugin leaves a report directory behind (``docs/report-formats.md``): one
``verdicts-<worker>.json`` per pytest process (xdist workers each write their own) and one
``failures/<test>.json`` per shrunk counterexample. :func:`load_report_dir` merges them into one
:class:`Report`; every writer (JSON, JUnit, text, HTML) renders that same value, so the formats can
never disagree about a verdict.

Verdict of a rule under a profile (report-formats.md, item 1):

* FAIL -- some check of it failed, or a failure record names it for that profile;
* PASS -- it was exercised (its check had something to judge) and never failed;
* NOT_EXERCISED -- it was never exercised (checked, maybe, but the run never reached its situation).
* NOT_APPLICABLE -- the SUT does not offer what the rule needs (``contract/tiers.py``: a syscall log has no
  snapshots, a device over a socket no config space): never checked, never a PASS, and -- unlike NOT_EXERCISED --
  no sign that the run missed something. It alone never fails a run.

A rule that does not apply to a profile (``Rule.profiles``) has no verdict for it at all.

Input files come from another process, a disk or a colleague's mail, so they are read defensively:
anything corrupt or foreign is a :class:`ReportInputError` naming the file and what is wrong.
"""

from __future__ import annotations

import datetime as _dt
import enum
import json
import os
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from teeio_conformance.contract.errors import StackError
from teeio_conformance.reports.outcome import RunOutcome, exit_status

__all__ = [
    "AGGREGATE",
    "FAILURE_FORMAT",
    "Failure",
    "ProfileVerdict",
    "Report",
    "ReportInputError",
    "RuleVerdict",
    "RunInfo",
    "Status",
    "load_failure",
    "load_report_dir",
]

FAILURE_FORMAT = "teeio-failure/1"
MAX_VFS = 255  # VFs of one PF that fit the PF's bus with ARI (routing IDs PF+1..PF+255)
RULE_ID = re.compile(r"[A-Z][A-Z0-9]*(-[A-Z0-9]+)+")
# a line of Hypothesis' printed program ("state = Machine()", "vms_0 = state.first_vm()", "state.x(...)"),
# not its explanation or its @reproduce_failure hint
_PROGRAM_LINE = re.compile(r"^(\w+(, \w+)* = )?state\b")
_CITED_SEQ = re.compile(r"\bseq (\d+)\b")
AGGREGATE = "all"
"""Profile column used when verdict files of a multi-profile run carry no ``by_profile`` counts."""

_NOT_PROGRAM = ("Failing test case", "Highest target score")  # Hypothesis notes around the program
HARNESS_RULES = {
    "SUT-BUILD": "the SUT factory builds a SUT within the step limit",
    "SUT-HANG": "the SUT returns from every step within the step limit",
    "SUT-BROKEN": "the SUT's snapshot and trace stay readable",
    "SUT-ERROR": "the SUT raises only the typed errors of the contract",
}


class ReportInputError(StackError):
    """A report input (verdicts file, failure record, report.json) is corrupt, foreign or missing.

    The message names the file and what is wrong with it, so a CLI can print it as one line."""


class Status(enum.Enum):
    PASS = "PASS"
    FAIL = "FAIL"
    NOT_EXERCISED = "NOT_EXERCISED"
    NOT_APPLICABLE = "NOT_APPLICABLE"

    @property
    def label(self) -> str:
        return self.value.replace("_", " ")


# ---------------------------------------------------------------------------- small validators


def _non_negative(instance: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{type(instance).__name__}.{attribute.name} must be a non-negative int, got {value!r}")


def _non_empty_str(instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{type(instance).__name__}.{attribute.name} must be a non-empty str, got {value!r}")


def _strs(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


def _maps(values: Iterable[Mapping[str, Any]]) -> tuple[Mapping[str, Any], ...]:
    return tuple(values)


def _opt_str(instance: Any, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{type(instance).__name__}.{attribute.name} must be a str or None, got {value!r}")


# ---------------------------------------------------------------------------- value types


@attrs.frozen(kw_only=True)
class RunInfo:
    """Which SUT was run, under which profiles and Hypothesis settings, and when."""

    sut: str = attrs.field(validator=_non_empty_str)
    profiles: tuple[str, ...] = attrs.field(converter=_strs)
    hypothesis: str | None = attrs.field(default=None, validator=_opt_str)
    seed: str | None = attrs.field(default=None, validator=_opt_str)
    settings_profile: str | None = attrs.field(default=None, validator=_opt_str)
    started: str | None = attrs.field(default=None, validator=_opt_str)  # ISO 8601, UTC
    finished: str | None = attrs.field(default=None, validator=_opt_str)
    steps: int = attrs.field(default=0, validator=_non_negative)  # machine steps over the whole run
    workers: tuple[str, ...] = attrs.field(default=(), converter=_strs)

    def to_json(self) -> dict[str, Any]:
        return {
            "product": "teeio-conformance",
            "sut": self.sut,
            "profiles": list(self.profiles),
            "hypothesis": self.hypothesis,
            "seed": self.seed,
            "settings_profile": self.settings_profile,
            "started": self.started,
            "finished": self.finished,
            "steps": self.steps,
            "workers": list(self.workers),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunInfo:
        return cls(
            sut=data["sut"],
            profiles=data["profiles"],
            hypothesis=data.get("hypothesis"),
            seed=data.get("seed"),
            settings_profile=data.get("settings_profile"),
            started=data.get("started"),
            finished=data.get("finished"),
            steps=data.get("steps", 0),
            workers=data.get("workers", ()),
        )


@attrs.frozen(kw_only=True)
class ProfileVerdict:
    """A rule's verdict under one profile, with the counts it was decided from."""

    status: Status = attrs.field(validator=attrs.validators.instance_of(Status))
    checked: int = attrs.field(default=0, validator=_non_negative)  # steps the rule looked at
    exercised: int = attrs.field(default=0, validator=_non_negative)  # ... and had something to judge
    failed: int = attrs.field(default=0, validator=_non_negative)  # ... and found broken
    note: str = ""  # why, when the counts do not say it (a MUST rule failed for never being exercised)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status.value,
            "checked": self.checked,
            "exercised": self.exercised,
            "failed": self.failed,
        }
        if self.note:
            out["note"] = self.note
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProfileVerdict:
        return cls(
            status=Status(data["status"]),
            checked=data["checked"],
            exercised=data["exercised"],
            failed=data["failed"],
            note=data.get("note", ""),
        )


@attrs.frozen(kw_only=True)
class RuleVerdict:
    """One rule of the catalogue (or a harness pseudo-rule such as SUT-HANG) and its verdict per profile."""

    rule_id: str = attrs.field(validator=_non_empty_str)
    title: str
    area: str  # Area name ("FLOW"), or "HARNESS" / "UNKNOWN"
    level: str  # MUST | SHOULD | PROFILE, or "" for harness pseudo-rules
    source: str
    doc: str = ""
    validator_cases: tuple[str, ...] = attrs.field(default=(), converter=_strs)
    by_profile: Mapping[str, ProfileVerdict] = attrs.field(factory=dict)

    @property
    def status(self) -> Status:
        """FAIL under any profile beats PASS under any; otherwise NOT_EXERCISED, unless it applied nowhere."""
        statuses = {v.status for v in self.by_profile.values()}
        for s in (Status.FAIL, Status.PASS, Status.NOT_EXERCISED):
            if s in statuses:
                return s
        return Status.NOT_APPLICABLE if statuses else Status.NOT_EXERCISED

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.rule_id,
            "title": self.title,
            "area": self.area,
            "level": self.level,
            "source": self.source,
            "doc": self.doc,
            "validator_cases": list(self.validator_cases),
            "profiles": {p: v.to_json() for p, v in self.by_profile.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RuleVerdict:
        return cls(
            rule_id=data["id"],
            title=data["title"],
            area=data["area"],
            level=data["level"],
            source=data["source"],
            doc=data.get("doc", ""),
            validator_cases=data.get("validator_cases", ()),
            by_profile={p: ProfileVerdict.from_json(v) for p, v in data["profiles"].items()},
        )


@attrs.frozen(kw_only=True)
class Failure:
    """One shrunk counterexample, as the plugin recorded it (``failures/<name>.json``)."""

    name: str = attrs.field(validator=_non_empty_str)  # the file's stem: failures/<name>.json
    test: str
    machine: str
    profile: str | None
    sut: str
    rule_id: str = attrs.field(validator=_non_empty_str)
    rule_title: str
    rule_source: str
    message: str
    action: str
    steps: tuple[Mapping[str, Any], ...] = attrs.field(converter=_maps)
    program: tuple[str, ...] = attrs.field(converter=_strs)
    trace: tuple[Mapping[str, Any], ...] = attrs.field(converter=_maps)
    violating_seq: int | None = None
    hypothesis: str | None = None
    seed: str | None = None
    num_vfs: int | None = None  # the stack's VFs per device when recorded (None: the machine's default)
    # device records: the responder driven over the socket ({"spawn": CMD} or {"at": ..., "functions":
    # [...]}, checked by teeio_conformance.conformance.remote.DeviceTarget.from_spec); None: the in-process device
    device: Mapping[str, Any] | None = None

    @property
    def file(self) -> str:
        """The record's path relative to the report directory."""
        return f"failures/{self.name}.json"

    @property
    def same_key(self) -> str:
        """Failures with equal keys are the same failure: one rule, one machine, the same shrunk steps
        (e.g. found under each platform profile); reports show it in full once."""
        machine = re.sub(r"\[[^\]]*\]$", "", self.machine)  # the test's name without its parameters
        return json.dumps([self.rule_id, machine, [dict(s) for s in self.steps]], sort_keys=True, default=repr)

    @property
    def cited_seq(self) -> int | None:
        """The crossing the chart marks: the one the message cites ("... (seq 14)") when the trace has
        it, else the first crossing of the violating step."""
        seqs = {e.get("seq") for e in self.trace}
        for found in _CITED_SEQ.finditer(self.message):
            if int(found.group(1)) in seqs:
                return int(found.group(1))
        return self.violating_seq

    def program_lines(self) -> list[str]:
        """The shrunk program as Hypothesis printed it; rebuilt from the recorded steps if not kept."""
        lines = [
            line
            for note in self.program
            for line in note.splitlines()
            if _PROGRAM_LINE.match(line) and not line.startswith(_NOT_PROGRAM)
        ]
        if lines:
            return lines
        out = ["state = Machine()"]
        for step in self.steps:
            kwargs = step.get("kwargs") or {}
            args = ", ".join(f"{k}={_show_value(v)}" for k, v in kwargs.items())
            out.append(f"state.{step['method']}({args})")
        out.append("state.teardown()")
        return out

    def replay_command(
        self, sut: str | None = None, *, root: str | os.PathLike[str] | None = None, record: str | None = None
    ) -> str:
        """The shell command that replays this record, every word quoted; with ``root`` (the report
        directory) the record's path is absolute, so the command works from any directory; ``record``
        gives the path outright."""
        if record is not None:
            path = record
        else:
            path = str(Path(root, self.file).absolute()) if root is not None else self.file
        if self.machine == "trace" and self.sut.startswith("trace:"):  # check-trace: judge the file again
            return shlex.join(
                ["teeio-conformance", "check-trace", self.sut[len("trace:") :], "--profile", str(self.profile)]
            )
        words = ["teeio-conformance", "replay", path]
        if self.device is not None and sut is None:  # the recorded responder, named as the run named it
            if "spawn" in self.device:
                words += ["--device-spawn", str(self.device["spawn"])]
            else:
                ids = ",".join(f"{f:#x}" for f in self.device.get("functions", ()) if isinstance(f, int))
                words += ["--device-at", str(self.device.get("at")), "--device-functions", ids]
        else:
            words += ["--sut", sut or self.sut]
        return shlex.join(words)

    def to_json(self) -> dict[str, Any]:
        """The record in its on-disk format (``teeio-failure/1``)."""
        return {
            "format": FAILURE_FORMAT,
            "test": self.test,
            "machine": self.machine,
            "profile": self.profile,
            "sut": self.sut,
            "rule_id": self.rule_id,
            "rule_title": self.rule_title,
            "rule_source": self.rule_source,
            "message": self.message,
            "action": self.action,
            "steps": [dict(s) for s in self.steps],
            "program": list(self.program),
            "trace": [dict(e) for e in self.trace],
            "violating_seq": self.violating_seq,
            "hypothesis": self.hypothesis,
            "seed": self.seed,
            "num_vfs": self.num_vfs,
            "device": None if self.device is None else dict(self.device),
        }

    @classmethod
    def from_json(cls, data: Any, *, name: str, origin: str) -> Failure:
        """Check a decoded record field by field; ``origin`` (the file) is named in every error."""
        if not isinstance(data, dict):
            raise ReportInputError(f"{origin}: a failure record must be a JSON object, got {type(data).__name__}")
        fmt = data.get("format")
        if fmt != FAILURE_FORMAT:
            raise ReportInputError(
                f"{origin}: not a teeio-conformance failure record (format {fmt!r}, expected {FAILURE_FORMAT!r})"
            )

        def field(key: str, kinds: type | tuple[type, ...], *, optional: bool = False) -> Any:
            if key not in data:
                if optional:
                    return None
                raise ReportInputError(f"{origin}: field {key!r} is missing")
            value = data[key]
            if value is None and optional:
                return None
            if not isinstance(value, kinds) or (isinstance(value, bool) and kinds is int):
                want = kinds.__name__ if isinstance(kinds, type) else " or ".join(k.__name__ for k in kinds)
                raise ReportInputError(
                    f"{origin}: field {key!r} must be {want}, got {type(value).__name__} {_short(value)}"
                )
            return value

        steps = field("steps", list)
        if len(steps) > MAX_STEPS:
            raise ReportInputError(f"{origin}: field 'steps' holds {len(steps)} steps, over the limit of {MAX_STEPS}")
        for i, step in enumerate(steps):
            if not (
                isinstance(step, dict)
                and isinstance(step.get("method"), str)
                and step["method"]
                and isinstance(step.get("kwargs", {}), dict)
            ):
                raise ReportInputError(
                    f"{origin}: steps[{i}] must be an object {{'method': str, 'kwargs': object}}, got {_short(step)}"
                )
        program = field("program", list, optional=True) or []
        trace = field("trace", list, optional=True) or []
        if len(trace) > MAX_TRACE_EVENTS:
            raise ReportInputError(f"{origin}: field 'trace' holds {len(trace)} events, over {MAX_TRACE_EVENTS}")
        if not all(isinstance(p, str) for p in program):
            raise ReportInputError(f"{origin}: field 'program' must be a list of str")
        for i, e in enumerate(trace):
            if not isinstance(e, dict):
                raise ReportInputError(f"{origin}: trace[{i}] must be an event object, got {_short(e)}")
            for key, kind in (
                ("seq", int),
                ("caller", str),
                ("callee", str),
                ("operation", str),
                ("outcome", str),
            ):
                if not isinstance(e.get(key), kind) or isinstance(e.get(key), bool):
                    raise ReportInputError(
                        f"{origin}: trace[{i}].{key} must be {kind.__name__}, got {_short(e.get(key))}"
                    )
        rule_id = field("rule_id", str)
        if not RULE_ID.fullmatch(rule_id):
            raise ReportInputError(
                f"{origin}: field 'rule_id' must look like 'FLOW-05' or 'SUT-HANG', got {_short(rule_id)}"
            )
        test = field("test", str)
        num_vfs = field("num_vfs", int, optional=True)
        if num_vfs is not None and not 0 <= num_vfs <= MAX_VFS:
            raise ReportInputError(f"{origin}: field 'num_vfs' must be 0..{MAX_VFS}, got {num_vfs}")
        return cls(
            name=name,
            test=test,
            machine=field("machine", str, optional=True) or test,
            profile=field("profile", str, optional=True),
            sut=field("sut", str),
            rule_id=rule_id,
            rule_title=field("rule_title", str, optional=True) or "",
            rule_source=field("rule_source", str, optional=True) or "",
            message=field("message", str, optional=True) or "",
            action=field("action", str, optional=True) or "",
            steps=[{"method": s["method"], "kwargs": s.get("kwargs", {})} for s in steps],
            program=program,
            trace=trace,
            violating_seq=field("violating_seq", int, optional=True),
            hypothesis=field("hypothesis", str, optional=True),
            seed=_str_or_none(field("seed", (str, int), optional=True)),
            num_vfs=num_vfs,
            device=field("device", dict, optional=True),
        )


def _verdicts(values: Iterable[RuleVerdict]) -> tuple[RuleVerdict, ...]:
    return tuple(values)


def _failures(values: Iterable[Failure]) -> tuple[Failure, ...]:
    return tuple(values)


@attrs.frozen(kw_only=True)
class Report:
    """Everything the writers render: the run, one verdict per rule, and the failures."""

    run: RunInfo
    verdicts: tuple[RuleVerdict, ...] = attrs.field(converter=_verdicts)
    failures: tuple[Failure, ...] = attrs.field(converter=_failures)
    outcome: RunOutcome = attrs.field(factory=RunOutcome)  # how the run ended (reports/outcome.py)
    directory: str | None = None  # the report directory, absolute: replay commands name records by it
    durations: Mapping[str, float] = attrs.field(factory=dict)  # seconds of tests per profile column

    def exit_status(self) -> int:
        """The run's exit status: how it ended, else 1 if any verdict is FAIL, else 0."""
        return exit_status(self.outcome, failed=bool(self.counts()[Status.FAIL] or self.failures))

    def replay_command(self, failure: Failure) -> str:
        return failure.replay_command(root=self.directory)

    @property
    def columns(self) -> tuple[str, ...]:
        """The profile columns of the summary grid: the run's profiles that have verdicts, in run order
        (or ``all`` alone when the verdict files did not split counts by profile)."""
        present = {p for v in self.verdicts for p in v.by_profile}
        ordered = [p for p in self.run.profiles if p in present]
        return (*ordered, *sorted(present - set(ordered)))

    def counts(self) -> dict[Status, int]:
        """How many (rule, profile) verdicts have each status -- the summary line's numbers."""
        out = dict.fromkeys(Status, 0)
        for v in self.verdicts:
            for pv in v.by_profile.values():
                out[pv.status] += 1
        return out

    def summary_line(self) -> str:
        c = self.counts()
        line = f"{c[Status.PASS]} passed, {c[Status.FAIL]} failed, {c[Status.NOT_EXERCISED]} not exercised"
        line = f"{c[Status.PASS]} passed, {c[Status.FAIL]} failed, {c[Status.NOT_EXERCISED]} not exercised"
        line += f", {c[Status.NOT_APPLICABLE]} not applicable" if c[Status.NOT_APPLICABLE] else ""
        return line if self.outcome.clean else f"{line}; {self.outcome.headline()}"

    def failures_for(self, rule_id: str, profile: str | None = None) -> list[Failure]:
        return [
            f
            for f in self.failures
            if f.rule_id == rule_id
            and (profile is None or _failure_column(f, self.columns) == profile or f.profile is None)
        ]

    def explain(self, verdict: RuleVerdict, column: str) -> str:
        """One line on why ``verdict`` has its status under ``column`` (the subtest / testcase message)."""
        pv = verdict.by_profile[column]
        if pv.status is Status.FAIL:
            if pv.note and not pv.failed:
                return pv.note
            found = self.failures_for(verdict.rule_id, column)
            if found:
                return "; ".join(f"{f.message} (broken by step {f.action!r}; replay {f.file})" for f in found)
            return f"failed {pv.failed} of {pv.exercised} exercised checks (no failure record in the directory)"
        if pv.status is Status.PASS:
            return f"held in {pv.exercised} exercised checks ({pv.checked} checked)"
        if pv.status is Status.NOT_APPLICABLE:
            return "not applicable: the SUT does not offer what the rule needs (crossings, typed errors or snapshots)"
        if pv.checked:
            return f"not exercised: checked {pv.checked} times, never in a situation it judges"
        return "not exercised: no step touched what it is about"

    def same_as(self, failure: Failure) -> Failure | None:
        """The earlier failure that ``failure`` repeats (same rule, machine and steps), or None."""
        for f in self.failures:
            if f is failure:
                return None
            if f.same_key == failure.same_key:
                return f
        return None

    def verdict(self, rule_id: str) -> RuleVerdict | None:
        return next((v for v in self.verdicts if v.rule_id == rule_id), None)

    def to_json(self) -> dict[str, Any]:
        """Only the teeio-specific part; :mod:`teeio_conformance.reports.writer` wraps it in the wptreport shape."""
        return {
            "rules": [v.to_json() for v in self.verdicts],
            "failures": [{"name": f.name, **f.to_json()} for f in self.failures],
        }

    @classmethod
    def from_json(cls, run_info: Mapping[str, Any], teeio: Mapping[str, Any]) -> Report:
        failures = [
            Failure.from_json(f, name=f["name"], origin=f"report.json failure {f.get('name')!r}")
            for f in teeio["failures"]
        ]
        return cls(
            run=RunInfo.from_json(run_info),
            verdicts=[RuleVerdict.from_json(r) for r in teeio["rules"]],
            failures=failures,
        )


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show_value(value: Any) -> str:
    """A recorded argument as the program shows it (a Slot handle as ``Slot(vm=..., rid=...)``)."""
    if isinstance(value, dict) and len(value) == 1:
        ((key, inner),) = value.items()
        if isinstance(key, str) and key.startswith("__") and key.endswith("__") and isinstance(inner, dict):
            fields = ", ".join(f"{k}={v!r}" for k, v in inner.items())
            return f"{key[2:-2].capitalize()}({fields})"
    return repr(value)


def _failure_column(f: Failure, columns: Sequence[str]) -> str | None:
    if f.profile in columns:
        return f.profile
    return AGGREGATE if AGGREGATE in columns else None


# ---------------------------------------------------------------------------- reading a report directory


MAX_INPUT_BYTES = 64 << 20
"""Largest report input read (a failure record, a verdicts file): far above any real one (a thorough run's
record is well under 1 MiB), low enough that a hostile file cannot exhaust memory."""
MAX_DEPTH = 64
"""Deepest nesting of JSON arrays and objects accepted (real records nest about 6 deep)."""
MAX_STEPS = 10_000
"""Most steps a failure record may hold (Hypothesis' ``thorough`` profile runs 60 per example)."""
MAX_TRACE_EVENTS = 1_000_000


def _too_deep(value: Any, limit: int) -> bool:
    """Nesting deeper than ``limit``, checked without recursion."""
    todo = [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            todo.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return False


def _read_json(path: Path) -> Any:
    try:
        size = path.stat().st_size
        if size > MAX_INPUT_BYTES:
            raise ReportInputError(f"{path}: {size} bytes, over the {MAX_INPUT_BYTES}-byte limit of a report input")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReportInputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ReportInputError(f"{path}: not UTF-8 text (byte {exc.start}): not a JSON file") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportInputError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    except RecursionError:
        raise ReportInputError(f"{path}: JSON nested too deeply to read (limit {MAX_DEPTH} levels)") from None
    if _too_deep(data, MAX_DEPTH):
        raise ReportInputError(f"{path}: JSON nested deeper than {MAX_DEPTH} levels; not a report input")
    return data


def load_failure(path: str | os.PathLike[str]) -> Failure:
    """Read one failure record (``failures/<name>.json``), checking its format and fields."""
    p = Path(path)
    name = p.name[:-5] if p.name.endswith(".json") else p.name
    return Failure.from_json(_read_json(p), name=name or "failure", origin=str(p))


_COUNT_KEYS = ("checked", "exercised", "failed")
NOT_APPLICABLE_KEY = "not_applicable"  # {rule_id: examples whose SUT could not feed it}


@attrs.define
class _Counts:
    """Mutable accumulator while merging workers' files."""

    by_profile: dict[str, dict[str, dict[str, int]]] = attrs.field(factory=dict)  # profile -> key -> rule -> n

    def add(self, profile: str, key: str, counts: Mapping[str, int]) -> None:
        dst = self.by_profile.setdefault(profile, {k: {} for k in _COUNT_KEYS}).setdefault(key, {})
        for rule_id, n in counts.items():
            dst[rule_id] = dst.get(rule_id, 0) + n

    def get(self, profile: str, key: str, rule_id: str) -> int:
        return self.by_profile.get(profile, {}).get(key, {}).get(rule_id, 0)

    def rule_ids(self) -> set[str]:
        return {r for keys in self.by_profile.values() for counts in keys.values() for r in counts}


def _count_map(data: Mapping[str, Any], key: str, origin: str) -> dict[str, int]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ReportInputError(f"{origin}: {key!r} must be an object {{rule_id: count}}, got {_short(value)}")
    for rule_id, n in value.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ReportInputError(f"{origin}: {key}[{rule_id!r}] must be a non-negative integer, got {_short(n)}")
    return value


def _read_verdicts(path: Path, counts: _Counts) -> dict[str, Any]:
    """Add one worker's counts to ``counts``; return its run metadata."""
    origin = str(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ReportInputError(f"{origin}: a verdicts file must be a JSON object, got {type(data).__name__}")
    if not any(k in data for k in (*_COUNT_KEYS, "by_profile", "outcome")):
        raise ReportInputError(
            f"{origin}: not a teeio-conformance verdicts file "
            f"(none of 'checked', 'exercised', 'failed', 'by_profile' present)"
        )
    sut = data.get("sut")
    if not isinstance(sut, str) or not sut:
        raise ReportInputError(f"{origin}: field 'sut' must be a non-empty str, got {_short(sut)}")
    profiles = data.get("profiles", [])
    if not isinstance(profiles, list) or not all(isinstance(p, str) and p for p in profiles):
        raise ReportInputError(f"{origin}: field 'profiles' must be a list of profile names, got {_short(profiles)}")
    steps = data.get("steps", 0)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ReportInputError(f"{origin}: field 'steps' must be a non-negative integer, got {_short(steps)}")
    run = data.get("run", {}) or {}
    if not isinstance(run, dict):
        raise ReportInputError(f"{origin}: field 'run' must be an object, got {_short(run)}")
    by_profile = data.get("by_profile")
    if by_profile is not None:
        if not isinstance(by_profile, dict):
            raise ReportInputError(f"{origin}: field 'by_profile' must be an object {{profile: counts}}")
        for profile, pc in by_profile.items():
            if not isinstance(pc, dict):
                raise ReportInputError(f"{origin}: by_profile[{profile!r}] must be an object of counts")
            for key in (*_COUNT_KEYS, NOT_APPLICABLE_KEY):
                counts.add(profile, key, _count_map(pc, key, f"{origin}: by_profile[{profile!r}]"))
    else:
        column = profiles[0] if len(profiles) == 1 else AGGREGATE
        for key in (*_COUNT_KEYS, NOT_APPLICABLE_KEY):
            counts.add(column, key, _count_map(data, key, origin))
    mtime = path.stat().st_mtime
    outcome = RunOutcome.from_json(data["outcome"], origin) if "outcome" in data else RunOutcome()
    durations = data.get("durations", {})
    if not isinstance(durations, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in durations.values()
    ):
        raise ReportInputError(f"{origin}: field 'durations' must be an object {{profile: seconds}}")
    return {
        "sut": sut,
        "profiles": profiles,
        "steps": steps,
        "run": run,
        "mtime": mtime,
        "outcome": outcome,
        "durations": durations,
    }


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, tz=_dt.UTC).isoformat(timespec="seconds")


def _rule_meta(rule_id: str, failures: Iterable[Failure]) -> tuple[dict[str, Any], frozenset[str] | None]:
    """Title, area, level, source of a rule ID, and the profiles it applies to (None: all)."""
    from teeio_conformance.conformance.rules import BY_ID

    rule = BY_ID.get(rule_id)
    if rule is not None:
        return (
            {
                "title": rule.title,
                "area": rule.area.name,
                "level": rule.level.value,
                "source": rule.source,
                "doc": rule.doc.strip(),
                "validator_cases": rule.validator_cases,
            },
            rule.profiles,
        )
    rec = next((f for f in failures if f.rule_id == rule_id), None)
    if rule_id in HARNESS_RULES:
        title = HARNESS_RULES[rule_id]
        return (
            {
                "title": title,
                "area": "HARNESS",
                "level": "MUST",
                "source": "docs/sut-contract.md (harness)",
                "doc": rec.rule_title if rec else "",
                "validator_cases": (),
            },
            None,
        )
    return (
        {
            "title": (rec.rule_title if rec else "") or "(not in this suite's rule catalogue)",
            "area": "UNKNOWN",
            "level": "",
            "source": (rec.rule_source if rec else "") or "unknown",
            "doc": "",
            "validator_cases": (),
        },
        None,
    )


def load_report_dir(path: str | os.PathLike[str]) -> Report:
    """Merge all ``verdicts-*.json`` (counts summed over workers) and ``failures/*.json`` in ``path``."""
    from teeio_conformance.conformance.rules import CATALOGUE

    root = Path(path)
    if not root.is_dir():
        raise ReportInputError(f"{root}: no such report directory")
    counts = _Counts()
    metas: list[tuple[str, dict[str, Any]]] = []
    for vf in sorted(root.glob("verdicts-*.json")):
        metas.append((vf.name[len("verdicts-") : -len(".json")], _read_verdicts(vf, counts)))
    failures = [load_failure(ff) for ff in sorted((root / "failures").glob("*.json"))]
    if not metas and not failures:
        raise ReportInputError(
            f"{root}: no verdicts-*.json and no failures/*.json; was the suite run with --report-dir {root}?"
        )

    suts = {m["sut"] for _, m in metas} or {f.sut for f in failures}
    if len(suts) > 1:
        detail = ", ".join(f"verdicts-{w}.json: {m['sut']}" for w, m in metas)
        raise ReportInputError(f"{root}: verdict files are for different SUTs ({detail}); one directory per run")
    profiles: dict[str, None] = {}
    for _, m in metas:
        profiles.update(dict.fromkeys(m["profiles"]))
    for f in failures:
        if f.profile and not metas:
            profiles.setdefault(f.profile, None)
    run_meta: dict[str, Any] = {}
    for _, m in metas:
        for k, v in m["run"].items():
            if v is not None:
                run_meta.setdefault(k, v)
    # the run spans its workers: the earliest start, the latest finish (ISO 8601 UTC strings sort as times)
    for key, pick in (("started", min), ("finished", max)):
        stamps = [m["run"][key] for _, m in metas if isinstance(m["run"].get(key), str)]
        if stamps:
            run_meta[key] = pick(stamps)
    hyp = run_meta.get("hypothesis") or next((f.hypothesis for f in failures if f.hypothesis), None)
    mtimes = [m["mtime"] for _, m in metas]
    run = RunInfo(
        sut=next(iter(sorted(suts))),
        profiles=tuple(profiles),
        hypothesis=_str_or_none(hyp),
        seed=_str_or_none(run_meta.get("seed")),
        settings_profile=_str_or_none(run_meta.get("settings_profile") or run_meta.get("profile")),
        started=_str_or_none(run_meta.get("started")),
        finished=_str_or_none(run_meta.get("finished")) or (_iso(max(mtimes)) if mtimes else None),
        steps=sum(m["steps"] for _, m in metas),
        workers=tuple(w for w, _ in metas),
    )

    columns = list(counts.by_profile) or list(run.profiles) or [AGGREGATE]
    for p in run.profiles:
        if p not in columns and AGGREGATE not in columns:
            columns.append(p)
    failed_cells = {(f.rule_id, _failure_column(f, columns)) for f in failures}
    uncovered = _read_coverage(root)

    ids = [r.id for r in CATALOGUE]
    extra = sorted((counts.rule_ids() | {f.rule_id for f in failures}) - set(ids))
    verdicts = []
    for rule_id in [*ids, *extra]:
        meta, applies = _rule_meta(rule_id, failures)
        by_profile: dict[str, ProfileVerdict] = {}
        for col in columns:
            if applies is not None and col != AGGREGATE and col not in applies:
                continue  # the rule does not apply to this platform: no verdict
            if applies is not None and col == AGGREGATE and not any(p in applies for p in run.profiles):
                continue
            c, e, x = (counts.get(col, k, rule_id) for k in _COUNT_KEYS)
            named = (rule_id, col) in failed_cells or (rule_id, None) in failed_cells
            if rule_id in extra and not (c or e or x or named):
                continue
            status = Status.FAIL if x or named else Status.PASS if e else Status.NOT_EXERCISED
            if status is Status.NOT_EXERCISED and not c and counts.get(col, NOT_APPLICABLE_KEY, rule_id):
                status = Status.NOT_APPLICABLE
            note = uncovered.get(col, {}).get(rule_id, "") if not e else ""
            if note and status is Status.NOT_EXERCISED:
                status = Status.FAIL  # coverage is a verdict: an applicable MUST rule never exercised
            by_profile[col] = ProfileVerdict(status=status, checked=c, exercised=e, failed=x, note=note)
        if by_profile:
            verdicts.append(RuleVerdict(rule_id=rule_id, by_profile=by_profile, **meta))
    durations: dict[str, float] = {}
    for _, m in metas:
        for col, seconds in m["durations"].items():
            durations[col] = durations.get(col, 0.0) + float(seconds)
    return Report(
        run=run,
        verdicts=verdicts,
        failures=failures,
        outcome=RunOutcome.merge(m["outcome"] for _, m in metas),
        directory=str(root.absolute()),
        durations=durations,
    )


def _read_coverage(root: Path) -> dict[str, dict[str, str]]:
    """``coverage.json`` (written by the plugin, conformance/coverage.py): profile -> {rule ID: why a MUST
    rule that applies failed for never being exercised}. Absent: coverage was not judged."""
    path = root / "coverage.json"
    if not path.exists():
        return {}
    data = _read_json(path)
    uncovered = data.get("uncovered") if isinstance(data, dict) else None
    if not isinstance(uncovered, dict) or not all(
        isinstance(v, dict) and all(isinstance(m, str) for m in v.values()) for v in uncovered.values()
    ):
        raise ReportInputError(f"{path}: field 'uncovered' must be an object {{profile: {{rule_id: reason}}}}")
    return uncovered
