"""The device machine against the reference device (or the device of --sut's stack)."""

from __future__ import annotations

from hypothesis.stateful import run_state_machine_as_test

from conformance.machines.device import DeviceMachine, DeviceMachineConfig


def test_device_tdisp_and_ide_km(tdisp_profile: str, step_timeout: float) -> None:
    """Random TDISP / IDE_KM traffic, malformed bytes, faults and sessions keep the device on the state table."""

    class Machine(DeviceMachine):
        config = DeviceMachineConfig(profile=tdisp_profile, timeout=step_timeout)

    run_state_machine_as_test(Machine)
