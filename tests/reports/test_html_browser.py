"""report.html in a real browser: headless Chromium renders the summary grid and the failure's swimlane.

Skipped when ``/usr/bin/chromium`` is absent (the CI script installs Debian's ``chromium``).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from teeio_conformance.reports import writer
from teeio_conformance.reports.model import load_report_dir

from . import (
    FLOW05_STEPS,
    MUTANT_SUT,
    failure_record,
    stack_works,
    unbind_destroys_vdevice_sut,
    verdicts,
    write_json,
)

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed (apt-get install chromium)"
)


def _record() -> dict:
    """A FLOW-05 record with the real trace of the mutant when the stack runs, else the hand-made one."""
    if not stack_works():
        return failure_record()
    from teeio_conformance.conformance.machines.full_stack import FullStack, MachineConfig
    from teeio_conformance.conformance.rules import RuleViolation

    class Machine(FullStack):
        config = MachineConfig(factory=unbind_destroys_vdevice_sut, profile="tdx")

    m = Machine()
    try:
        vm = m.first_vm()
        slot = m.assign(vm=vm, fn=0)
        m.guest(s=slot, verb="unbind")
    except RuleViolation as exc:
        found: Any = exc  # @recorded attaches the log, trace and mark to the exception
        return failure_record(
            steps=found.teeio_steps,
            trace=found.teeio_trace,
            violating_seq=found.teeio_mark,
            message=exc.detail,
        )
    raise AssertionError(f"the mutant did not break FLOW-05 in {FLOW05_STEPS}")


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("html")
    by_profile = {
        "tdx": {
            "checked": {"FLOW-05": 4, "FLOW-01": 3, "FLOW-02": 2},
            "exercised": {"FLOW-05": 4, "FLOW-01": 3},
            "failed": {"FLOW-05": 1},
        },
        "cca": {"checked": {"FLOW-05": 2}, "exercised": {"FLOW-05": 2}, "failed": {}},
    }
    write_json(
        root / "verdicts-main.json",
        verdicts({}, {}, profiles=("tdx", "cca"), sut=MUTANT_SUT, by_profile=by_profile),
    )
    write_json(root / "failures" / "flow05.json", _record())
    writer.write_all(load_report_dir(root), root)
    return root / "report.html"


def test_the_browser_dom_has_the_grid_and_the_failure_chart(page, tmp_path):
    proc = _chromium(tmp_path, "--dump-dom", page.as_uri())
    dom = proc.stdout
    assert proc.returncode == 0 and "<html" in dom, proc.stderr[-2000:]
    assert re.search(r'<table class="grid" id="summary-grid">', dom)
    assert re.search(r'<td class="cell fail"[^>]*data-status="fail"><a href="#failure-flow05">FAIL</a>', dom)
    assert 'id="failure-flow05"' in dom and '<table class="swimlane">' in dom
    assert re.search(r'<tr class="violating violating-step\s*"', dom)  # the marked row survived parsing
    assert '<pre class="chart">' in dom and f"teeio-conformance replay {page.parent}/failures/flow05.json" in dom


def test_the_browser_renders_a_screenshot(page, tmp_path):
    shot = tmp_path / "report.png"
    proc = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,1800", "--hide-scrollbars", page.as_uri())
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
