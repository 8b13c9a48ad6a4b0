"""Does the suite as users run it catch each mutant -- every rule checked, not only the mutant's own?

    python -m benchmarks.bench_detect [--seeds K] [--examples N] [--mutants NAME,...]

By default every mutant runs through ``teeio_conformance.conformance.mutation.catch_as_user``: the path
``teeio-conformance run --sut <mutant>`` takes (the conformance tests' own functions, the whole catalogue,
the ``ci`` settings profile, liveness first, no retry; no shrinking). ``--aimed`` runs the earlier search
instead (every rule checked, ``--examples`` examples of up to 20 steps, over ``--seeds`` seeds), which did
not take the CLI's path. Reports whether each failed, by which rule, and how long it took. Prints a table;
writes benchmarks/results/detect.json. Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("results")


def detect(names: list[str] | None, seeds: int, examples: int, *, as_user: bool = True) -> list[dict[str, Any]]:
    """With ``as_user`` (the default), each mutant runs once through ``catch_as_user`` -- the conformance
    tests' own functions under the ``ci`` profile, as ``teeio-conformance run --sut <mutant>`` runs them
    (derandomized: one search, so ``seeds`` and ``examples`` do not apply). Otherwise the earlier aimed-budget
    search over ``seeds`` derandomization seeds."""
    from teeio_conformance.conformance.mutation import catch, catch_as_user
    from teeio_conformance.reference_impl.mutants import MUTANTS

    rows = []
    for m in MUTANTS:
        if names and not any(n in m.name for n in names):
            continue
        if as_user:
            runs = [catch_as_user(m)]
        else:
            runs = [catch(m, all_rules=True, shrink=False, seed=s, max_examples=examples) for s in range(seeds)]
        rows.append(
            {
                "mutant": m.name,
                "rule": m.rule_id,
                "failed": sum(r.caught_by is not None for r in runs),
                "own_rule": sum(r.caught for r in runs),
                "seeds": len(runs),
                "caught_by": sorted({r.caught_by for r in runs if r.caught_by}),
                "seconds_median": statistics.median(r.seconds for r in runs),
                "seconds_max": max(r.seconds for r in runs),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    from teeio_conformance.conformance.settings import PROFILES

    p.add_argument("--examples", type=int, default=PROFILES["ci"].max_examples, help="default: the ci profile's")
    p.add_argument("--mutants", default="", help="comma-separated name fragments (default: all)")
    p.add_argument(
        "--aimed",
        action="store_true",
        help="the earlier search (catch(all_rules=True), --seeds/--examples) instead of the users' path",
    )
    args = p.parse_args(argv)
    if args.seeds < 1 or args.examples < 1:
        p.error("--seeds and --examples must be at least 1")
    rows = detect([n for n in args.mutants.split(",") if n], args.seeds, args.examples, as_user=not args.aimed)
    print(f"{'rule':<9} {'mutant':<36} {'failed':>6} {'own ID':>6} {'med/max s':>12}  by")
    for r in rows:
        print(
            f"{r['rule']:<9} {r['mutant']:<36} {r['failed']:>3}/{r['seeds']:<2} {r['own_rule']:>3}/{r['seeds']:<2} "
            f"{r['seconds_median']:5.2f}/{r['seconds_max']:<6.2f} {','.join(r['caught_by'])}"
        )
    total = sum(r["seeds"] for r in rows)
    failed = sum(r["failed"] for r in rows)
    own = sum(r["own_rule"] for r in rows)
    every = sum(r["failed"] == r["seeds"] for r in rows)
    print(
        f"{failed}/{total} runs failed ({own} by the mutant's own rule); "
        f"{every}/{len(rows)} mutants caught on every seed"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "detect.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
