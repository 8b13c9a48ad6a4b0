"""The CLI's and the plugin's small things: --version, a closed pipe, one-line errors for misuse,
defaults in --help, progress, and Hypothesis' statistics for the machine tests."""

from __future__ import annotations

import subprocess
import sys

import pytest

from teeio_conformance.conformance import cli
from tests.child import REPO, budget, run_pytest

CLI = [sys.executable, "-m", "teeio_conformance.conformance.cli"]


def _cli(*argv: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=budget("small"), cwd=REPO, **kw)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("teeio-conformance ")


@pytest.mark.parametrize("argv", [["rules"], ["rules", "--json"], ["flow", "--json"]])
def test_a_closed_pipe_ends_quietly(argv):
    """``teeio-conformance rules | head -1``: no BrokenPipe traceback, no 'Exception ignored'."""
    proc = subprocess.Popen([*CLI, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # the reader goes away, as head does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=budget("small")) in (0, 141), err
    assert "Traceback" not in err and "Exception ignored" not in err and "BrokenPipe" not in err


def test_run_with_workers_but_no_xdist_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "xdist", None)  # importing it now raises ImportError
    assert cli.main(["run", "-n", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs pytest-xdist" in err


def test_report_dir_under_a_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    proc = _cli("run", "--report-dir", str(tmp_path / "afile" / "out"), "--", "-k", "nothing_at_all")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "cannot use it as a directory" in proc.stderr and "Traceback" not in proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_bad_example_db_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    proc = run_pytest(tmp_path, f"--example-db={tmp_path / 'afile'}", "--rootdir", str(tmp_path))
    assert proc.returncode == 4 and "not a directory" in proc.stderr and "Traceback" not in proc.stderr


def test_help_shows_defaults():
    text = _cli("run", "--help").stdout
    assert "(default: all)" in text and "(default: ci)" in text
    assert "(default 3)" in _cli("explore", "--help").stdout  # the subcommands word their own


@pytest.mark.parametrize("bad", [["run", "-n", "-1"], ["flow", "--profile", "nope"], ["nonsense"]])
def test_misuse_is_one_line_and_status_2(bad):
    proc = _cli(*bad)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(("teeio-conformance", "usage:")) or "error:" in proc.stderr


def test_statistics_and_progress_of_a_machine_test(tmp_path):
    """``--hypothesis-show-statistics`` fills its section for the machine tests (Hypothesis' plugin alone
    prints it empty), and a long machine test says how far it got."""
    proc = run_pytest(
        tmp_path,
        "--sut=teeio_conformance.reference_impl.stack:make_sut",
        "--tdisp-profile=tdx",
        "-k",
        "host_object",
        "--hypothesis-profile=ci",
        "--hypothesis-show-statistics",
        "--progress-seconds=0.5",
        kind="suite-tdx",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    stats = proc.stdout[proc.stdout.index("Hypothesis Statistics") :]
    assert (
        "test_host_object_lifetimes[tdx]" in stats and "during generate phase" in stats and "Stopped because" in stats
    )
    assert "teeio-conformance: test_host_lifetimes.py::test_host_object_lifetimes[tdx] running for" in proc.stdout


def test_explore_says_how_far_a_level_got(monkeypatch):
    """A long level of ``explore`` reports progress within the level, not only when it ends."""
    from teeio_conformance.conformance import explore
    from teeio_conformance.reference_impl.stack import make_sut

    monkeypatch.setattr(explore, "PROGRESS_SECONDS", 0.0)  # every sequence, for the test
    lines: list[str] = []
    machine = explore.machine_class("host_lifetimes", factory=make_sut, profile="tdx", timeout=5.0)
    result = explore.explore(machine, depth=1, progress=lines.append)
    assert lines[0].startswith("depth 1: ") and lines[0].endswith("sequences to check")
    within = [line for line in lines if " of " in line and "rule(s) broken so far" in line]
    assert within and within[-1].startswith(f"depth 1: {result.levels[1]} of {result.levels[1]} sequences (100 %)")
