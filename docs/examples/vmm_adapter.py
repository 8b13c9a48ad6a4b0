"""A VMM-only adapter: your VMM is the system under test, the reference plays KVM, VFIO, IOMMUFD, the TSMs and
the device (docs/sut-contract.md, "One layer as the SUT").

The VMM's duty in TEE-IO is *order*: connect the link, open the device, map its BAR, build shared DMA and the
vIOMMU and vdevice -- all before KVM runs (flow correction 1) -- forward the guest's calls to the vdevice, and at
stop tear down vdevice, vIOMMU, device file, hwpt, IOAS, VM. An adapter for a real VMM turns each operation below
into what drives it (QMP commands to QEMU, a cloud-hypervisor API call) and reads back the IDs it got; here the
VMM is written out in Python so the example runs anywhere. It imports the contract and the composition entry
point only.

Run it under the suite::

    pytest --pyargs teeio_conformance.conformance --sut vmm_adapter:make_sut    # with docs/examples on sys.path

``LATE_VDEVICE = True`` plants a bug: vIOMMU and vdevice are allocated when the guest binds, after KVM run. The
suite catches it by FLOW-01 (tests/unit/test_adapters.py).
"""

from __future__ import annotations

import contextlib
from typing import Any

import attrs

from teeio_conformance.contract.errors import Busy, InvalidState, NotFound, StackError
from teeio_conformance.contract.guest_request import GuestRequest
from teeio_conformance.contract.peers import Peers
from teeio_conformance.contract.profiles import Profile, StartSender
from teeio_conformance.contract.trace import Actor, Trace, operation, query
from teeio_conformance.reference_impl.compose import compose

BAR_GPA = 0x10_0000
BAR_STRIDE = 0x1_0000
SHARED_GFNS = frozenset(range(4, 8))  # the guest's shared pages (the reference KVM's default layout)


@attrs.frozen
class Assignment:
    """One function given to one VM: the handles this VMM holds (the VMM snapshot's ``assignments``)."""

    vm: str
    device: str
    rid: int
    virt_id: int
    fd: int
    dmabuf: int
    memslot: int
    bar_gpa: int
    ioas: int
    hwpt: int
    viommu: int
    vdevice: int


@attrs.frozen
class ExampleVmmSnapshot:
    assignments: tuple[Assignment, ...]


class ExampleVmm(Actor):
    actor_name = "vmm"
    LATE_VDEVICE = False  # the planted bug (see the module doc)

    def __init__(self, trace: Trace, profile: Profile) -> None:
        super().__init__(trace)
        self.profile = profile
        self._p: Peers | None = None
        self._assigned: dict[tuple[str, int], Assignment] = {}
        self._per_vm: dict[str, tuple[int, int, int]] = {}  # vm -> (viommu, hwpt, ioas)
        self._attached: set[int] = set()

    def _attach(self, peers: Peers) -> None:
        self._p = peers

    @property
    def _peers(self) -> Peers:
        if self._p is None:
            raise InvalidState("the VMM was not attached to a stack (compose() does that)")
        return self._p

    def _idev(self, fd: int) -> int:
        return {f: i for f, _, _, i in self._peers.vfio.snapshot().open_fds}[fd]

    @operation()
    def connect_ide(self, device: str) -> int:
        return int(self._peers.tsm.connect(device))

    @operation()
    def assign(self, vm: str, device: str, rid: int, virt_id: int) -> Assignment:
        p = self._peers
        if (vm, virt_id) in self._assigned:
            raise InvalidState(f"{vm} already has a function at virtual ID {virt_id:#x}")
        if any(a.device == device and a.rid == rid for a in self._assigned.values()):
            raise Busy(f"function {rid:#06x} of {device} is assigned already")
        if p.kvm.vm_state(vm).value != "created":
            raise InvalidState(f"{vm} runs already: assign before KVM run")
        kept = self._per_vm.get(vm)
        if kept is not None and kept[0] not in {o.id for o in p.iommufd.snapshot().objects}:
            del self._per_vm[vm]  # destroyed behind our back: build again
        undo: list[Any] = []
        try:
            fd = p.vfio.open_device(device, rid)
            undo.append(lambda: p.vfio.close_device(fd))
            idev = self._idev(fd)
            dmabuf = p.vfio.create_dmabuf(fd, rid)
            bar_gpa = BAR_GPA + BAR_STRIDE * sum(1 for a in self._assigned.values() if a.vm == vm)
            memslot = p.kvm.create_memslot(vm, bar_gpa, dmabuf)
            undo.append(lambda: p.kvm.destroy_memslot(memslot))
            if vm not in self._per_vm:
                ioas = p.iommufd.ioas_alloc(vm, SHARED_GFNS)
                hwpt = p.iommufd.hwpt_alloc(idev, ioas)
                p.iommufd.attach(idev, hwpt)
                viommu = -1 if self.LATE_VDEVICE else p.iommufd.viommu_alloc(hwpt, vm)
                self._per_vm[vm] = (viommu, hwpt, ioas)
                undo.append(lambda: self._drop(vm))
            elif idev not in self._attached:
                p.iommufd.attach(idev, self._per_vm[vm][1])
            self._attached.add(idev)
            viommu, hwpt, ioas = self._per_vm[vm]
            vdevice = -1 if self.LATE_VDEVICE else p.iommufd.vdevice_alloc(viommu, idev, virt_id, rid)
        except StackError:
            for step in reversed(undo):
                step()
            raise
        a = Assignment(vm, device, rid, virt_id, fd, dmabuf, memslot, bar_gpa, ioas, hwpt, viommu, vdevice)
        self._assigned[(vm, virt_id)] = a
        guest = p.guests.get(vm)
        if guest is not None:
            guest.plug(virt_id, bar_gpa, p.devices[device].bar_range(rid)[1])
        return a

    def _drop(self, vm: str) -> None:
        for obj in self._per_vm.pop(vm, ()):
            if obj >= 0:
                with contextlib.suppress(StackError):
                    self._peers.iommufd.destroy(obj)

    @operation()
    def run(self, vm: str) -> None:
        self._peers.kvm.run(vm)

    def _vdevice(self, vm: str, virt_id: int) -> int:
        a = self._assigned.get((vm, virt_id))
        if a is None:
            raise NotFound(f"{vm} has no function at virtual ID {virt_id:#x}")
        if a.vdevice < 0:  # the planted bug: allocate now, with the VM already running
            viommu, hwpt, ioas = self._per_vm[vm]
            if viommu < 0:
                viommu = self._peers.iommufd.viommu_alloc(hwpt, vm)
                self._per_vm[vm] = (viommu, hwpt, ioas)
            vdevice = self._peers.iommufd.vdevice_alloc(viommu, self._idev(a.fd), virt_id, a.rid)
            a = self._assigned[(vm, virt_id)] = attrs.evolve(a, viommu=viommu, vdevice=vdevice)
        return a.vdevice

    @operation()
    def ghci_bind(self, vm: str, virt_id: int) -> None:
        self._peers.iommufd.vdevice_tsm_bind(self._vdevice(vm, virt_id))

    @operation()
    def ghci_guest_request(self, vm: str, virt_id: int, request: GuestRequest) -> Any:
        vdevice = self._vdevice(vm, virt_id)
        if request.kind == "start" and self.profile.start_sender is StartSender.HOST:
            self._peers.iommufd.vdevice_host_start(vdevice)  # CCA: the host starts on the realm's request
            return None
        return self._peers.iommufd.vdevice_guest_request(vdevice, request)

    @operation()
    def ghci_unbind(self, vm: str, virt_id: int) -> None:
        self._peers.iommufd.vdevice_tsm_unbind(self._vdevice(vm, virt_id))

    @operation()
    def stop_vm(self, vm: str) -> None:
        p = self._peers
        state = p.kvm.vm_state(vm).value
        if state == "destroyed":
            raise InvalidState(f"{vm} is destroyed already")
        if state == "running":
            p.kvm.stop(vm)
        mine = [a for a in self._assigned.values() if a.vm == vm]
        for a in mine:
            if a.vdevice >= 0:
                with contextlib.suppress(NotFound):
                    p.iommufd.destroy(a.vdevice)
        kept = self._per_vm.pop(vm, None)
        if kept is not None and kept[0] >= 0:
            with contextlib.suppress(NotFound):
                p.iommufd.destroy(kept[0])
        for a in mine:
            open_fds = {f: i for f, _, _, i in p.vfio.snapshot().open_fds}
            if a.fd in open_fds:
                self._attached.discard(open_fds[a.fd])
                with contextlib.suppress(NotFound):
                    p.vfio.close_device(a.fd)
        for a in mine:
            with contextlib.suppress(NotFound):
                p.kvm.destroy_memslot(a.memslot)
        if kept is not None:
            for obj in kept[1:]:
                with contextlib.suppress(NotFound):
                    p.iommufd.destroy(obj)
        for a in mine:
            del self._assigned[(a.vm, a.virt_id)]
        if p.kvm.vm_state(vm).value != "destroyed":
            p.kvm.destroy_vm(vm)

    @query
    def snapshot(self) -> ExampleVmmSnapshot:
        return ExampleVmmSnapshot(assignments=tuple(self._assigned.values()))


class LateVdeviceVmm(ExampleVmm):
    LATE_VDEVICE = True


make_sut = compose(vmm=ExampleVmm)
"""The SUT factory: ``--sut vmm_adapter:make_sut``."""

make_buggy_sut = compose(vmm=LateVdeviceVmm)
"""The same VMM with the planted bug (FLOW-01)."""
