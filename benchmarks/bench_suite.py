"""The suite's speed: cost per step against the engine's own cost, and time to catch each mutant.

    python -m benchmarks.bench_suite [--examples N] [--seeds K] [--only-steps] [--mutants NAME,...]

* **Cost per step**: the full-stack machine's steps per second next to a trivial machine of the same
  shape (same rules and bundles, bodies that do nothing) run in the same process, interleaved, so the
  ratio is taken in one run on a noisy machine.
* **Time to catch**: for every mutant, seconds to the first failure (no shrinking) and to the shrunk
  result, over several derandomization seeds (median, max), with the ``ci``-like settings.

Writes benchmarks/results/suite.json and prints tables. Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test

from teeio_conformance.conformance.machines.full_stack import FullStack, MachineConfig
from teeio_conformance.reference_impl.stack import make_sut

RESULTS = Path(__file__).with_name("results")


def trivial_machine(machine_cls: type) -> type:
    """A machine of the same shape -- every rule, argument strategy and bundle of ``machine_cls`` --
    whose bodies do nothing: what Hypothesis itself costs per step."""
    from hypothesis.stateful import Bundle, initialize, rule

    bundles = {v.name: v for v in vars(machine_cls).values() if isinstance(v, Bundle)}
    ns: dict[str, Any] = {"steps": 0}
    for name in dir(machine_cls):
        fn = getattr(machine_cls, name, None)
        data = getattr(fn, "hypothesis_stateful_rule", None) or getattr(fn, "hypothesis_stateful_initialize_rule", None)
        if data is None:
            continue
        deco = initialize if getattr(fn, "hypothesis_stateful_initialize_rule", None) else rule
        kwargs: dict[str, Any] = dict(data.arguments)
        if data.targets:
            kwargs["target"] = bundles[data.targets[0]]

        def body(self: Any, _name: str = name, _target: bool = bool(data.targets), **kw: Any) -> str | None:
            TRIVIAL_STEPS[0] += 1
            return _name if _target else None

        body.__name__ = name
        ns[name] = deco(**kwargs)(body)
    ns.update({k: v for k, v in vars(machine_cls).items() if isinstance(v, Bundle)})
    return type(f"Trivial{machine_cls.__name__}", (RuleBasedStateMachine,), ns)


TRIVIAL_STEPS = [0]


def steps_per_second(factory: Any, *, examples: int, only: frozenset[str] | None) -> float:
    """Machine steps (rule calls, not SUT calls: a ``bring_up`` is one step) per second."""
    if factory is None:
        machine: type = trivial_machine(FullStack)
    else:

        def teardown(self: Any) -> None:
            TRIVIAL_STEPS[0] += len(getattr(self, "replay_log", ()))
            FullStack.teardown(self)

        machine = type(
            "M",
            (FullStack,),
            {"config": MachineConfig(factory=factory, profile="tdx", only=only), "teardown": teardown},
        )
    before = TRIVIAL_STEPS[0]
    s = settings(
        max_examples=examples,
        stateful_step_count=25,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    t0 = time.perf_counter()
    run_state_machine_as_test(machine, settings=s)
    return (TRIVIAL_STEPS[0] - before) / (time.perf_counter() - t0)


def cost_per_step(examples: int, rounds: int = 3) -> dict[str, float]:
    ours, trivial = [], []
    for _ in range(rounds):  # interleaved, so both see the same machine load
        ours.append(steps_per_second(make_sut, examples=examples, only=None))
        trivial.append(steps_per_second(None, examples=examples, only=None))
    o, t = statistics.median(ours), statistics.median(trivial)
    return {"stack_steps_per_s": o, "trivial_steps_per_s": t, "cost_ratio": t / o}


def time_to_catch(seeds: int, names: list[str] | None = None) -> list[dict[str, Any]]:
    from teeio_conformance.conformance.mutation import catch, catch_as_user
    from teeio_conformance.reference_impl.mutants import MUTANTS

    rows = []
    for m in MUTANTS:
        if names and not any(n in m.name for n in names):
            continue
        first, shrunk, steps, caught = [], [], [], True
        for seed in range(seeds):
            if m.machine in ("noninterference", "isolation"):
                # a differential rule is judged only against a twin, which the aimed search does not build:
                # time the users' path (derandomized, so every seed is the same run)
                r1, r2 = catch_as_user(m), catch_as_user(m, shrink=True)
            else:
                r1 = catch(m, shrink=False, seed=seed)
                r2 = catch(m, shrink=True, seed=seed)
            caught &= r1.caught and r2.caught
            first.append(r1.seconds)
            shrunk.append(r2.seconds)
            steps.append(r2.steps or 0)
        rows.append(
            {
                "mutant": m.name,
                "rule": m.rule_id,
                "caught": caught,
                "first_median_s": statistics.median(first),
                "first_max_s": max(first),
                "shrunk_median_s": statistics.median(shrunk),
                "shrunk_max_s": max(shrunk),
                "shrunk_steps": max(steps),
            }
        )
    return rows


def differential_cost(profile: str = "tdx") -> dict[str, float]:
    """Seconds of the noninterference test (CONF-04: lifecycle + 20 drawn examples, each replayed on a twin
    SUT) next to the same number of plain full-stack examples with the whole catalogue, under ``ci``."""
    from teeio_conformance.conformance import settings as profiles
    from teeio_conformance.conformance.noninterference import differential_machine
    from teeio_conformance.conformance.test_noninterference import EXAMPLES, test_noninterference

    profiles.register()
    ci = settings(settings.get_profile("ci"), max_examples=EXAMPLES, phases=[Phase.explicit, Phase.generate])
    t0 = time.perf_counter()
    test_noninterference(make_sut, profile, 5.0, ci)
    differential = time.perf_counter() - t0
    plain = type("Plain", (FullStack,), {"config": MachineConfig(factory=make_sut, profile=profile)})
    t0 = time.perf_counter()
    run_state_machine_as_test(plain, settings=ci)
    single = time.perf_counter() - t0
    del differential_machine
    return {"differential_s": differential, "plain_s": single, "ratio": differential / single if single else 0.0}


def isolation_cost(profile: str = "tdx") -> dict[str, float]:
    """Seconds of the isolation test (CONF-05: its explicit example + 20 drawn examples, each replayed on a twin
    SUT whose first VM has other secrets) next to the same number of plain full-stack examples, under ``ci``."""
    from teeio_conformance.conformance import settings as profiles
    from teeio_conformance.conformance.test_isolation import EXAMPLES, test_isolation

    profiles.register()
    ci = settings(settings.get_profile("ci"), max_examples=EXAMPLES, phases=[Phase.explicit, Phase.generate])
    t0 = time.perf_counter()
    test_isolation(make_sut, profile, 5.0, ci)
    isolation = time.perf_counter() - t0
    plain = type("Plain", (FullStack,), {"config": MachineConfig(factory=make_sut, profile=profile)})
    t0 = time.perf_counter()
    run_state_machine_as_test(plain, settings=ci)
    single = time.perf_counter() - t0
    return {"isolation_s": isolation, "plain_s": single, "ratio": isolation / single if single else 0.0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--examples", type=int, default=60)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--only-steps", action="store_true")
    p.add_argument("--mutants", default="", help="comma-separated name fragments (default: all)")
    args = p.parse_args(argv)
    out: dict[str, Any] = {"cost": cost_per_step(args.examples)}
    c = out["cost"]
    print(
        f"steps/s: stack {c['stack_steps_per_s']:.0f}, trivial {c['trivial_steps_per_s']:.0f}, "
        f"cost ratio {c['cost_ratio']:.2f}x (target <= 1.5x)"
    )
    d = out["differential"] = differential_cost()
    print(
        f"noninterference (CONF-04, tdx): {d['differential_s']:.2f} s for the differential test vs "
        f"{d['plain_s']:.2f} s for as many plain examples ({d['ratio']:.2f}x)"
    )
    i = out["isolation"] = isolation_cost()
    print(
        f"isolation (CONF-05, tdx): {i['isolation_s']:.2f} s for the differential test vs "
        f"{i['plain_s']:.2f} s for as many plain examples ({i['ratio']:.2f}x)"
    )
    if not args.only_steps:
        rows = out["catch"] = time_to_catch(args.seeds, [n for n in args.mutants.split(",") if n])
        print(f"{'rule':<9} {'mutant':<36} {'first med/max s':>16} {'shrunk med/max s':>17} {'steps':>5}")
        for r in rows:
            print(
                f"{r['rule']:<9} {r['mutant']:<36} {r['first_median_s']:7.2f}/{r['first_max_s']:<7.2f} "
                f"{r['shrunk_median_s']:8.2f}/{r['shrunk_max_s']:<7.2f} {r['shrunk_steps']:5}"
                f"{'' if r['caught'] else '  NOT CAUGHT'}"
            )
        firsts = [r["first_median_s"] for r in rows]
        print(f"median time to first failure {statistics.median(firsts):.2f} s, max {max(firsts):.2f} s")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "suite.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
