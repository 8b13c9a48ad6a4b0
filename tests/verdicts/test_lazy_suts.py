"""Lazy and lying SUTs fail, by a named rule, when run as users run the suite: ``teeio-conformance run``.

Each stack in ``lazy_suts.py`` is a small subclass of the reference, written as a user outside the project
would; before issue 14 every one of them passed (safety rules only). ``-x`` stops the run at the first
failure -- the liveness test runs first, so a stack that cannot do the lifecycle costs well under a second.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CASES = [
    ("refuses_lock", "TDISP-03", "lifecycle_bind"),
    ("refuses_reports", "TDISP-11", "lifecycle_attest"),
    ("start_does_nothing", "TDISP-05", "lifecycle_start"),
    ("never_recovers", "LIVE-05", "lifecycle_enumerate_again"),
    ("fixed_nonce", "ATT-01", "lifecycle_attest"),
    ("acks_bad_key_prog", "IDE-02", None),
    ("wrong_dsm_caps", "TDISP-14", None),
]


def _run(sut: str, report_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("PYTEST_XDIST_WORKER", None)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "teeio_conformance.conformance.cli",
            "run",
            f"--sut=tests.verdicts.lazy_suts:{sut}",
            "--tdisp-profile=tdx",
            f"--report-dir={report_dir}",
            "--",
            "-x",
            "--minimize-seconds=0",
            *extra,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize(("sut", "rule", "action"), CASES, ids=[c[0] for c in CASES])
def test_lazy_or_lying_sut_fails_by_its_rule(tmp_path: Path, sut: str, rule: str, action: str | None) -> None:
    proc = _run(sut, tmp_path / "report")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    records = sorted((tmp_path / "report" / "failures").glob("*.json"))
    # the reported failure's record; '-also-RULE' records are the other rules the same step broke
    failures = [json.loads(p.read_text()) for p in records if "-also-" not in p.name]
    assert [f["rule_id"] for f in failures] == [rule], out
    if action is not None:
        assert failures[0]["action"] == action, failures[0]["message"]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    verdict = next(r for r in report["teeio"]["rules"] if r["id"] == rule)
    assert verdict["profiles"]["tdx"]["status"] == "FAIL"
