"""Host object lifetimes (VFIO, IOMMUFD, KVM objects in any order) against the SUT."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from teeio_conformance.conformance.machines.full_stack import MachineConfig
from teeio_conformance.conformance.machines.host_lifetimes import HostLifetimes
from teeio_conformance.conformance.plugin import ticking


def test_host_object_lifetimes(
    sut_factory: Any,
    tdisp_profile: str,
    step_timeout: float,
    conformance_settings: settings,
    conformance_progress: Callable[[], None],
) -> None:
    """Creating and destroying host objects in any order keeps refcounts, tombstones and refusals honest."""

    class Machine(HostLifetimes):
        config = MachineConfig(factory=sut_factory, profile=tdisp_profile, timeout=step_timeout)

    run_state_machine_as_test(ticking(Machine, conformance_progress), settings=conformance_settings)
