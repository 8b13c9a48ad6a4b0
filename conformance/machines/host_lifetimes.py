"""Host object lifetimes: create and destroy VFIO, IOMMUFD and KVM objects in any order.

No guest, no TSM traffic: just the objects of steps 2-16 and their teardown, raw -- the machine calls
IOMMUFD, VFIO and KVM directly, in orders a well-behaved VMM never would (destroy the vIOMMU under
its vdevices, close the device fd first, destroy the VM while referenced, reuse tombstoned IDs).
Refcounts, tombstones and "refused means unchanged" are checked after every step.

Handles are picked from what exists *now* (the last snapshot), by kind and index, so a sequence never
wanders off into IDs of objects it failed to create; stale and wrong-kind IDs are used on purpose by
``misuse`` and ``destroy_any``. ``build_topology`` does the well-behaved VMM's whole setup for one
function (VM, device file, IOAS, hwpt, attach, vIOMMU, vdevice -- each its own checked step), so the
other rules start from deep states.
"""

from __future__ import annotations

import inspect
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from teeio_conformance.conformance.harness import StepRunner, build_sut
from teeio_conformance.conformance.machines.full_stack import MachineConfig
from teeio_conformance.conformance.machines.recording import note, recorded

__all__ = ["HostLifetimes"]

PICK = st.integers(0, 3)
KINDS = ("ioas", "hwpt", "viommu", "vdevice", "idev")
NO_SUCH_ID = 999


class HostLifetimes(RuleBasedStateMachine):
    config: MachineConfig

    def __init__(self) -> None:
        super().__init__()
        cfg = self.config
        self.stack = build_sut(cfg.factory, cfg.timeout, profile=cfg.profile, num_vfs=cfg.num_vfs)
        self.run = StepRunner(self.stack, cfg.profile, only=cfg.only, timeout=cfg.timeout)
        self.device_name = next(iter(self.stack.devices))
        self.rids = list(self.stack.devices[self.device_name].rids())
        self.seen_ids: list[int] = []  # every iommufd ID ever handed out (live, dead or tombstoned)
        self.seen_fds: list[int] = []

    def teardown(self) -> None:
        self.run.finish()

    def _do(self, action: str, fn: Any, *args: Any) -> Any:
        result, error = self.run.step(action, fn, *args)
        note(f"{action}: {'refused ' + type(error).__name__ if error else 'ok'}")
        if (
            error is None
            and isinstance(result, int)
            and action in ("ioas_alloc", "hwpt_alloc", "viommu_alloc", "vdevice_alloc")
        ):
            self.seen_ids.append(result)
        return None if error else result

    # ------------------------------------------------------------------ picking handles from the snapshot
    def _objs(self, kind: str) -> list[Any]:
        return [o for o in self.run._snap.iommufd.objects if o.kind.value == kind]

    def _id(self, kind: str, pick: int) -> int:
        objs = self._objs(kind)
        return int(objs[pick % len(objs)].id) if objs else NO_SUCH_ID

    def _vm(self, pick: int) -> str:
        vms = [v.name for v in self.run._snap.kvm.vms]
        return vms[pick % len(vms)]

    def _fd_of(self, rid: int) -> int | None:
        return next(
            (int(f) for f, name, r, _ in self.run._snap.vfio.open_fds if name == self.device_name and r == rid), None
        )

    def _idev_of(self, rid: int) -> int | None:
        return next(
            (int(i) for _, name, r, i in self.run._snap.vfio.open_fds if name == self.device_name and r == rid), None
        )

    def _open(self, rid: int) -> int | None:
        fd = self._do("vfio_open", self.stack.vfio.open_device, self.device_name, rid)
        if fd is not None:
            self.seen_fds.append(fd)
            idev = self._idev_of(rid)
            if idev is not None:
                self.seen_ids.append(idev)
        return fd

    @initialize()
    @recorded
    def first_vm(self) -> None:
        self._do("create_vm", self.stack.create_vm)

    # ------------------------------------------------------------------ the well-behaved VMM's setup, at once
    @rule()
    @recorded
    def build_topology(self) -> None:
        """A fresh VM and the first closed function, set up as QEMU does (steps 2, 7-9, 15-16)."""
        vm = self._do("create_vm", self.stack.create_vm)
        rid = next((r for r in self.rids if self._fd_of(r) is None), None)
        if vm is None or rid is None or self._open(rid) is None:
            return
        idev = self._idev_of(rid)
        fd = self.stack.iommufd
        ioas = self._do("ioas_alloc", fd.ioas_alloc, vm, frozenset({4, 5}))
        hwpt = self._do("hwpt_alloc", fd.hwpt_alloc, idev, ioas) if ioas is not None else None
        if hwpt is None:
            return
        self._do("attach", fd.attach, idev, hwpt)
        viommu = self._do("viommu_alloc", fd.viommu_alloc, hwpt, vm)
        if viommu is not None:
            self._do("vdevice_alloc", fd.vdevice_alloc, viommu, idev, 0x10, rid)

    @rule(viommu=PICK, virt=st.integers(0x10, 0x11))
    @recorded
    def plug_function(self, viommu: int, virt: int) -> None:
        """A second function for a VM that has its vIOMMU: open it, attach it to the vIOMMU's hwpt and add
        its vdevice there at virtual ID ``virt`` (QEMU's second assignment; a host may reuse an ID)."""
        vis = self._objs("viommu")
        rid = next((r for r in self.rids if self._fd_of(r) is None), None)
        if not vis or rid is None or self._open(rid) is None:
            return
        vi = vis[viommu % len(vis)]
        idev = self._idev_of(rid)
        self._do("attach", self.stack.iommufd.attach, idev, vi.parent)
        self._do("vdevice_alloc", self.stack.iommufd.vdevice_alloc, vi.id, idev, virt, rid)

    @rule()
    @recorded
    def create_vm(self) -> None:
        self._do("create_vm", self.stack.create_vm)

    @precondition(
        lambda self: (
            any(o.kind.value in ("viommu", "vdevice") for o in self.run._snap.iommufd.objects)
            or bool(self.run._snap.iommufd.tombstones)
        )
    )
    @rule()
    @recorded
    def close_iommufd(self) -> None:
        """Close the iommufd (the VMM exits): everything goes, tombstones too. Only once there is
        something worth closing -- after a close every further step is refused."""
        self._do("iommufd_close", self.stack.iommufd.close)

    # ------------------------------------------------------------------ VFIO device files
    @rule(fn=st.integers(0, 1))
    @recorded
    def open_device(self, fn: int) -> None:
        self._open(self.rids[fn % len(self.rids)])

    @rule(fn=st.integers(0, 1), stale=st.booleans())
    @recorded
    def close_device(self, fn: int, stale: bool) -> None:
        fd = self._fd_of(self.rids[fn % len(self.rids)])
        if stale or fd is None:
            fd = self.seen_fds[fn % len(self.seen_fds)] if self.seen_fds else NO_SUCH_ID
        self._do("vfio_close", self.stack.vfio.close_device, fd)

    # ------------------------------------------------------------------ IOMMUFD objects, one call at a time
    @rule(vm=PICK)
    @recorded
    def ioas_alloc(self, vm: int) -> None:
        self._do("ioas_alloc", self.stack.iommufd.ioas_alloc, self._vm(vm), frozenset({4, 5}))

    @rule(idev=PICK, ioas=PICK)
    @recorded
    def hwpt_alloc(self, idev: int, ioas: int) -> None:
        self._do("hwpt_alloc", self.stack.iommufd.hwpt_alloc, self._id("idev", idev), self._id("ioas", ioas))

    @rule(idev=PICK, hwpt=PICK)
    @recorded
    def attach(self, idev: int, hwpt: int) -> None:
        self._do("attach", self.stack.iommufd.attach, self._id("idev", idev), self._id("hwpt", hwpt))

    @rule(idev=PICK)
    @recorded
    def detach(self, idev: int) -> None:
        self._do("detach", self.stack.iommufd.detach, self._id("idev", idev))

    @rule(hwpt=PICK, vm=PICK)
    @recorded
    def viommu_alloc(self, hwpt: int, vm: int) -> None:
        self._do("viommu_alloc", self.stack.iommufd.viommu_alloc, self._id("hwpt", hwpt), self._vm(vm))

    @rule(viommu=PICK, idev=PICK, virt=st.integers(0x10, 0x11), own_rid=st.booleans())
    @recorded
    def vdevice_alloc(self, viommu: int, idev: int, virt: int, own_rid: bool) -> None:
        idevs = self._objs("idev")
        dev = idevs[idev % len(idevs)] if idevs else None
        rid = dev.rid if dev is not None and own_rid else self.rids[(idev + 1) % len(self.rids)]
        self._do(
            "vdevice_alloc",
            self.stack.iommufd.vdevice_alloc,
            self._id("viommu", viommu),
            dev.id if dev is not None else NO_SUCH_ID,
            virt,
            rid,
        )

    @rule(kind=st.sampled_from(KINDS), pick=PICK)
    @recorded
    def destroy(self, kind: str, pick: int) -> None:
        self._do(f"iommu_destroy_{kind}", self.stack.iommufd.destroy, self._id(kind, pick))

    # ------------------------------------------------------------------ the same calls with any ID at all
    @precondition(lambda self: bool(self.seen_ids))
    @rule(
        call=st.sampled_from(["destroy", "hwpt_alloc", "attach", "viommu_alloc", "vdevice_alloc"]),
        a=st.integers(0, 15),
        b=st.integers(0, 15),
        vm=PICK,
    )
    @recorded
    def misuse(self, call: str, a: int, b: int, vm: int) -> None:
        """Calls handed IDs of the wrong kind, dead IDs or tombstones: refused, nothing changes."""
        ida, idb = self.seen_ids[a % len(self.seen_ids)], self.seen_ids[b % len(self.seen_ids)]
        args: tuple[Any, ...] = {
            "destroy": (ida,),
            "hwpt_alloc": (ida, idb),
            "attach": (ida, idb),
            "viommu_alloc": (ida, self._vm(vm)),
            "vdevice_alloc": (ida, idb, 0x10, self.rids[0]),
        }[call]
        self._do(f"{call}_any_id", getattr(self.stack.iommufd, call), *args)

    # ------------------------------------------------------------------ KVM
    @rule(vm=PICK)
    @recorded
    def run_vm(self, vm: int) -> None:
        self._do("kvm_run", self.stack.kvm.run, self._vm(vm))

    @rule(vm=PICK)
    @recorded
    def stop_vm(self, vm: int) -> None:
        self._do("kvm_stop", self.stack.kvm.stop, self._vm(vm))

    @rule(vm=PICK)
    @recorded
    def destroy_vm(self, vm: int) -> None:
        self._do("kvm_destroy", self.stack.kvm.destroy_vm, self._vm(vm))

    # ------------------------------------------------------------------ issue 14: the last tombstone
    @rule()
    @recorded
    def destroy_tombstone(self) -> None:
        """IOMMU_DESTROY of a tombstoned ID: -ENOENT, and the tombstone stays until the iommufd closes (LIFE-04).
        With no tombstone, one is made first: a VFIO close of a function whose vdevice lives.

        Aimed: ``misuse`` hands any ID ever seen to IOMMU_DESTROY, and in a ``ci`` run it met the only
        tombstone too seldom to catch an iommufd that lets the destroy free it."""
        if self.run._snap.iommufd.closed:
            return
        if not self.run._snap.iommufd.tombstones:
            if not self._objs("vdevice"):
                inspect.unwrap(HostLifetimes.build_topology)(self)
            vds = self._objs("vdevice")
            fd = self._fd_of(vds[0].rid) if vds else None
            if fd is None:
                return
            self._do("vfio_close", self.stack.vfio.close_device, fd)
        tombs = self.run._snap.iommufd.tombstones
        if tombs:
            note("IOMMU_DESTROY of a tombstone")
            self._do("iommu_destroy_tombstone", self.stack.iommufd.destroy, int(tombs[0]))
