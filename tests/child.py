"""Running pytest in a child process, as a user would, with this checkout importable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_pytest(
    cwd: Path, *argv: str, env: dict[str, str] | None = None, timeout: float = 120, unset: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``python -m pytest -q ARGV`` in ``cwd``; the parent's xdist worker identity does not leak in, nor
    the variables named in ``unset``."""
    environ = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        **(env or {}),
    }
    for name in ("PYTEST_XDIST_WORKER", *(u for u in unset if u not in (env or {}))):
        environ.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *argv],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
