"""One step of a machine: snapshot, call the SUT under a time limit, snapshot, check the rules.

The harness is where a SUT's misbehaviour becomes a *reported failure* instead of a crash of the
suite: a typed refusal is data for the rules; any other exception is data too (rule ERR-02 fails on
it); a call that does not return within the per-step limit raises :class:`SutHang`; a snapshot that
cannot be taken raises :class:`SutBroken`. All are AssertionErrors, so Hypothesis shrinks them.
"""

from __future__ import annotations

import contextlib
import copy
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from teeio_conformance.conformance import reach as _reach
from teeio_conformance.conformance.rules import BY_ID, Checker, Observation, Rule, violation_type

__all__ = ["StepRunner", "SutBroken", "SutHang", "Verdicts", "verdicts_untouched"]


class SutHang(AssertionError):
    """The SUT did not return from a step within the per-step time limit."""


class SutBroken(AssertionError):
    """The SUT could not give a snapshot or trace: nothing can be checked after this step."""


class Verdicts:
    """Per-rule counts over a whole run (all examples of all machines), merged by the plugin."""

    def __init__(self) -> None:
        self.checked: dict[str, int] = {}
        self.exercised: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.by_profile: dict[str, dict[str, dict[str, int]]] = {}
        self.steps = 0

    def absorb(self, checker: Checker) -> None:
        per = self.by_profile.setdefault(checker.profile, {"checked": {}, "exercised": {}, "failed": {}})
        for name, src, dst in (
            ("checked", checker.checked, self.checked),
            ("exercised", checker.exercised, self.exercised),
            ("failed", checker.failed, self.failed),
        ):
            for k, v in src.items():
                dst[k] = dst.get(k, 0) + v
                per[name][k] = per[name].get(k, 0) + v


VERDICTS = Verdicts()


@contextlib.contextmanager
def verdicts_untouched() -> Iterator[None]:
    """Machines run inside (a replay, the plugin's search for a shorter failure) add nothing to the
    run-wide verdicts the plugin writes: their teardowns absorb counts like any example's."""
    saved = copy.deepcopy(vars(VERDICTS))
    try:
        yield
    finally:
        vars(VERDICTS).clear()
        vars(VERDICTS).update(saved)


def _call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float) -> Any:
    if timeout <= 0 or threading.current_thread() is not threading.main_thread():
        return fn(*args, **kwargs)
    here = sys._getframe()

    def _alarm(signum: int, frame: Any) -> None:
        # Only while ``fn`` runs (its frames sit on top of this one): a tick that lands in this
        # function itself -- in the ``finally`` below, before the timer is disarmed -- is ignored, or
        # it would skip the cleanup and leave a repeating alarm behind.
        f = frame
        while f is not None and f.f_back is not here:
            f = f.f_back
        if f is not None or frame is None:
            raise SutHang(f"the SUT did not return from {getattr(fn, '__qualname__', fn)} within {timeout:g} s")

    old = signal.signal(signal.SIGALRM, _alarm)
    # Re-armed every ``timeout`` until the call ends: an exception raised from a signal handler can land
    # where Python swallows it (a gc callback, a __del__: "Exception ignored in ..."), and a one-shot
    # alarm would then leave a hanging SUT to hang on.
    signal.setitimer(signal.ITIMER_REAL, timeout, timeout)
    try:
        return fn(*args, **kwargs)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class StepRunner:
    """Runs steps against one stack and checks the catalogue after each."""

    def __init__(
        self,
        stack: Any,
        profile: str,
        *,
        rules: tuple[Rule, ...] | None = None,
        only: frozenset[str] | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.stack = stack
        self.profile = profile
        self.checker = Checker(rules if rules is not None else tuple(BY_ID.values()), profile, only=only)
        self.timeout = timeout
        self.steps: list[str] = []
        self._snap = self._snapshot("setup")

    def _snapshot(self, action: str) -> Any:
        try:
            return _call(self.stack.snapshot, (), {}, self.timeout)
        except SutHang:
            raise
        except Exception as exc:
            raise SutBroken(f"the SUT's snapshot() failed after {action!r}: {type(exc).__name__}: {exc}") from exc

    def step(self, action: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, BaseException | None]:
        """Do one action; return (result, error). Raise a rule's violation if the step broke one."""
        self.steps.append(action)
        trace = self.stack.trace
        mark = len(trace)
        before = self._snap
        result, error = None, None
        try:
            result = _call(fn, args, kwargs, self.timeout)
        except (SutHang, AssertionError):
            raise
        except Exception as exc:
            error = exc
        after = self._snapshot(action)
        self._snap = after
        try:
            everything = trace.since(0)
            history, events = everything[:mark], everything[mark:]
        except Exception as exc:
            raise SutBroken(f"the SUT's trace could not be read after {action!r}: {exc}") from exc
        obs = Observation(
            profile=self.profile,
            action=action,
            events=events,
            history=history,
            before=before,
            after=after,
            error=error,
            carry=self.checker.carry,
        )
        broken = self.checker.check(obs)
        _reach.record(before, events)
        if broken:
            # a liveness rule (area LIVE) says only that a lifecycle step failed, ERR-04 only that some component
            # saw a broken promise: a rule that names the cause wins
            rule, message = min(broken, key=lambda b: (b[0].area.name == "LIVE", b[0].id == "ERR-04"))
            violation = violation_type(rule.id)(rule, message, action)
            others = tuple(r.id for r, _ in broken if r.id != rule.id)
            violation.also_broken = others  # type: ignore[attr-defined]
            if others:
                violation.add_note(f"the same step also broke: {', '.join(others)}")
            raise violation
        return result, error

    def finish(self) -> None:
        VERDICTS.absorb(self.checker)
        VERDICTS.steps += len(self.steps)
