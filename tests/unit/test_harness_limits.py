"""The step limit a SUT cannot swallow, the hard watchdog behind it, and a SUT's own BaseExceptions
(issue 17, items 2 and 3): each is the SUT's reported failure, never a silent pass or an aborted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from teeio_conformance.conformance.harness import (
    LATE_SLACK,
    StepRunner,
    SutBroken,
    SutHang,
    SutRaised,
    SutUnbuildable,
    _call,
    harness_rule_id,
)
from teeio_conformance.conformance.machines.device import DeviceMachine, DeviceMachineConfig, reference_device
from teeio_conformance.contract.trace import Trace

REPO = Path(__file__).resolve().parents[2]


def test_a_step_that_swallows_the_alarm_and_returns_late_is_a_hang():
    """A SUT that retries under ``except Exception`` catches the alarm's SutHang (an AssertionError); the
    step then returns long after the limit (past the slack). Old code: the call returned "finished" and no
    hang was seen."""
    caught = []

    def retries_under_except_exception() -> str:
        deadline = time.monotonic() + 0.2 + LATE_SLACK + 0.5
        while time.monotonic() < deadline:
            try:
                time.sleep(0.05)
            except Exception as exc:
                caught.append(exc)
        return "finished"

    with pytest.raises(SutHang, match=r"returned after \d+\.\d\d s"):
        _call(retries_under_except_exception, (), {}, 0.2)
    assert caught  # it did swallow the alarm


def test_an_exception_raised_after_the_limit_is_a_hang_too():
    def late_error() -> None:
        deadline = time.monotonic() + 0.1 + LATE_SLACK + 0.5
        while time.monotonic() < deadline:
            try:
                time.sleep(0.05)
            except Exception:
                pass
        raise RuntimeError("gave up")

    with pytest.raises(SutHang, match="raised RuntimeError after"):
        _call(late_error, (), {}, 0.1)


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(3), GeneratorExit()], ids=lambda e: type(e).__name__)
def test_a_base_exception_the_sut_raises_is_its_failure_not_an_abort(exc):
    """Old code let these out of the harness: a KeyboardInterrupt ended the whole run as "interrupted"."""

    def sut_call() -> None:
        raise exc

    with pytest.raises(SutRaised, match=f"the SUT raised {type(exc).__name__} from sut_call") as info:
        _call(sut_call, (), {}, 1.0, "sut_call")
    assert harness_rule_id(info.value) == "SUT-ERROR"


def test_the_users_ctrl_c_is_still_an_interrupt():
    """A Ctrl-C that arrives while the SUT runs is the user's, not the SUT's: it interrupts the run."""

    def sut_call() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)

    with pytest.raises(KeyboardInterrupt):
        _call(sut_call, (), {}, 2.0)
    # the counting handler stays in front of the one before it, which it still calls
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)


class _Stack:
    def __init__(self, snap: object) -> None:
        self.trace = Trace()
        self._snap = snap

    def snapshot(self) -> object:
        return self._snap


@pytest.mark.parametrize("snap", [None, "snapshot", 42], ids=repr)
def test_a_snapshot_that_is_not_one_is_the_sut_broken_with_a_record(snap):
    """Old code handed None or a string to the rules, which crashed as a generic error; and a failure in
    the setup snapshot carried no steps, so the plugin wrote no record for it."""
    with pytest.raises(SutBroken, match="not a snapshot") as info:
        StepRunner(_Stack(snap), "tdx")
    assert info.value.teeio_steps == []  # type: ignore[attr-defined]
    assert harness_rule_id(info.value) == "SUT-BROKEN"


def _slow_device(trace: Trace, profile: str) -> object:
    time.sleep(2.0)
    return reference_device(trace, profile)


def _raising_device(trace: Trace, profile: str) -> object:
    raise SystemExit("no device today")


@pytest.mark.parametrize(
    ("factory", "match"),
    [(_slow_device, "did not return from the SUT factory"), (_raising_device, "raised SystemExit")],
    ids=["slow", "system-exit"],
)
def test_the_factory_runs_under_the_limit_and_its_failure_is_recorded(factory, match):
    """Old code called the factory bare: a slow one was waited for, a raising one ended the run."""

    class Machine(DeviceMachine):
        config = DeviceMachineConfig(device_factory=factory, timeout=0.2)

    with pytest.raises(SutUnbuildable, match=match) as info:
        Machine()
    assert harness_rule_id(info.value) == "SUT-BUILD" and info.value.teeio_steps == []  # type: ignore[attr-defined]


HUNG = """
import sys, time
from teeio_conformance.conformance.harness import WATCHDOG, _call

def on_hung(info):
    open(sys.argv[1], "w").write(info["message"])

WATCHDOG.grace = 0.3
WATCHDOG.on_hung = on_hung

def never_returns():
    while True:
        try:
            time.sleep(10)
        except BaseException:
            pass

_call(never_returns, (), {}, 0.2, "never_returns")
print("the call returned")
"""


def test_the_watchdog_ends_a_sut_that_never_returns_after_writing_the_report(tmp_path):
    """Every alarm is caught and the SUT sleeps on; the watchdog calls the report handler, then ends the
    process with status 1. Old code: no watchdog, the process had to be killed from outside."""
    script = tmp_path / "hung.py"
    script.write_text(textwrap.dedent(HUNG), encoding="utf-8")
    out = tmp_path / "hung.txt"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(script), str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert time.monotonic() - started < 30
    assert "the call returned" not in proc.stdout
    assert out.read_text().startswith("the SUT never returned from never_returns")
    assert "the watchdog ended the run" in proc.stderr


def test_a_call_just_over_its_limit_is_not_a_hang_when_the_alarm_was_lost():
    """Scheduling noise: the alarm lands where the interpreter drops it (a gc callback) and the call ends a
    little late. That is no hang of the SUT's -- it made the hang mutants' 0.1 s runs flaky on a loaded
    machine (Hypothesis: FlakyStrategyDefinition)."""

    def slightly_late() -> str:
        try:
            time.sleep(0.3)
        except SutHang:  # what "Exception ignored in gc_callback" amounts to
            pass
        return "done"

    assert _call(slightly_late, (), {}, 0.1) == "done"


def test_an_alarm_that_lands_in_a_gc_callback_is_not_dropped_with_a_warning():
    """Hypothesis runs a gc callback (its gc timing) inside whatever frame allocates; an alarm landing there
    used to raise SutHang inside the callback, which Python drops with "Exception ignored in ...". The
    alarm now waits the callback out and the hang is reported from the SUT's own frame."""
    import gc

    dropped: list[object] = []
    in_callback = []

    def slow_callback(phase: str, info: dict) -> None:
        if phase == "start" and not in_callback:
            in_callback.append(True)
            time.sleep(0.35)  # three alarm periods inside the callback

    def hangs_after_a_collection() -> None:
        gc.collect()
        time.sleep(5)

    old_hook = sys.unraisablehook
    sys.unraisablehook = dropped.append
    gc.callbacks.append(slow_callback)
    try:
        with pytest.raises(SutHang):
            _call(hangs_after_a_collection, (), {}, 0.1)
    finally:
        gc.callbacks.remove(slow_callback)
        sys.unraisablehook = old_hook
    assert in_callback and not dropped, dropped
