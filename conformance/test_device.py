"""The device machine against the reference device, or a responder over the spdm-emu socket."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import attrs
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from teeio_conformance.conformance.machines.device import DeviceMachine, DeviceMachineConfig
from teeio_conformance.conformance.plugin import ticking
from teeio_conformance.conformance.sut import DEFAULT_SUT


def sut_device_factory(sut_factory: Any) -> Any:
    """The device machine's ``device_factory(trace, profile)`` built from the SUT (issue 14, reach): the
    SUT's own first device, recording into the machine's trace, so ``--sut`` reaches the device machine
    too. A factory that already takes ``(trace, profile)`` (a device mutant by name) is one."""
    params = list(inspect.signature(sut_factory).parameters)
    if params[:1] == ["trace"]:
        return sut_factory

    def make(trace: Any, profile: str) -> Any:
        stack = sut_factory(profile=profile, num_devices=1, num_vfs=1)
        device = next(iter(stack.devices.values()))
        device.trace = trace  # its crossings go to the device machine's trace
        return device

    return make


def test_device_tdisp_and_ide_km(
    tdisp_profile: str,
    step_timeout: float,
    device_target: Any,
    request: Any,
    sut_factory: Any,
    conformance_settings: settings,
    conformance_progress: Callable[[], None],
) -> None:
    """Random TDISP / IDE_KM traffic, malformed bytes, faults and sessions keep the device on the state table.

    Against a responder over the socket (``--device-spawn`` / ``--device-at``) only the rules a socket
    can serve are checked; the rest stay NOT EXERCISED."""
    if device_target is not None:
        from teeio_conformance.conformance.remote import RemoteDeviceMachine, config_for

        class Remote(RemoteDeviceMachine):
            config = config_for(device_target.factory(), profile=tdisp_profile, timeout=step_timeout)

        run_state_machine_as_test(ticking(Remote, conformance_progress), settings=conformance_settings)
        return

    own = None if request.config.getoption("--sut") in (None, DEFAULT_SUT) else sut_factory
    run_device_machine(tdisp_profile, step_timeout, own, conformance_settings, conformance_progress)


def run_device_machine(
    profile: str,
    step_timeout: float,
    sut_factory: Any = None,
    conformance_settings: settings | None = None,
    conformance_progress: Callable[[], None] | None = None,
) -> None:
    """The device machine on the SUT's device (the reference device when ``sut_factory`` is None), under
    ``conformance_settings`` (None: Hypothesis' current default)."""
    cfg = DeviceMachineConfig(profile=profile, timeout=step_timeout)
    if sut_factory is not None:
        cfg = attrs.evolve(cfg, device_factory=sut_device_factory(sut_factory))

    class Machine(DeviceMachine):
        config = cfg

    machine = Machine if conformance_progress is None else ticking(Machine, conformance_progress)
    run_state_machine_as_test(machine, settings=conformance_settings)
