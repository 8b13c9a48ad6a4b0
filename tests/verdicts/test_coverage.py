"""Coverage is a verdict: an applicable MUST rule that was never exercised fails the run and the report."""

from __future__ import annotations

import argparse
import json

from teeio_conformance.conformance.coverage import (
    MACHINE_TESTS,
    applicable_rules,
    coverage_failures,
    judged_profiles,
)
from teeio_conformance.conformance.rules import BY_ID, Level
from teeio_conformance.reports import writer
from teeio_conformance.reports.model import Status, load_report_dir
from tests.child import run_pytest

TINY = """
from hypothesis import HealthCheck, settings
settings.register_profile("tiny", max_examples=1, stateful_step_count=2, derandomize=True, database=None,
                          deadline=None, suppress_health_check=list(HealthCheck))
"""


def test_applicable_rules_are_the_profile_musts():
    tdx = applicable_rules("tdx")
    assert "LIVE-02" in tdx and "FLOW-07" in tdx  # MUST, and TDX's own PROFILE rule
    assert "FLOW-08" not in tdx  # CCA only
    assert all(BY_ID[r].level is not Level.SHOULD for r in tdx)
    assert any(BY_ID[r].level is Level.SHOULD for r in BY_ID)  # so the line above can fail
    remote = applicable_rules("tdx", remote_device=True)
    assert set(remote) < set(tdx)  # a socket cannot carry every device rule


def test_coverage_failures_name_each_unexercised_rule():
    counts = {"tdx": {"checked": {"LIVE-01": 3, "FLOW-01": 2}, "exercised": {"LIVE-01": 1}}}
    out = coverage_failures(counts, {"tdx": ["LIVE-01", "FLOW-01", "FLOW-02"]})
    assert set(out["tdx"]) == {"FLOW-01", "FLOW-02"}
    assert "checked 2 times" in out["tdx"]["FLOW-01"] and "no step touched" in out["tdx"]["FLOW-02"]
    assert coverage_failures(counts, {"tdx": ["LIVE-01"]}) == {}


def test_only_complete_passing_profiles_are_judged():
    ok = {(t, "tdx"): "passed" for t in MACHINE_TESTS}
    assert judged_profiles(ok, ["tdx"]) == ["tdx"]
    assert judged_profiles({**ok, (MACHINE_TESTS[1], "tdx"): "failed"}, ["tdx"]) == []
    assert judged_profiles({k: v for k, v in ok.items() if k[0] != MACHINE_TESTS[2]}, ["tdx"]) == []


def test_a_run_that_exercises_too_little_fails_with_the_reason(tmp_path):
    """One example of two steps per machine: the reference keeps every rule it meets, but most MUST rules are
    never exercised -- the run exits 1 and every report format says why."""
    (tmp_path / "tinyprofile.py").write_text(TINY, encoding="utf-8")
    report_dir = tmp_path / "report"
    proc = run_pytest(
        tmp_path,
        "-p",
        "tinyprofile",
        "--pyargs",
        "teeio_conformance.conformance",
        "--hypothesis-profile=tiny",
        "--tdisp-profile=tdx",
        f"--report-dir={report_dir}",
        env={"PYTHONPATH": str(tmp_path)},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "were never exercised" in out
    coverage = json.loads((report_dir / "coverage.json").read_text())
    assert coverage["judged"] == ["tdx"] and coverage["uncovered"]["tdx"]
    missing = sorted(coverage["uncovered"]["tdx"])
    assert writer.run(argparse.Namespace(report_dir=str(report_dir))) == 0
    report = load_report_dir(report_dir)
    v = report.verdict(missing[0])
    assert v is not None and v.by_profile["tdx"].status is Status.FAIL
    assert "never exercised" in report.explain(v, "tdx")
    assert "never exercised" in (report_dir / "junit.xml").read_text()
    assert "never exercised" in (report_dir / "report.txt").read_text()
    data = json.loads((report_dir / "report.json").read_text())
    rule = next(r for r in data["teeio"]["rules"] if r["id"] == missing[0])
    assert rule["profiles"]["tdx"]["status"] == "FAIL"
