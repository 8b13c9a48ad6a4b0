"""The step harness: a hanging SUT is a reported failure even where Python swallows the first alarm."""

from __future__ import annotations

import signal
import time

import pytest

from teeio_conformance.conformance.harness import SutHang, _call


def test_a_hang_is_reported_when_the_first_alarm_is_swallowed():
    """An exception raised by a signal handler inside a gc callback or a ``__del__`` is printed and
    dropped ("Exception ignored in ..."); the SUT then keeps hanging. The alarm must fire again."""
    swallowed = []

    def hangs_and_swallows() -> str:
        try:
            time.sleep(2)
        except SutHang as exc:  # what the interpreter does to an exception in a gc callback
            swallowed.append(exc)
        time.sleep(2)
        return "finished"

    with pytest.raises(SutHang, match="did not return"):
        _call(hangs_and_swallows, (), {}, 0.05)
    assert len(swallowed) == 1


def test_a_call_that_returns_in_time_is_not_interrupted_later():
    assert _call(lambda: "ok", (), {}, 0.05) == "ok"
    time.sleep(0.15)  # the alarm was cancelled: nothing fires after the call


def test_the_alarm_is_disarmed_and_the_handler_restored_after_every_call():
    """Calls that end right at the limit -- returning or timing out -- race the alarm; whichever wins,
    nothing of it may outlive the call (a repeating alarm left behind would strike anywhere later)."""
    original = signal.getsignal(signal.SIGALRM)

    def until(deadline: float) -> str:
        while time.perf_counter() < deadline:
            pass
        return "done"

    outcomes = set()
    for i in range(60):
        limit = 0.005
        try:
            outcomes.add(_call(until, (time.perf_counter() + limit * (0.9 + (i % 3) * 0.1),), {}, limit))
        except SutHang:
            outcomes.add("hang")
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        assert signal.getsignal(signal.SIGALRM) is original
    time.sleep(0.02)  # a stray tick would raise here
    assert outcomes <= {"done", "hang"}
