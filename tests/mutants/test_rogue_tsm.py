"""Device bugs found from inside the full stack, the suite playing a misbehaving host TSM (issue 14, reach).

The device machine drives a device alone; inside a whole stack the device met only the stack's well-behaved
TSM (one session, the right nonces), so a device that accepts a wrong nonce or a second session's IDE_KM
passed the full-stack machine. With the rogue-TSM steps (``conformance/machines/rogue_tsm.py``) the device
mutants below are caught by their own rule from the full stack alone: the users' path limited to the
full-stack test, and the whole catalogue on three more derandomization seeds at the ``ci`` budget.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from teeio_conformance.conformance.machines.full_stack import FullStack, MachineConfig
from teeio_conformance.conformance.mutation import catch, catch_as_user
from teeio_conformance.conformance.rules.device import RAW_DEVICE_ONLY
from teeio_conformance.contract.tiers import Offers
from teeio_conformance.reference_impl.mutants import by_name

FROM_THE_STACK = (
    "device-start-ignores-nonce",  # TDISP-05: a START with a wrong nonce over the locking session
    "device-second-session-keys",  # IDE-01: IDE_KM from a second session
    "device-start-from-any-session",  # TDISP-15: START with the right nonce from a second session
    "device-report-in-unlocked",  # TDISP-11: a report after STOP
    "device-stop-from-any-session",  # TDISP-17: STOP from a second session
    "device-kp-acks-bad-fields",  # IDE-02: KEY_PROGs with bad fields over the key owner's session
    "device-tdisp-outside-session",  # TDISP-12: a request outside any SPDM session
    "device-crashes-on-malformed",  # ERR-02: a LOCK cut short
)


@pytest.mark.parametrize("name", FROM_THE_STACK)
def test_device_mutant_caught_from_the_full_stack_as_users_run_it(name: str) -> None:
    mutant = by_name(name)
    result = catch_as_user(mutant, tests=("full_stack",))
    assert result.caught, f"{name} ({mutant.rule_id}): {result.caught_by} {result.message}"


@pytest.mark.parametrize("seed", (1, 2, 3))
@pytest.mark.parametrize("name", FROM_THE_STACK)
def test_device_mutant_caught_from_the_full_stack_on_each_seed(name: str, seed: int) -> None:
    """The full-stack machine on the stack around the broken device, every rule checked, ``ci``'s 300 examples."""
    mutant = attrs.evolve(by_name(name), machine="full_stack")
    result = catch(mutant, all_rules=True, seed=seed, shrink=False, max_examples=300)
    assert result.caught, f"{name} ({mutant.rule_id}) on seed {seed}: {result.caught_by} {result.message}"


def _without_raw_channel(factory: Any) -> Any:
    def make(**kw: Any) -> Any:
        stack = factory(**kw)
        stack.offers = Offers(raw_device=False)
        return stack

    return make


def test_a_sut_without_the_raw_channel_gets_those_rules_not_applicable() -> None:
    """No rogue step reaches a device the SUT does not open to the suite, nothing crashes, and the rules only
    the channel reaches in a stack are NOT APPLICABLE -- so the second-session mutant is not caught there."""
    mutant = by_name("device-second-session-keys")

    class Machine(FullStack):
        config = MachineConfig(factory=_without_raw_channel(mutant.factory), profile="tdx")

    m = Machine()
    vm = m.first_vm()
    slot = m.assign(vm=vm, fn=0)
    m.rogue_tsm_sessions(s=slot)
    m.rogue_tsm_after_stop(s=slot)
    m.teardown()
    assert not [e for e in m.stack.trace.since(0) if e.caller == "harness" and e.operation == "spdm_connect"]
    assert m.run.checker.not_applicable >= RAW_DEVICE_ONLY

    class Search(Machine):
        pass

    s = settings(max_examples=60, stateful_step_count=20, derandomize=True, database=None, deadline=None)
    run_state_machine_as_test(Search, settings=settings(s, suppress_health_check=list(HealthCheck)))


def test_the_raw_channel_is_a_need_and_an_offer():
    from teeio_conformance.contract.tiers import EVERYTHING, Needs, missing

    assert missing(Needs(raw_device=True), Offers(raw_device=False)) == ["a raw device channel"]
    assert missing(Needs(raw_device=True), EVERYTHING) == []
    assert missing(Needs(), Offers(raw_device=False)) == []
