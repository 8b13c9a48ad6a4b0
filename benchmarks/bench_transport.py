"""Round-trip throughput over loopback: TDISP requests/s and device-machine examples/s.

    python -m benchmarks.bench_transport [--seconds S]

Writes benchmarks/results/transport.json. Bars (issue): >= 2,000 requests/s, >= 100 examples/s.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from conformance.remote import RemoteDeviceMachine, config_for, spawned_device_factory
from reference_impl.device.device import DeviceConfig
from reference_impl.device.tdisp import codec as td
from reference_impl.transport.client import EmuClient
from reference_impl.transport.served import served_device_factory
from reference_impl.transport.server import start_in_thread

RESULTS = Path(__file__).with_name("results")


def requests_per_second(seconds: float) -> tuple[float, int]:
    handle = start_in_thread(served_device_factory())
    client = EmuClient.connect(handle.host, handle.port)
    msg = td.encode(td.GetDeviceInterfaceState(interface_id=td.InterfaceId(function_id=0x3A00)))
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        client.send(1, msg)
        n += 1
    rate = n / (time.perf_counter() - t0)
    client.close()
    handle.stop()
    return rate, n


def examples_per_second(examples: int) -> float:
    class Machine(RemoteDeviceMachine):
        config = config_for(spawned_device_factory(served_device_factory(DeviceConfig(
            stop_in_unlocked_idempotent=True)), (0x3A00, 0x3A01)))

    s = settings(max_examples=examples, stateful_step_count=10, deadline=None, database=None, derandomize=True,
                 phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    t0 = time.perf_counter()
    run_state_machine_as_test(Machine, settings=s)
    return examples / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--examples", type=int, default=200)
    args = p.parse_args(argv)
    rate, n = requests_per_second(args.seconds)
    eps = examples_per_second(args.examples)
    print(f"{'measure':<34} {'value':>10}")
    print(f"{'TDISP round trips per second':<34} {rate:10.0f}   ({n} in {args.seconds:g} s)")
    print(f"{'device-machine examples per second':<34} {eps:10.1f}   (10 steps each)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "transport.json").write_text(json.dumps({"requests_per_second": rate, "requests": n,
                                                        "examples_per_second": eps, "steps_per_example": 10}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
