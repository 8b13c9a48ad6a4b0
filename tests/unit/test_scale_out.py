"""Running at scale (README): a shared example database, xdist across hosts, HypoFuzz.

* **A shared example database**: one run ("machine A") finds the mutant's failure and saves it in the
  database; a second run ("machine B", another directory, no generation at all -- only Hypothesis' reuse
  phase) fails the same way from the database alone, and a control run with an empty database passes.
  Once with a directory, once with Redis (``hypothesis.extra.redis``) against a real ``redis-server``
  this test starts on 127.0.0.1 (skipped, saying why, where there is none: ``apt-get install
  redis-server`` and ``pip install redis``).
* **pytest-xdist across hosts**: ``--tx`` gateways (``popen`` here, ``ssh=HOST//python=...`` across
  hosts) hand their verdicts to the controller over xdist's channel, which writes the report.
* **HypoFuzz**: the machines as stateful test cases (``conformance/fuzz.py``) and, where HypoFuzz is
  installed, its ``hypothesis fuzz`` entry point.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.child import budget, run_pytest
from tests.reports import MUTANT_SUT, STACK_REASON, stack_works

CONFTEST = """
from hypothesis import HealthCheck, Phase, settings

# machine A searches (derandomized, so the search is the same every time); machine B only replays the
# database: with no generate phase a run can fail only on an example some other run saved there
settings.register_profile("find", max_examples=300, stateful_step_count=10, derandomize=True, deadline=None,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
                          suppress_health_check=list(HealthCheck))
settings.register_profile("reuse-only", max_examples=300, stateful_step_count=10, deadline=None,
                          phases=[Phase.explicit, Phase.reuse], suppress_health_check=list(HealthCheck))
"""


def _machine(tmp_path: Path, name: str, profile: str, database: str) -> subprocess.CompletedProcess[str]:
    """A run of the installed suite's full-stack machine against the mutant in its own directory."""
    home = tmp_path / name
    home.mkdir()
    (home / "conftest.py").write_text(CONFTEST, encoding="utf-8")
    return run_pytest(
        home,
        f"--sut={MUTANT_SUT}",
        "--tdisp-profile=tdx",
        "-k",
        "full_stack",
        f"--hypothesis-profile={profile}",
        f"--example-db={database}",
        "--rootdir",
        str(home),
        kind="mutant",
    )


def _shared_database_works(tmp_path: Path, database: str, empty: str | None) -> None:
    a = _machine(tmp_path, "machine-a", "find", database)
    assert a.returncode == 1 and "FLOW-05" in a.stdout, a.stdout[-3000:] + a.stderr[-2000:]
    b = _machine(tmp_path, "machine-b", "reuse-only", database)
    assert b.returncode == 1 and "FLOW-05" in b.stdout, b.stdout[-3000:] + b.stderr[-2000:]
    if empty is not None:
        control = _machine(tmp_path, "machine-c", "reuse-only", empty)
        assert control.returncode == 0, control.stdout[-3000:]


@pytest.mark.skipif(not stack_works(), reason=STACK_REASON)
def test_a_shared_directory_database_carries_a_failure_to_another_run(tmp_path):
    shared = tmp_path / "shared-db"
    _shared_database_works(tmp_path, str(shared), empty=str(tmp_path / "empty-db"))
    assert any(shared.rglob("*")), "machine A saved nothing"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_url(tmp_path):
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    if importlib.util.find_spec("redis") is None:
        pytest.skip("the redis package is not installed (pip install redis, or the test extra)")
    import redis

    port = _free_port()
    argv = [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(
        [*argv, "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not start on 127.0.0.1:{port} (exit {proc.poll()})")
                time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0", client
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.skipif(not stack_works(), reason=STACK_REASON)
def test_a_redis_database_carries_a_failure_to_another_run(redis_url, tmp_path_factory):
    url, client = redis_url
    _shared_database_works(tmp_path_factory.mktemp("machines"), url, empty=None)
    assert client.dbsize() > 0, "machine A saved nothing in Redis"


def test_an_unreachable_redis_is_a_one_line_usage_error(tmp_path):
    pytest.importorskip("redis")
    proc = run_pytest(tmp_path, f"--example-db=redis://127.0.0.1:{_free_port()}/0", "--rootdir", str(tmp_path))
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "no Redis server answers there" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.skipif(not stack_works(), reason=STACK_REASON)
def test_xdist_gateways_report_to_the_controller(tmp_path):
    """Two gateways (``--tx popen`` twice; across hosts ``--tx ssh=HOST//python=PYTHON``): the controller
    writes one verdict file per gateway from what they sent over xdist's channel, and the report set."""
    pytest.importorskip("xdist")
    proc = run_pytest(
        tmp_path,
        "--sut=teeio_conformance.reference_impl.stack:make_sut",
        "--hypothesis-profile=ci",
        "-k",
        "host_object",
        "--tx",
        "popen",
        "--tx",
        "popen",
        "--dist",
        "load",
        "--report-dir=out",
        kind="suite-tdx",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    out = tmp_path / "out"
    assert (out / "report.html").is_file() and (out / "junit.xml").is_file()
    assert sorted(p.name for p in out.glob("verdicts-*.json")) == ["verdicts-gw0.json", "verdicts-gw1.json"]


def test_the_machines_as_stateful_test_cases_for_hypofuzz():
    from hypothesis import HealthCheck, settings
    from hypothesis.stateful import run_state_machine_as_test

    from teeio_conformance.conformance import fuzz

    cases = [name for name in vars(fuzz) if name.startswith("Test")]
    assert len(cases) == 9  # three machines x three platform profiles
    quick = settings(max_examples=3, stateful_step_count=5, deadline=None, suppress_health_check=list(HealthCheck))
    run_state_machine_as_test(fuzz.machines()["HostLifetimesTDX"], settings=quick)


def test_the_hypofuzz_entry_point(tmp_path):
    """Where HypoFuzz is installed, ``hypothesis fuzz`` picks up the nine machines of conformance/fuzz.py
    (the README's recipe): it says so within its budget, and is then stopped (it runs until stopped)."""
    if importlib.util.find_spec("hypofuzz") is None:
        pytest.skip("HypoFuzz is not installed (pip install hypofuzz); the README's long-run recipe needs it")
    import os
    import signal

    from teeio_conformance.conformance import fuzz

    cli = "import sys; from hypothesis.extra.cli import main; sys.exit(main())"  # the `hypothesis` command
    argv = [sys.executable, "-c", cli, "fuzz", "-n", "1", "--no-dashboard", "--", fuzz.__file__]
    proc = subprocess.Popen(
        argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + budget("small")
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if "to fuzz 9 tests" in line:
                break
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the fuzzer and its workers: the group this test started
        proc.wait(timeout=30)
    assert any("to fuzz 9 tests" in line for line in seen), "".join(seen)[-2000:]
