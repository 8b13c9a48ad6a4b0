"""Running pytest in a child process, as a user would, with this checkout importable -- and how long to wait.

A child's time limit only catches a hang: a run that passes never waits for it, so it is generous. It is
derived from what each kind of child *costs in CPU time* (user + system, children included), which
hardly depends on how busy the machine is, while wall time does: on a 2-core machine where the project's
tests run with ``pytest -n 2`` next to another CPU-bound job, four processes share two cores and a child
gets about half a core. :func:`budget` allows six times the measured CPU time plus a minute of start-up,
three times what that machine needs.

The costs were measured with ``TEEIO_MEASURE_CHILDREN=FILE`` set (every child run appends its kind, CPU
seconds and wall seconds to FILE) on the 2-core development machine at load 5-8, and rounded up;
measure again after making a machine or the suite slower. ``TEEIO_TEST_TIME_SCALE`` multiplies every
budget (e.g. 3 on a much slower machine).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# CPU seconds of each kind of child run: measured (2026-12-02, 2-core machine at load 7-10, the largest
# of each kind rounded up; see the module docstring)
CPU_SECONDS = {
    "small": 5,  # a few plain tests or a usage error: interpreter and pytest start-up (measured 1.5-2.0)
    "mutant": 10,  # the full-stack machine catching a mutant, ci profile, tdx, minimization on (1.6-5.1)
    "device-spawn": 20,  # the device machine against responders spawned per example (3.7 + the responders)
    "suite-tdx": 25,  # the installed suite against the reference, ci profile, tdx (18.1-21.6)
    "suite-all": 75,  # ... all three platform profiles, serial (50.1-67.4)
    "suite-all-xdist": 80,  # ... over two xdist workers (70.7)
}
SLOWDOWN = 6
STARTUP_SECONDS = 60


def budget(kind: str) -> float:
    """Wall-clock seconds a child of ``kind`` may take before it counts as hung."""
    scale = float(os.environ.get("TEEIO_TEST_TIME_SCALE") or 1)
    return (STARTUP_SECONDS + SLOWDOWN * CPU_SECONDS[kind]) * scale


def run_pytest(
    cwd: Path,
    *argv: str,
    env: dict[str, str] | None = None,
    kind: str = "small",
    timeout: float | None = None,
    unset: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """``python -m pytest -q ARGV`` in ``cwd`` within ``budget(kind)`` (or ``timeout``); the parent's xdist
    worker identity does not leak in, nor the variables named in ``unset``."""
    environ = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        **(env or {}),
    }
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", *(u for u in unset if u not in (env or {}))):
        environ.pop(name, None)
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *argv],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout if timeout is not None else budget(kind),
    )
    _note(kind, argv, before, time.monotonic() - started)
    return proc


def _note(kind: str, argv: tuple[str, ...], before: resource.struct_rusage, wall: float) -> None:
    """With ``TEEIO_MEASURE_CHILDREN=FILE``: append what this child cost (the CPU_SECONDS table's source)."""
    path = os.environ.get("TEEIO_MEASURE_CHILDREN")
    if not path:
        return
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(f"{kind}\tcpu {cpu:.1f}\twall {wall:.1f}\tload {os.getloadavg()[0]:.1f}\t{' '.join(argv)[:150]}\n")
