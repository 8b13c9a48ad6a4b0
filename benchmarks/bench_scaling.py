"""How the suite scales: the whole ``ci`` run serial against ``-n 2``, and examples per second as the
stack grows (functions per device, devices, steps per example -- longer examples hold more VMs).

    python -m benchmarks.bench_scaling [--examples N] [--skip-suite]

* **Suite**: ``pytest --sut ... --hypothesis-profile=ci --tdisp-profile=all`` (the installed suite) in a subprocess,
  once serial and once with ``-n 2`` (pytest-xdist), back to back; wall seconds and the ratio.
* **Stack size**: the full-stack machine on ``make_sut(num_devices=d, num_vfs=f)`` with ``ci``-like
  settings, ``stateful_step_count`` s; examples/s, machine steps/s and the VMs alive at the end.

Prints tables and writes benchmarks/results/scaling.json. Not run in CI.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import time
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from benchmarks.bench_suite import RESULTS
from teeio_conformance.conformance.machines.full_stack import FullStack, MachineConfig
from teeio_conformance.reference_impl.stack import make_sut


def suite_wall(workers: int) -> float:
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--sut=teeio_conformance.reference_impl.stack:make_sut",  # no paths: the installed suite
        "--hypothesis-profile=ci",
        "--tdisp-profile=all",
        "-n",
        str(workers),
    ]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"the suite failed with -n {workers}:\n{done.stdout[-2000:]}")
    return seconds


def stack_rate(*, devices: int, vfs: int, steps: int, examples: int) -> dict[str, Any]:
    counts = {"examples": 0, "steps": 0, "vms": 0}

    def teardown(self: Any) -> None:
        counts["examples"] += 1
        counts["steps"] += len(getattr(self, "replay_log", ()))
        counts["vms"] += sum(1 for v in self.run._snap.kvm.vms if v.state.value != "destroyed")
        FullStack.teardown(self)

    factory = functools.partial(make_sut, num_devices=devices)
    machine = type(
        "M", (FullStack,), {"config": MachineConfig(factory=factory, profile="tdx", num_vfs=vfs), "teardown": teardown}
    )
    s = settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    t0 = time.perf_counter()
    run_state_machine_as_test(machine, settings=s)
    seconds = time.perf_counter() - t0
    n = max(counts["examples"], 1)
    return {
        "devices": devices,
        "vfs": vfs,
        "steps_per_example": steps,
        "examples": counts["examples"],
        "examples_per_s": counts["examples"] / seconds,
        "steps_per_s": counts["steps"] / seconds,
        "live_vms_at_end": counts["vms"] / n,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=40)
    p.add_argument("--skip-suite", action="store_true", help="only the stack-size table")
    args = p.parse_args(argv)
    out: dict[str, Any] = {}
    if not args.skip_suite:
        serial, parallel = suite_wall(0), suite_wall(2)
        out["suite"] = {"serial_s": serial, "n2_s": parallel, "speedup": serial / parallel}
        print(f"ci suite (3 profiles): serial {serial:.1f} s, -n 2 {parallel:.1f} s, speedup {serial / parallel:.2f}x")
    grid = [(1, 0, 25), (1, 1, 25), (1, 3, 25), (1, 7, 25), (2, 1, 25), (4, 1, 25), (1, 1, 10), (1, 1, 50)]
    rows = [stack_rate(devices=d, vfs=f, steps=s, examples=args.examples) for d, f, s in grid]
    out["stack"] = rows
    print(f"{'devices':>7} {'VFs':>4} {'steps/ex':>8} {'examples/s':>10} {'steps/s':>8} {'live VMs':>8}")
    for r in rows:
        print(
            f"{r['devices']:>7} {r['vfs']:>4} {r['steps_per_example']:>8} {r['examples_per_s']:>10.1f} "
            f"{r['steps_per_s']:>8.0f} {r['live_vms_at_end']:>8.1f}"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scaling.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
