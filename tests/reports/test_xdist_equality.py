"""A run split over pytest-xdist workers gives the same verdicts as a serial run with the same seed.

The suite's conformance tests run twice in child pytest processes under the derandomized ``ci`` settings
profile -- once serially (``-n 0``), once over two workers (``-n 2``) -- each with ``--report-dir``. The
merged ``report.json`` files must agree rule by rule and profile by profile: the verdict (PASS / FAIL /
NOT EXERCISED) and the checked / exercised / failed counts, plus the run's seed, settings profile, SUT,
profiles and step total. Any per-process state that leaks into verdicts (a global counter, a per-worker
cache, a randomised part outside Hypothesis, a merge that depends on file order) shows up here as a
difference naming the rule and profile.

The ``-n 2`` run goes into a directory that already holds the serial run's verdict file and a stale
failure record: the plugin must clear them, or the merge would count the serial run twice.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from teeio_conformance.reports import writer
from tests.child import run_pytest

REPO = Path(__file__).resolve().parents[2]


def _suite(report_dir: Path, workers: int) -> subprocess.CompletedProcess[str]:
    """The installed suite, as ``pytest --sut ...`` runs it (the time limit: tests/child.py's budgets)."""
    return run_pytest(
        REPO,
        "--sut=teeio_conformance.reference_impl.stack:make_sut",  # no paths: the installed suite
        "-W",
        "ignore::pytest.PytestAssertRewriteWarning",
        "--hypothesis-profile=ci",
        "--tdisp-profile=all",
        f"--report-dir={report_dir}",
        "-n",
        str(workers),
        kind="suite-all-xdist" if workers else "suite-all",
        unset=("PYTEST_ADDOPTS", "CI"),  # the parent run's options must not reach the child
    )


def _report(report_dir: Path) -> dict[str, Any]:
    assert writer.run(argparse.Namespace(report_dir=str(report_dir))) == 0
    return writer.read_report_json(report_dir / "report.json")


def _cells(report: dict[str, Any]) -> dict[tuple[str, str], tuple[str, int, int, int]]:
    """(rule, profile) -> (verdict, checked, exercised, failed)."""
    return {
        (rule["id"], profile): (v["status"], v["checked"], v["exercised"], v["failed"])
        for rule in report["teeio"]["rules"]
        for profile, v in rule["profiles"].items()
    }


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    pytest.importorskip("xdist")
    root = tmp_path_factory.mktemp("xdist-equality")
    out = []
    for name, workers in (("serial", 0), ("xdist", 2)):
        if workers:  # an earlier run's files in the directory must not be merged into this run's report
            (root / name / "failures").mkdir(parents=True)
            shutil.copy(root / "serial" / "verdicts-main.json", root / name / "verdicts-main.json")
            (root / name / "failures" / "stale.json").write_text("{}", encoding="utf-8")
        proc = _suite(root / name, workers)
        assert proc.returncode == 0, f"{name} run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        assert (root / name / "report.html").is_file() and (root / name / "junit.xml").is_file()  # the plugin's
        if workers:  # written by the controller from what the workers sent over xdist's channel
            assert sorted(p.name for p in (root / name).glob("verdicts-*.json")) == [
                "verdicts-gw0.json",
                "verdicts-gw1.json",
            ], "both workers must have run conformance tests"
        out.append(_report(root / name))
    return out[0], out[1]


def test_per_rule_verdicts_and_counts_equal_serial_and_xdist(reports):
    serial, xdist = reports
    a, b = _cells(serial), _cells(xdist)
    assert a.keys() == b.keys(), f"rule/profile cells differ: {sorted(a.keys() ^ b.keys())}"
    diff = {cell: (a[cell], b[cell]) for cell in sorted(a) if a[cell] != b[cell]}
    assert not diff, "serial vs -n 2 (verdict, checked, exercised, failed): " + "; ".join(
        f"{r}/{p}: {x} != {y}" for (r, p), (x, y) in list(diff.items())[:20]
    )
    assert {v[0] for v in a.values()} >= {"PASS"}  # the comparison is not vacuous
    assert sum(v[1] for v in a.values()) > 0


def test_run_info_seed_and_settings_match(reports):
    serial, xdist = reports
    keys = ("seed", "settings_profile", "sut", "profiles", "hypothesis", "steps")
    assert {k: serial["run_info"][k] for k in keys} == {k: xdist["run_info"][k] for k in keys}
    assert serial["run_info"]["seed"] == "derandomized"
    assert serial["run_info"]["settings_profile"] == "ci"
    assert serial["run_info"]["workers"] == ["main"] and xdist["run_info"]["workers"] == ["gw0", "gw1"]
