"""Run a machine against one mutant and report whether, how fast and how briefly it was caught.

Used by the mutant tests, the benchmarks and ``teeio-conformance mutants``. A mutant is *caught* when
the machine fails with the violation of the mutant's own rule ID, reported or broken by the same step (only that
rule is checked unless ``all_rules``, so the
verdict is about that rule alone); the shrunk sequence is the failing example Hypothesis settles on.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import get_state_machine_test

from teeio_conformance.conformance.harness import SutBroken, SutHang
from teeio_conformance.conformance.machines.device import DeviceMachine, DeviceMachineConfig
from teeio_conformance.conformance.machines.full_stack import FullStack, MachineConfig
from teeio_conformance.conformance.machines.host_lifetimes import HostLifetimes
from teeio_conformance.conformance.rules import RuleViolation

__all__ = ["CatchResult", "catch", "catch_as_user"]


@attrs.frozen
class CatchResult:
    mutant: str
    rule_id: str
    caught: bool
    caught_by: str | None
    steps: int | None  # machine steps in the reported sequence (after ``minimize``, if it found a shorter one)
    seconds: float
    message: str
    shrunk_steps: int | None = None  # machine steps in Hypothesis' shrunk sequence
    sequence: tuple[dict[str, Any], ...] = ()  # the reported sequence, as the recorded step list


def _machine(mutant: Any, only: frozenset[str] | None, timeout: float) -> type:
    if mutant.machine == "device":
        cfg_d = DeviceMachineConfig(
            device_factory=mutant.device_factory, profile=mutant.profile, only=only, timeout=timeout
        )
        return type("MutantDeviceMachine", (DeviceMachine,), {"config": cfg_d})
    if mutant.machine == "isolation":  # the differential machine itself: a single run cannot see a leak
        from teeio_conformance.conformance.isolation import isolation_machine

        return isolation_machine(mutant.factory, mutant.profile, timeout)
    base = HostLifetimes if mutant.machine == "host_lifetimes" else FullStack
    cfg = MachineConfig(factory=mutant.factory, profile=mutant.profile, only=only, timeout=timeout)
    return type(f"Mutant{base.__name__}", (base,), {"config": cfg})


def minimize(machine: type, rule_id: str, steps: list[dict[str, Any]], *, max_seconds: float) -> list[dict[str, Any]]:
    """A shorter sequence breaking ``rule_id`` than ``steps``, if the breadth-first explorer finds one within
    ``max_seconds``; else ``steps``.

    Hypothesis shrinks by local moves on its choice sequence, so it can stop at a local minimum -- say a
    shallow ``bring_up`` followed by ``advance`` steps where one deeper ``bring_up`` would do. The explorer
    tries every sequence shorter than the one found, shortest first, so what it returns is the shortest
    within the machine's argument domains (:mod:`teeio_conformance.conformance.explore`)."""
    from teeio_conformance.conformance.explore import explore

    inits = sum(
        1
        for s in steps
        if getattr(getattr(machine, s["method"], None), "hypothesis_stateful_initialize_rule", None) is not None
    )
    depth = len(steps) - inits - 1
    if depth < 1 or max_seconds <= 0:
        return steps
    found = explore(machine, depth=depth, stop_on={rule_id}, max_seconds=max_seconds).finding(rule_id)
    return list(found.steps) if found is not None and found.length < len(steps) else steps


def catch(
    mutant: Any,
    *,
    max_examples: int = 300,
    seed: int = 0,
    shrink: bool = True,
    timeout: float = 2.0,
    all_rules: bool = False,
    minimize_seconds: float = 0.0,
) -> CatchResult:
    """Run ``mutant``'s machine until it fails (or ``max_examples`` pass) and say by what.

    Only the mutant's own rule is checked (all rules with ``all_rules``). A ``SUT-HANG`` mutant is
    judged by the harness alone -- no rule is checked -- under the mutant's own short step limit
    (``mutant.timeout``), so each hang costs a fraction of a second. The search is derandomized from
    ``seed`` and independent of the settings profile loaded around it (pytest's, the CLI's, CI's), so
    a verdict is the same wherever it is computed.
    """
    expected = mutant.rule_id
    if all_rules:
        only: frozenset[str] | None = None
    elif expected.startswith("SUT-"):
        only = frozenset()
    else:
        only = frozenset({expected})
    step_limit = getattr(mutant, "timeout", None) or timeout
    machine = _machine(mutant, only, step_limit)
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    s = settings(
        settings.get_profile("default"),
        max_examples=max_examples,
        stateful_step_count=20,
        deadline=None,
        database=None,
        derandomize=not seed,
        phases=phases,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    t0 = time.perf_counter()
    try:
        test = get_state_machine_test(machine, settings=s)
        if seed:
            test._hypothesis_internal_use_seed = seed  # type: ignore[attr-defined]
        test()
    except (RuleViolation, SutHang, SutBroken) as exc:
        if isinstance(exc, RuleViolation):
            rid, detail = exc.rule.id, exc.detail
        else:
            rid, detail = ("SUT-HANG" if isinstance(exc, SutHang) else "SUT-BROKEN"), str(exc)
        shrunk = list(getattr(exc, "teeio_steps", []) or [])
        final = shrunk
        # caught as catch_as_user counts it: the reported rule, or one the same step broke too
        caught = rid == expected or expected in tuple(getattr(exc, "also_broken", ()))
        if caught and minimize_seconds > 0:
            final = minimize(machine, expected, shrunk, max_seconds=minimize_seconds)
        return CatchResult(
            mutant.name,
            expected,
            caught,
            rid,
            len(final),
            time.perf_counter() - t0,
            detail,
            shrunk_steps=len(shrunk),
            sequence=tuple(final),
        )
    return CatchResult(mutant.name, expected, False, None, None, time.perf_counter() - t0, "not caught")


# ---------------------------------------------------------------------------- as users run it (issue 14)
USER_TESTS = {
    "device": ("liveness", "device", "full_stack"),
    "full_stack": ("liveness", "full_stack"),
    "host_lifetimes": ("liveness", "host_lifetimes"),
    "noninterference": ("liveness", "noninterference"),
    "isolation": ("liveness", "isolation"),
}


def catch_as_user(
    mutant: Any, *, shrink: bool = False, step_timeout: float | None = None, tests: tuple[str, ...] | None = None
) -> CatchResult:
    """Run ``mutant`` the way ``teeio-conformance run --sut <mutant> --tdisp-profile <its profile> -- -x``
    does: the SUT factory its name gives, the conformance tests' own functions (liveness first), the whole
    catalogue, the ``ci`` settings profile, no retry. The first failing step is the verdict: the mutant is
    caught when its own rule is the one reported or among the others that same step broke (the harness
    reports one and notes the rest, e.g. a bind that creates a vdevice breaks FLOW-02 and LIFE-01 at once).

    Reduced, to keep CI time in check, in two ways that do not change which rule fails first: only the
    tests that drive the mutant's broken actor run (a host mutant's device is the reference one, so the
    device machine cannot see it), and Hypothesis does not shrink (shrinking keeps the failing rule --
    each rule has its own exception type -- and only shortens the sequence), unless ``shrink``. ``tests`` runs
    only those of the users' tests (e.g. ``("full_stack",)``: a device mutant caught from inside the stack)."""
    from hypothesis import settings as hsettings

    from teeio_conformance.conformance import settings as _profiles
    from teeio_conformance.conformance.test_device import run_device_machine
    from teeio_conformance.conformance.test_full_stack import test_full_stack_lifecycle
    from teeio_conformance.conformance.test_host_lifetimes import test_host_object_lifetimes
    from teeio_conformance.conformance.test_isolation import test_isolation
    from teeio_conformance.conformance.test_liveness import test_lifecycle_completes
    from teeio_conformance.conformance.test_noninterference import test_noninterference
    from teeio_conformance.reference_impl import mutants as _mutants

    _profiles.register()
    sut = getattr(
        _mutants, mutant.name.replace("-", "_")
    )  # what --sut teeio_conformance.reference_impl.mutants:NAME gives
    limit = step_timeout or getattr(mutant, "timeout", None) or 5.0
    profile = mutant.profile
    ci = hsettings.get_profile("ci")
    phases = ci.phases if shrink else tuple(p for p in ci.phases if p is not Phase.shrink)
    hsettings.register_profile("_teeio_as_user", hsettings(ci, phases=phases))
    as_user = hsettings.get_profile("_teeio_as_user")  # what the plugin's conformance_settings gives under ci

    def quiet() -> None:
        """No progress lines: the machine tests' conformance_progress, off."""

    runs = {
        "liveness": lambda: test_lifecycle_completes(sut, profile, limit),
        "device": lambda: run_device_machine(profile, limit, sut, as_user),
        "full_stack": lambda: test_full_stack_lifecycle(sut, profile, limit, as_user, quiet),
        "host_lifetimes": lambda: test_host_object_lifetimes(sut, profile, limit, as_user, quiet),
        "noninterference": lambda: test_noninterference(sut, profile, limit, as_user),
        "isolation": lambda: test_isolation(sut, profile, limit, as_user),
    }
    previous = hsettings._current_profile
    hsettings.load_profile("_teeio_as_user")
    t0 = time.perf_counter()
    try:
        for name in USER_TESTS[mutant.machine] if tests is None else tests:
            try:
                runs[name]()
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise
                found = exc.exceptions[0] if isinstance(exc, BaseExceptionGroup) else exc
                rid, detail = _classify_exc(found)
                steps = list(getattr(found, "teeio_steps", []) or [])
                also = tuple(getattr(found, "also_broken", ()))  # rules the same step broke too
                return CatchResult(
                    mutant.name,
                    mutant.rule_id,
                    mutant.rule_id == rid or mutant.rule_id in also,
                    rid,
                    len(steps) or None,
                    time.perf_counter() - t0,
                    f"{name}: {detail}",
                )
    finally:
        hsettings.load_profile(previous or "default")
    return CatchResult(mutant.name, mutant.rule_id, False, None, None, time.perf_counter() - t0, "not caught")


def _classify_exc(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, RuleViolation):
        return exc.rule.id, exc.detail
    if isinstance(exc, SutHang):
        return "SUT-HANG", str(exc)
    if isinstance(exc, SutBroken):
        return "SUT-BROKEN", str(exc)
    return "SUT-ERROR", f"{type(exc).__name__}: {exc}"
