"""``teeio-conformance explore --depth K``: every short step sequence of a machine, breadth-first.

Hypothesis samples sequences at random and shrinks what fails; this explorer walks *all* sequences up to
``depth`` rule steps instead, so what it finds is the shortest failure there is (within the argument
domains below), and "nothing found" is a bounded proof rather than luck. It drives the suite's own
machines (:mod:`conformance.machines`) outside Hypothesis -- the same rules, preconditions, bundles and
rule checks after every step -- so it is not a second model that could drift from the first.

How a sequence is built and run:

* ``@initialize`` rules run first, each once, in name order (Hypothesis runs them first too), and count
  as steps of the sequence (as in the recorded step lists) but not towards ``depth``.
* At each depth every enabled rule (its bundles non-empty, its preconditions true) is tried with every
  argument choice from a small finite domain: a Bundle -> each distinct value it holds now (a
  ``consumes()`` bundle: each position, and the value is removed); ``st.sampled_from`` / ``st.just`` ->
  its elements; ``st.booleans()`` -> both; ``st.integers(a, b)`` -> all values when there are at most
  :data:`INT_CAP`, else ``a``, ``a + 1`` and ``b``; ``st.one_of`` -> the union of its branches;
  ``st.data()`` and anything else (binary, composite strategies) -> a deterministic draw for each seed
  of :data:`DRAW_SEEDS`. ``map``/``filter`` on bundles and ``sampled_from`` are applied.
* Machines cannot be copied (the stacks hold locks, and a remote SUT is a process), so each sequence is
  replayed from a fresh machine. That needs a deterministic SUT: the explorer re-runs a sample of
  sequences and compares their state keys, and says so in the result when they differ.
* Equal states are expanded once. The key is the last snapshot the step runner took, the bundles'
  contents and the machine's own attributes (its bookkeeping: nonces, seen IDs, ...). It leaves out the
  trace, which a few rules read (the history of LOCKs, vIOMMU owners), so pruning is a heuristic there:
  ``dedup=False`` (``--no-dedup``) explores every sequence.

A failing sequence is not extended. The result holds, per violation (rule ID, or SUT-HANG / SUT-BROKEN /
SUT-ERROR as :mod:`conformance.replay` names them), the first -- hence shortest -- failing sequence as
the recorded step list (``{"method", "kwargs"}``), which ``teeio-conformance replay`` re-runs once written
as a failure record (``--write-failures``).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import random
import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

PROGRESS_SECONDS = 10.0  # how often a long level says how far it got (stderr)

__all__ = [
    "DEFAULT_DEPTH",
    "DRAW_SEEDS",
    "INT_CAP",
    "ExploreError",
    "ExploreResult",
    "Finding",
    "add_arguments",
    "explore",
    "machine_class",
    "mutant_machine_class",
    "rerun",
    "run",
    "run_steps",
]

DEFAULT_DEPTH = 3
INT_CAP = 4  # integer ranges up to this many values are enumerated whole
DRAW_SEEDS = (0, 1)  # st.data() and other non-enumerable strategies: one deterministic draw per seed
_MACHINES = ("full_stack", "host_lifetimes", "device")


class ExploreError(ValueError):
    """Bad arguments or a machine the explorer cannot drive (one line for the user, never a traceback)."""


# ---------------------------------------------------------------------------- results


@attrs.frozen(kw_only=True)
class Finding:
    """The shortest sequence found that breaks ``rule_id``."""

    rule_id: str
    detail: str
    action: str  # the machine step (method) that failed, or "teardown"
    steps: tuple[dict[str, Any], ...]  # the recorded step list, JSON-safe; the failing step last
    sequence: int  # how many sequences had been checked when it was found
    seconds: float
    occurrences: int = 1  # failing sequences seen for this rule (each one not extended)

    @property
    def length(self) -> int:
        return len(self.steps)

    def to_json(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "detail": self.detail,
            "action": self.action,
            "length": self.length,
            "steps": list(self.steps),
            "sequence": self.sequence,
            "seconds": round(self.seconds, 3),
            "occurrences": self.occurrences,
        }

    def failure_record(self, *, machine: str, profile: str, sut: str, num_vfs: int | None = None) -> dict[str, Any]:
        """The finding as a ``teeio-failure/1`` record, for ``teeio-conformance replay``."""
        from teeio_conformance.conformance.rules import BY_ID

        rule = BY_ID.get(self.rule_id)
        return {
            "format": "teeio-failure/1",
            "test": f"explore::{machine}",
            "machine": machine,
            "profile": profile,
            "sut": sut,
            "rule_id": self.rule_id,
            "rule_title": rule.title if rule else self.rule_id,
            "rule_source": rule.source if rule else "harness",
            "message": self.detail,
            "action": self.action,
            "steps": list(self.steps),
            "program": [],
            "trace": [],
            "violating_seq": None,
            "hypothesis": None,
            "seed": None,
            "num_vfs": num_vfs,
        }


@attrs.frozen(kw_only=True)
class ExploreResult:
    machine: str
    depth: int
    sequences: int  # step sequences run (each from a fresh machine)
    states: int  # distinct state keys reached
    duplicates: int  # sequences that ended in a state already seen, hence not expanded
    seconds: float
    findings: tuple[Finding, ...]
    levels: tuple[int, ...]  # sequences checked at each depth (index 0: the initialize steps)
    complete: bool  # every sequence up to ``depth`` was checked (no time limit or early stop)
    finished_depth: int  # the deepest level checked whole (``depth`` when complete; -1: not even the setup)
    deterministic: bool  # re-runs of sampled sequences reached the same state key
    dedup: bool = True
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.findings

    def finding(self, rule_id: str) -> Finding | None:
        return next((f for f in self.findings if f.rule_id == rule_id), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "depth": self.depth,
            "sequences": self.sequences,
            "states": self.states,
            "duplicates": self.duplicates,
            "seconds": round(self.seconds, 3),
            "levels": list(self.levels),
            "complete": self.complete,
            "finished_depth": self.finished_depth,
            "deterministic": self.deterministic,
            "dedup": self.dedup,
            "notes": list(self.notes),
            "verdict": "PASS" if self.passed else "FAIL",
            "findings": [f.to_json() for f in self.findings],
        }


# ---------------------------------------------------------------------------- argument domains


@attrs.frozen
class _Lit:
    value: Any


@attrs.frozen
class _Ref:
    """A bundle value by position; resolved against the bundles of the run it is replayed in."""

    bundle: str
    position: int
    consume: bool
    transform: tuple[Any, ...] = ()


_Arg = _Lit | _Ref
_Action = tuple[str, tuple[tuple[str, _Arg], ...]]  # (rule method, ((argument, choice), ...))


class _FixedData:
    """What a rule's ``st.data()`` argument gets: each draw is a deterministic draw from ``seed``."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._random = random.Random(seed)
        self.drawn: list[str] = []

    def draw(self, strategy: Any, label: Any = None) -> Any:
        value = _draw(strategy, self._random)
        self.drawn.append(repr(value)[:60])
        return value

    def __repr__(self) -> str:  # the replay module refuses "data(...)" values with a clear message
        return f"data(explore seed {self.seed}: {', '.join(self.drawn) or 'nothing drawn'})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _FixedData) and other.seed == self.seed

    def __hash__(self) -> int:
        return hash(("_FixedData", self.seed))


def _draw(strategy: Any, rnd: random.Random) -> Any:
    """One value of ``strategy``, deterministic in ``rnd`` (Hypothesis' engine, outside a test)."""
    from hypothesis.control import BuildContext
    from hypothesis.internal.conjecture.data import ConjectureData

    data = ConjectureData(random=rnd)
    with BuildContext(data, is_final=False, wrapped_test=None):  # type: ignore[arg-type]
        return data.draw(strategy)


def _apply(transformations: Iterable[Any], values: Iterable[Any]) -> list[tuple[int, Any]]:
    """``(index, value)`` of ``values`` after the strategy's ``map``/``filter`` steps (dropped when filtered)."""
    out = []
    for i, v in enumerate(values):
        keep = True
        for kind, fn, *_ in transformations:
            if kind == "map":
                v = fn(v)
            elif not fn(v):
                keep = False
                break
        if keep:
            out.append((i, v))
    return out


def _distinct(pairs: Iterable[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    seen: list[Any] = []
    out = []
    for key, v in pairs:
        if not any(v == s and type(v) is type(s) for s in seen):
            seen.append(v)
            out.append((key, v))
    return out


def _domain(strategy: Any, bundles: dict[str, list[Any]]) -> list[_Arg]:
    """The finite choices tried for one rule argument (see the module docstring)."""
    from hypothesis.stateful import Bundle
    from hypothesis.strategies._internal.core import BooleansStrategy, DataStrategy
    from hypothesis.strategies._internal.lazy import unwrap_strategies
    from hypothesis.strategies._internal.misc import JustStrategy
    from hypothesis.strategies._internal.numbers import IntegersStrategy
    from hypothesis.strategies._internal.strategies import OneOfStrategy, SampledFromStrategy

    s = unwrap_strategies(strategy)
    if isinstance(s, Bundle):
        tf = tuple(s._transformations)
        pairs = _apply(tf, bundles.get(s.name, []))
        if not s.consume:
            pairs = _distinct(pairs)
        return [_Ref(s.name, i, s.consume, tf) for i, _ in pairs]
    if isinstance(s, BooleansStrategy):
        return [_Lit(False), _Lit(True)]
    if isinstance(s, SampledFromStrategy | JustStrategy):
        return [_Lit(v) for _, v in _distinct(_apply(s._transformations, s.elements))]
    if isinstance(s, IntegersStrategy):
        lo = s.start if s.start is not None else (s.end - 2 if s.end is not None else 0)
        hi = s.end if s.end is not None else lo + 2
        if hi - lo + 1 <= INT_CAP:
            return [_Lit(v) for v in range(lo, hi + 1)]
        return [_Lit(v) for v in sorted({lo, lo + 1, hi})]
    if isinstance(s, OneOfStrategy):
        return [a for branch in s.original_strategies for a in _domain(branch, bundles)]
    if isinstance(s, DataStrategy):
        return [_Lit(_FixedData(seed)) for seed in DRAW_SEEDS]
    return [_Lit(v) for _, v in _distinct((seed, _draw(strategy, random.Random(seed))) for seed in DRAW_SEEDS)]


# ---------------------------------------------------------------------------- running sequences


@attrs.define
class _Run:
    """One sequence replayed on a fresh machine: the live machine, its bundles, and how it ended."""

    machine: Any
    bundles: dict[str, list[Any]]
    failure: tuple[str, str, str] | None = None  # (rule ID, detail, action)
    failed_at: int = -1  # index of the failing step


def _rules(machine_cls: type) -> tuple[list[Any], list[Any]]:
    """(initialize rules, rules) of the machine class, each sorted by name (a stable order)."""
    state = machine_cls.setup_state()  # type: ignore[attr-defined]

    def name(r: Any) -> str:
        return str(r.function.__name__)

    return sorted(state.initializers, key=name), sorted(state.rules, key=name)


def _resolve(args: tuple[tuple[str, _Arg], ...], bundles: dict[str, list[Any]]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    consumed: list[tuple[str, int]] = []
    for name, arg in args:
        if isinstance(arg, _Lit):
            kwargs[name] = arg.value
            continue
        v = bundles[arg.bundle][arg.position]
        for kind, fn, *_ in arg.transform:
            if kind == "map":
                v = fn(v)
        kwargs[name] = v
        if arg.consume:
            consumed.append((arg.bundle, arg.position))
    for bundle, pos in sorted(set(consumed), key=lambda c: -c[1]):
        del bundles[bundle][pos]
    return kwargs


def _fresh(args: tuple[tuple[str, _Arg], ...]) -> tuple[tuple[str, _Arg], ...]:
    """``st.data()`` objects hold what they drew: a new one per run keeps runs independent."""
    return tuple(
        (n, _Lit(_FixedData(a.value.seed))) if isinstance(a, _Lit) and isinstance(a.value, _FixedData) else (n, a)
        for n, a in args
    )


def _step(run: _Run, rule: Any, args: tuple[tuple[str, _Arg], ...]) -> bool:
    """Take one step on the live run; False (and ``run.failure`` set) when it broke something."""
    from hypothesis.stateful import MultipleResults

    from teeio_conformance.conformance.replay import _classify

    kwargs = _resolve(_fresh(args), run.bundles)
    name = rule.function.__name__
    try:
        result = getattr(run.machine, name)(**kwargs)
    except Exception as exc:
        rule_id, detail = _classify(exc)
        run.failure = (rule_id, detail, name)
        return False
    results = result.values if isinstance(result, MultipleResults) else (result,)
    for target in rule.targets:
        bundle = run.bundles.setdefault(target if isinstance(target, str) else target.name, [])
        bundle.extend(results)
    return True


class _Unchecked:
    """Stands in for the step runner's rule checker while a prefix that already passed is replayed: the
    same checker in every respect (its state across steps too), except that it checks nothing."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    @staticmethod
    def check(obs: Any) -> list[Any]:
        return []


def _replay(
    machine_cls: type, rules: dict[str, Any], steps: Sequence[_Action], *, teardown: bool, quiet_prefix: bool = True
) -> _Run:
    """``steps`` on a fresh machine. The rules are checked on the last step only (``quiet_prefix``): the
    rules are pure functions of a step's observation, and the prefix was checked when it was first run."""
    from teeio_conformance.conformance.replay import _classify

    try:
        machine = machine_cls()
    except Exception as exc:
        raise ExploreError(f"building the machine failed: {type(exc).__name__}: {exc}") from exc
    run = _Run(machine, {})
    runner: Any = getattr(machine, "run", None)
    checker = getattr(runner, "checker", None)
    quiet = _Unchecked(checker)
    for i, (name, args) in enumerate(steps):
        last = i == len(steps) - 1
        if checker is not None:  # the prefix passed its checks when it was first run: only the last step is new
            runner.checker = checker if last or not quiet_prefix else quiet
        if not _step(run, rules[name], args):
            run.failed_at = i
            break
    if checker is not None:
        runner.checker = checker
    if teardown:
        try:
            machine.teardown()
        except Exception as exc:
            if run.failure is None:
                rule_id, detail = _classify(exc)
                run.failure = (rule_id, detail, "teardown")
    return run


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr))


def _recorded(run: _Run) -> tuple[dict[str, Any], ...]:
    return tuple(_json_safe(s) for s in run.machine.__dict__.get("replay_log", []))


def _actions(run: _Run, rules: Sequence[Any]) -> list[_Action]:
    """Every enabled (rule, argument choice) at the run's current state."""
    out: list[_Action] = []
    for rule in rules:
        if any(not run.bundles.get(b.name) for b in rule.bundles):
            continue
        try:
            if not all(pred(run.machine) for pred in rule.preconditions):
                continue
        except Exception:
            continue  # a precondition that cannot be evaluated here does not enable its rule
        names = sorted(rule.arguments)
        domains = [_domain(rule.arguments[n], run.bundles) for n in names]
        for combo in itertools.product(*domains):
            out.append((rule.function.__name__, tuple(zip(names, combo))))
    return out


_HYPOTHESIS_ATTRS: frozenset[str] | None = None


def _hypothesis_attrs() -> frozenset[str]:
    """Attributes RuleBasedStateMachine itself sets on an instance (not the machine's own state)."""
    global _HYPOTHESIS_ATTRS
    if _HYPOTHESIS_ATTRS is None:
        from hypothesis.stateful import RuleBasedStateMachine, rule

        class _Probe(RuleBasedStateMachine):
            @rule()
            def nothing(self) -> None:
                """A probe has one rule: Hypothesis refuses machines without."""

        _HYPOTHESIS_ATTRS = frozenset(vars(_Probe())) | {"replay_log"}
    return _HYPOTHESIS_ATTRS


def _state_key(run: _Run) -> str:
    """Digest of the snapshot, the bundles and the machine's own bookkeeping (not the trace)."""
    m = run.machine
    runner = getattr(m, "run", None)
    snap = getattr(runner, "_snap", None)
    if snap is None and hasattr(m, "stack"):
        snap = m.stack.snapshot()
    skip = {id(getattr(m, "stack", None)), id(runner)}
    stack = getattr(m, "stack", None)
    skip |= {id(d) for d in getattr(stack, "devices", {}).values()}
    local = sorted((k, repr(v)) for k, v in vars(m).items() if k not in _hypothesis_attrs() and id(v) not in skip)
    text = repr((snap, sorted(run.bundles.items()), local))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


# ---------------------------------------------------------------------------- the search


def explore(
    machine_cls: type,
    *,
    depth: int = DEFAULT_DEPTH,
    dedup: bool = True,
    stop_on: Collection[str] | None = None,
    max_seconds: float | None = None,
    name: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExploreResult:
    """Every sequence of up to ``depth`` rule steps of ``machine_cls``, breadth-first.

    ``stop_on``: stop as soon as each of these rule IDs has a finding (what the shrink benchmark needs).
    ``max_seconds``: stop when the time is up; the result then says it is not complete.
    """
    from teeio_conformance.conformance.harness import verdicts_untouched

    if depth < 0:
        raise ExploreError(f"depth must be >= 0, got {depth}")
    t0 = time.perf_counter()
    inits, rules = _rules(machine_cls)
    by_name = {r.function.__name__: r for r in (*inits, *rules)}
    findings: dict[str, Finding] = {}
    seen: set[str] = set()
    notes: list[str] = []
    counters = {"sequences": 0, "duplicates": 0}
    levels: list[int] = []
    deterministic = True
    stopped = False
    unstable: list[str] = []

    def out_of_time() -> bool:
        return max_seconds is not None and time.perf_counter() - t0 > max_seconds

    def done() -> bool:
        return stop_on is not None and all(r in findings for r in stop_on)

    def check(steps: tuple[_Action, ...], expand: bool) -> tuple[str, list[_Action]] | None:
        """Run one sequence; record a failure, or return (state key, enabled actions) to expand it."""
        counters["sequences"] += 1
        run = _replay(machine_cls, by_name, steps, teardown=True)
        if run.failure is not None:
            rule_id, detail, action = run.failure
            if 0 <= run.failed_at < len(steps) - 1:  # a prefix that passed before fails now
                unstable.append(f"{rule_id} in step {run.failed_at + 1} of a prefix that passed before")
            if rule_id in findings:
                findings[rule_id] = attrs.evolve(findings[rule_id], occurrences=findings[rule_id].occurrences + 1)
            else:
                findings[rule_id] = Finding(
                    rule_id=rule_id,
                    detail=detail,
                    action=action,
                    steps=_recorded(run),
                    sequence=counters["sequences"],
                    seconds=time.perf_counter() - t0,
                )
            return None
        return _state_key(run), (_actions(run, rules) if expand else [])

    with verdicts_untouched():
        # Level 0: the initialize rules, every argument choice of each, in name order.
        frontier: list[tuple[tuple[_Action, ...], list[_Action]]] = []
        prefixes: list[tuple[_Action, ...]] = [()]
        for init in inits:
            grown: list[tuple[_Action, ...]] = []
            for p in prefixes:
                probe = _replay(machine_cls, by_name, p, teardown=False)
                grown += [(*p, c) for c in (_actions(probe, [init]) if probe.failure is None else [])]
            prefixes = grown
        for prefix in prefixes:
            res = check(prefix, expand=depth > 0)
            if res is not None and (not dedup or res[0] not in seen):
                seen.add(res[0])
                frontier.append((prefix, res[1]))
        levels.append(len(prefixes))
        deterministic &= _same_twice(machine_cls, by_name, frontier[0][0] if frontier else ())
        for level in range(1, depth + 1):
            if stopped or done():
                break
            nxt: list[tuple[tuple[_Action, ...], list[_Action]]] = []
            checked = 0
            total = sum(len(actions) for _, actions in frontier)
            last_said = time.perf_counter()
            if progress is not None:
                progress(f"depth {level}: {total} sequences to check")
            for prefix, actions in frontier:
                for action in actions:
                    if out_of_time() or done():
                        stopped = True
                        break
                    steps = (*prefix, action)
                    checked += 1
                    res = check(steps, expand=level < depth)
                    if progress is not None and time.perf_counter() - last_said >= PROGRESS_SECONDS:
                        last_said = time.perf_counter()
                        progress(
                            f"depth {level}: {checked} of {total} sequences ({100 * checked // max(total, 1)} %), "
                            f"{len(findings)} rule(s) broken so far, {last_said - t0:.0f} s"
                        )
                    if res is None:
                        continue
                    key, children = res
                    if dedup and key in seen:
                        counters["duplicates"] += 1
                        continue
                    seen.add(key)
                    nxt.append((steps, children))
                if stopped:
                    break
            levels.append(checked)
            if nxt and deterministic:
                deterministic &= _same_twice(machine_cls, by_name, nxt[0][0])
            if progress is not None:
                progress(f"depth {level}: {checked} sequences, {len(nxt)} new states, {time.perf_counter() - t0:.1f} s")
            frontier = nxt
    if unstable:
        deterministic = False
        notes.append(f"{len(unstable)} replayed prefixes failed although they had passed (first: {unstable[0]})")
    if not deterministic:
        notes.append(
            "the SUT is not deterministic: the same sequence reached different states on two runs, "
            "so pruning equal states may skip sequences; re-run with --no-dedup"
        )
    complete = not stopped and len(levels) == depth + 1
    finished_depth = len(levels) - 1 if not stopped else len(levels) - 2
    if stopped and out_of_time():
        notes.append(f"stopped by the time limit ({max_seconds:g} s) before depth {depth} was finished")
    return ExploreResult(
        machine=name or machine_cls.__name__,
        depth=depth,
        sequences=counters["sequences"],
        states=len(seen),
        duplicates=counters["duplicates"],
        seconds=time.perf_counter() - t0,
        findings=tuple(sorted(findings.values(), key=lambda f: (f.length, f.sequence))),
        levels=tuple(levels),
        complete=complete,
        finished_depth=finished_depth,
        deterministic=deterministic,
        dedup=dedup,
        notes=tuple(notes),
    )


def _same_twice(machine_cls: type, rules: dict[str, Any], steps: tuple[_Action, ...]) -> bool:
    """Does the same sequence reach the same state key twice (the SUT is deterministic, as replay needs)?"""
    a, b = (_replay(machine_cls, rules, steps, teardown=True) for _ in range(2))
    if a.failure is not None or b.failure is not None:
        return a.failure is not None and b.failure is not None and a.failure[0] == b.failure[0]
    return _state_key(a) == _state_key(b)


def run_steps(machine_cls: type, steps: Sequence[dict[str, Any]]) -> tuple[str, str] | None:
    """Re-run a recorded step list (as a finding holds it) outside Hypothesis: (rule ID, detail) or None.

    Bundle arguments are passed by value, as :mod:`conformance.replay` does; the returned handles are not
    needed because every argument is concrete."""
    from teeio_conformance.conformance.replay import _classify

    exc = rerun(machine_cls, steps)
    return None if exc is None else _classify(exc)


def rerun(machine_cls: type, steps: Sequence[dict[str, Any]]) -> Exception | None:
    """Run a recorded step list on a fresh machine; the exception it ends with (carrying the recorded
    steps and trace, as in a Hypothesis run) or None when every step and the teardown passed."""
    from teeio_conformance.conformance.harness import verdicts_untouched

    with verdicts_untouched():
        machine = machine_cls()
        try:
            for step in steps:
                getattr(machine, step["method"])(**_decode_kwargs(machine_cls, dict(step.get("kwargs", {}))))
            machine.teardown()
        except Exception as exc:
            return exc
    return None


def _decode_kwargs(machine_cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Handles recorded as ``{"__slot__": {...}}`` back to values (the machine module's attrs classes)."""
    import importlib

    from teeio_conformance.conformance.machines.recording import decode_value

    module = importlib.import_module(
        next(
            c.__module__
            for c in machine_cls.__mro__
            if c.__module__.startswith("teeio_conformance.conformance.machines.")
        )
    )
    types = {n.lower(): o for n, o in vars(module).items() if isinstance(o, type) and attrs.has(o)}
    return {k: decode_value(v, types) for k, v in kwargs.items()}


# ---------------------------------------------------------------------------- building machines


def machine_class(
    kind: str,
    *,
    factory: Callable[..., Any] | None = None,
    profile: str = "tdx",
    num_vfs: int = 1,
    only: frozenset[str] | None = None,
    timeout: float = 5.0,
) -> type:
    """The ``kind`` machine configured for exploring: one device with ``num_vfs`` VFs (the device machine:
    ``factory`` is a device factory ``factory(trace, profile)``, default the reference device)."""
    from teeio_conformance.conformance.machines.device import DeviceMachine, DeviceMachineConfig
    from teeio_conformance.conformance.machines.full_stack import FullStack, MachineConfig
    from teeio_conformance.conformance.machines.host_lifetimes import HostLifetimes

    if kind not in _MACHINES:
        raise ExploreError(f"unknown machine {kind!r}; one of {', '.join(_MACHINES)}")
    if kind == "device":
        dev = DeviceMachineConfig(profile=profile, only=only, timeout=timeout)
        if factory is not None:
            dev = attrs.evolve(dev, device_factory=factory)
        return type("ExploreDeviceMachine", (DeviceMachine,), {"config": dev})
    if factory is None:
        from teeio_conformance.conformance.sut import DEFAULT_SUT, load_factory

        factory = load_factory(DEFAULT_SUT)
    base = HostLifetimes if kind == "host_lifetimes" else FullStack
    cfg = MachineConfig(factory=factory, profile=profile, num_vfs=num_vfs, only=only, timeout=timeout)
    return type(f"Explore{base.__name__}", (base,), {"config": cfg})


def mutant_machine_class(
    mutant: Any,
    *,
    profile: str | None = None,
    only: frozenset[str] | None = None,
    timeout: float | None = None,
    num_vfs: int = 1,
) -> type:
    """The mutant's own machine around the mutant (its short step limit for hang mutants)."""
    limit = timeout if timeout is not None else (getattr(mutant, "timeout", None) or 5.0)
    factory = mutant.device_factory if mutant.machine == "device" else mutant.factory
    return machine_class(
        mutant.machine,
        factory=factory,
        profile=profile or mutant.profile,
        only=only,
        timeout=limit,
        num_vfs=num_vfs,
    )


# ---------------------------------------------------------------------------- CLI: teeio-conformance explore


def _depth(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--depth must be a whole number, got {text!r}") from None
    if not 0 <= value <= 8:
        raise argparse.ArgumentTypeError(f"--depth must be between 0 and 8, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from teeio_conformance.contract.profiles import PROFILES

    parser.add_argument(
        "--depth",
        type=_depth,
        default=DEFAULT_DEPTH,
        metavar="K",
        help=f"rule steps after the initialize steps (default {DEFAULT_DEPTH})",
    )
    parser.add_argument(
        "--machine",
        choices=_MACHINES,
        default=None,
        help="which machine to explore (default full_stack, or the mutant's own)",
    )
    parser.add_argument(
        "--profile", choices=sorted(PROFILES), default=None, help="platform profile (default tdx, or the mutant's own)"
    )
    parser.add_argument(
        "--sut",
        default=None,
        metavar="MODULE:FACTORY",
        help="the system under test (device machine: a device factory); default the reference",
    )
    parser.add_argument("--mutant", default=None, metavar="NAME", help="explore a mutant of the reference instead")
    parser.add_argument(
        "--num-vfs",
        type=int,
        default=1,
        choices=(0, 1, 2),
        help="VFs of the one device (default 1); a written record keeps it for `replay`",
    )
    parser.add_argument(
        "--rule",
        action="append",
        default=None,
        metavar="ID",
        help="check only this rule (repeatable); default every rule",
    )
    parser.add_argument("--no-dedup", action="store_true", help="expand every sequence, even into a known state")
    parser.add_argument("--max-seconds", type=float, default=None, metavar="S", help="stop after this long")
    parser.add_argument(
        "--step-timeout",
        type=float,
        default=None,
        metavar="S",
        help="per-step time limit (default 5, or the mutant's own)",
    )
    parser.add_argument(
        "--write-failures",
        default=None,
        metavar="DIR",
        help="write each finding as DIR/failures/explore-<rule>.json (teeio-conformance replay)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _configure(args: argparse.Namespace) -> tuple[type, str, str, str]:
    """(machine class, machine kind, profile, SUT spec) from the command line; ExploreError if unusable."""
    from teeio_conformance.conformance.rules import BY_ID
    from teeio_conformance.conformance.sut import DEFAULT_SUT, SutLoadError, load_factory

    only = None
    if args.rule:
        unknown = [r for r in args.rule if r not in BY_ID]
        if unknown:
            raise ExploreError(f"unknown rule {', '.join(unknown)}; see `teeio-conformance rules`")
        only = frozenset(args.rule)
    if args.mutant is not None:
        if args.sut is not None:
            raise ExploreError("--mutant and --sut cannot be combined: a mutant is its own SUT")
        from teeio_conformance.reference_impl.mutants import by_name

        try:
            mutant = by_name(args.mutant)
        except KeyError as exc:
            raise ExploreError(str(exc.args[0])) from None
        if args.machine is not None and args.machine != mutant.machine:
            raise ExploreError(f"mutant {mutant.name} is caught by the {mutant.machine} machine, not {args.machine}")
        profile = args.profile or mutant.profile
        cls = mutant_machine_class(mutant, profile=profile, only=only, timeout=args.step_timeout, num_vfs=args.num_vfs)
        # the SUT as ``--sut`` and ``replay --sut`` take it: each mutant is a factory of that module by name
        return cls, mutant.machine, profile, f"teeio_conformance.reference_impl.mutants:{mutant.name.replace('-', '_')}"
    kind = args.machine or "full_stack"
    profile = args.profile or "tdx"
    spec = args.sut
    factory = None
    if spec is not None:
        try:
            factory = load_factory(spec)
        except SutLoadError as exc:
            raise ExploreError(str(exc)) from exc
    elif kind != "device":
        spec = DEFAULT_SUT
    cls = machine_class(
        kind,
        factory=factory,
        profile=profile,
        num_vfs=args.num_vfs,
        only=only,
        timeout=args.step_timeout if args.step_timeout is not None else 5.0,
    )
    return cls, kind, profile, spec or "teeio_conformance.conformance.machines.device:reference_device"


def _show_step(step: dict[str, Any]) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in step.get("kwargs", {}).items())
    return f"{step['method']}({args})"


def _write_failures(
    result: ExploreResult, directory: str, *, machine: str, profile: str, sut: str, num_vfs: int | None
) -> list[str]:
    out = Path(directory) / "failures"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in result.findings:
        path = out / f"explore-{machine}-{profile}-{f.rule_id}.json"
        record = f.failure_record(machine=machine, profile=profile, sut=sut, num_vfs=num_vfs)
        path.write_text(json.dumps(record, indent=1))
        paths.append(os.fspath(path))
    return paths


def _summary(result: ExploreResult, *, machine: str, profile: str, sut: str) -> Iterator[str]:
    scope = "complete" if result.complete else "INCOMPLETE"
    yield (
        f"explored the {machine} machine on {sut} (profile {profile}) to depth {result.depth} ({scope}): "
        f"{result.sequences} sequences, {result.states} distinct states, {result.duplicates} pruned as "
        f"already seen, {result.seconds:.1f} s"
    )
    for note_text in result.notes:
        yield f"note: {note_text}"
    if result.passed:
        yield "PASS: no rule broken by any sequence within the bound"
        return
    for f in result.findings:
        yield f"FAIL {f.rule_id} in {f.length} steps ({f.occurrences} failing sequences): {f.detail}"
        for i, step in enumerate(f.steps, 1):
            yield f"    {i}. {_show_step(step)}"


def _progress(text: str) -> None:
    sys.stderr.write(f"  {text}\n")


def run(args: argparse.Namespace) -> int:
    """0: nothing broken within the bound; 1: a rule broken; 2: bad arguments (one line on stderr)."""
    try:
        cls, kind, profile, sut = _configure(args)
        progress = None if args.json else _progress
        result = explore(
            cls, depth=args.depth, dedup=not args.no_dedup, max_seconds=args.max_seconds, name=kind, progress=progress
        )
        written = (
            _write_failures(
                result,
                args.write_failures,
                machine=kind,
                profile=profile,
                sut=sut,
                num_vfs=None if kind == "device" else args.num_vfs,
            )
            if args.write_failures
            else []
        )
    except (ExploreError, OSError) as exc:
        sys.stderr.write(f"teeio-conformance explore: {exc}\n")
        return 2
    if args.json:
        json.dump(
            {**result.to_json(), "machine": kind, "profile": profile, "sut": sut, "written": written},
            sys.stdout,
            indent=1,
        )
        sys.stdout.write("\n")
    else:
        for line in _summary(result, machine=kind, profile=profile, sut=sut):
            sys.stdout.write(line + "\n")
        for path in written:
            sys.stdout.write(f"wrote {path}\n")
    return 0 if result.passed else 1
