"""The device machine against the reference device, or a responder over the spdm-emu socket."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from teeio_conformance.conformance.machines.device import DeviceMachine, DeviceMachineConfig
from teeio_conformance.conformance.plugin import ticking


def test_device_tdisp_and_ide_km(
    tdisp_profile: str,
    step_timeout: float,
    device_target: Any,
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

    class Machine(DeviceMachine):
        config = DeviceMachineConfig(profile=tdisp_profile, timeout=step_timeout)

    run_state_machine_as_test(ticking(Machine, conformance_progress), settings=conformance_settings)
