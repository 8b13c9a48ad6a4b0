"""VM isolation: the same steps with two secret assignments of VM A give every other VM identical views (CONF-05)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from teeio_conformance.conformance.isolation import accepts_vm_secrets, isolation_machine
from teeio_conformance.conformance.machines.full_stack import Slot

EXAMPLES = 20  # each example runs twice (the twin replays it): kept small to fit the ci budget


def explicit_example(machine: Any) -> None:
    """VM A brought up and used; VM B brought up, used and probed; VM A stopped and destroyed; B used again,
    unbound, stopped and probed once more -- the places a VM's secrets could cross into another's memory, reads
    or errors."""
    machine.first_vm()
    a = machine.bring_up(fn=0, stage="used")
    b = machine.bring_up(fn=1, stage="used")
    if not isinstance(a, Slot) or not isinstance(b, Slot):
        return
    machine.guest(s=b, verb="enumerate")
    machine.stop_vm(vm=a)
    machine.host_destroy_vm(vm=a)
    machine.guest(s=b, verb="use_private")
    machine.guest(s=b, verb="unbind")
    machine.stop_vm(vm=b)
    machine.guest(s=b, verb="enumerate")  # refused: B is not running -- what does the refusal tell B?


def test_isolation(sut_factory: Any, tdisp_profile: str, step_timeout: float, conformance_settings: settings) -> None:
    """Random full-stack examples replayed on a twin SUT whose first VM has other secrets: every other VM's
    view (state, shared bytes, private digest, guest view, the results and errors of its calls) must be equal."""
    if not accepts_vm_secrets(sut_factory):
        pytest.skip("the SUT factory takes no vm_secrets_seed: CONF-05 is not applicable")
    machine = isolation_machine(sut_factory, tdisp_profile, step_timeout)
    first = machine()
    explicit_example(first)
    first.teardown()
    limited = settings(conformance_settings, max_examples=min(EXAMPLES, conformance_settings.max_examples))
    run_state_machine_as_test(machine, settings=limited)
