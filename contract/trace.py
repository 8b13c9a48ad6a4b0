"""The trace: every crossing from one actor to another, recorded by one mechanism.

Theory of operation
-------------------
Each actor of the flow (guest, VMM, VFIO, IOMMUFD, host TSM, KVM, device, IOMMU) subclasses
:class:`Actor`. Its public methods are either

* ``@operation(step=...)`` -- a call another actor (or the harness) makes on it. The wrapper pushes
  the actor's name on the trace's call stack, so the *caller* of a nested operation is simply the
  actor whose operation is running. The event is written once, when the call returns or raises,
  under the sequence number it took when it *started* -- so events read in call order and the
  swimlane chart can draw nested crossings under their cause.
* ``@query`` -- a read-only view (``snapshot()``); never traced, never changes state.

``Actor.__init_subclass__`` refuses a public method that is neither, so an actor cannot grow a
side door that the trace (and hence every trace rule) would miss.

Arguments are kept as given and turned into plain data (:func:`plain`) only when someone renders
the trace; recording costs one list slot and a small frozen object per call.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

import attrs

__all__ = ["HARNESS", "Actor", "Event", "Trace", "operation", "plain", "query"]

HARNESS = "harness"
"""Caller name for calls that come from outside the stack (a test, a machine, the CLI)."""

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


def plain(value: Any) -> Any:
    """Turn a value into JSON-able plain data (how trace arguments and snapshots are shown)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(plain(k)): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [plain(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    handle = getattr(value, "handle", None)
    if isinstance(handle, str | int):
        return handle
    if attrs.has(type(value)):
        return {f.name: plain(getattr(value, f.name)) for f in attrs.fields(type(value))}
    return repr(value)


@attrs.frozen
class Event:
    """One crossing: who called whom, with what, and what came back."""

    seq: int
    caller: str
    callee: str
    operation: str
    arguments: tuple[Any, ...] = ()
    keywords: tuple[tuple[str, Any], ...] = ()
    outcome: str = "ok"  # "ok" or "error"
    result: Any = None
    error: str | None = None  # error class name
    message: str = ""
    depth: int = 0
    step: str | None = None  # step number of flow.md this crossing implements, if any

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "caller": self.caller,
            "callee": self.callee,
            "operation": self.operation,
            "arguments": [plain(a) for a in self.arguments] + [{k: plain(v)} for k, v in self.keywords],
            "outcome": self.outcome,
            "result": plain(self.result),
            "error": self.error,
            "message": self.message,
            "depth": self.depth,
            "step": self.step,
        }


_PENDING = object()


class Trace:
    """The ordered record of crossings of one stack. Shared by all of the stack's actors."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._events: list[Any] = []
        self._stack: list[str] = []
        self._ops: list[tuple[int, str]] = []  # (actor id, operation) of the calls in progress
        self._listeners: list[Callable[[Event], None]] = []
        self._touched: set[int] = set()  # id() of the actors called since the last take_touched()

    # -- recording ----------------------------------------------------------------------------
    def caller(self) -> str:
        return self._stack[-1] if self._stack else HARNESS

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener`` with each event as it completes (rules index events this way)."""
        self._listeners.append(listener)

    def call(
        self,
        actor: Actor,
        op: str,
        step: str | Callable[..., str | None] | None,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> R:
        if not self.enabled:
            return fn(actor, *args, **kwargs)
        callee = actor.actor_name
        self._touched.add(id(actor))
        if self._ops and self._ops[-1] == (id(actor), op):
            return fn(actor, *args, **kwargs)  # an override calling super(): one crossing, not two
        if callable(step):
            step = step(*args, **kwargs)
        caller = self.caller()
        seq = len(self._events)
        self._events.append(_PENDING)
        depth = len(self._stack)
        self._stack.append(callee)
        self._ops.append((id(actor), op))
        kw = tuple(kwargs.items())
        try:
            result = fn(actor, *args, **kwargs)
        except Exception as exc:
            ev = Event(seq, caller, callee, op, args, kw, "error", None, type(exc).__name__, str(exc), depth, step)
            self._finish(seq, ev)
            raise
        finally:
            self._stack.pop()
            self._ops.pop()
        self._finish(seq, Event(seq, caller, callee, op, args, kw, "ok", result, None, "", depth, step))
        return result

    def _finish(self, seq: int, ev: Event) -> None:
        self._events[seq] = ev
        for listener in self._listeners:
            listener(ev)

    def take_touched(self) -> set[int] | None:
        """The actors (by id) entered since the last call, then forget them; ``None`` when not recording.

        Every change of an actor's state happens inside one of its operations, so an actor that was not
        entered has the state it had: its last snapshot still holds (what makes snapshots incremental)."""
        if not self.enabled:
            return None
        touched, self._touched = self._touched, set()
        return touched

    # -- reading ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[Event]:
        return (e for e in self._events if e is not _PENDING)

    def __getitem__(self, i: int) -> Event:
        ev = self._events[i]
        if ev is _PENDING:
            raise IndexError(f"event {i} has not completed yet")
        return ev

    def since(self, seq: int) -> list[Event]:
        """Completed events with sequence number >= ``seq``."""
        if not self._stack:  # no call in progress, so nothing is pending: a plain slice (every step does this)
            return self._events[seq:]
        return [e for e in self._events[seq:] if e is not _PENDING]

    def to_json(self) -> list[dict[str, Any]]:
        return [e.to_json() for e in self]


def operation(step: str | Callable[..., str | None] | None = None) -> Callable[[F], F]:
    """Mark a public method as a traced crossing into its actor.

    ``step`` is the flow.md step number the crossing implements, or a function of the call's
    arguments that returns it (one GHCI call carries attest, accept and start alike)."""

    def deco(fn: F) -> F:
        name = fn.__name__

        @functools.wraps(fn)
        def wrapper(self: Actor, *args: Any, **kwargs: Any) -> Any:
            return self.trace.call(self, name, step, fn, args, kwargs)

        wrapper.__teeio_kind__ = "operation"  # type: ignore[attr-defined]
        wrapper.__teeio_step__ = step  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return deco


def query(fn: Callable[P, R]) -> Callable[P, R]:
    """Mark a public method as a read-only view: not traced, must not change state."""
    fn.__teeio_kind__ = "query"  # type: ignore[attr-defined]
    return fn


class Actor:
    """Base of every actor: a name (its swimlane column) and the stack's shared trace."""

    actor_name: str = "actor"

    def __init__(self, trace: Trace) -> None:
        self.trace = trace

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for attr, value in list(vars(cls).items()):
            if attr.startswith("_") or not callable(value) or isinstance(value, type):
                continue
            if isinstance(value, staticmethod | classmethod):
                continue
            if getattr(value, "__teeio_kind__", None) is None:
                # an override of a traced base method stays traced (subclasses, mutants, adapters)
                base = next((getattr(b, attr) for b in cls.__mro__[1:] if attr in vars(b)), None)
                kind = getattr(base, "__teeio_kind__", None)
                if kind == "operation":
                    setattr(cls, attr, operation(getattr(base, "__teeio_step__", None))(value))
                    continue
                if kind == "query":
                    setattr(cls, attr, query(value))
                    continue
                raise TypeError(
                    f"{cls.__name__}.{attr} is public but neither @operation nor @query: every "
                    "crossing into an actor must be traced (make it private with a leading '_')"
                )
