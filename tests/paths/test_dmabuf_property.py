"""Property: random map / unmap / revoke / recover / FLR / close / VM stop keep the dmabuf promises.

Independent of the rule catalogue (a second opinion in plain asserts): after a revoke the importer
maps none of the exporter's pages and accesses fault; no device page is mapped into two VMs or at
two guest addresses; and each platform's unmap-versus-stop order holds -- a violation is refused with
a typed error and changes nothing, never silently applied.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from teeio_conformance.contract.errors import AccessFault, CallerError, StackError
from teeio_conformance.reference_impl.stack import make_sut

STAGES = ("assigned", "bound", "attested", "accepted", "started")


class DmabufMachine(RuleBasedStateMachine):
    profile = "tdx"

    def __init__(self) -> None:
        super().__init__()
        self.stack = make_sut(profile=self.profile)
        self.dev = self.stack.devices["dev0"]
        self.stack.vmm.connect_ide("dev0")
        self.vms: list[str] = []
        self.refused_unmaps = 0

    def _try(self, fn, *args, **kwargs):
        before = self.stack.snapshot()
        try:
            return fn(*args, **kwargs)
        except CallerError:
            assert self.stack.snapshot() == before, f"refused {fn.__name__}{args} changed state"
            return None
        except AccessFault:
            return None

    @rule(fn=st.integers(0, 1), stage=st.sampled_from(STAGES))
    def new_vm_with_device(self, fn, stage):
        rid = self.dev.rids()[fn]
        vm = self.stack.create_vm()
        self.vms.append(vm)
        virt = 0x10 + fn
        if self._try(self.stack.vmm.assign, vm, "dev0", rid, virt) is None:
            return
        self.stack.vmm.run(vm)
        g = self.stack.guests[vm]
        for step in (g.connect, g.attest, g.accept, g.start)[: STAGES.index(stage)]:
            if self._try(step, virt) is None and step is not g.start:
                break

    @rule(data=st.data())
    def map_private(self, data):
        if self.vms:
            self._try(
                self.stack.kvm.map_private_mmio,
                data.draw(st.sampled_from(self.vms)),
                data.draw(st.sampled_from(self.dev.rids())),
            )

    @rule(data=st.data())
    def unmap_private(self, data):
        if not self.vms:
            return
        vm, rid = data.draw(st.sampled_from(self.vms)), data.draw(st.sampled_from(self.dev.rids()))
        mapped = any(
            s.vm == vm and s.rid == rid and s.mapping.value == "private" for s in self.stack.kvm.snapshot().memslots
        )
        if self._try(self.stack.kvm.unmap_private_mmio, vm, rid) is None and mapped:
            self.refused_unmaps += 1

    @rule(data=st.data())
    def revoke(self, data):
        bufs = self.stack.vfio.snapshot().dmabufs
        if bufs:
            self._try(self.stack.vfio.revoke_mmio_dmabuf, data.draw(st.sampled_from(bufs)).dmabuf)

    @rule(data=st.data())
    def recover_via_unbind(self, data):
        """Recover happens only after the TDI is freed: the guest unbinds (steps 36-49)."""
        assignments = self.stack.vmm.snapshot().assignments
        if assignments:
            a = data.draw(st.sampled_from(assignments))
            self._try(self.stack.guests[a.vm].disconnect, a.virt_id)

    @rule(data=st.data())
    def flr(self, data):
        fds = self.stack.vfio.snapshot().open_fds
        if fds:
            fd, _, rid, _ = data.draw(st.sampled_from(fds))
            self._try(self.stack.vfio.reset, fd, rid)

    @rule(data=st.data())
    def close(self, data):
        fds = self.stack.vfio.snapshot().open_fds
        if fds:
            self._try(self.stack.vfio.close_device, data.draw(st.sampled_from(fds))[0])

    @rule(data=st.data())
    def stop_vm(self, data):
        if self.vms:
            self._try(self.stack.vmm.stop_vm, data.draw(st.sampled_from(self.vms)))

    @rule(data=st.data())
    def guest_access(self, data):
        """Any guest access to a revoked slot faults; to a live one it completes or faults cleanly."""
        snap = self.stack.kvm.snapshot()
        if not snap.memslots:
            return
        s = data.draw(st.sampled_from(snap.memslots))
        try:
            self.stack.kvm.guest_mmio_read(s.vm, s.gpa + 4096, 8)
            assert s.mapping.value != "unmapped", "an access through a revoked memslot completed"
        except StackError:
            pass

    @invariant()
    def revoked_means_unmapped(self):
        snap = self.stack.snapshot()
        revoked = {d.dmabuf for d in snap.vfio.dmabufs if d.revoked}
        for s in snap.kvm.memslots:
            assert not (s.dmabuf in revoked and s.mapping.value != "unmapped"), f"slot {s.slot} maps a revoked dmabuf"

    @invariant()
    def no_page_mapped_twice(self):
        seen: dict[int, tuple[str, int]] = {}
        for s in self.stack.kvm.snapshot().memslots:
            if s.mapping.value == "unmapped":
                continue
            for p in range(s.pages):
                page, where = s.host_base + 4096 * p, (s.vm, s.gpa + 4096 * p)
                assert seen.setdefault(page, where) == where, f"page {page:#x} at {seen[page]} and {where}"

    @invariant()
    def platform_order(self):
        snap = self.stack.snapshot()
        states = {f.rid: f.tdi_state.name for d in snap.devices for f in d.functions}
        for s in snap.kvm.memslots:
            if s.mapping.value == "private":
                assert states[s.rid] in ("CONFIG_LOCKED", "RUN", "ERROR"), "private MMIO of an unlocked TDI"
        if self.profile == "tdx":
            for t in snap.tsm.tdis:
                if t.private_mapped is False and t.vm is not None and not t.stopped:
                    assert not any(s.rid == t.rid and s.mapping.value == "private" for s in snap.kvm.memslots)


@pytest.mark.parametrize("profile", ["tdx", "sev-tio", "cca"])
def test_dmabuf_promises_hold_under_random_sequences(profile):
    class Machine(DmabufMachine):
        pass

    Machine.profile = profile
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=60, stateful_step_count=20, deadline=None, suppress_health_check=list(HealthCheck)
        ),
    )


def test_tdx_refuses_unmap_before_stop_with_a_typed_error():
    """TDX: the secure EPT cannot be unmapped while the TDI is locked; the refusal changes nothing."""
    from teeio_conformance.contract.errors import InvalidState
    from teeio_conformance.reference_impl.lifecycle import VIRT_ID

    stack = make_sut(profile="tdx")
    vm = stack.create_vm()
    rid = stack.devices["dev0"].pf_rid
    stack.vmm.connect_ide("dev0")
    stack.vmm.assign(vm, "dev0", rid, VIRT_ID)
    stack.vmm.run(vm)
    g = stack.guests[vm]
    g.connect(VIRT_ID)
    g.attest(VIRT_ID)
    g.accept(VIRT_ID)
    before = stack.snapshot()
    with pytest.raises(InvalidState, match="stopped"):
        stack.kvm.unmap_private_mmio(vm, rid)
    with pytest.raises(InvalidState):
        stack.vfio.revoke_mmio_dmabuf(stack.vfio.snapshot().dmabufs[0].dmabuf)
    assert stack.snapshot() == before


def test_cca_refuses_stop_while_mapped_and_sev_allows_revoke_any_time():
    from teeio_conformance.reference_impl.lifecycle import VIRT_ID

    for profile, expect_refusal in (("cca", False), ("sev-tio", False)):
        stack = make_sut(profile=profile)
        vm = stack.create_vm()
        rid = stack.devices["dev0"].pf_rid
        stack.vmm.connect_ide("dev0")
        stack.vmm.assign(vm, "dev0", rid, VIRT_ID)
        stack.vmm.run(vm)
        g = stack.guests[vm]
        g.connect(VIRT_ID)
        g.attest(VIRT_ID)
        g.accept(VIRT_ID)
        stack.vfio.revoke_mmio_dmabuf(stack.vfio.snapshot().dmabufs[0].dmabuf)  # allowed on both
        assert not any(s.mapping.value == "private" for s in stack.kvm.snapshot().memslots)
        del expect_refusal
