"""The full-stack machine against the SUT, once per platform profile."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from teeio_conformance.conformance.machines.full_stack import FullStack, MachineConfig
from teeio_conformance.conformance.plugin import ticking


def test_full_stack_lifecycle(
    sut_factory: Any,
    tdisp_profile: str,
    step_timeout: float,
    conformance_settings: settings,
    conformance_progress: Callable[[], None],
) -> None:
    """Random interleavings of bind, unbind, revoke, guest requests, accesses and faults keep every rule."""

    class Machine(FullStack):
        config = MachineConfig(factory=sut_factory, profile=tdisp_profile, timeout=step_timeout)

    run_state_machine_as_test(ticking(Machine, conformance_progress), settings=conformance_settings)
