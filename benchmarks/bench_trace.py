"""Trace overhead: one full lifecycle (flow.md steps 1-50 + VM stop) with tracing on vs off.

Both variants run interleaved in one process (the machine is shared and noisy, so only the ratio
taken in one run means anything). Prints a table and writes benchmarks/results/trace.json.

    python -m benchmarks.bench_trace [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from teeio_conformance.reference_impl.lifecycle import run_lifecycle
from teeio_conformance.reference_impl.stack import StackConfig, build_stack

RESULTS = Path(__file__).with_name("results")


def one(trace: bool) -> tuple[float, int]:
    stack = build_stack(StackConfig(profile="tdx", trace=trace))
    t0 = time.perf_counter()
    run_lifecycle(stack)
    return time.perf_counter() - t0, len(stack.trace)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=200)
    args = p.parse_args(argv)
    one(True), one(False)  # warm caches (certificate generation, imports)
    on, off, events = [], [], 0
    for _ in range(args.rounds):
        t, events = one(True)
        on.append(t)
        off.append(one(False)[0])
    med_on, med_off = statistics.median(on), statistics.median(off)
    result = {
        "rounds": args.rounds,
        "events_per_flow": events,
        "median_on_ms": med_on * 1e3,
        "median_off_ms": med_off * 1e3,
        "ratio_on_off": med_on / med_off,
        "per_event_overhead_us": (med_on - med_off) / max(events, 1) * 1e6,
    }
    print(f"{'variant':<10} {'median ms/flow':>15}")
    print(f"{'trace on':<10} {med_on * 1e3:15.3f}")
    print(f"{'trace off':<10} {med_off * 1e3:15.3f}")
    print(
        f"ratio on/off {result['ratio_on_off']:.2f}; {events} events/flow; "
        f"{result['per_event_overhead_us']:.2f} us per recorded event"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "trace.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
