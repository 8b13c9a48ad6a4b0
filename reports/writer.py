"""``teeio-conformance report --report-dir DIR``: merge the plugin's files and write every report format.

Writes into DIR:

* ``report.json`` -- canonical; the web-platform-tests ``wptreport`` shape (``run_info``, ``results``
  with one subtest per rule) plus a ``teeio`` section with counts, rule sources and the failure
  records; checked against ``reports/schema/report.schema.json`` before it is written.
* ``junit.xml`` (:mod:`reports.junit`), ``report.txt`` (:mod:`reports.text`), ``report.html``
  (:mod:`reports.html`);
* ``failures/test_<name>.py`` -- a regression test per failure: it replays the record
  (:mod:`teeio_conformance.conformance.replay`) and fails while the bug is there.

Why wptreport: it is the one JSON shape for "many subtests, each PASS/FAIL/NOTRUN against an
expectation" that existing dashboards and diff tools already read (style.md, anchor 12).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import tempfile
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs in the venv

from teeio_conformance.reports.model import (
    AGGREGATE,
    Failure,
    Report,
    ReportInputError,
    Status,
    load_report_dir,
)

__all__ = [
    "REPORT_FORMAT",
    "add_arguments",
    "read_report_json",
    "replay_test_filename",
    "replay_test_source",
    "report_json",
    "run",
    "schema",
    "validate_report_json",
    "write_all",
    "write_replay_tests",
]

REPORT_FORMAT = "teeio-report/1"
WPT_STATUS = {
    Status.PASS: "PASS",
    Status.FAIL: "FAIL",
    Status.NOT_EXERCISED: "NOTRUN",
    Status.NOT_APPLICABLE: "PRECONDITION_FAILED",  # wpt's "the implementation lacks what the test needs"
}
TEST_PREFIX = "/teeio/"


@cache
def schema() -> dict[str, Any]:
    """The JSON Schema shipped in the package (``reports/schema/report.schema.json``)."""
    shipped = resources.files("teeio_conformance.reports").joinpath("schema", "report.schema.json")
    text = shipped.read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def validate_report_json(data: Any, *, origin: str = "report.json") -> None:
    """Raise :class:`ReportInputError` naming the first offending place if ``data`` breaks the schema."""
    validator = jsonschema.Draft202012Validator(schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        where = "/" + "/".join(str(p) for p in error.absolute_path)
        raise ReportInputError(
            f"{origin}: does not match the teeio-conformance report schema at {where}: {error.message[:200]}"
        )


def read_report_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and schema-check a ``report.json`` (for ``compare`` and anything else that consumes one)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReportInputError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ReportInputError(f"{p}: not UTF-8 text: not a report.json") from exc
    except json.JSONDecodeError as exc:
        raise ReportInputError(f"{p}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    validate_report_json(data, origin=str(p))
    result: dict[str, Any] = data
    return result


def _ms(iso: str | None) -> int | None:
    if not iso:
        return None
    try:
        return int(_dt.datetime.fromisoformat(iso).timestamp() * 1000)
    except ValueError:
        return None


def _harness_status(report: Report, column: str) -> tuple[str, str | None]:
    """wpt's test-level status: TIMEOUT if the SUT hung, ERROR if it broke, else OK (subtests say which)."""
    mine = [
        f
        for f in report.failures
        if f.rule_id.startswith("SUT-") and (f.profile == column or column == AGGREGATE or f.profile is None)
    ]
    for rule_id, status in (("SUT-HANG", "TIMEOUT"), ("SUT-BROKEN", "ERROR"), ("SUT-ERROR", "ERROR")):
        hit = next((f for f in mine if f.rule_id == rule_id), None)
        if hit is not None:
            return status, f"{rule_id}: {hit.message}"
    return "OK", None


def report_json(report: Report) -> dict[str, Any]:
    """The canonical report: one wpt result per profile, one subtest per rule that applies to it."""
    results = []
    for column in report.columns:
        subtests = []
        for v in report.verdicts:
            pv = v.by_profile.get(column)
            if pv is None:
                continue
            subtests.append(
                {
                    "name": v.rule_id,
                    "status": WPT_STATUS[pv.status],
                    "message": report.explain(v, column),
                    "expected": "PASS",
                }
            )
        status, message = _harness_status(report, column)
        results.append(
            {
                "test": TEST_PREFIX + column,
                "status": status,
                "expected": "OK",
                "message": message,
                "subtests": subtests,
            }
        )
    if not report.outcome.clean:  # how the run ended, as a wpt test of its own
        results.append(
            {
                "test": TEST_PREFIX + "run",
                "status": "TIMEOUT" if report.outcome.status.value == "hung" else "ERROR",
                "expected": "OK",
                "message": report.outcome.headline(),
                "subtests": [],
            }
        )
    data: dict[str, Any] = {"run_info": {**report.run.to_json(), "outcome": report.outcome.status.value}}
    start, end = _ms(report.run.started), _ms(report.run.finished)
    if start is not None:
        data["time_start"] = start
    if end is not None:
        data["time_end"] = end
    data["results"] = results
    data["teeio"] = {
        "format": REPORT_FORMAT,
        **report.to_json(),
        "outcome": {**report.outcome.to_json(), "exit_status": report.exit_status()},
    }
    return data


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; a report is for sharing
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _test_function_name(failure: Failure) -> str:
    safe = "".join(c if c.isalnum() else "_" for c in failure.name).strip("_") or "failure"
    return f"test_replay_{safe}"[:100]


_REPLAY_TEST = '''\
"""Regression test for a shrunk teeio-conformance failure: {rule_id} {rule_title}.

Recorded by {test} (profile {profile}) against {sut}.
Broken by step {action!r}: {message}

It fails while the bug is there and passes once it is fixed. Run it on your build, from any directory
(the SUT defaults to the one spelled out below as RECORDED_SUT / RECORDED_DEVICE: this file, not the
record {json_name} next to it, says what runs):
    TEEIO_SUT=package.module:factory pytest path/to/{test_name}
    python path/to/{test_name}        # prints the verdict; exit status 1 while it still fails
"""

import os
import pathlib
import sys

from teeio_conformance.conformance.replay import replay
from teeio_conformance.reports.model import ReportInputError

RECORD = pathlib.Path(__file__).resolve().with_name({json_name!r})
RULE_ID = {rule_id!r}
RECORDED_SUT = {recorded_sut!r}
RECORDED_DEVICE = {recorded_device!r}


def _replay():
    from teeio_conformance.conformance.remote import DeviceTarget

    sut = os.environ.get("TEEIO_SUT") or RECORDED_SUT
    device = DeviceTarget.from_spec(RECORDED_DEVICE) if RECORDED_DEVICE and sut is None else None
    return replay(RECORD, sut=sut, device=device)


def {function}():
    """The recorded steps, replayed on a fresh machine, no longer break {rule_id} (nor any other rule)."""
    result = _replay()
    assert not result.still_fails, result.message


if __name__ == "__main__":
    try:
        outcome = _replay()
    except ReportInputError as exc:  # a bad record or TEEIO_SUT: one line, status 2, as the CLI does
        print(f"cannot replay: {{exc}}", file=sys.stderr)
        sys.exit(2)
    print(outcome.message)
    sys.exit(1 if outcome.still_fails else 0)
'''


def replay_test_filename(name: str) -> str:
    """``failures/test_<name>.py``: a module name pytest imports as is (no ``--import-mode`` needed)."""
    safe = "".join(c if c.isalnum() else "_" for c in name).strip("_") or "failure"
    return f"{safe}.py" if safe.startswith("test_") else f"test_{safe}.py"


def _doc(text: object, limit: int = 300) -> str:
    """``text`` made safe inside a triple-quoted docstring: one line, no backslashes or closing quotes."""
    return " ".join(str(text).split())[:limit].replace("\\", "/").replace('"""', "'''")


def replay_test_source(failure: Failure) -> str:
    """The pytest file that replays ``failure`` (``failures/test_<name>.py``).

    The SUT (or the responder of a device record) is written into the file itself: replay runs nothing a
    record names without consent, and running this file -- whose text says what it runs -- is that consent
    for what it spells out, not for whatever a record later swapped in next to it says."""
    device_record = _is_device_record(failure)
    return _REPLAY_TEST.format(
        recorded_sut=None if device_record else failure.sut,
        recorded_device=dict(failure.device) if device_record and failure.device is not None else None,
        rule_id=failure.rule_id,
        rule_title=_doc(failure.rule_title),
        test=_doc(failure.test),
        profile=_doc(failure.profile),
        sut=_doc(failure.sut),
        action=_doc(failure.action, 80),
        message=_doc(failure.message),
        json_name=f"{failure.name}.json",
        test_name=_doc(replay_test_filename(failure.name)),
        function=_test_function_name(failure),
    )


def _is_device_record(failure: Failure) -> bool:
    """A record of the device machine (its responder, not a SUT factory, is what replays it). Read from the
    record alone: reports take records as data and do not import the suite."""
    return failure.machine == "device" or failure.device is not None or "test_device_" in failure.test


def write_replay_tests(report: Report, report_dir: str | os.PathLike[str]) -> list[Path]:
    out = []
    for f in report.failures:
        if f.machine == "trace":
            continue  # a recorded trace has no steps to replay; its replay command runs check-trace again
        path = Path(report_dir) / "failures" / replay_test_filename(f.name)
        _write_atomic(path, replay_test_source(f))
        out.append(path)
    return out


def write_all(report: Report, report_dir: str | os.PathLike[str]) -> list[Path]:
    """Write every format into ``report_dir``; return the paths written (report.json first)."""
    from teeio_conformance.reports import html, junit, text

    root = Path(report_dir)
    data = report_json(report)
    validate_report_json(data, origin=str(root / "report.json"))
    written = []
    for name, content in (
        ("report.json", json.dumps(data, indent=1, ensure_ascii=False) + "\n"),
        ("junit.xml", junit.render(report)),
        ("report.txt", text.render(report)),
        ("report.html", html.render(report)),
    ):
        _write_atomic(root / name, content)
        written.append(root / name)
    written += write_replay_tests(report, root)
    return written


# ---------------------------------------------------------------------------- CLI: teeio-conformance report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--report-dir",
        required=True,
        metavar="DIR",
        help="the directory the suite wrote verdicts-*.json and failures/ into (pytest --report-dir)",
    )


def run(args: argparse.Namespace) -> int:
    """Merge and write; 0 when written, 2 when the inputs are unusable (one-line error, no traceback)."""
    try:
        report = load_report_dir(args.report_dir)
        written = write_all(report, args.report_dir)
    except ReportInputError as exc:
        sys.stderr.write(f"teeio-conformance report: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"teeio-conformance report: cannot write into {args.report_dir}: {exc}\n")
        return 2
    c = report.counts()
    sys.stdout.write(
        f"wrote {len(written)} files into {args.report_dir} (report.html, report.json, junit.xml, "
        f"report.txt); rule verdicts: {c[Status.PASS]} PASS, {c[Status.FAIL]} FAIL, "
        f"{c[Status.NOT_EXERCISED]} NOT EXERCISED, {c[Status.NOT_APPLICABLE]} NOT APPLICABLE; "
        f"{len(report.failures)} failure record(s)\n"
    )
    return 0
