"""Record each machine step with concrete arguments, so a shrunk failure can be replayed anywhere.

``@recorded`` goes *under* ``@rule``/``@initialize``. It appends ``(method, kwargs)`` to the
machine's ``replay_log`` and, when the step fails, attaches the log and the trace to the exception
(``exc.teeio_steps``, ``exc.teeio_trace``, ``exc.teeio_mark``) for the plugin's failure record.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import attrs

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["decode_value", "encode_value", "note", "recorded", "score"]


def note(text: str) -> None:
    """hypothesis.event() when inside a test; a no-op when a machine is replayed outside one."""
    from hypothesis import event
    from hypothesis.control import currently_in_test_context

    if currently_in_test_context():
        event(text)


def score(value: float, label: str) -> None:
    from hypothesis import target
    from hypothesis.control import currently_in_test_context

    if currently_in_test_context():
        target(value, label=label)


def encode_value(value: Any) -> Any:
    if attrs.has(type(value)):
        return {f"__{type(value).__name__.lower()}__": attrs.asdict(value)}
    return value


def decode_value(value: Any, types: dict[str, type]) -> Any:
    if isinstance(value, dict) and len(value) == 1:
        ((key, inner),) = value.items()
        if key.startswith("__") and key.endswith("__") and key[2:-2] in types:
            return types[key[2:-2]](**inner)
    return value


def recorded(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(self: Any, **kwargs: Any) -> Any:
        from teeio_conformance.conformance.harness import WATCHDOG

        WATCHDOG.machine = self  # a hung step's record lists the steps that led to it
        log = self.__dict__.setdefault("replay_log", [])
        log.append({"method": fn.__name__, "kwargs": {k: encode_value(v) for k, v in kwargs.items()}})
        mark = len(self.stack.trace) if hasattr(self, "stack") else 0
        try:
            return fn(self, **kwargs)
        except BaseException as exc:
            if not hasattr(exc, "teeio_steps"):
                exc.teeio_steps = list(log)  # type: ignore[attr-defined]
                exc.teeio_mark = mark  # type: ignore[attr-defined]
                exc.teeio_num_vfs = getattr(getattr(self, "config", None), "num_vfs", None)  # type: ignore[attr-defined]
                try:
                    exc.teeio_trace = self.stack.trace.to_json()  # type: ignore[attr-defined]
                except Exception:
                    exc.teeio_trace = []  # type: ignore[attr-defined]
            raise

    return wrapper  # type: ignore[return-value]
