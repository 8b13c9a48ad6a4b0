"""The full-stack machine: every actor of the flow, acting in order, out of order, and maliciously.

Handles live in Bundles (VMs, assigned functions). Guests bind, attest, accept, start, use and
unbind; guest TSMs act before they should; the host mmaps, revokes, destroys, resets, rebinds and
tampers; the device DMAs with and without the T bit; faults arrive (FLR, config writes, BAR moves,
MSE clear, IDE failure, session end, poison, VFIO close, VM destroy). After every step the whole
catalogue is checked (:mod:`teeio_conformance.conformance.harness`). Refusals are expected -- the rules judge them.
"""

from __future__ import annotations

import inspect
from typing import Any

import attrs
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, multiple, precondition, rule

from teeio_conformance.conformance.harness import StepRunner, build_sut
from teeio_conformance.conformance.machines.reach_steps import ReachSteps
from teeio_conformance.conformance.machines.recording import note, recorded, score
from teeio_conformance.conformance.machines.rogue_tsm import RogueTsm
from teeio_conformance.conformance.rules._view import bound_vm

__all__ = ["FullStack", "MachineConfig", "Slot"]

VIRT_BASE = 0x10
PRIVATE_GPA = 0x800
SHARED_GPA = 0x5000
HOST_SLOT_GPA = 0x80_0000  # where a misbehaving host puts a memslot of its own (above any VMM vBAR)
P2P_PEER_VIRT = 0x20  # where the second device's function sits in a VM that joins two devices (host_p2p)
STAGES = ("running", "bound", "attested", "accepted", "started", "used", "unbound")
GUEST_VERBS = ("bind", "attest", "accept", "start", "use_private", "enumerate", "unbind")
FAULTS = (
    "poison",
    "config_write_command",
    "config_write_bar0",
    "config_write_msix_control",
    "config_write_bus_number",
    "flr",
)


@attrs.frozen
class MachineConfig:
    factory: Any
    profile: str
    num_vfs: int = 1
    only: frozenset[str] | None = None  # check only these rules (mutant tests aim at one)
    timeout: float = 5.0
    num_devices: int | None = None  # devices to ask the SUT factory for (None: the factory's own default)


@attrs.frozen
class Slot:
    """A function of the device assigned to a VM at a virtual ID (what the guest calls it)."""

    vm: str
    rid: int
    virt_id: int


_EARLY_FROM = {"accept": "bound", "start": "bound", "mmio": "accepted"}  # the guest's flag that opens the window
_EARLY_UNTIL = {"accept": "attested", "start": "accepted", "mmio": "running"}  # ... and the one that closes it
_PREP = {"accept": 1, "start": 2, "mmio": 3}  # bind / attest / accept steps to take a slot into the window


def _is_early(vdev: Any, kind: str) -> bool:
    """The guest side's ``kind`` would come early: accept before attestation, start before accept, a
    private MMIO read before start."""
    return bool(getattr(vdev, _EARLY_FROM[kind]) and not getattr(vdev, _EARLY_UNTIL[kind]))


def _vm(target: str | Slot) -> str:
    return target.vm if isinstance(target, Slot) else target


class FullStack(
    RogueTsm, ReachSteps, RuleBasedStateMachine
):  # mixins: conformance/machines/rogue_tsm.py, reach_steps.py
    config: MachineConfig  # set by the test that runs it (see conformance/test_full_stack.py)

    # Hypothesis orders rules by (target bundle names, argument count, name) and favours the first and the
    # last: ``advance`` comes first, and naming this bundle so it sorts before "slots" makes ``bring_up``
    # the last -- the two steps that carry examples deep into the lifecycle.
    vms = Bundle("bare_vms")
    slots = Bundle("slots")
    any_vm = st.one_of(vms, slots)  # a bare VM or the VM a slot lives in (bring_up's VMs have no other handle)

    def __init__(self) -> None:
        super().__init__()
        cfg = self.config
        more = {} if cfg.num_devices is None else {"num_devices": cfg.num_devices}
        self.stack = build_sut(cfg.factory, cfg.timeout, profile=cfg.profile, num_vfs=cfg.num_vfs, **more)
        self.run = StepRunner(self.stack, cfg.profile, only=cfg.only, timeout=cfg.timeout)
        self.device_name = next(iter(self.stack.devices))
        self.device = self.stack.devices[self.device_name]
        self.rids = list(self.device.rids())
        self.fd: int | None = None

    def teardown(self) -> None:
        self.run.finish()
        snap = self.run._snap
        try:
            runs = sum(1 for d in snap.devices for f in d.functions if getattr(f.tdi_state, "name", None) == "RUN")
        except (AttributeError, TypeError):  # a SUT's odd snapshot must not crash the machine's own teardown
            runs = 0
        score(float(runs), label="TDIs in RUN at the end")

    def _do(self, action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        result, error = self.run.step(action, fn, *args, **kwargs)
        note(f"{action}: {'refused ' + type(error).__name__ if error else 'ok'}")
        return None if error else result

    def _state(self, rid: int) -> str:
        for d in self.run._snap.devices:
            for f in d.functions:
                if f.rid == rid:
                    return str(f.tdi_state.name)
        return "?"

    # ------------------------------------------------------------------ setup
    @initialize(target=vms)
    @recorded
    def first_vm(self) -> str:
        return str(self._do("create_vm", self.stack.create_vm))

    @rule(target=vms)
    @recorded
    def create_vm(self) -> str:
        return str(self._do("create_vm", self.stack.create_vm))

    @rule()
    @recorded
    def advance(self) -> None:
        """The well-behaved host and guest take the next lifecycle step on the newest live assignment.

        The host (re)connects a broken link first; then the VM runs, or its guest binds, attests,
        accepts, starts, and finally uses the device (private MMIO read, private DMA from the device).
        A guest whose device was unbound under it (reset, disconnect, close) unbinds to resynchronise.
        (Hypothesis favours the first rule in its order -- no target, fewest arguments -- so that place
        goes to a step that moves every example deeper into the lifecycle and never tears down.)"""
        self._heal_link()
        snap = self.run._snap
        states = {v.name: v.state.value for v in snap.kvm.vms}
        live = [a for a in snap.vmm.assignments if states.get(a.vm) in ("created", "running")]
        if not live:
            return
        a = live[-1]
        if states[a.vm] == "created":
            self._do("kvm_run", self.stack.vmm.run, a.vm)
            return
        guest = self.stack.guests.get(a.vm)
        vdev = self._vdev(Slot(vm=a.vm, rid=a.rid, virt_id=a.virt_id))
        if guest is None or vdev is None:
            return
        tdi = next((t for t in snap.tsm.tdis if t.rid == a.rid), None)
        if vdev.bound and (tdi is None or tdi.vm != a.vm):
            self._do("guest_unbind", guest.disconnect, a.virt_id)
            return
        for flag, name, call in (
            ("bound", "guest_bind", guest.connect),
            ("attested", "guest_attest", guest.attest),
            ("accepted", "guest_accept", guest.accept),
            ("running", "guest_start", guest.start),
        ):
            if not getattr(vdev, flag):
                self._do(name, call, a.virt_id)
                return
        self._do("guest_read_private_mmio", guest.read_private_mmio, a.virt_id)
        self._do(
            "device_dma_t1_private",
            self.device.issue_dma,
            a.rid,
            PRIVATE_GPA,
            b"device->guest private data",
            t_bit=True,
        )

    @rule(target=slots, vm=vms, fn=st.integers(0, 3))
    @recorded
    def assign(self, vm: str, fn: int) -> Any:
        rid = self.rids[fn % len(self.rids)]
        slot = Slot(vm=vm, rid=rid, virt_id=VIRT_BASE + fn % len(self.rids))
        if self._do("assign", self.stack.vmm.assign, vm, self.device_name, rid, slot.virt_id) is None:
            return multiple()  # refused: no slot to act on
        return slot

    @rule(target=slots, fn=st.integers(0, 3), stage=st.sampled_from(STAGES[::-1]))
    @recorded
    def bring_up(self, fn: int, stage: str) -> Any:
        """A fresh VM with a well-behaved VMM and guest, up to ``stage``, as one step (each crossing checked).

        The stages are offered deepest first: Hypothesis shrinks a choice towards the first element, and
        a bring-up that goes further still fails where it failed, so a failure shrinks to one deep
        ``bring_up`` instead of a shallow one followed by ``advance`` steps (the shortest sequence).

        The host first makes room: it reconnects a broken link, and when every function is assigned it
        stops the VM holding the chosen one (the VMM hands a function to a new VM only after the old
        VM let go of it)."""
        taken = {a.rid: a.vm for a in self.run._snap.vmm.assignments}
        free = [r for r in self.rids if r not in taken]
        rid = free[fn % len(free)] if free else self.rids[fn % len(self.rids)]
        if rid in taken:
            self._do("vm_stop", self.stack.vmm.stop_vm, taken[rid])
        vm = str(self._do("create_vm", self.stack.create_vm))
        slot = Slot(vm=vm, rid=rid, virt_id=VIRT_BASE + self.rids.index(rid))
        self._heal_link()
        if self._do("assign", self.stack.vmm.assign, vm, self.device_name, rid, slot.virt_id) is None:
            return multiple()
        self._do("kvm_run", self.stack.vmm.run, vm)
        guest = self.stack.guests.get(vm)
        if guest is None:
            return slot
        steps = [
            ("guest_bind", guest.connect),
            ("guest_attest", guest.attest),
            ("guest_accept", guest.accept),
            ("guest_start", guest.start),
        ]
        for name, fn_ in steps[: STAGES.index(stage)]:
            self._do(name, fn_, slot.virt_id)
        if stage in ("used", "unbound"):  # step 35: private MMIO from the guest, private DMA from the device
            self._do("guest_read_private_mmio", guest.read_private_mmio, slot.virt_id)
            self._do(
                "device_dma_t1_private",
                self.device.issue_dma,
                rid,
                PRIVATE_GPA,
                b"device->guest private data",
                t_bit=True,
            )
        if stage == "unbound":  # steps 36-40: the guest lets go of a device it used
            self._do("guest_unbind", guest.disconnect, slot.virt_id)
        return slot

    def _heal_link(self) -> None:
        """A well-behaved host reconnects a broken link: the TSM's session is gone on the device or the
        stream is not Secure (after an IDE failure or a session end) -> disconnect, then connect."""
        snap = self.run._snap
        session = next((sid for d, sid in snap.tsm.connected if d == self.device_name), None)
        dev = next((d for d in snap.devices if d.name == self.device_name), None)
        healthy = dev is not None and session in dev.sessions and dev.stream_state == "SECURE"
        if session is not None and not healthy:
            self._do("tsm_disconnect", self.stack.tsm.disconnect, self.device_name)
            session = None
        if session is None:
            self._do("connect_ide", self.stack.vmm.connect_ide, self.device_name)

    @rule(vm=any_vm)
    @recorded
    def run_vm(self, vm: str | Slot) -> None:
        self._do("kvm_run", self.stack.vmm.run, _vm(vm))

    # ------------------------------------------------------------------ the guest, in order or not
    @rule(s=slots, verb=st.sampled_from(GUEST_VERBS))
    @recorded
    def guest(self, s: Slot, verb: str) -> None:
        """One verb of the guest on a slot, whatever the slot's stage (in order or not): a lifecycle step,
        a private MMIO read of its TEE memory (step 35), or a T=0 enumerate.

        The uses are verbs here, not a rule of their own: Hypothesis draws rules very unevenly within a
        run, and a separate ``guest_use`` was drawn 3 times in a whole ``ci`` run -- too seldom to catch
        a device completing private MMIO while only CONFIG_LOCKED (DMA-05)."""
        guest = self._guest(s.vm)
        call = {
            "bind": guest.connect,
            "attest": guest.attest,
            "accept": guest.accept,
            "start": guest.start,
            "use_private": guest.read_private_mmio,
            "enumerate": guest.enumerate,
            "unbind": guest.disconnect,
        }[verb]
        name = {"use_private": "guest_read_private_mmio", "enumerate": "guest_enumerate"}.get(verb, f"guest_{verb}")
        self._do(name, call, s.virt_id)
        if verb == "start":
            note(f"TDI state after start: {self._state(s.rid)}")

    @rule(fn=st.integers(0, 1))
    @recorded
    def guest_private_before_start(self, fn: int) -> None:
        """The guest reads private MMIO of a TDI it accepted but has not started (one brought there first if no
        TDI is): the TDI is CONFIG_LOCKED, and a device completes T=1 requests to its TEE memory only in RUN
        (DMA-05; PCIe §11.2).

        Aimed: as a verb of ``guest`` the read met an accepted, not started TDI only when the draws lined up,
        and once the machine grew a step a ``ci`` search of the users' path missed a device completing it."""
        rid_of = {(a.vm, a.virt_id): a.rid for a in self.run._snap.vmm.assignments}
        waiting = [
            Slot(vm=g.vm, rid=rid_of[(g.vm, v.virt_id)], virt_id=v.virt_id)
            for g in self.run._snap.guests
            for v in g.vdevs
            if v.accepted and not v.running and (g.vm, v.virt_id) in rid_of
        ]
        slot = waiting[0] if waiting else inspect.unwrap(type(self).bring_up)(self, fn=fn, stage="accepted")
        guest = self.stack.guests.get(getattr(slot, "vm", None) or "")
        if guest is None:
            return
        note("guest private MMIO read before START")
        self._do("guest_read_private_mmio_before_start", guest.read_private_mmio, slot.virt_id)

    @rule(s=slots)
    @recorded
    def guest_tsm_start_early(self, s: Slot) -> None:
        """The guest's TSM sends START before the guest accepted the TDI (FLOW-10); see :meth:`_early`."""
        self._early(s, "start")

    @rule(s=slots)
    @recorded
    def guest_tsm_accept_early(self, s: Slot) -> None:
        """The guest's TSM sends accept before the guest attested the TDI; see :meth:`_early`."""
        self._early(s, "accept")

    @rule(s=slots)
    @recorded
    def guest_mmio_early(self, s: Slot) -> None:
        """The guest reads private MMIO it accepted before the TDI was started (DMA-05); see :meth:`_early`."""
        self._early(s, "mmio")

    def _early(self, s: Slot, kind: str) -> None:
        """The guest side jumps ahead: its TSM sends accept before attestation or start before accept, or
        the guest reads private MMIO it accepted before the TDI was started. Three rules rather than one
        with the kind as an argument: Hypothesis' derandomized search drew the argument very unevenly
        (one ``ci`` search drew the rule 45 times, every time for ``mmio``, and missed FLOW-10).

        The call goes to ``s`` if it is early there, else to the first function of any VM where it is;
        failing both, the guest first takes ``s`` forward to where the call is early (the host heals the
        link and runs the VM; then bind, attest, accept as needed) -- the point where jumping ahead
        does harm. Aimed at random, a slot was seldom
        at such a stage: whole ``ci`` runs missed a TSM that starts a TDI before the guest accepted it
        (FLOW-10) and a device that completes T=1 MMIO while CONFIG_LOCKED (DMA-05). The choice depends
        only on the state, so a record replays the same."""
        target = self._early_for(kind, prefer=s)
        gtsm = self.stack.guest_tsms.get(target.vm)
        guest = self.stack.guests.get(target.vm)
        if gtsm is None or guest is None:
            return
        if target != s:
            note(f"guest early {kind} retargeted to {target.vm}:{target.virt_id:#x}")
        v = self._vdev(target)
        if v is not None and not _is_early(v, kind) and not getattr(v, _EARLY_UNTIL[kind]):
            self._guest_ready(target.vm)
            for flag, name, call in (
                ("bound", "guest_bind", guest.connect),
                ("attested", "guest_attest", guest.attest),
                ("accepted", "guest_accept", guest.accept),
            )[: _PREP[kind]]:
                if not getattr(v, flag):
                    self._do(name, call, target.virt_id)
        if kind == "mmio":
            self._do("guest_read_private_mmio_early", guest.read_private_mmio, target.virt_id)
        else:
            self._do(f"guest_tsm_{kind}_early", getattr(gtsm, kind), target.virt_id)

    def _guest_ready(self, vm: str) -> None:
        """As a well-behaved host would have it before a guest goes on: the link up, the VM running."""
        self._heal_link()
        if any(v.name == vm and v.state.value == "created" for v in self.run._snap.kvm.vms):
            self._do("kvm_run", self.stack.vmm.run, vm)

    def _vdev(self, s: Slot) -> Any:
        view = next((g for g in self.run._snap.guests if g.vm == s.vm), None)
        return next((v for v in view.vdevs if v.virt_id == s.virt_id), None) if view is not None else None

    def _early_for(self, kind: str, *, prefer: Slot) -> Slot:
        rid_of = {(a.vm, a.virt_id): a.rid for a in self.run._snap.vmm.assignments}
        found = [
            Slot(vm=g.vm, rid=rid_of[(g.vm, v.virt_id)], virt_id=v.virt_id)
            for g in self.run._snap.guests
            for v in g.vdevs
            if _is_early(v, kind) and (g.vm, v.virt_id) in rid_of
        ]
        if not found or prefer in found:
            return prefer
        return found[0]

    # ------------------------------------------------------------------ the device
    @rule(s=slots, t_bit=st.booleans(), private=st.booleans(), from_trusted=st.booleans())
    @recorded
    def device_dma(self, s: Slot, t_bit: bool, private: bool, from_trusted: bool = False) -> None:
        """A DMA write from ``s``'s function -- or, with ``from_trusted``, from a function the TSM has
        enabled for T=1 DMA, if any is: its T=0 DMA must still take the shared table (DMA-01).

        ``from_trusted`` aims: a drawn slot was seldom one in RUN, and a ``ci`` search missed an IOMMU
        that sends T=0 DMA through the trusted table on 2 of 6 seeds."""
        rid = s.rid
        trusted = [r for r, _ in self.run._snap.iommu.trusted]
        if from_trusted and trusted and rid not in trusted:
            rid = trusted[0]
        gpa = PRIVATE_GPA if private else SHARED_GPA
        self._do(
            f"device_dma_t{int(t_bit)}_{'private' if private else 'shared'}",
            self.device.issue_dma,
            rid,
            gpa,
            b"dma payload",
            t_bit=t_bit,
        )

    # ------------------------------------------------------------------ the host, out of order or malicious
    @rule(s=slots)
    @recorded
    def host_mmap(self, s: Slot) -> None:
        fd = self._fd(s.rid)
        if fd is not None:
            self._do("host_mmap_bar", self.stack.vfio.mmap_bar, fd, s.rid)
            self._do("host_mmio_read", self.stack.vfio.host_mmio_read, fd, s.rid, 4096, 32)

    @rule(s=slots)
    @recorded
    def host_revoke(self, s: Slot) -> None:
        """VFIO revoke of ``s``'s MMIO dmabuf, whatever its state."""
        for d in self.run._snap.vfio.dmabufs:
            if d.rid == s.rid:
                self._do("host_revoke_dmabuf", self.stack.vfio.revoke_mmio_dmabuf, d.dmabuf)
                return

    @rule(s=slots)
    @recorded
    def host_revoke_private(self, s: Slot) -> None:
        """VFIO revoke of a dmabuf imported into a memslot while its function is private (``s``'s if it
        is, else the first that is): a platform that unmaps only after STOP must refuse it with a typed
        error and change nothing (MMIO-08, ERR-01).

        Aimed, and a rule of its own: a drawn slot was seldom private and mapped (a ``ci`` search missed
        a non-atomic refused revoke on 1 of 6 seeds), and as a boolean argument of ``host_revoke`` the
        case went unreached in a whole tdx run (MMIO-08 NOT EXERCISED)."""
        snap = self.run._snap
        live = [d for d in snap.vfio.dmabufs if d.attachments and not d.revoked and d.rid in snap.vfio.private_rids]
        if live:
            d = next((d for d in live if d.rid == s.rid), live[0])
            note("host revoke of a dmabuf mapped while private")
            self._do("host_revoke_dmabuf", self.stack.vfio.revoke_mmio_dmabuf, d.dmabuf)

    @rule(s=slots)
    @recorded
    def host_import_revoked(self, s: Slot) -> None:
        """The host imports a revoked dmabuf (``s``'s, revoked first if none is) into a new memslot of ``s``'s VM,
        then destroys that memslot: KVM asks the exporter for the pages, which must refuse them, so the slot
        stays unmapped until a recover (MMIO-01; flow steps 43-44).

        Aimed: KVM asks for a dmabuf's pages only when a memslot is created on it or it is recovered, and no
        drawn sequence created one on a revoked dmabuf, so a VFIO whose ``dmabuf_map`` ignored the revoke
        passed every profile."""
        vfio = self.run._snap.vfio
        open_fds = {fd for fd, *_ in vfio.open_fds}  # a closed device's dmabuf takes no new importer
        revoked = [d for d in vfio.dmabufs if d.revoked and d.fd in open_fds]
        if not revoked:
            mine = next((d for d in vfio.dmabufs if d.rid == s.rid and d.fd in open_fds), None)
            if mine is None:
                return
            self._do("host_revoke_dmabuf", self.stack.vfio.revoke_mmio_dmabuf, mine.dmabuf)
            revoked = [d for d in self.run._snap.vfio.dmabufs if d.revoked and d.dmabuf == mine.dmabuf]
            if not revoked:
                return  # the platform refused the revoke (MMIO-08 judges that)
        d = next((d for d in revoked if d.rid == s.rid), revoked[0])
        gpa = HOST_SLOT_GPA + 0x800_0000 + (d.rid & 0xFF) * 0x10_0000
        note("host import of a revoked dmabuf")
        slot = self._do("host_import_revoked_dmabuf", self.stack.kvm.create_memslot, s.vm, gpa, d.dmabuf)
        if isinstance(slot, int):
            self._do("host_destroy_memslot", self.stack.kvm.destroy_memslot, slot)

    @rule(s=slots)
    @recorded
    def host_unmap_private(self, s: Slot) -> None:
        self._do("host_unmap_private_mmio", self.stack.kvm.unmap_private_mmio, s.vm, s.rid)

    @rule(vm=any_vm, vdevices_first=st.booleans())
    @recorded
    def host_destroy_viommu(self, vm: str | Slot, vdevices_first: bool) -> None:
        """IOMMU_DESTROY of the VM's vIOMMU -- as it stands, or after destroying its vdevices first (what
        a host tearing the vIOMMU down under a running guest would do)."""
        self._destroy_viommu(_vm(vm), vdevices_first)

    def _destroy_viommu(self, vm: str, vdevices_first: bool) -> None:
        objs = self.run._snap.iommufd.objects
        vi = next((o for o in objs if o.kind.value == "viommu" and o.vm == vm), None)
        if vi is None:
            return
        if vdevices_first:
            for o in objs:
                if o.kind.value == "vdevice" and o.parent == vi.id:
                    self._do("host_destroy_vdevice", self.stack.iommufd.destroy, o.id)
        self._do("host_destroy_viommu", self.stack.iommufd.destroy, vi.id)

    @rule(s=slots)
    @recorded
    def host_destroy_vdevice(self, s: Slot) -> None:
        for o in self.run._snap.iommufd.objects:
            if o.kind.value == "vdevice" and o.vm == s.vm and o.virt_id == s.virt_id:
                self._do("host_destroy_vdevice", self.stack.iommufd.destroy, o.id)
                return

    @rule(s=slots, other=any_vm)
    @recorded
    def host_map_private_mmio(self, s: Slot, other: str | Slot) -> None:
        """The host asks KVM to map a TDI's BAR private: into the VM it is bound to before the guest
        accepted it, or -- importing the function's dmabuf into a memslot there -- into another VM."""
        vm = _vm(other)
        if not any(m.vm == vm and m.rid == s.rid for m in self.run._snap.kvm.memslots):
            dmabuf = next((d.dmabuf for d in self.run._snap.vfio.dmabufs if d.rid == s.rid), None)
            if dmabuf is None:
                return
            gpa = HOST_SLOT_GPA + (s.rid & 0xFF) * 0x10_0000
            self._do("host_import_dmabuf", self.stack.kvm.create_memslot, vm, gpa, dmabuf)
        self._do("host_map_private_mmio", self.stack.kvm.map_private_mmio, vm, s.rid)

    @rule(s=slots)
    @recorded
    def host_dma_attack(self, s: Slot) -> None:
        """The host moves the function onto an IOAS that maps *all* guest RAM, private pages included (a
        VMM may map any pages it likes), then has the device DMA with T=0 into private memory: only the
        platform keeps such a write out (TDX / SEV-SNP memory ownership checks)."""
        idev = next(
            (i for _, name, rid, i in self.run._snap.vfio.open_fds if name == self.device_name and rid == s.rid), None
        )
        vm = next((v for v in self.run._snap.kvm.vms if v.name == s.vm and v.state.value != "destroyed"), None)
        if idev is None or vm is None:
            return  # a destroyed VM's memory is gone: nothing of it left to map
        pages = frozenset(range(len(vm.shared_memory) // 4096 + vm.private_pages))
        if not any(r == s.rid and set(g) >= pages for r, _, g in self.run._snap.iommu.shared):
            if any(r == s.rid for r, _, _ in self.run._snap.iommu.shared):
                self._do("host_detach", self.stack.iommufd.detach, idev)
            ioas = self._do("host_ioas_all_ram", self.stack.iommufd.ioas_alloc, s.vm, pages)
            hwpt = self._do("host_hwpt_alloc", self.stack.iommufd.hwpt_alloc, idev, ioas) if ioas else None
            if hwpt is not None:
                self._do("host_attach", self.stack.iommufd.attach, idev, hwpt)
        self._do("host_dma_t0_private", self.device.issue_dma, s.rid, PRIVATE_GPA, b"host-driven DMA", t_bit=False)

    @rule(s=slots)
    @recorded
    def bind_after_disconnect(self, s: Slot) -> None:
        """The host tears the device's SPDM/IDE link down, then the guest asks to bind (pci-tsm: a bind
        needs a connected device). Random runs seldom get there: every well-behaved step heals the link."""
        self._do("tsm_disconnect", self.stack.tsm.disconnect, self.device_name)
        self._do("guest_bind", self._guest(s.vm).connect, s.virt_id)

    @rule(s=slots, other=vms)
    @recorded
    def host_bind_directly(self, s: Slot, other: str) -> None:
        """pci-tsm bind from the host of ``s``'s TDI to ``other``, whatever either's state."""
        self._do("host_tsm_bind", self.stack.tsm.bind, s.rid, other)

    @rule(s=slots)
    @recorded
    def host_rebind_same_vm(self, s: Slot) -> None:
        """pci-tsm bind, again, of a bound TDI to the VM that holds it: a no-op that must succeed (LIFE-06).
        See :meth:`_bound_tdi` for which TDI."""
        rid, vm = self._bound_tdi(s)
        if vm is not None:
            note("host bind of a bound TDI to its own VM")
            self._do("host_tsm_bind", self.stack.tsm.bind, rid, vm)

    @rule(s=slots, other=vms)
    @recorded
    def host_bind_held_elsewhere(self, s: Slot, other: str) -> None:
        """pci-tsm bind of a bound TDI to another VM (``other``, or the first other live VM if ``other``
        holds it): -EBUSY, and nothing changes (LIFE-07). See :meth:`_bound_tdi` for which TDI."""
        rid, vm = self._bound_tdi(s)
        if vm is None:
            return
        if other == vm:
            live = [v.name for v in self.run._snap.kvm.vms if v.state.value != "destroyed" and v.name != vm]
            if not live:
                return
            other = live[0]
        note("host bind of a bound TDI to another VM")
        self._do("host_tsm_bind", self.stack.tsm.bind, rid, other)

    def _bound_tdi(self, s: Slot) -> tuple[int, str | None]:
        """A bound TDI and its VM: ``s``'s if bound, else the first that is; with none, ``s``'s after its
        guest binds it (link up and VM running first, as a well-behaved host has them).

        Aimed, and two rules rather than one with the target VM drawn: drawn, a host bind met a bound
        TDI in 6 of 224 draws of a ``ci`` run, and with a boolean choosing the target, a later run
        still never bound a TDI held elsewhere on sev-tio (LIFE-07 NOT EXERCISED there)."""
        held = bound_vm(self.run._snap)
        bound = [rid for rid, vm in held.items() if vm is not None]
        if not bound:
            self._guest_ready(s.vm)
            guest = self.stack.guests.get(s.vm)
            if guest is not None:
                self._do("guest_bind", guest.connect, s.virt_id)
            held = bound_vm(self.run._snap)
            bound = [s.rid] if held.get(s.rid) is not None else []
        if not bound:
            return s.rid, None
        rid = s.rid if s.rid in bound else bound[0]
        return rid, held[rid]

    @rule(s=slots)
    @recorded
    def host_tdisp(self, s: Slot) -> None:
        """The host sends ``s``'s TDI each TDISP request in turn through the TSM, over a link it brings
        up first: TDX lets it originate only LOCK, GET_STATE, STOP and version/capabilities (FLOW-13).

        All four in one step, over a live link: with the request drawn and the link as it happened to
        be, a whole tdx ``ci`` run had the TSM carry a host request twice."""
        self._heal_link()
        for request in (
            "GET_DEVICE_INTERFACE_STATE",
            "GET_TDISP_VERSION",
            "GET_DEVICE_INTERFACE_REPORT",
            "START_INTERFACE",
        ):
            self._do(f"host_tdisp_{request.lower()}", self.stack.tsm.host_tdisp, s.rid, request)

    @rule(s=slots)
    @recorded
    def host_guest_request_unbound(self, s: Slot) -> None:
        from teeio_conformance.contract.guest_request import GuestRequest

        self._do("host_guest_request", self.stack.tsm.guest_request, s.rid, s.vm, GuestRequest(kind="state"))

    @rule(call=st.sampled_from(["refresh_keys", "disconnect", "connect"]))
    @recorded
    def host_tsm_link(self, call: str) -> None:
        """Raw TSM link calls: a key refresh, a disconnect, or a connect whether or not one is up."""
        if call == "connect":
            self._do("connect_ide", self.stack.vmm.connect_ide, self.device_name)
        else:
            self._do(f"tsm_{call}", getattr(self.stack.tsm, call), self.device_name)

    # ------------------------------------------------------------------ faults
    @rule(s=slots, kind=st.sampled_from(FAULTS))
    @recorded
    def fault(self, s: Slot, kind: str) -> None:
        """A fault on one function: poisoned TLP, config-space write, FLR through VFIO (of ``s``'s TDI if it is
        bound or none is, else of the first bound one)."""
        if kind == "poison":
            self._do("poisoned_tlp", self.device.poison, s.rid)
        elif kind.startswith("config_write_"):
            register = kind.removeprefix("config_write_")
            value = {"command": 0x4, "bar0": 0xF000_0000 + (s.rid & 0xFF) * 0x10000}.get(register, 0)
            self._do(kind, self.device.config_write, s.rid, register, value)
        else:
            # a reset of a bound TDI: VFIO must unbind and revoke before the FLR (DOWN-07, MMIO-09); aimed, as a
            # whole ``ci`` search missed a VFIO that resets first and unbinds after
            bound = [rid for rid, vm in bound_vm(self.run._snap).items() if vm is not None]
            rid = s.rid if s.rid in bound or not bound else bound[0]
            if (fd := self._fd(rid)) is not None:
                self._do("vfio_reset", self.stack.vfio.reset, fd, rid)

    @rule(s=slots)
    @recorded
    def vfio_close(self, s: Slot) -> None:
        """The VMM closes the function's VFIO device fd, whatever is bound to it (a crash, a kill -9).

        A rule of its own rather than one fault kind among several: in a ``ci`` run it was drawn too
        seldom to catch an iommufd that keeps the vdevice (LIFE-12) or drops its tombstone (LIFE-04)."""
        if (fd := self._fd(s.rid)) is not None:
            self._do("vfio_close", self.stack.vfio.close_device, fd)

    @rule(kind=st.sampled_from(["ide", "session_end"]))
    @recorded
    def fault_link(self, kind: str) -> None:
        """The link breaks: an IDE integrity/key failure on the device, or its SPDM session ends."""
        if kind == "ide":
            self._do("ide_key_failure", self.device.ide_failure, "injected integrity failure")
            return
        for d in self.run._snap.devices:
            if d.name == self.device_name and d.sessions:
                self._do("spdm_session_end", self.device.spdm_end, d.sessions[0])

    @rule(vm=any_vm)
    @recorded
    def stop_vm(self, vm: str | Slot) -> None:
        self._do("vm_stop", self.stack.vmm.stop_vm, _vm(vm))

    @rule(vm=any_vm)
    @recorded
    def host_destroy_vm(self, vm: str | Slot) -> None:
        self._do("kvm_destroy_vm", self.stack.kvm.destroy_vm, _vm(vm))

    @rule(vm=any_vm)
    @recorded
    def host_destroy_vm_in_use(self, vm: str | Slot) -> None:
        """KVM_DESTROY of a VM that still has memslots (``vm`` if it has, else the first that has), then
        IOMMU_DESTROY of its vIOMMU, vdevices first: the vIOMMU held the last reference, so the destroy
        KVM deferred runs now, and must leave nothing behind, as an immediate one would (DOWN-02).

        Aimed: drawn as two separate steps on the same VM, a ``ci`` search met this case on 4 of 6 seeds."""
        snap = self.run._snap
        live = {v.name for v in snap.kvm.vms if v.state.value != "destroyed"}
        in_use = sorted({m.vm for m in snap.kvm.memslots if m.vm in live})
        if not in_use:
            return
        name = _vm(vm) if _vm(vm) in in_use else in_use[0]
        note("deferred VM destroy, completed by the vIOMMU's release")
        self._do("kvm_destroy_vm", self.stack.kvm.destroy_vm, name)
        self._destroy_viommu(name, True)

    # ------------------------------------------------------------------ profile data that acts (issue 19)
    @rule(s=slots)
    @recorded
    def host_tdisp_pipelined(self, s: Slot) -> None:
        """The host queues two TDISP requests for ``s``'s TDI before collecting either: past the profile's
        outstanding-request limit the second must be -EBUSY (PROF-02). The first is then collected, so (on a
        platform that keeps to one) nothing stays queued for later steps."""
        for request in ("GET_DEVICE_INTERFACE_STATE", "GET_TDISP_VERSION"):
            self._do(f"host_tdisp_submit_{request.lower()}", self.stack.tsm.host_tdisp_submit, s.rid, request)
        self._do("host_tdisp_collect", self.stack.tsm.host_tdisp_collect, s.rid)

    @rule(s=slots)
    @recorded
    def guest_tdisp_raw(self, s: Slot) -> None:
        """The guest names TDISP requests itself through the guest-request channel -- one its profile allows
        and one it does not (STOP) -- on a TDI bound to it (``s``'s, bound first if no TDI is):
        PROF-03. Aimed like the host binds (see :meth:`_bound_tdi`)."""
        from teeio_conformance.contract.guest_request import GuestRequest

        rid, vm = self._bound_tdi(s)
        a = next((a for a in self.run._snap.vmm.assignments if a.rid == rid and a.vm == vm), None)
        if a is None:
            return
        for name in ("GET_DEVICE_INTERFACE_STATE", "STOP_INTERFACE"):
            req = GuestRequest(kind="tdisp", payload=name.encode())
            self._do(f"guest_tdisp_{name.lower()}", self.stack.vmm.ghci_guest_request, vm, a.virt_id, req)

    @rule(s=slots, many=st.booleans())
    @recorded
    def device_busy(self, s: Slot, many: bool) -> None:
        """``s``'s TDI answers BUSY for a while -- once, or longer than the TSM retries -- while the host asks
        it for its state through the TSM (RETRY-01). The request takes all the BUSY answers (one, or the first
        and all three retries) when it reaches the device; if the link was down, later requests take them."""
        self._do("device_busy", self.device.inject_busy, s.rid, 4 if many else 1)
        self._do("host_tdisp_get_state_busy", self.stack.tsm.host_tdisp, s.rid, "GET_DEVICE_INTERFACE_STATE")

    @rule(s=slots, component=st.sampled_from(("vfio", "kvm", "iommufd", "iommu")))
    @recorded
    def tsm_firmware_error(self, s: Slot, component: str) -> None:
        """A firmware or I/O error in one host component part-way through the guest's bind of ``s``, and again
        through its unbind: the first crossing into ``component`` inside each fails (FirmwareError), with the
        fail-nth walk's injector (:mod:`teeio_conformance.conformance.fail_nth`; the device is left alone
        here: its own rules would rightly call a failing device a defect). The slot is taken to where the
        verb applies first (link up, VM running; unbound for the bind). DOWN-05 and the teardown rules judge
        what is left. By component rather than by position: in a bind, VFIO and KVM are called only after
        LOCK -- the failures that need undoing -- and a position drawn from 1..8 reached them too seldom."""
        from teeio_conformance.conformance.fail_nth import _inject, _Injector

        guest = self.stack.guests.get(s.vm)
        v = self._vdev(s)
        if guest is None or v is None:
            return
        self._guest_ready(s.vm)
        if v.bound:
            self._do("guest_unbind", guest.disconnect, s.virt_id)
        for verb, call in (("bind", guest.connect), ("unbind", guest.disconnect)):
            inj = _Injector(target=component)
            with _inject(self.stack, inj):
                inj.armed = True
                try:
                    self._do(f"guest_{verb}_{component}_error", call, s.virt_id)
                finally:
                    inj.armed = False
            note(f"{verb}: firmware error at {inj.hit or 'no crossing into ' + component}")

    @rule(s=slots)
    @recorded
    def device_entropy_failure(self, s: Slot) -> None:
        """The device cannot make a START nonce for its next LOCK (INSUFFICIENT_ENTROPY) as the guest binds
        ``s`` (unbound first if it is bound; link up, VM running): the bind is refused and must change
        nothing (ERR-01) -- the CC vIOMMU set up for it is taken down again."""
        guest = self.stack.guests.get(s.vm)
        v = self._vdev(s)
        if guest is None or v is None:
            return
        self._guest_ready(s.vm)
        if v.bound:
            self._do("guest_unbind", guest.disconnect, s.virt_id)
        self._do("device_entropy_failure", self.device.inject_entropy_failure, 1)
        self._do("guest_bind_no_entropy", guest.connect, s.virt_id)
        self._do("device_entropy_back", self.device.inject_entropy_failure, 0)

    @rule(s=slots)
    @recorded
    def device_dma_t0_from_trusted(self, s: Slot) -> None:
        """A T=0 DMA at private memory from a function trusted for T=1 DMA (``s``'s if it is, else the first
        that is; with none, the guest first takes ``s`` as far as accepted): only the shared table may
        translate it, so it must fault (DMA-01, DMA-03). A rule of its own: as three drawn arguments of
        ``device_dma`` the combination became too rare once the machine grew (an IOMMU sending T=0 through
        the trusted table went uncaught on seed 0 of the ci search)."""
        trusted = [r for r, _ in self.run._snap.iommu.trusted]
        if not trusted:
            guest = self.stack.guests.get(s.vm)
            v = self._vdev(s)
            if guest is None or v is None:
                return
            self._guest_ready(s.vm)
            for flag, name, call in (
                ("bound", "guest_bind", guest.connect),
                ("attested", "guest_attest", guest.attest),
                ("accepted", "guest_accept", guest.accept),
            ):
                if not getattr(v, flag):
                    self._do(name, call, s.virt_id)
            trusted = [r for r, _ in self.run._snap.iommu.trusted]
        if not trusted:
            return
        rid = s.rid if s.rid in trusted else trusted[0]
        self._do("device_dma_t0_private_from_trusted", self.device.issue_dma, rid, PRIVATE_GPA, b"dma", t_bit=False)

    @rule()
    @recorded
    def surprise_removal(self) -> None:
        """The device is pulled from the bus without warning, the PCI core removes it (VFIO closes what was
        open of it, the TSM disconnects it: DOWN-06), and it is plugged in again at power-on state, so the
        example goes on with the same device (the VMM's handles to it are stale, as after a VFIO close)."""
        self._do("surprise_remove", self.device.surprise_remove)
        self._do("pci_remove", self.stack.vfio.pci_remove, self.device_name)
        self._do("replug", self.device.replug)

    # ------------------------------------------------------------------ helpers
    def _guest(self, vm: str) -> Any:
        return self.stack.guests[vm]

    def _fd(self, rid: int) -> int | None:
        for fd, name, frid, _ in self.run._snap.vfio.open_fds:
            if name == self.device_name and frid == rid:
                return int(fd)
        return None

    # ------------------------------------------------------------------ liveness (issue 14)
    def _fresh(self) -> bool:
        """Nothing has happened yet but the first VM's creation: no link, no assignment, no VM running."""
        snap = self.run._snap
        return (
            not snap.tsm.connected
            and not snap.vmm.assignments
            and all(v.state.value == "created" for v in snap.kvm.vms)
            and not snap.iommufd.objects
        )

    @rule()
    @precondition(lambda self: self._fresh())
    @recorded
    def lifecycle(self) -> None:
        """The corrected lifecycle end to end on this stack's first function, as a well-behaved host and guest
        (``conformance/rules/liveness.py``): one checked step per lifecycle step, stopping at the first that
        is refused. Only on a fresh stack (drawn in any other state a step could rightly be refused);
        ``conformance/test_liveness.py`` runs it once per profile before the search."""
        from teeio_conformance.conformance.rules.liveness import PREFIX, SHARED_PAYLOAD

        stack, dev, rid, virt = self.stack, self.device, self.device.pf_rid, VIRT_BASE
        vm = ""

        def guest() -> Any:
            return stack.guests[vm]

        def host_mmap() -> None:
            fd = self._fd(rid)
            stack.vfio.mmap_bar(-1 if fd is None else fd, rid)

        def host_read() -> bytes:
            fd = self._fd(rid)
            data: bytes = stack.vfio.host_mmio_read(-1 if fd is None else fd, rid, 0, 4)
            return data

        steps: list[tuple[str, Any]] = [
            ("connect_ide", lambda: stack.vmm.connect_ide(self.device_name)),
            ("create_vm", stack.create_vm),
            ("assign", lambda: stack.vmm.assign(vm, self.device_name, rid, virt)),
            ("run", lambda: stack.vmm.run(vm)),
            ("enumerate", lambda: guest().enumerate(virt)),
            ("bind", lambda: guest().connect(virt)),
            ("attest", lambda: guest().attest(virt)),
            ("accept", lambda: guest().accept(virt)),
            ("start", lambda: guest().start(virt)),
            ("private_mmio", lambda: guest().read_private_mmio(virt)),
            ("private_dma", lambda: dev.issue_dma(rid, PRIVATE_GPA, b"device->guest private data", t_bit=True)),
            ("unbind", lambda: guest().disconnect(virt)),
            ("enumerate_again", lambda: guest().enumerate(virt)),
            ("host_mmap", host_mmap),
            ("host_read", host_read),
            ("shared_dma", lambda: dev.issue_dma(rid, SHARED_GPA, SHARED_PAYLOAD, t_bit=False)),
            ("vm_stop", lambda: stack.vmm.stop_vm(vm)),
            ("disconnect", lambda: stack.tsm.disconnect(self.device_name)),
        ]
        for name, call in steps:
            result, error = self.run.step(PREFIX + name, call)
            note(f"{PREFIX}{name}: {'refused ' + type(error).__name__ if error else 'ok'}")
            if error is not None:
                return  # the liveness rule reported it, unless it is not checked in this run
            if name == "create_vm":
                vm = str(result)

    @rule(target=slots, fn=st.integers(0, 3))
    @recorded
    def attest_after_bar_move(self, fn: int) -> Any:
        """A fresh VM is brought up to running; the host moves the function's BAR0 by a config write before
        the guest binds; the guest then binds and attests. The report's ranges now miss the vBAR: a guest
        must refuse the evidence (ATT-04) -- the device told the truth (ATT-03 holds).

        Aimed: as a drawn fault before a drawn bind and attest, a ``ci`` run never met it and a guest that
        accepted ranges outside its vBAR passed."""
        # the bring-up's own body: calling the recorded rule would log a second step, and a replay would
        # bring up twice (the noninterference twin diverged that way)
        slot = inspect.unwrap(FullStack.bring_up)(self, fn=fn, stage="running")
        if not isinstance(slot, Slot):
            return multiple()
        value = 0xF000_0000 + (slot.rid & 0xFF) * 0x10000
        self._do("config_write_bar0", self.device.config_write, slot.rid, "bar0", value)
        guest = self.stack.guests.get(slot.vm)
        if guest is not None:
            self._do("guest_bind", guest.connect, slot.virt_id)
            self._do("guest_attest", guest.attest, slot.virt_id)
        return slot

    @rule(target=slots)
    @recorded
    def two_functions_one_vm(self) -> Any:
        """A fresh VM gets two functions at two virtual IDs (the host first stops the VMs holding them); its
        guest then takes the second through bind, attest, accept and start. Each GHCI call must act on the
        vdevice of the virtual ID the guest named (FLOW-20).

        Aimed: a drawn ``assign`` seldom gave a VM a second function before it ran, and a VMM that sent
        every guest request to the VM's first vdevice passed a whole ``ci`` run."""
        if len(self.rids) < 2:
            return multiple()
        rids = self.rids[:2]
        taken = {a.rid: a.vm for a in self.run._snap.vmm.assignments}
        for held in sorted({taken[r] for r in rids if r in taken}):
            self._do("vm_stop", self.stack.vmm.stop_vm, held)
        vm = self._do("create_vm", self.stack.create_vm)
        if vm is None:
            return multiple()
        self._heal_link()
        slots: list[Slot] = []
        for rid in rids:
            slot = Slot(vm=str(vm), rid=rid, virt_id=VIRT_BASE + self.rids.index(rid))
            if self._do("assign", self.stack.vmm.assign, slot.vm, self.device_name, rid, slot.virt_id) is None:
                return multiple(*slots)
            slots.append(slot)
        self._do("kvm_run", self.stack.vmm.run, slot.vm)
        guest = self.stack.guests.get(slot.vm)
        if guest is not None:
            for name, call in (
                ("guest_bind", guest.connect),
                ("guest_attest", guest.attest),
                ("guest_accept", guest.accept),
                ("guest_start", guest.start),
            ):
                self._do(name, call, slots[-1].virt_id)
        return multiple(*slots)

    @rule(target=slots, fn=st.integers(0, 3))
    @recorded
    def accept_after_revoke(self, fn: int) -> Any:
        """The guest binds and attests; the host revokes the function's dmabufs (a revoke it may do before
        the TDI is accepted on some platforms); the guest then accepts. KVM must not map a revoked slot,
        private or shared (MMIO-01), whatever the TSM asks.

        Aimed: drawn apart, a revoke between attest and accept of the same slot never came up in a ``ci``
        run, and a KVM that mapped revoked memslots private at accept passed every profile."""
        slot = inspect.unwrap(FullStack.bring_up)(self, fn=fn, stage="running")
        if not isinstance(slot, Slot):
            return multiple()
        guest = self.stack.guests.get(slot.vm)
        if guest is None:
            return slot
        self._do("guest_bind", guest.connect, slot.virt_id)
        self._do("guest_attest", guest.attest, slot.virt_id)
        for d in self.stack.vfio.snapshot().dmabufs:
            if d.rid == slot.rid and not d.revoked:
                self._do("host_revoke_dmabuf", self.stack.vfio.revoke_mmio_dmabuf, d.dmabuf)
        self._do("guest_accept", guest.accept, slot.virt_id)
        return slot

    @rule(target=slots, fn=st.integers(0, 3))
    @recorded
    def trusted_dma_before_start(self, fn: int) -> Any:
        """T=1 DMA from a function whose TDI is not in RUN, on a Secure link: after the VM runs (TDI
        CONFIG_UNLOCKED), after the guest binds (CONFIG_LOCKED), and after a config write puts the locked TDI
        in ERROR. Each must be refused and write nothing (DMA-01, DMA-02, DMA-03).

        Aimed: the reach matrix of a whole ``ci`` run showed T=1 DMA only from RUN TDIs -- a drawn DMA
        came from a drawn slot, which was seldom at these stages with the link up."""
        slot = inspect.unwrap(FullStack.bring_up)(self, fn=fn, stage="running")
        if not isinstance(slot, Slot):
            return multiple()
        dma = (slot.rid, PRIVATE_GPA, b"early T=1 payload")
        self._heal_link()
        self._do("device_dma_t1_unlocked", self.device.issue_dma, *dma, t_bit=True)
        guest = self.stack.guests.get(slot.vm)
        if guest is not None:
            self._do("guest_bind", guest.connect, slot.virt_id)
            self._heal_link()
            self._do("device_dma_t1_locked", self.device.issue_dma, *dma, t_bit=True)
            self._do("config_write_command", self.device.config_write, slot.rid, "command", 0x4)
            self._do("device_dma_t1_error", self.device.issue_dma, *dma, t_bit=True)
        return slot

    # ------------------------------------------------------------------ issue 14 gaps
    @rule(s=slots, kind=st.sampled_from(["state", "accept_mmio"]))
    @recorded
    def guest_request_other_vm(self, s: Slot, kind: str) -> None:
        """A guest request for a bound TDI that names another VM than the one it is bound to (a host forging
        the requester, or a VM reaching for a TDI it does not own): the TSM must refuse it (LIFE-15). The
        other VM is any live one, created first if there is none. See :meth:`_bound_tdi` for which TDI."""
        from teeio_conformance.contract.guest_request import GuestRequest

        rid, vm = self._bound_tdi(s)
        if vm is None:
            return
        live = [v.name for v in self.run._snap.kvm.vms if v.state.value != "destroyed" and v.name != vm]
        other = live[0] if live else self._do("create_vm", self.stack.create_vm)
        if not isinstance(other, str):
            return
        note(f"guest request {kind} for a TDI of {vm}, from {other}")
        self._do("guest_request_other_vm", self.stack.tsm.guest_request, rid, other, GuestRequest(kind=kind))

    # ------------------------------------------------------------------ optional TDISP features (issue 19)
    @rule(s=slots)
    @recorded
    def guest_vdm(self, s: Slot) -> None:
        """The guest sends its TDI vendor-defined requests through the guest-request channel (``s``'s TDI, bound
        first if no TDI is; see :meth:`_bound_tdi`): one for the vendor protocol the reference device speaks and
        one for a vendor it does not know. The TSM must carry each to the device and the answer -- a
        VDM_RESPONSE, or a VENDOR_SPECIFIC_ERROR with its extended data -- back unchanged (VDM-02)."""
        from teeio_conformance.contract.guest_request import GuestRequest

        rid, vm = self._bound_tdi(s)
        a = next((a for a in self.run._snap.vmm.assignments if a.rid == rid and a.vm == vm), None)
        if a is None:
            return
        for name, vendor in (("known", b"\xfe\xff"), ("unknown", b"\x34\x12")):
            req = GuestRequest(kind="vdm", payload=bytes([0, len(vendor)]) + vendor + b"guest")
            self._do(f"guest_vdm_{name}_vendor", self.stack.vmm.ghci_guest_request, vm, a.virt_id, req)

    @rule(s=slots)
    @recorded
    def host_p2p(self, s: Slot) -> None:
        """A P2P stream between TDIs of two devices. With a second device: a fresh VM gets ``s``'s function and the
        second device's first function, its guest takes both to RUN, and the host TSM binds the pair, unbinds it,
        tries to bind it for another VM (refused: P2P-04), and binds it again, leaving it bound for later steps
        to tear down. With one device there is no pair: the TSM is asked to join a started TDI (``s``'s, taken
        to RUN first if no TDI is started) with another function of the same device, and must refuse.

        (The device rules follow one device's SPDM sessions and key owner, so a second device is for a SUT
        factory that gives one -- a mutant, or a test -- rather than the default run.)"""
        names = list(self.stack.devices)
        tsm = self.stack.tsm
        if len(names) < 2:
            self._p2p_one_device(s)
            return
        peer_name = names[1]
        prid = min(self.stack.devices[peer_name].rids())
        taken = {a.rid: a.vm for a in self.run._snap.vmm.assignments}
        for held in sorted({taken[r] for r in (s.rid, prid) if r in taken}):
            self._do("vm_stop", self.stack.vmm.stop_vm, held)
        vm = str(self._do("create_vm", self.stack.create_vm))
        self._heal_link()
        if not any(d == peer_name for d, _ in self.run._snap.tsm.connected):
            self._do("connect_ide_peer", self.stack.vmm.connect_ide, peer_name)
        pairs = ((self.device_name, s.rid, VIRT_BASE + self.rids.index(s.rid)), (peer_name, prid, P2P_PEER_VIRT))
        for dev, rid, virt in pairs:
            if self._do("assign", self.stack.vmm.assign, vm, dev, rid, virt) is None:
                return
        self._do("kvm_run", self.stack.vmm.run, vm)
        guest = self.stack.guests.get(vm)
        if guest is None:
            return
        for _, _, virt in pairs:
            for name, call in (
                ("guest_bind", guest.connect),
                ("guest_attest", guest.attest),
                ("guest_accept", guest.accept),
                ("guest_start", guest.start),
            ):
                self._do(name, call, virt)
        self._do("host_bind_p2p", tsm.bind_p2p, vm, s.rid, prid)
        self._do("host_unbind_p2p", tsm.unbind_p2p, s.rid, prid)
        other = next((v.name for v in self.run._snap.kvm.vms if v.name != vm and v.state.value != "destroyed"), None)
        if other is not None:
            note("P2P bind of another VM's TDIs")
            self._do("host_bind_p2p_other_vm", tsm.bind_p2p, other, s.rid, prid)
        self._do("host_bind_p2p", tsm.bind_p2p, vm, s.rid, prid)

    def _started(self) -> list[Any]:
        """The TSM's records of this device's TDIs bound, started and (the device says) in RUN."""
        run = {rid for rid in self.rids if self._state(rid) == "RUN"}
        return [t for t in self.run._snap.tsm.tdis if t.started and t.vm is not None and t.rid in run]

    def _p2p_one_device(self, s: Slot) -> None:
        started = self._started()
        if not started:
            self._guest_ready(s.vm)
            guest = self.stack.guests.get(s.vm)
            for flag, name, verb in (
                ("bound", "guest_bind", "connect"),
                ("attested", "guest_attest", "attest"),
                ("accepted", "guest_accept", "accept"),
                ("running", "guest_start", "start"),
            ):
                v = self._vdev(s)
                if guest is not None and v is not None and not getattr(v, flag):
                    self._do(name, getattr(guest, verb), s.virt_id)
            started = self._started()
        t = next((t for t in started if t.rid == s.rid), started[0] if started else None)
        rid, vm = (t.rid, str(t.vm)) if t is not None else (s.rid, s.vm)
        other = next((r for r in self.rids if r != rid), rid)
        note("P2P bind of two functions of one device")
        self._do("host_bind_p2p_one_device", self.stack.tsm.bind_p2p, vm, rid, other)
