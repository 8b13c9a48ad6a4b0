"""Liveness first: the corrected lifecycle must complete on the SUT, once per platform profile.

A SUT that refuses or ignores what the lifecycle needs (every LOCK refused, reports refused, MMIO never
recovered) breaks no safety rule; this test drives it through the lifecycle the reference draws
(``teeio-conformance flow``) and fails by the LIVE rule of the first step that does not succeed.
"""

from __future__ import annotations

from typing import Any

from teeio_conformance.conformance.machines.full_stack import FullStack, MachineConfig


def test_lifecycle_completes(sut_factory: Any, tdisp_profile: str, step_timeout: float) -> None:
    """Bring-up, attest/accept/start, workload, teardown and step 50 each succeed and take effect."""

    class Machine(FullStack):
        config = MachineConfig(factory=sut_factory, profile=tdisp_profile, timeout=step_timeout)

    machine = Machine()
    try:
        machine.lifecycle()
    finally:
        machine.teardown()
