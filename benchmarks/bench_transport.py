"""Round-trip throughput of the spdm-emu socket transport over loopback.

    python -m benchmarks.bench_transport [--seconds S] [--examples N]

Measures TDISP requests per second (GET_DEVICE_INTERFACE_STATE in a VENDOR_DEFINED_REQUEST, one
connection, after VCA) against

* a minimal responder in a server thread (the transport's own cost),
* the reference device in a server thread,
* the reference device in its own process (``teeio-conformance serve-device``), as a SUT would run,

and device-machine examples per second over the socket (as many steps each as the ``ci`` profile runs,
against the served reference device, one server per process reset before every example -- as the suite
runs it). Every request goes inside an SPDM secure session (the server's default).

The headline since secure sessions: the device machine's TDISP / IDE_KM messages per second against an
external ``serve-device`` process (``--device-at`` style: one kept mailbox connection, sessions ended
and TDIs stopped between examples, in one round trip; the snapshot's state queries ride pipelined behind
the first message of a step, or FINISH / END_SESSION, else go out once when the step ends, and are not
counted), as a ratio of that same process's raw request rate (one GET_DEVICE_INTERFACE_STATE at a time
inside one session) measured just before and just after each round of examples. A second ratio counts
the sessions' own messages too (KEY_EXCHANGE, FINISH, END_SESSION, KEY_UPDATE: requests the machine's
steps make the responder answer); every request the process wrote is split by kind in the result file.
The ratio is the median of the rounds' ratios: on a shared machine the load moves within seconds, and
only measurements taken side by side compare. Target: >= 50%.

Prints a table and writes benchmarks/results/transport.json. Bars: >= 2,000 requests/s, >= 100
examples/s. The machine is often shared: compare runs taken at the same time, not across a day.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from teeio_conformance.conformance.settings import PROFILES
from teeio_conformance.contract.tdisp import codec as td
from teeio_conformance.reference_impl.transport.client import EmuClient, TransportError, requests_sent, spawn
from teeio_conformance.reference_impl.transport.server import start_in_thread

RESULTS = Path(__file__).with_name("results")
REQUEST = td.encode(td.GetDeviceInterfaceState(interface_id=td.InterfaceId(function_id=0x3A00)))


class _Minimal:
    """Answers every TDISP request with the same 32 bytes: what is left is the transport."""

    function_ids = (0x3A00,)
    _answer = bytes(32)

    def handle_vendor_message(self, protocol_id: int, message: bytes, *, session_id: int | None) -> bytes:
        return self._answer

    def end_session(self, session_id: int) -> None:
        pass


def _rate(host: str, port: int, seconds: float) -> tuple[float, int]:
    """Requests/s one at a time, inside a secure session when the responder offers one."""
    with EmuClient.connect(host, port) as client:
        sid = client.open_session() if client.offers_sessions else None
        for _ in range(50):  # warm up
            client.send(1, REQUEST, session_id=sid)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            client.send(1, REQUEST, session_id=sid)
            n += 1
        return n / (time.perf_counter() - t0), n


def machine_vs_raw(rounds: int, seconds: float, examples: int, steps: int) -> dict[str, Any] | None:
    """Device-machine messages/s against an external serve-device process vs its raw request rate,
    alternating rounds (see the module docstring). None if the CLI is not available."""
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis.stateful import run_state_machine_as_test

    from teeio_conformance.conformance.remote import RemoteDeviceMachine, config_for, remote_device_factory

    try:
        proc, info = spawn(
            [
                sys.executable,
                "-m",
                "teeio_conformance.conformance.cli",
                "serve-device",
                "--port",
                "0",
                "--profile",
                "tdx",
            ],
            timeout=30,
        )
    except TransportError as exc:
        print(f"(process server unavailable: {exc})", file=sys.stderr)
        return None
    host, port = str(info["host"]), int(info["port"])
    devices: list[Any] = []
    base = remote_device_factory(host, port, tuple(info["function_ids"]), pipelined=bool(info.get("pipelining")))

    def make(trace: Any, profile: str) -> Any:
        devices.append(base(trace, profile))
        return devices[-1]

    class Machine(RemoteDeviceMachine):
        config = config_for(make)

    per_round = max(1, examples // rounds)
    s = settings(
        max_examples=per_round,
        stateful_step_count=steps,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    raws, machines, ratios, sent_ratios = [], [], [], []
    msgs_total, machine_seconds, counts = 0, 0.0, {"tdisp_ide_km": 0, "session": 0, "queries": 0, "isolation": 0}
    try:
        run_state_machine_as_test(Machine, settings=settings(s, max_examples=3))  # warm up
        for i in range(rounds):
            before, _n = _rate(host, port, seconds / rounds / 2)
            devices.clear()
            sent0 = requests_sent()
            t0 = time.perf_counter()
            run_state_machine_as_test(Machine, settings=settings(s, database=None, derandomize=False))
            dt = time.perf_counter() - t0
            total = requests_sent() - sent0
            after, _n = _rate(host, port, seconds / rounds / 2)
            raw = (before + after) / 2  # on both sides of the machine's run: a load that drifts meanwhile evens out
            msgs = sum(d.messages for d in devices)
            queries = sum(d.queries for d in devices)
            isolation = sum(d.isolation for d in devices)
            session = total - msgs - queries - isolation  # VCA, KEY_EXCHANGE, FINISH, END_SESSION, KEY_UPDATE
            for k, v in (("tdisp_ide_km", msgs), ("session", session), ("queries", queries), ("isolation", isolation)):
                counts[k] += v
            raws.append(raw)
            machines.append(msgs / dt)
            ratios.append(msgs / dt / raw)
            sent_ratios.append((msgs + session) / dt / raw)
            msgs_total += msgs
            machine_seconds += dt
            print(
                f"  round {i + 1}: raw {raw:8.1f} req/s, machine {msgs / dt:8.1f} TDISP/IDE_KM msg/s "
                f"(ratio {ratios[-1]:.2f}), {(msgs + session) / dt:8.1f} msg/s with its sessions' "
                f"(ratio {sent_ratios[-1]:.2f}); on the wire {total / dt:8.1f} req/s"
            )
    finally:
        try:
            EmuClient.connect(host, port, vca=False).shutdown_server()
        except TransportError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        finally:
            proc.kill()
            proc.wait()
    return {
        "raw_requests_per_second": statistics.median(raws),
        "machine_messages_per_second": statistics.median(machines),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "ratio_with_session_messages": statistics.median(sent_ratios),
        "ratios_with_session_messages": sent_ratios,
        "requests": counts,
        "machine_messages": msgs_total,
        "machine_seconds": machine_seconds,
        "rounds": rounds,
    }


def in_thread(factory: Callable[[], Any], seconds: float) -> tuple[float, int]:
    handle = start_in_thread(factory)
    try:
        return _rate(handle.host, handle.port, seconds)
    finally:
        handle.stop()


def in_process(seconds: float) -> tuple[float, int] | None:
    """The reference device served by the CLI in its own process; None if the CLI is not available."""
    try:
        proc, info = spawn(
            [sys.executable, "-m", "teeio_conformance.conformance.cli", "serve-device", "--port", "0"], timeout=30
        )
    except TransportError as exc:
        print(f"(process server unavailable: {exc})", file=sys.stderr)
        return None
    try:
        return _rate(str(info["host"]), int(info["port"]), seconds)
    finally:
        try:
            EmuClient.connect(str(info["host"]), int(info["port"]), vca=False).shutdown_server()
        except TransportError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        finally:
            proc.kill()  # no-op once it has exited
            proc.wait()


def examples_per_second(examples: int, steps: int) -> float:
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis.stateful import run_state_machine_as_test

    from teeio_conformance.conformance.remote import RemoteDeviceMachine, config_for, spawned_device_factory
    from teeio_conformance.reference_impl.device.device import DeviceConfig
    from teeio_conformance.reference_impl.transport.served import served_device_factory

    class Machine(RemoteDeviceMachine):
        config = config_for(
            spawned_device_factory(
                served_device_factory(DeviceConfig(stop_in_unlocked_idempotent=True)), (0x3A00, 0x3A01)
            )
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
    run_state_machine_as_test(Machine, settings=settings(s, max_examples=5))  # warm up: lazy imports, the server
    t0 = time.perf_counter()
    run_state_machine_as_test(Machine, settings=s)
    return examples / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3.0, help="seconds per requests/s measurement")
    p.add_argument("--examples", type=int, default=200, help="device-machine examples to time (0 skips)")
    p.add_argument("--rounds", type=int, default=6, help="alternating rounds of the machine-vs-raw comparison")
    p.add_argument(
        "--steps",
        type=int,
        default=PROFILES["ci"].stateful_step_count,
        help="steps per device-machine example (default: the ci profile's, as the suite runs it)",
    )
    args = p.parse_args(argv)
    if args.steps < 1 or args.examples < 0 or args.rounds < 1 or args.seconds <= 0:
        p.error("--steps and --rounds must be at least 1, --examples at least 0, --seconds above 0")

    from teeio_conformance.reference_impl.transport.served import served_device_factory

    rows: list[tuple[str, float, str]] = []
    minimal, n_min = in_thread(_Minimal, args.seconds)
    rows.append(("TDISP requests/s, minimal responder (thread)", minimal, f"{n_min} requests"))
    device, n_dev = in_thread(served_device_factory(), args.seconds)
    rows.append(("TDISP requests/s, reference device (thread)", device, f"{n_dev} requests"))
    proc = in_process(args.seconds)
    if proc is not None:
        rows.append(("TDISP requests/s, reference device (process)", proc[0], f"{proc[1]} requests"))
    eps = examples_per_second(args.examples, args.steps) if args.examples else None
    if eps is not None:
        rows.append(("device-machine examples/s over the socket", eps, f"{args.examples} x {args.steps} steps"))
    versus = machine_vs_raw(args.rounds, args.seconds, args.examples, args.steps) if args.examples else None
    if versus is not None:
        rows.append(("raw requests/s, serve-device (session)", versus["raw_requests_per_second"], "median"))
        rows.append(("machine TDISP/IDE_KM msg/s, same process", versus["machine_messages_per_second"], "median"))
        rows.append(("machine / raw (target >= 0.50)", versus["ratio"], f"median of {versus['rounds']} rounds"))
        rows.append(
            (
                "  the same, with its sessions' messages",
                versus["ratio_with_session_messages"],
                "KEY_EXCHANGE, FINISH, END_SESSION, KEY_UPDATE counted too",
            )
        )

    print(f"{'measure':<48} {'value':>10}   note")
    for name, value, note in rows:
        print(f"{name:<48} {value:>10.3f}   {note}" if value < 10 else f"{name:<48} {value:>10.1f}   {note}")
    result = {
        "requests_per_second": device,  # the headline number: the reference device behind the socket
        "requests_per_second_minimal": minimal,
        "requests_per_second_process": proc[0] if proc else None,
        "requests": n_dev,
        "seconds": args.seconds,
        "examples_per_second": eps,
        "machine_vs_raw": versus,
        "steps_per_example": args.steps,
        "bar_requests_per_second": 2000,
        "bar_examples_per_second": 100,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "transport.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0 if device >= 2000 else 1


if __name__ == "__main__":
    raise SystemExit(main())
