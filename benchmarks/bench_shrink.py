"""How good is Hypothesis' shrinking? Its shrunk failure per mutant against the shortest one there is.

    python -m benchmarks.bench_shrink [--depth K] [--mutants NAME,...] [--max-seconds S]

For every mutant of the registry (or those whose name contains one of ``--mutants``):

* **shrunk**: the steps of the failure Hypothesis shrinks to, from :func:`conformance.mutation.catch`
  (what ``bench_suite`` and the mutant tests run: derandomized, ``ci``-like settings, only the mutant's
  rule checked);
* **minimal**: the length of the shortest failing sequence by the same rule, from the breadth-first
  explorer (:mod:`conformance.explore`) over the same machine with the same rule checked, to ``--depth``
  rule steps. ``> K`` when every sequence up to depth K passed; ``> k (time)`` when the per-mutant time
  limit stopped it after depth k was finished -- such mutants are in the table, not left out.

Lengths count every recorded step, the ``@initialize`` ones included, as failure records do. Prints the
table and the share of mutants with shrunk == minimal (among those with both); writes
benchmarks/results/shrink.json. Takes minutes; not run in CI.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from benchmarks.bench_suite import RESULTS
from teeio_conformance.conformance.explore import explore, mutant_machine_class
from teeio_conformance.conformance.mutation import catch


def _only(rule_id: str) -> frozenset[str]:
    """The rules checked, as :func:`conformance.mutation.catch` checks them (hangs: the harness alone)."""
    return frozenset() if rule_id.startswith("SUT-") else frozenset({rule_id})


def measure(mutant: Any, *, depth: int, max_seconds: float, minimize_seconds: float = 20.0) -> dict[str, Any]:
    """One row: the explorer's minimal length and Hypothesis' shrunk length for ``mutant``."""
    cls = mutant_machine_class(mutant, only=_only(mutant.rule_id))
    result = explore(cls, depth=depth, stop_on={mutant.rule_id}, max_seconds=max_seconds, name=mutant.machine)
    found = result.finding(mutant.rule_id)
    caught = catch(mutant, shrink=True)
    shrunk = caught.steps if caught.caught else None
    if found is not None:
        minimal: int | None = found.length
        shown = str(found.length)
    else:
        minimal = None
        bound = result.finished_depth if not result.complete else depth
        shown = f"> {bound}" + ("" if result.complete else " (time)")
    return {
        "mutant": mutant.name,
        "rule": mutant.rule_id,
        "machine": mutant.machine,
        "shrunk": shrunk,
        "shrunk_caught_by": caught.caught_by,
        "shrink_seconds": round(caught.seconds, 2),
        "minimal": minimal,
        "minimal_shown": shown,
        "explore_bound": depth,
        "explore_finished_depth": result.finished_depth,
        "explore_complete": result.complete,
        "explore_sequences": result.sequences,
        "explore_states": result.states,
        "explore_seconds": round(result.seconds, 2),
        "minimal_steps": list(found.steps) if found is not None else None,
        "equal": shrunk is not None and minimal is not None and shrunk == minimal,
        # what a failure record gets: the plugin's minimization pass runs the same breadth-first search
        # (depth shrunk - 1, shortest first) for --minimize-seconds, so it finds this minimum when the
        # explorer here found it within that time
        "final": (
            minimal
            if shrunk is not None
            and found is not None
            and minimal is not None
            and minimal < shrunk
            and found.seconds <= minimize_seconds
            else shrunk
        ),
    }


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def main(argv: list[str] | None = None) -> int:
    from teeio_conformance.reference_impl.mutants import MUTANTS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=4, help="explorer bound in rule steps (default 4)")
    p.add_argument("--mutants", default=None, help="comma-separated substrings of mutant names to run")
    p.add_argument("--max-seconds", type=float, default=30.0, help="explorer time limit per mutant (default 30)")
    p.add_argument(
        "--minimize-seconds",
        type=float,
        default=20.0,
        help="the plugin's --minimize-seconds, for the 'final' column (default 20)",
    )
    p.add_argument("--out", default=str(RESULTS / "shrink.json"), help="where to write the JSON")
    args = p.parse_args(argv)
    wanted = [w.strip() for w in args.mutants.split(",")] if args.mutants else None
    mutants = [m for m in MUTANTS if wanted is None or any(w and w in m.name for w in wanted)]
    if not mutants:
        p.error(f"no mutant name contains any of {args.mutants!r}")
    t0 = time.perf_counter()
    rows = []
    print(f"{'mutant':<34} {'rule':<9} {'shrunk':>6} {'minimal':>12} {'equal':>5} {'final':>5} {'explore s':>9}")
    for m in mutants:
        r = measure(m, depth=args.depth, max_seconds=args.max_seconds, minimize_seconds=args.minimize_seconds)
        rows.append(r)
        print(
            f"{r['mutant']:<34} {r['rule']:<9} {_cell(r['shrunk']):>6} {r['minimal_shown']:>12} "
            f"{'yes' if r['equal'] else 'no':>5} {_cell(r['final']):>5} {r['explore_seconds']:9.1f}",
            flush=True,
        )
    both = [r for r in rows if r["shrunk"] is not None and r["minimal"] is not None]
    equal = sum(r["equal"] for r in both)
    longer = [r for r in both if r["shrunk"] > r["minimal"]]
    shorter = [r for r in both if r["shrunk"] < r["minimal"]]  # Hypothesis used values outside our domains
    beyond = [r for r in rows if r["minimal"] is None]
    seconds = time.perf_counter() - t0
    share = equal / len(both) if both else 0.0
    final_equal = sum(r["final"] == r["minimal"] for r in both)
    share_final = final_equal / len(both) if both else 0.0
    print(
        f"\nshrunk == minimal for {equal} of {len(both)} mutants with both ({share:.0%}); "
        f"shrunk longer for {len(longer)}, shorter for {len(shorter)}; "
        f"{len(beyond)} not found by the explorer within the bound; {seconds:.0f} s\n"
        f"after the plugin's minimization pass ({args.minimize_seconds:g} s): {final_equal} of {len(both)} "
        f"({share_final:.0%})"
    )
    out = {
        "depth": args.depth,
        "max_seconds_per_mutant": args.max_seconds,
        "seconds": round(seconds, 1),
        "share_equal": share,
        "share_equal_after_minimize": share_final,
        "minimize_seconds": args.minimize_seconds,
        "equal": equal,
        "with_both": len(both),
        "shrunk_longer": [r["mutant"] for r in longer],
        "shrunk_shorter": [r["mutant"] for r in shorter],
        "beyond_bound": [r["mutant"] for r in beyond],
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(out, fh, indent=1, default=repr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
