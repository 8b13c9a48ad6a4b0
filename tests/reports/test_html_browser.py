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


# ---------------------------------------------------------------------------- the failure card, pixel by pixel


def _png_rgb(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes) of an 8-bit non-interlaced PNG (what Chromium writes); the
    test needs no imaging library."""
    import operator
    import struct
    import zlib

    data = path.read_bytes()
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
    assert header is not None
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    stride = width * bpp
    raw = zlib.decompress(idat)
    prior = bytes(stride)
    rows = []
    for y in range(height):
        kind, line = raw[y * (stride + 1)], raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]
        if kind == 0:
            cur = line
        elif kind == 2:  # Up: byte-wise sum with the row above, in C through map
            cur = bytes(map((256).__rmod__, map(operator.add, line, prior)))
        else:  # Sub, Average, Paeth: byte by byte
            out = bytearray(stride)
            for i in range(stride):
                a = out[i - bpp] if i >= bpp else 0
                b, c = prior[i], prior[i - bpp] if i >= bpp else 0
                if kind == 1:
                    pred = a
                elif kind == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                out[i] = (line[i] + pred) & 0xFF
            cur = bytes(out)
        rows.append(cur if bpp == 3 else b"".join(cur[i : i + 3] for i in range(0, stride, 4)))
        prior = cur
    return width, height, rows


def _count(row: bytes, rgb: bytes) -> int:
    return sum(1 for i in range(0, len(row), 3) if row[i : i + 3] == rgb)


FAIL_RED = bytes.fromhex("cf222e")  # var(--fail): the marked row's top border
STEP_PINK = bytes.fromhex("ffebe9")  # the violating step's rows


@pytest.fixture(scope="module")
def cited(tmp_path_factory) -> tuple[Path, int, int]:
    """report.html of a failure whose message cites a crossing later in the violating step than its first:
    the mutant's own trace, the message naming the crossing where the vdevice was destroyed."""
    if not stack_works():
        pytest.skip(STACK_REASON_HTML)
    record = _record()
    start = record["violating_seq"]
    destroy = next(
        e["seq"]
        for e in record["trace"]
        if e["seq"] > start and e["operation"] == "destroy" and e["callee"] == "iommufd"
    )
    assert destroy > start + 1
    record["message"] = f"{record['message']} (seq {destroy})"
    root = tmp_path_factory.mktemp("cited")
    write_json(root / "verdicts-main.json", verdicts({}, {}, profiles=("tdx",), sut=MUTANT_SUT))
    write_json(root / "failures" / "flow05.json", record)
    writer.write_all(load_report_dir(root), root)
    return root / "report.html", start, destroy


STACK_REASON_HTML = "the reference stack does not run yet: no real trace to chart"


def test_the_marker_is_on_the_cited_crossing_in_the_dom(cited, tmp_path):
    page, start, destroy = cited
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    flagged = r'<tr class="violating[^"]*" data-seq="(\d+)">\s*<td class="num">\d+</td><td class="flag">!'
    marked = re.findall(flagged, dom)
    assert marked == [str(destroy)], marked
    assert re.search(rf'<tr class=" violating-step[^"]*" data-seq="{start}">', dom)  # the step starts unmarked


def test_the_failure_card_screenshot_marks_the_cited_crossing(cited, tmp_path):
    """In the rendered pixels: one red marker line across the chart, with the violating step's pink rows
    starting above it (the marker is not on the step's first crossing, as it was)."""
    page, start, destroy = cited
    shot = tmp_path / "card.png"
    proc = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,9000", "--hide-scrollbars", page.as_uri())
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    width, _, rows = _png_rgb(shot)
    red = [y for y, row in enumerate(rows) if _count(row, FAIL_RED) > width // 3]
    assert red and red[-1] - red[0] <= 3, f"expected one marker line (2 px), got red rows {red[:10]}"
    pink = {y for y, row in enumerate(rows) if _count(row, STEP_PINK) > width // 3}
    line = red[0]
    assert line + 3 in pink or line + 4 in pink  # the marked row is in the violating step
    above = line - 1
    while above - 1 in pink or above in pink:
        above -= 1
    rows_above = (line - above) / 14  # a chart row is about 14 px at 11 px type
    assert rows_above >= (destroy - start) * 0.5, (line, above, start, destroy)
