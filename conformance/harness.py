"""One step of a machine: snapshot, call the SUT under a time limit, snapshot, check the rules.

The harness is where a SUT's misbehaviour becomes a *reported failure* instead of a crash of the
suite: a typed refusal is data for the rules; any other exception is data too (rule ERR-02 fails on
it); a call that does not return within the per-step limit raises :class:`SutHang`; a snapshot that
cannot be taken raises :class:`SutBroken`; a factory that cannot build the SUT raises
:class:`SutUnbuildable`; a BaseException the SUT raises (KeyboardInterrupt, SystemExit, GeneratorExit)
is :class:`SutRaised` -- the SUT's failure, not an abort of the suite. All are AssertionErrors, so
Hypothesis shrinks them.

The time limit cannot be swallowed: the alarm interrupts a SUT that runs past it, and whatever the SUT
does with that (retrying under ``except Exception`` catches it), a call that ends well past the limit is
a hang (:data:`LATE_SLACK`). Behind the alarm stands
:data:`WATCHDOG`, a thread that ends the process when a call has not returned ``grace`` seconds after
its limit -- after the plugin's handler has written the record and the report, marked "hung".
"""

from __future__ import annotations

import contextlib
import copy
import gc
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from teeio_conformance.conformance import reach as _reach
from teeio_conformance.conformance.rules import BY_ID, Checker, Observation, Rule, violation_type
from teeio_conformance.contract.tiers import offers_of

__all__ = [
    "BUILD_STEPS",
    "HUNG_EXIT_STATUS",
    "LATE_SLACK",
    "WATCHDOG",
    "StepRunner",
    "SutBroken",
    "SutHang",
    "SutRaised",
    "SutUnbuildable",
    "Verdicts",
    "Watchdog",
    "build_sut",
    "harness_rule_id",
    "verdicts_untouched",
]

HUNG_EXIT_STATUS = 1
"""The process's exit status when the watchdog ends a run on a SUT that never returned (a SUT failure)."""


class SutHang(AssertionError):
    """The SUT did not return from a step within the per-step time limit."""

    rule_id = "SUT-HANG"


class SutBroken(AssertionError):
    """The SUT could not give a snapshot or trace: nothing can be checked after this step."""

    rule_id = "SUT-BROKEN"


class SutRaised(AssertionError):
    """The SUT raised a BaseException that is not an Exception (KeyboardInterrupt, SystemExit,
    GeneratorExit): the SUT's failure, reported like any other, never an abort of the run."""

    rule_id = "SUT-ERROR"


class SutUnbuildable(AssertionError):
    """The SUT factory (or the device factory) raised, or did not return within the step limit."""

    rule_id = "SUT-BUILD"


def harness_rule_id(exc: BaseException) -> str:
    """The pseudo-rule a failure outside the catalogue is reported under (SUT-HANG, SUT-BUILD, ...)."""
    return str(getattr(type(exc), "rule_id", None) or "SUT-ERROR")


class Verdicts:
    """Per-rule counts over a whole run (all examples of all machines), merged by the plugin."""

    def __init__(self) -> None:
        self.checked: dict[str, int] = {}
        self.exercised: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.not_applicable: dict[str, int] = {}  # rules the SUT's offers could not feed (contract/tiers.py)
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
        if checker.not_applicable:
            na = per.setdefault("not_applicable", {})
            for k in checker.not_applicable:
                self.not_applicable[k] = self.not_applicable.get(k, 0) + 1
                na[k] = na.get(k, 0) + 1


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


class Watchdog:
    """The hard limit behind the alarm: a daemon thread that ends the process when a SUT call has not
    returned ``grace`` seconds after its step limit (the alarm cannot interrupt C code that never
    returns to the interpreter, and a SUT can catch every alarm and go on).

    Before ending it calls ``on_hung`` (the plugin writes the failure record and the report, marked
    "hung") in a helper thread, waiting at most ``handler_seconds`` for it: a handler stuck behind a lock
    the SUT holds must not keep a hung run alive. ``machine`` is the state machine whose step is running
    (set by :func:`recording.recorded`), so the handler can record the steps that led here."""

    def __init__(self) -> None:
        self.grace: float | None = None  # None: max(timeout, 5 s) after the step limit
        self.handler_seconds = 20.0
        self.on_hung: Callable[[dict[str, Any]], None] | None = None
        self.machine: Any = None
        self.poll = 0.25  # seconds between the thread's looks at the armed call
        self._lock = threading.Lock()
        self._armed: tuple[Any, ...] | None = None  # (label, timeout, start, deadline) of the call watched
        self._thread: threading.Thread | None = None
        self._pid = 0

    def deadline_after(self, timeout: float) -> float:
        grace = self.grace if self.grace is not None else max(timeout, 5.0)
        return timeout + max(grace, 0.0)

    def enter(self, label: str, timeout: float) -> tuple[Any, ...] | None:
        """Watch a call from now; returns what to hand :meth:`leave` when it ends.

        No lock, no wake-up and no container the garbage collector tracks per call: the thread polls, and
        the token is a tuple of atoms. (A notify per call cost a thread switch each; a context-manager
        generator and a dict per call made the collector run more often, and its pauses pushed honest
        calls past the hang mutants' 0.1 s limit on a loaded machine.) Assigning an attribute is atomic."""
        if self._pid != os.getpid():
            self._start_thread()
        start = time.monotonic()
        outer, self._armed = self._armed, (label, timeout, start, start + self.deadline_after(timeout))
        return outer

    def leave(self, outer: tuple[Any, ...] | None) -> None:
        self._armed = outer

    def _start_thread(self) -> None:
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child (it has no watchdog thread of its own)
                self._thread = threading.Thread(target=self._watch, daemon=True, name="teeio-watchdog")
                self._thread.start()
                self._pid = os.getpid()

    def _watch(self) -> None:
        while True:
            token = self._armed
            if token is None:
                time.sleep(self.poll)
                continue
            left = token[3] - time.monotonic()
            if left > 0:
                time.sleep(min(left, self.poll))
            elif self._armed is token:
                self._fire(token)

    def _fire(self, token: tuple[Any, ...]) -> None:
        label, timeout, start, _deadline = token
        elapsed = time.monotonic() - start
        info = {
            "label": label,
            "timeout": timeout,
            "elapsed": elapsed,
            "machine": self.machine,
            "message": f"the SUT never returned from {label}: still running {elapsed:.1f} s after the "
            f"call began (step limit {timeout:g} s); the watchdog ended the run",
        }
        sys.stderr.write(f"\nteeio-conformance: {info['message']}\n")
        handler = self.on_hung
        if handler is not None:
            done = threading.Thread(target=_quietly, args=(handler, info), daemon=True, name="teeio-hung-report")
            done.start()
            done.join(self.handler_seconds)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(HUNG_EXIT_STATUS)


def _quietly(handler: Callable[[dict[str, Any]], None], info: dict[str, Any]) -> None:
    try:
        handler(info)
    except BaseException as exc:  # the process ends next; say why the report may be missing
        sys.stderr.write(f"teeio-conformance: could not write the hung run's report: {type(exc).__name__}: {exc}\n")


WATCHDOG = Watchdog()

_SIGINTS = [0]  # Ctrl-C presses seen since the harness counted them: tells a real interrupt from a SUT's own
_raw_signal: Any = getattr(signal, "_signal", signal)  # the C functions, without the enum conversions (~10x)


class _CountingSigint:
    """The SIGINT handler while SUT calls run: counts, then does what the handler before it did."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous

    def __call__(self, signum: int, frame: Any) -> None:
        _SIGINTS[0] += 1
        if callable(self.previous):
            self.previous(signum, frame)
        elif self.previous != signal.SIG_IGN:
            raise KeyboardInterrupt


def _count_sigints() -> None:
    """Put the counting handler in front of whatever handles SIGINT (once; again if someone replaced it).
    It stays: swapping it per call doubled the cost of a call."""
    current = _raw_signal.getsignal(signal.SIGINT)
    if not isinstance(current, _CountingSigint):
        _raw_signal.signal(signal.SIGINT, _CountingSigint(current))


def _call(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float, label: str | None = None
) -> Any:
    """``fn(*args, **kwargs)`` under the step limit: :class:`SutHang` when the alarm interrupts it, or when
    it ends well past the limit however it ended (:data:`LATE_SLACK`: returned, or raised after catching
    the alarm); :class:`SutRaised` for a BaseException of the SUT's own; the hard :data:`WATCHDOG` behind
    both. ``timeout`` <= 0: no limit."""
    label = label or str(getattr(fn, "__qualname__", fn))
    if timeout <= 0:
        return _plain(fn, args, kwargs, label, _SIGINTS[0])
    interrupts = _SIGINTS[0]
    start = time.monotonic()
    outer = WATCHDOG.enter(label, timeout)
    try:
        try:
            if threading.current_thread() is threading.main_thread():
                result = _alarmed(fn, args, kwargs, timeout, label)
            else:
                result = fn(*args, **kwargs)
        finally:
            WATCHDOG.leave(outer)
    except BaseException as exc:
        if _SIGINTS[0] != interrupts and isinstance(exc, KeyboardInterrupt):
            raise  # the user's Ctrl-C: the run is interrupted, not the SUT at fault
        if isinstance(exc, SutHang):
            raise
        elapsed = time.monotonic() - start
        if _late_call(elapsed, timeout):
            raise SutHang(_late(label, timeout, elapsed, f"raised {type(exc).__name__}")) from exc
        if isinstance(exc, Exception):
            raise
        raise _own(exc, label) from exc
    elapsed = time.monotonic() - start
    if _late_call(elapsed, timeout):
        raise SutHang(_late(label, timeout, elapsed, "returned"))
    return result


LATE_SLACK = 1.0
"""A call that ends more than ``max(limit, LATE_SLACK)`` seconds past its limit is a hang however it ended
(returned, or raised something else after catching the alarm's exception). The slack keeps scheduling
noise out: on a loaded machine a process descheduled for a moment ends a call after its limit without
any hang of the SUT's, and an alarm that lands in a gc callback is dropped by the interpreter, not by the
SUT (the suite's hang mutants run at 0.1 s steps). A SUT that goes on catching the repeating alarm runs
into the slack; one that never returns, into the watchdog."""


def _late_call(elapsed: float, timeout: float) -> bool:
    """Was the call a hang although it ended?"""
    return elapsed > timeout + max(timeout, LATE_SLACK)


def _late(label: str, timeout: float, elapsed: float, how: str) -> str:
    return (
        f"the SUT did not return from {label} within {timeout:g} s ({how} after {elapsed:.2f} s; a step "
        "that ends after the limit is a hang, whatever it caught)"
    )


def _own(exc: BaseException, label: str) -> BaseException:
    """A BaseException the SUT raised itself, as the SUT's failure (never our KeyboardInterrupt)."""
    if isinstance(exc, Exception):
        return exc
    return SutRaised(f"the SUT raised {type(exc).__name__} from {label}: {exc!r}")


def _plain(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], label: str, interrupts: int) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception:
        raise
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt) and (
            _SIGINTS[0] != interrupts or threading.current_thread() is threading.main_thread()
        ):
            raise  # no handler of ours was installed: a KeyboardInterrupt here may be the user's
        raise _own(exc, label) from exc


def _alarmed(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float,
    label: str,
) -> Any:
    here = sys._getframe()

    def _alarm(signum: int, frame: Any) -> None:
        # Only while ``fn`` runs (its frames sit on top of this one): a tick that lands in this
        # function itself -- in the ``finally`` below, before the timer is disarmed -- is ignored, or
        # it would skip the cleanup and leave a repeating alarm behind.
        # Nor inside a gc callback or a __del__ running on top of the SUT's frames: Python would print the
        # exception as "Exception ignored in ..." and drop it; the repeating alarm fires again after it.
        callbacks = {getattr(cb, "__code__", None) for cb in gc.callbacks}
        f = frame
        while f is not None and f.f_back is not here:
            if f.f_code in callbacks or f.f_code.co_name == "__del__":
                return
            f = f.f_back
        if f is not None or frame is None:
            raise SutHang(f"the SUT did not return from {label} within {timeout:g} s")

    old = _raw_signal.signal(signal.SIGALRM, _alarm)
    _count_sigints()
    # Re-armed every ``timeout`` until the call ends: an exception raised from a signal handler can land
    # where Python swallows it (a gc callback, a __del__: "Exception ignored in ..."), and a one-shot
    # alarm would then leave a hanging SUT to hang on.
    signal.setitimer(signal.ITIMER_REAL, timeout, timeout)
    try:
        return fn(*args, **kwargs)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _raw_signal.signal(signal.SIGALRM, old)


def _outside_steps(exc: BaseException) -> BaseException:
    """A failure before the first step (building the SUT, the first snapshot) gets an empty step list, so
    the plugin writes its record like any step's."""
    if not hasattr(exc, "teeio_steps"):
        exc.teeio_steps = []  # type: ignore[attr-defined]
        exc.teeio_trace = []  # type: ignore[attr-defined]
        exc.teeio_mark = None  # type: ignore[attr-defined]
    return exc


BUILD_STEPS = 4
"""Building a SUT may take this many steps' time limits: it may start a process (``--device-spawn`` waits
for a responder's ready line) or wire a whole stack, yet it must end."""


def build_sut(factory: Callable[..., Any], timeout: float, *args: Any, **kwargs: Any) -> Any:
    """``factory(*args, **kwargs)`` within :data:`BUILD_STEPS` step limits; anything but a SUT is
    :class:`SutUnbuildable`."""
    label = f"the SUT factory {getattr(factory, '__qualname__', factory)}"
    WATCHDOG.machine = None  # a new example: no steps yet
    try:
        stack = _call(factory, args, kwargs, timeout * BUILD_STEPS, label)
    except SutHang as exc:
        raise _outside_steps(SutUnbuildable(str(exc))) from exc
    except (SutRaised, Exception) as exc:
        detail = str(exc) if isinstance(exc, SutRaised) else f"{type(exc).__name__}: {exc}"
        raise _outside_steps(SutUnbuildable(f"{label} could not build the SUT: {detail}")) from exc
    if stack is None:
        raise _outside_steps(SutUnbuildable(f"{label} returned None, not a SUT"))
    return stack


_NOT_A_SNAPSHOT = (str, bytes, bytearray, int, float, bool, list, dict, tuple)


def _misshapen(action: str, before: Any, after: Any, exc: BaseException) -> SutBroken | None:
    """A rule failed on an untyped error reading the step's snapshots: a SUT-BROKEN naming the field when a
    snapshot is not of the contract's shape (issue 14); None when both are well formed (the rule's own bug)."""
    from teeio_conformance.conformance.rules._shape import snapshot_problem

    for when, snap in (("before", before), ("after", after)):
        problem = snapshot_problem(snap)
        if problem is not None:
            return SutBroken(
                f"the SUT's snapshot {when} {action!r} is not of the contract's shape: {problem} "
                f"(docs/sut-contract.md, 'Snapshot fields'); a rule reading it raised {type(exc).__name__}: {exc}"
            )
    return None


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
        self.checker = Checker(
            rules if rules is not None else tuple(BY_ID.values()), profile, only=only, offers=offers_of(stack)
        )
        self.timeout = timeout
        self.steps: list[str] = []
        try:
            self._snap = self._snapshot("setup")
        except AssertionError as exc:
            raise _outside_steps(exc) from None

    def _snapshot(self, action: str) -> Any:
        try:
            snap = _call(self.stack.snapshot, (), {}, self.timeout, "snapshot()")
        except (SutHang, SutRaised):
            raise
        except Exception as exc:
            raise SutBroken(f"the SUT's snapshot() failed after {action!r}: {type(exc).__name__}: {exc}") from exc
        if snap is None or isinstance(snap, _NOT_A_SNAPSHOT) or not hasattr(snap, "devices"):
            raise SutBroken(
                f"the SUT's snapshot() after {action!r} returned {type(snap).__name__} {str(snap)[:60]!r}, not a "
                "snapshot (an object with the fields of docs/sut-contract.md: profile, devices, ...)"
            )
        return snap

    def step(self, action: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, BaseException | None]:
        """Do one action; return (result, error). Raise a rule's violation if the step broke one."""
        self.steps.append(action)
        trace = self.stack.trace
        mark = len(trace)
        before = self._snap
        result, error = None, None
        try:
            result = _call(fn, args, kwargs, self.timeout, action)
        except AssertionError:  # SutHang, SutRaised, or an assert in the SUT: not a refusal to judge
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
        try:
            broken = self.checker.check(obs)
        except (AttributeError, TypeError, KeyError, IndexError, ValueError) as exc:
            misshapen = _misshapen(action, before, after, exc)
            if misshapen is None:
                raise  # a rule failing on a well-formed snapshot: the suite's own bug, not the SUT's
            raise misshapen from exc
        _reach.record(before, events)
        if broken:
            # a liveness rule (area LIVE) says only that a lifecycle step failed, ERR-04 only that some component
            # saw a broken promise: a rule that names the cause wins
            rule, message = min(broken, key=lambda b: (b[0].area.name == "LIVE", b[0].id == "ERR-04"))
            violation = violation_type(rule.id)(rule, message, action)
            violation.teeio_broken = [(r.id, m) for r, m in broken]  # type: ignore[attr-defined]  # each, for records
            others = tuple(r.id for r, _ in broken if r.id != rule.id)
            violation.also_broken = others  # type: ignore[attr-defined]
            if others:
                violation.add_note(f"the same step also broke: {', '.join(others)}")
            raise violation
        return result, error

    def finish(self) -> None:
        VERDICTS.absorb(self.checker)
        VERDICTS.steps += len(self.steps)
