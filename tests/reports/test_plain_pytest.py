"""Plain ``pytest --sut ...`` as the README documents it, from an empty directory.

One child pytest against the mutant whose guest unbind destroys the vdevice (FLOW-05), run where there is
no test file and no configuration: the plugin collects the installed suite, catches the mutant, prints a
compact failure card (rule, source, shrunk steps, the record's absolute path, a copy-paste replay command)
instead of the traceback, and writes the whole report set itself. The generated regression test then
runs with plain pytest from yet another directory: it fails on the mutant and passes on the reference.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from teeio_conformance.reports import writer
from tests.child import budget, run_pytest

from . import MUTANT_SUT, REFERENCE_SUT, STACK_REASON, stack_works

pytestmark = pytest.mark.skipif(not stack_works(), reason=STACK_REASON)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    proc = run_pytest(
        empty,
        f"--sut={MUTANT_SUT}",
        "--tdisp-profile=tdx",
        "--hypothesis-profile=ci",
        "--report-dir=out",
        "-k",
        "full_stack",
        kind="mutant",
    )
    return empty, proc


def test_the_installed_suite_runs_and_catches_the_mutant(run):
    _, proc = run
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "test_full_stack.py::test_full_stack_lifecycle[tdx]" in proc.stdout  # collected from the package
    assert "1 failed" in proc.stdout


def test_the_plugin_writes_the_whole_report_set(run):
    empty, _ = run
    out = empty / "out"
    for name in ("report.html", "junit.xml", "report.json", "report.txt"):
        assert (out / name).is_file(), name
    cases = [c for c in ET.parse(out / "junit.xml").iter("testcase") if c.attrib["name"].startswith("FLOW-05 ")]
    assert cases and cases[0].find("failure") is not None
    data = writer.read_report_json(out / "report.json")
    assert data["run_info"]["sut"] == MUTANT_SUT and data["run_info"]["settings_profile"] == "ci"
    assert list(out.glob("failures/test_*.py")) and list(out.glob("failures/*.json"))


def test_the_failure_card_is_compact_and_copy_pasteable(run, tmp_path):
    _, proc = run
    out = proc.stdout
    failures = out[out.index("= FAILURES =") : out.index("short test summary")]
    assert len(failures.splitlines()) < 40, failures  # not the 250 lines of traceback
    assert "Traceback" not in failures and "harness.py" not in failures
    assert re.search(r"FLOW-05 \(MUST\) guest unbind leaves the vdevice", failures)
    assert "source: flow step 39" in failures and "shrunk steps (" in failures and "state.first_vm()" in failures
    record = re.search(r"record: (\S+\.json)", failures).group(1)
    assert os.path.isabs(record) and Path(record).is_file()
    command = re.search(r"replay: (teeio-conformance replay .*)", failures).group(1)
    argv = shlex.split(command)
    assert argv[2] == record
    # run the printed command from elsewhere (another directory): it still fails, exit status 1
    replayed = subprocess.run(
        [sys.executable, "-m", "teeio_conformance.conformance.cli", *argv[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=budget("small"),
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert replayed.returncode == 1 and replayed.stdout.startswith("STILL FAILS"), replayed.stderr
    assert "teeio-conformance failures" in out and "in 1 test(s)" in out  # the grouped summary


def test_the_regression_test_fails_on_the_mutant_and_passes_on_the_reference(run, tmp_path):
    """Plain pytest, another directory, no --import-mode: red while the bug is there, green once fixed."""
    empty, _ = run
    (generated,) = (empty / "out" / "failures").glob("test_*.py")
    on_mutant = run_pytest(tmp_path, str(generated))
    assert on_mutant.returncode == 1, on_mutant.stdout[-2000:]
    assert "still fails with FLOW-05" in on_mutant.stdout
    on_reference = run_pytest(tmp_path, str(generated), env={"TEEIO_SUT": REFERENCE_SUT})
    assert on_reference.returncode == 0, on_reference.stdout[-2000:]
