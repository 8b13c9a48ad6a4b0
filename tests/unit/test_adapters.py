"""One layer as the SUT: the worked examples in docs/examples run under the suite and are caught by it.

The VMM-only adapter (docs/examples/vmm_adapter.py) plays the VMM while the reference plays every other actor,
through the composition entry point; the device-only adapter (docs/examples/device_adapter.py) is driven by the
device machine. Each passes every rule as written, and each is caught by the rule its planted bug breaks.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest

from teeio_conformance.conformance.mutation import catch
from teeio_conformance.contract.errors import InvalidArgument
from teeio_conformance.reference_impl.compose import compose

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def _example(name: str) -> types.ModuleType:
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


def _sut(name: str, rule_id: str, machine: str, **factories: object) -> types.SimpleNamespace:
    """What conformance.mutation.catch needs to know about a SUT (it is not a mutant of the reference)."""
    return types.SimpleNamespace(name=name, rule_id=rule_id, machine=machine, profile="tdx", timeout=None, **factories)


@pytest.mark.parametrize("profile", ["tdx", "sev-tio", "cca"])
def test_the_vmm_adapter_plays_the_lifecycle_and_its_trace_passes(profile):
    from teeio_conformance.conformance.traces.check import check_events
    from teeio_conformance.contract.trace_file import TracedEvent
    from teeio_conformance.reference_impl.lifecycle import run_lifecycle

    vmm = _example("vmm_adapter")
    stack = vmm.make_sut(profile=profile)
    assert type(stack.vmm).__name__ == "ExampleVmm"
    run_lifecycle(stack)
    events = [TracedEvent(event=e, line=e.seq + 1) for e in stack.trace]
    assert any(e.callee == "iommufd" and e.operation == "vdevice_alloc" and e.caller == "vmm" for e in stack.trace)
    assert check_events(events, profile=profile).ok


def test_the_vmm_adapter_passes_every_rule_of_the_full_stack_machine():
    vmm = _example("vmm_adapter")
    result = catch(_sut("example-vmm", "FLOW-01", "full_stack", factory=vmm.make_sut), all_rules=True, max_examples=60)
    assert not result.caught and result.caught_by is None, result.message


def test_the_suite_catches_the_vmm_adapters_planted_bug_by_flow_01():
    vmm = _example("vmm_adapter")
    result = catch(_sut("late-vdevice-vmm", "FLOW-01", "full_stack", factory=vmm.make_buggy_sut), max_examples=100)
    assert result.caught and result.caught_by == "FLOW-01", result.message
    assert "after KVM run" in result.message


def test_the_device_adapter_passes_every_rule_of_the_device_machine():
    dev = _example("device_adapter")
    result = catch(_sut("example-device", "TDISP-06", "device", device_factory=dev.make_device), all_rules=True)
    assert not result.caught and result.caught_by is None, result.message


def test_the_device_adapter_offers_its_own_snapshot_only_and_the_machine_judges_accordingly():
    from teeio_conformance.conformance.harness import StepRunner
    from teeio_conformance.conformance.machines.device import DEVICE_RULES, DeviceStack

    dev = _example("device_adapter")
    stack = DeviceStack(dev.make_device, "tdx")
    checker = StepRunner(stack, "tdx", only=DEVICE_RULES).checker
    # ERR-01 compares every actor's snapshot, IDE-03 the root port's stream too; ERR-04 (a TSM's broken-promise
    # error), PROF-02 (host requests outstanding per TDI) and RETRY-01 (the TSM's BUSY retry) read the host TSM:
    # a device alone cannot feed them
    assert checker.not_applicable == {"ERR-01", "IDE-03", "ERR-04", "PROF-02", "RETRY-01"}
    assert {"TDISP-06", "IDE-01", "IDE-02", "ERR-02"} <= {r.id for r in checker.rules}


def test_the_suite_catches_the_device_adapters_planted_bug_by_tdisp_06():
    dev = _example("device_adapter")
    result = catch(_sut("nonce-cache", "TDISP-06", "device", device_factory=dev.make_buggy_device), max_examples=100)
    assert result.caught and result.caught_by == "TDISP-06", result.message


def test_compose_refuses_an_unknown_role_and_a_misnamed_actor():
    with pytest.raises(InvalidArgument, match="roles are vmm, vfio"):
        compose(guest=object)
    vmm = _example("vmm_adapter")

    class Misnamed(vmm.ExampleVmm):
        actor_name = "kvm"

    with pytest.raises(InvalidArgument, match="vmm adapter's actor_name is 'kvm'"):
        compose(vmm=Misnamed)(profile="tdx")


@pytest.mark.parametrize("role", ["vmm", "vfio", "iommufd", "kvm", "tsm", "iommu"])
def test_every_host_role_can_be_an_adapter_and_is_handed_its_peers(role):
    """The route's mechanics for each role: built as factory(trace, profile), in the stack under its role, given
    the other actors through _attach (the full behaviour is the VMM example's to show)."""
    from teeio_conformance.contract.peers import Peers
    from teeio_conformance.contract.trace import Actor

    class Adapter(Actor):
        actor_name = role

        def __init__(self, trace, profile):
            super().__init__(trace)
            self.profile = profile
            self.peers = None

        def _attach(self, peers):
            self.peers = peers

    stack = compose(**{role: Adapter})(profile="sev-tio")
    adapter = getattr(stack, role)
    assert isinstance(adapter, Adapter) and adapter.profile.name == "sev-tio" and adapter.trace is stack.trace
    assert isinstance(adapter.peers, Peers) and getattr(adapter.peers, role) is adapter
    assert adapter.peers.kvm is stack.kvm and adapter.peers.devices is stack.devices
    assert adapter.peers.guests is stack.guests  # live: a VM created later shows up
