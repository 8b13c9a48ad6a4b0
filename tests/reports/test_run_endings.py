"""Every way a run can end is in every report format, with its exit status (issue 17, item 3).

Each case runs ``teeio-conformance run --report-dir`` in a child process, as a user would, against a SUT
of ``tests/reports/sut_endings.py`` (only the full-stack machine, profile tdx, to keep it short), and reads
report.json, junit.xml, report.html, report.txt and the exit status. On the old code the SUT's own
KeyboardInterrupt / SystemExit / GeneratorExit ended the run with 0 FAIL in the report, a factory that
raised left no record, a hang had to be killed from outside with no report, and a run that could not
start left no report directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from teeio_conformance.reports.writer import read_report_json

from . import STACK_REASON, stack_works

pytestmark = pytest.mark.skipif(not stack_works(), reason=STACK_REASON)

REPO = Path(__file__).resolve().parents[2]
SUTS = "tests.reports.sut_endings"


def _cli(report: Path, *argv: str, sut: str | None = None, pytest_args: tuple[str, ...] = ()) -> list[str]:
    cmd = [sys.executable, "-m", "teeio_conformance.conformance.cli", "run", "--tdisp-profile", "tdx"]
    cmd += [f"--report-dir={report}", *argv]
    if sut:
        cmd.append(f"--sut={SUTS}:{sut}")
    return [*cmd, "--", "-k", "full_stack", "-p", "no:cacheprovider", "--minimize-seconds=0", *pytest_args]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("PYTEST_XDIST_WORKER", None)
    return env


def _run(report: Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cli(report, **kw), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)


def _formats(report: Path) -> dict[str, Any]:
    """What each format says about the run: outcome, failing rule IDs, JUnit error/failure counts."""
    data = read_report_json(report / "report.json")
    junit = ET.parse(report / "junit.xml").getroot()
    return {
        "status": data["teeio"]["outcome"]["status"],
        "exit": data["teeio"]["outcome"]["exit_status"],
        "run_info": data["run_info"]["outcome"],
        "events": data["teeio"]["outcome"]["events"],
        "failed_rules": sorted({f["rule_id"] for f in data["teeio"]["failures"]}),
        "wpt_run": next((r["status"] for r in data["results"] if r["test"] == "/teeio/run"), None),
        "junit_errors": int(junit.get("errors", "0")),
        "junit_failures": int(junit.get("failures", "0")),
        "junit_time": float(junit.get("time", "0")),
        "html": (report / "report.html").read_text(encoding="utf-8"),
        "txt": (report / "report.txt").read_text(encoding="utf-8"),
    }


@pytest.mark.parametrize(
    ("sut", "exc"),
    [
        ("raises_keyboard_interrupt", "KeyboardInterrupt"),
        ("raises_system_exit", "SystemExit"),
        ("raises_generator_exit", "GeneratorExit"),
    ],
)
def test_a_base_exception_of_the_sut_is_its_failure_in_every_format(tmp_path, sut, exc):
    report = tmp_path / "report"
    proc = _run(report, sut=sut)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = _formats(report)
    assert got["status"] == "complete" and got["exit"] == 1 and got["failed_rules"] == ["SUT-ERROR"]
    assert got["junit_errors"] >= 1 and got["junit_time"] > 0
    assert f"the SUT raised {exc}" in got["txt"] and "[FAIL] SUT-ERROR" in got["txt"]
    assert f"the SUT raised {exc}" in got["html"]
    # the record replays to the same failure (old code: the SystemExit record exited 3 with no output, the
    # GeneratorExit record crashed replay)
    (record,) = (report / "failures").glob("*.json")
    replay = subprocess.run(
        [sys.executable, "-m", "teeio_conformance.conformance.cli", "replay", str(record), f"--sut={SUTS}:{sut}"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert replay.returncode == 1, replay.stdout + replay.stderr
    assert replay.stdout.startswith("STILL FAILS: still fails with SUT-ERROR") and exc in replay.stdout


def test_a_sut_that_cannot_be_built_is_recorded(tmp_path):
    report = tmp_path / "report"
    proc = _run(report, sut="factory_raises")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = _formats(report)
    assert got["status"] == "complete" and got["failed_rules"] == ["SUT-BUILD"] and got["junit_errors"] >= 1
    assert "could not build the SUT: RuntimeError: no SUT today" in got["txt"]
    (record,) = (report / "failures").glob("*.json")
    assert json.loads(record.read_text())["steps"] == []


def test_a_device_at_a_closed_port_is_a_report_not_silence(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    report = tmp_path / "report"
    cmd = _cli(report, f"--device-at=127.0.0.1:{port}")
    cmd[cmd.index("full_stack")] = "device"
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = _formats(report)
    # the adapter connects lazily, at the first snapshot: the SUT cannot be built or cannot be read
    assert got["failed_rules"] in (["SUT-BUILD"], ["SUT-BROKEN"]) and "Connection refused" in got["txt"]


def test_a_hung_sut_is_ended_by_the_watchdog_with_report_and_record(tmp_path):
    report = tmp_path / "report"
    started = time.monotonic()
    proc = _run(report, sut="hangs", pytest_args=("--step-timeout=2", "--watchdog-grace=1"))
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert time.monotonic() - started < 120
    got = _formats(report)
    assert got["status"] == "hung" and got["run_info"] == "hung" and got["wpt_run"] == "TIMEOUT"
    assert got["failed_rules"] == ["SUT-HANG"] and got["junit_errors"] >= 2
    assert "RUN HUNG" in got["txt"] and "RUN HUNG" in got["html"]
    (record,) = (report / "failures").glob("*.json")
    assert json.loads(record.read_text())["steps"][0]["method"] == "first_vm"


def test_ctrl_c_marks_the_run_interrupted(tmp_path):
    report = tmp_path / "report"
    cmd = _cli(report, sut="sleeps", pytest_args=("--step-timeout=120", "-s"))
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "teeio-test: in create_vm" in line:
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 2, out[-3000:] + err[-3000:]
    got = _formats(report)
    assert got["status"] == "interrupted" and got["exit"] == 2 and got["wpt_run"] == "ERROR"
    assert got["junit_errors"] >= 1 and "RUN INTERRUPTED" in got["txt"] and "RUN INTERRUPTED" in got["html"]


def test_a_run_that_cannot_start_still_writes_a_report_saying_why(tmp_path):
    report = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "teeio_conformance.conformance.cli", "run", f"--report-dir={report}", "--sut=nocolon"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 4, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = _formats(report)
    assert got["status"] == "not-started" and got["exit"] == 4 and got["junit_errors"] == 1
    assert "--sut must look like" in got["txt"] and "RUN NOT STARTED" in got["html"]


def test_an_error_of_the_suite_itself_is_an_internal_error(tmp_path):
    report = tmp_path / "report"
    bug = tmp_path / "test_suite_bug.py"
    bug.write_text("def test_suite_bug():\n    raise TypeError('a bug in the suite')\n", encoding="utf-8")
    cmd = _cli(report)
    cmd[cmd.index("full_stack")] = "suite_bug"
    proc = subprocess.run([*cmd, str(bug)], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = _formats(report)
    assert got["status"] == "internal-error" and got["exit"] == 3 and got["junit_errors"] == 1
    assert "a bug in the suite" in got["txt"] and "a bug in the suite" in got["html"]
