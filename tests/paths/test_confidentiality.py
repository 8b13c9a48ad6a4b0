"""The confidentiality check passes on the reference and catches planted leaks.

Only the CONF rules run here (no secret in host-visible memory, reads, trace or logs; no IDE key in
host software), against leaks planted in different layers: a VMM that copies guest memory, a VFIO that
reads BARs with T=1, a TSM that hands keys to host software, a VFIO that lets the host mmap a private
function.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import multiple, rule, run_state_machine_as_test

from teeio_conformance.conformance.machines.full_stack import FullStack, MachineConfig, Slot
from teeio_conformance.conformance.rules import CATALOGUE, RuleViolation
from teeio_conformance.reference_impl.device.device import Device
from teeio_conformance.reference_impl.mutants import by_name
from teeio_conformance.reference_impl.stack import make_sut
from teeio_conformance.reference_impl.vfio import Vfio

CONF = frozenset(r.id for r in CATALOGUE if r.area.name == "CONF")
FAST = settings(
    max_examples=150,
    stateful_step_count=15,
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
)


class LeakHunter(FullStack):
    """The full-stack machine plus a host that keeps reading through a mapping it already holds."""

    @rule(target=FullStack.slots, fn=st.integers(0, 1))
    def bring_up_with_qemu_mappings(self, fn):
        """Like QEMU: mmap the BAR for shared use at setup, before the guest binds, then run to RUN."""
        slot = self.bring_up(fn=fn, stage="running")
        if not isinstance(slot, Slot):  # the assignment was refused: bring_up gave no handle
            return multiple()
        fd = self._fd(slot.rid)
        if fd is not None:
            self._do("host_mmap_bar", self.stack.vfio.mmap_bar, fd, slot.rid)
        g = self.stack.guests[slot.vm]
        for name, step in (
            ("guest_bind", g.connect),
            ("guest_attest", g.attest),
            ("guest_accept", g.accept),
            ("guest_start", g.start),
        ):
            self._do(name, step, slot.virt_id)
        return slot

    @rule(s=FullStack.slots)
    def host_read_again(self, s):
        fd = self._fd(s.rid)
        if fd is not None:
            self._do("host_mmio_read", self.stack.vfio.host_mmio_read, fd, s.rid, 4096, 32)


def _machine(factory, profile="tdx"):
    return type("M", (LeakHunter,), {"config": MachineConfig(factory=factory, profile=profile, only=CONF)})


@pytest.mark.parametrize("profile", ["tdx", "sev-tio", "cca"])
def test_reference_keeps_secrets(profile):
    run_state_machine_as_test(_machine(make_sut, profile), settings=FAST)


class DeviceIgnoresTBit(Device):
    """A completer that ignores the T bit: T=0 reads of TEE memory are served while the TDI runs."""

    def _complete(self, tlp):
        fn = self._by_address(tlp.address)
        if not tlp.t_bit and tlp.kind == "MRd" and fn.tdi.state.name == "RUN":
            off = tlp.address - fn.bar_base
            n = int.from_bytes(tlp.payload or b"\x04", "little")
            return bytes(fn.mmio[off : off + n])
        return super()._complete(tlp)


class VfioMmapPrivate(Vfio):
    """VFIO keeps the host's mmap of a function it converted to private."""

    def set_private(self, rid, private):
        keep = set(self._mmaps)
        super().set_private(rid, private)
        self._mmaps |= keep


def _leaky_device_factory(*, profile, num_vfs=1, **_):
    from teeio_conformance.reference_impl.stack import StackConfig, build_stack

    return build_stack(StackConfig(profile=profile), device_factory=DeviceIgnoresTBit, vfio_factory=VfioMmapPrivate)


@pytest.mark.parametrize(
    "leak",
    [
        "vmm-copies-guest-secret",
        "vfio-host-reads-private",
        "tsm-keys-through-host",
        "device-ignores-t-bit-and-host-mmap",
    ],
)
def test_planted_leak_is_caught_by_a_confidentiality_rule(leak):
    if leak == "device-ignores-t-bit-and-host-mmap":
        factory, profile = _leaky_device_factory, "tdx"
    else:
        mutant = by_name(leak)
        factory, profile = mutant.factory, mutant.profile
    with pytest.raises(RuleViolation) as info:
        run_state_machine_as_test(_machine(factory, profile), settings=FAST)
    assert info.value.rule.id in CONF
