"""check-trace throughput: a long syscall log (import + check) and the reference's exported flow trace.

The log is tests/traces/qemu-clean.strace with N failed IOMMU_DESTROY calls inserted while the VM runs (each is a
step FLOW-06 judges), so the cost per event of the importer and of the checker shows. Prints a table and writes
benchmarks/results/check_trace.json.

    python -m benchmarks.bench_check_trace [--events N]
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

from teeio_conformance.conformance.traces.check import check_events
from teeio_conformance.conformance.traces.export import export_flow
from teeio_conformance.conformance.traces.strace import import_strace
from teeio_conformance.contract.tiers import TRACE_ONLY
from teeio_conformance.contract.trace_file import read_trace

RESULTS = Path(__file__).with_name("results")
CLEAN = Path(__file__).resolve().parents[1] / "tests" / "traces" / "qemu-clean.strace"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--events", type=int, default=20_000)
    args = p.parse_args(argv)
    clean = CLEAN.read_text(encoding="utf-8").splitlines()
    at = next(i for i, line in enumerate(clean) if "KVM_RUN, 0 <unfinished" in line) + 1
    extra = [
        f"4120  10:15:03.{i % 1_000_000:06d} ioctl(12</dev/iommu>, IOMMU_DESTROY, {{size=8, id={1000 + i}}})"
        " = -1 ENOENT (No such file or directory)"
        for i in range(args.events)
    ]
    log = clean[:at] + extra + clean[at:]
    t0 = time.perf_counter()
    header, events = import_strace(log, name="bench")
    t1 = time.perf_counter()
    result = check_events(events, profile="tdx", offers=header.offers or TRACE_ONLY)
    t2 = time.perf_counter()
    if not result.ok:
        raise SystemExit(f"the benchmark log should pass: {result.failures}")
    buf = io.StringIO()
    export_flow(buf, profile="tdx")
    _, flow = read_trace(buf.getvalue().splitlines())
    t3 = time.perf_counter()
    check_events(flow, profile="tdx")
    t4 = time.perf_counter()
    out = {
        "log_events": len(events),
        "import_s": t1 - t0,
        "check_s": t2 - t1,
        "import_us_per_event": (t1 - t0) / len(events) * 1e6,
        "check_us_per_event": (t2 - t1) / len(events) * 1e6,
        "flow_events": len(flow),
        "flow_check_ms": (t4 - t3) * 1e3,
    }
    print(f"syscall log: {len(events)} events, import {out['import_s']:.2f} s, check {out['check_s']:.2f} s")
    print(f"  {out['import_us_per_event']:.1f} us/event to import, {out['check_us_per_event']:.1f} us/event to check")
    print(f"reference flow trace: {len(flow)} events checked in {out['flow_check_ms']:.1f} ms")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "check_trace.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
