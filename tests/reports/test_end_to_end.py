"""End to end, for real: the suite catches a mutant, the plugin records it, the report shows it, replay
reproduces it.

A mutant IOMMUFD whose guest unbind also destroys the vdevice (tests/reports/__init__.py) is run by the
full-stack machine under Hypothesis in a child pytest with ``--report-dir``; then ``report`` writes every
format, ``replay`` re-runs the shrunk sequence (still FLOW-05 on the mutant, passing on the reference),
and the generated regression test ``failures/test_<name>.py`` is run by pytest and as a script. Skipped until the
reference stack runs its lifecycle.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from teeio_conformance.conformance import replay as rp
from teeio_conformance.reports import writer
from teeio_conformance.reports.model import load_report_dir
from tests.child import budget, run_pytest

from . import MUTANT_SUT, REFERENCE_SUT, STACK_REASON, stack_works

pytestmark = pytest.mark.skipif(not stack_works(), reason=STACK_REASON)

REPO = Path(__file__).resolve().parents[2]
SUITE = """
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from teeio_conformance.conformance.machines.full_stack import FullStack, MachineConfig


def test_full_stack_lifecycle(sut_factory, tdisp_profile, step_timeout):
    class Machine(FullStack):
        config = MachineConfig(factory=sut_factory, profile=tdisp_profile, timeout=step_timeout,
                               only=frozenset({"FLOW-05"}))  # aim at the mutant's rule, as the mutant tests

    run_state_machine_as_test(Machine, settings=settings(
        max_examples=300, stateful_step_count=10, derandomize=True, database=None, deadline=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck)))
"""


@pytest.fixture(scope="module")
def caught(tmp_path_factory):
    """Run the suite against the mutant with --report-dir; return the report directory."""
    work = tmp_path_factory.mktemp("suite")
    (work / "test_mutant_suite.py").write_text(SUITE, encoding="utf-8")
    report_dir = work / "report"
    proc = run_pytest(
        work,
        "test_mutant_suite.py",
        f"--sut={MUTANT_SUT}",
        "--tdisp-profile=tdx",
        f"--report-dir={report_dir}",
        "--rootdir",
        str(work),
        kind="mutant",
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FLOW-05 (MUST)" in proc.stdout  # the failure card
    return report_dir


def test_the_plugin_records_the_shrunk_failure(caught):
    records = sorted((caught / "failures").glob("*.json"))
    assert len(records) == 1 and (caught / "verdicts-main.json").exists()
    record = json.loads(records[0].read_text())
    assert record["rule_id"] == "FLOW-05" and record["profile"] == "tdx" and record["sut"] == MUTANT_SUT
    # shrunk (and minimized) to the shortest there is: first_vm then one bring-up to "unbound"
    assert len(record["steps"]) == 2 and record["steps"][0]["method"] == "first_vm"


def test_report_replay_and_the_generated_pytest_file(caught):
    """The whole path an implementer takes, from the report directory to a reproducer on their build."""
    parser = argparse.ArgumentParser()
    writer.add_arguments(parser)
    assert writer.run(parser.parse_args(["--report-dir", str(caught)])) == 0

    report = load_report_dir(caught)
    assert report.run.started is not None and report.run.finished is not None
    assert report.run.started <= report.run.finished  # the run's span, for the report header
    flow05 = report.verdict("FLOW-05")
    assert flow05 is not None and flow05.by_profile["tdx"].status.value == "FAIL"
    data = writer.read_report_json(caught / "report.json")
    sub = next(s for s in data["results"][0]["subtests"] if s["name"] == "FLOW-05")
    assert sub["status"] == "FAIL"
    case = next(c for c in ET.parse(caught / "junit.xml").iter("testcase") if c.attrib["name"].startswith("FLOW-05 "))
    assert case.find("failure") is not None
    page = (caught / "report.html").read_text(encoding="utf-8")
    assert 'class="swimlane"' in page and "vdevice_tsm_unbind" in page
    assert "state.first_vm()" in page  # Hypothesis' shrunk program

    failure = report.failures[0]
    record = caught / failure.file
    parser = argparse.ArgumentParser()
    rp.add_arguments(parser)
    assert rp.run(parser.parse_args([str(record)])) == 2  # names a SUT not the suite's own: no consent
    assert rp.run(parser.parse_args([str(record), "--trust-record"])) == 1
    fixed = rp.replay(record, sut=REFERENCE_SUT)
    assert not fixed.still_fails and fixed.steps_run == 2
    again = rp.replay(record, MUTANT_SUT)
    assert again.still_fails and again.rule_id == "FLOW-05" and again.steps_run == 2

    from teeio_conformance.reports.writer import replay_test_filename

    snippet = f"failures/{replay_test_filename(failure.name)}"
    on_mutant = run_pytest(caught, snippet)  # a regression test: red while the bug is there
    assert on_mutant.returncode == 1 and "still fails with FLOW-05" in on_mutant.stdout
    on_reference = run_pytest(caught, snippet, env={"TEEIO_SUT": REFERENCE_SUT})
    assert on_reference.returncode == 0, on_reference.stdout[-2000:]
    script = subprocess.run(
        [sys.executable, snippet],
        cwd=caught,
        capture_output=True,
        text=True,
        timeout=budget("small"),
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert script.returncode == 1 and script.stdout.startswith("still fails with FLOW-05")
