"""The VMM (QEMU): it sequences the lifecycle; the kernel only refuses what would break it.

Jason Gunthorpe (rules-seed A.6): userspace sequences, the kernel enforces only what keeps the
system from crashing. So the VMM here does the corrected flow of flow.md in order -- connect,
open the device, dmabuf + memslot, shared DMA, vIOMMU + vdevice, *then* KVM run -- answers the
guest's GHCI calls by forwarding them to the vdevice, and at VM stop tears down vdevice, vIOMMU,
hwpt/idev (detach, hwpt, IOAS), memslots, then the VFIO device file and the VM, in that order (flow.md's
corrected teardown). A VMM that misorders is what the suite hunts.
"""

from __future__ import annotations

import contextlib
from typing import Any

import attrs

from teeio_conformance.contract.errors import Busy, InvalidState, NotFound, StackError
from teeio_conformance.contract.profiles import Profile, StartSender
from teeio_conformance.contract.trace import Actor, Trace, operation, query
from teeio_conformance.reference_impl.iommufd import GuestRequest, request_step

__all__ = ["Assignment", "Vmm", "VmmSnapshot"]

BAR_GPA_BASE = 0x10_0000
BAR_GPA_STRIDE = 0x1_0000


@attrs.frozen
class Assignment:
    """One function of a device given to one VM: every handle the VMM holds for it."""

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
class VmmSnapshot:
    assignments: tuple[Assignment, ...]


class Vmm(Actor):
    actor_name = "vmm"

    def __init__(self, trace: Trace, profile: Profile) -> None:
        super().__init__(trace)
        self.profile = profile
        self._assignments: dict[tuple[str, int], Assignment] = {}
        self._fds: dict[tuple[str, int], int] = {}
        self._viommus: dict[str, tuple[int, int, int]] = {}  # vm -> (viommu, hwpt, ioas)
        self._guests: dict[str, Any] = {}
        self._attached: set[int] = set()
        self._kvm: Any = None
        self._vfio: Any = None
        self._iommufd: Any = None
        self._tsm: Any = None
        self._devices: dict[str, Any] = {}
        self._guest_pages = 8
        self._private_pages = 4

    def _wire(
        self, kvm: Any, vfio: Any, iommufd: Any, tsm: Any, devices: dict[str, Any], guests: dict[str, Any]
    ) -> None:
        self._kvm, self._vfio, self._iommufd, self._tsm = kvm, vfio, iommufd, tsm
        self._devices, self._guests = devices, guests

    # ------------------------------------------------------------------ setup (before KVM run)
    @operation()
    def connect_ide(self, device: str) -> int:
        """Step 1: ask the TSM to connect (SPDM session + IDE keys)."""
        sid: int = self._tsm.connect(device)
        return sid

    @operation()
    def assign(self, vm: str, device: str, rid: int, virt_id: int) -> Assignment:
        """Steps 2-9 and 15-16: everything a function needs before the guest runs (correction 1)."""
        if (vm, virt_id) in self._assignments:
            raise InvalidState(f"{vm} already has a device at virtual ID {virt_id:#x}")
        taken = [a for a in self._assignments.values() if a.device == device and a.rid == rid]
        if taken:
            raise Busy(f"function {rid:#06x} of {device} is already assigned to {taken[0].vm}")
        if self._kvm.vm_state(vm).value != "created":
            raise InvalidState(f"{vm} is {self._kvm.vm_state(vm).value}: assign before KVM run (flow corr. 1)")
        have = self._viommus.get(vm)
        if have is not None and have[0] not in {o.id for o in self._iommufd.snapshot().objects}:
            del self._viommus[vm]  # the host destroyed it behind our back: build a new one
        undo: list[Any] = []  # a refused or failed assign leaves nothing behind
        try:
            fd = self._vfio.open_device(device, rid)
            undo.append(lambda: self._vfio.close_device(fd))
            idev = {f: i for f, _, _, i in self._vfio.snapshot().open_fds}[fd]
            dmabuf = self._vfio.create_dmabuf(fd, rid)
            count = len([a for a in self._assignments.values() if a.vm == vm])
            bar_gpa = BAR_GPA_BASE + BAR_GPA_STRIDE * count
            memslot = self._kvm.create_memslot(vm, bar_gpa, dmabuf)
            undo.append(lambda: self._kvm.destroy_memslot(memslot))
            viommu, hwpt, ioas = self._shared_dma(vm, idev, undo)
            vdevice = self._iommufd.vdevice_alloc(viommu, idev, virt_id, rid)
            undo.append(lambda: self._iommufd.destroy(vdevice))
            a = Assignment(
                vm=vm,
                device=device,
                rid=rid,
                virt_id=virt_id,
                fd=fd,
                dmabuf=dmabuf,
                memslot=memslot,
                bar_gpa=bar_gpa,
                ioas=ioas,
                hwpt=hwpt,
                viommu=viommu,
                vdevice=vdevice,
            )
            guest = self._guests.get(vm)
            if guest is not None:
                guest.plug(virt_id, bar_gpa, self._devices[device].bar_range(rid)[1])
        except StackError:
            for step in reversed(undo):
                with contextlib.suppress(StackError):
                    step()
            raise
        self._fds[(device, rid)] = fd
        self._assignments[(vm, virt_id)] = a
        return a

    def _shared_dma(self, vm: str, idev: int, undo: list[Any]) -> tuple[int, int, int]:
        """Steps 7-9 (shared DMA: IOAS, hwpt, attach) and 15 (one vIOMMU per VM); each object made is
        undone, in reverse, if the assignment fails later."""
        have = self._viommus.get(vm)
        if have is None:
            gfns = frozenset(range(self._private_pages, self._guest_pages))
            ioas = self._iommufd.ioas_alloc(vm, gfns)
            undo.append(lambda: self._iommufd.destroy(ioas))
            hwpt = self._iommufd.hwpt_alloc(idev, ioas)
            undo.append(lambda: self._iommufd.destroy(hwpt))
            self._attach(idev, hwpt, undo)
            viommu = self._iommufd.viommu_alloc(hwpt, vm)
            undo.append(lambda: self._iommufd.destroy(viommu))
            have = self._viommus[vm] = (viommu, hwpt, ioas)
            undo.append(lambda: self._viommus.pop(vm, None))
        elif idev not in self._attached:
            self._attach(idev, have[1], undo)
        return have

    def _attach(self, idev: int, hwpt: int, undo: list[Any]) -> None:
        self._iommufd.attach(idev, hwpt)
        self._attached.add(idev)
        undo.append(lambda: self._detach(idev))

    def _detach(self, idev: int) -> None:
        self._iommufd.detach(idev)
        self._attached.discard(idev)

    @operation()
    def run(self, vm: str) -> None:
        """Step 10: KVM run. The vPCI functions are visible to the guest from now on, in T=0 mode."""
        self._kvm.run(vm)

    # ------------------------------------------------------------------ GHCI handlers (guest -> host)
    def _vdev(self, vm: str, virt_id: int) -> int:
        a = self._assignments.get((vm, virt_id))
        if a is None:
            raise NotFound(f"{vm} has no device at virtual ID {virt_id:#x}")
        return a.vdevice

    @operation(step="13")
    def ghci_bind(self, vm: str, virt_id: int) -> None:
        self._iommufd.vdevice_tsm_bind(self._vdev(vm, virt_id))

    @operation(step=request_step(0))
    def ghci_guest_request(self, vm: str, virt_id: int, request: GuestRequest) -> Any:
        vdev = self._vdev(vm, virt_id)
        if request.kind == "start" and self.profile.start_sender is StartSender.HOST:
            self._iommufd.vdevice_host_start(vdev)  # CCA: the host starts on the realm's request
            return None
        return self._iommufd.vdevice_guest_request(vdev, request)

    @operation(step="37")
    def ghci_unbind(self, vm: str, virt_id: int) -> None:
        self._iommufd.vdevice_tsm_unbind(self._vdev(vm, virt_id))

    # ------------------------------------------------------------------ VM stop
    @operation()
    def stop_vm(self, vm: str) -> None:
        """Stop, then tear down in flow.md's corrected order: vdevices, the vIOMMU, the shared DMA (idevs
        detached, hwpt and IOAS destroyed), KVM's memslots (the importer lets go of the dmabufs), then the
        VFIO device files (which end the idevs), and finally the VM. Every handle is dropped only once its
        object is gone, so a stop that failed halfway (a firmware error below) can simply be run again."""
        state = self._kvm.vm_state(vm).value
        if state == "destroyed":
            raise InvalidState(f"{vm} is already destroyed")
        if state == "running":
            self._kvm.stop(vm)
        mine = [a for a in self._assignments.values() if a.vm == vm]
        for a in mine:
            with contextlib.suppress(NotFound):  # tombstoned (its device file was closed under it), or gone
                self._iommufd.destroy(a.vdevice)
        have = self._viommus.get(vm)
        if have is not None:
            with contextlib.suppress(NotFound):  # the host may have destroyed it already
                self._iommufd.destroy(have[0])
        idevs = {f: i for f, _, _, i in self._vfio.snapshot().open_fds}
        for a in mine:
            idev = idevs.get(self._fds.get((a.device, a.rid), -1))
            if idev is not None and idev in self._attached:
                with contextlib.suppress(NotFound, InvalidState):  # the host may have detached it
                    self._iommufd.detach(idev)
                self._attached.discard(idev)
        if have is not None:
            for obj in have[1:]:
                with contextlib.suppress(NotFound):
                    self._iommufd.destroy(obj)
            self._viommus.pop(vm, None)
        for a in mine:
            with contextlib.suppress(NotFound):
                self._kvm.destroy_memslot(a.memslot)
        for a in mine:
            fd = self._fds.get((a.device, a.rid))
            if fd is not None:
                with contextlib.suppress(NotFound):  # the host closed it already
                    self._vfio.close_device(fd)
                self._attached.discard(idevs.get(fd, -1))
                del self._fds[(a.device, a.rid)]
        for a in mine:
            del self._assignments[(a.vm, a.virt_id)]
        if self._kvm.vm_state(vm).value != "destroyed":  # the host may have dropped it already
            self._kvm.destroy_vm(vm)

    @query
    def assignment(self, vm: str, virt_id: int) -> Assignment:
        a = self._assignments.get((vm, virt_id))
        if a is None:
            raise NotFound(f"{vm} has no device at virtual ID {virt_id:#x}")
        return a

    @query
    def snapshot(self) -> VmmSnapshot:
        return VmmSnapshot(assignments=tuple(self._assignments.values()))
