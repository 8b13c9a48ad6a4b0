"""Host object lifetimes: create and destroy VFIO, IOMMUFD and KVM objects in any order.

No guest, no TSM traffic: just the objects of steps 2-16 and their teardown, raw -- the machine calls
IOMMUFD, VFIO and KVM directly, in orders a well-behaved VMM never would (destroy the vIOMMU under
its vdevices, close the device fd first, destroy the VM while referenced, reuse tombstoned IDs).
Refcounts, tombstones and "refused means unchanged" are checked after every step.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, rule

from conformance.harness import StepRunner
from conformance.machines.full_stack import MachineConfig
from conformance.machines.recording import note, recorded

__all__ = ["HostLifetimes"]


class HostLifetimes(RuleBasedStateMachine):
    config: MachineConfig

    vms = Bundle("vms")
    fds = Bundle("fds")
    ids = Bundle("ids")  # any iommufd object ID, live or dead

    def __init__(self) -> None:
        super().__init__()
        cfg = self.config
        self.stack = cfg.factory(profile=cfg.profile, num_vfs=cfg.num_vfs)
        self.run = StepRunner(self.stack, cfg.profile, only=cfg.only, timeout=cfg.timeout)
        self.device_name = next(iter(self.stack.devices))
        self.rids = list(self.stack.devices[self.device_name].rids())

    def teardown(self) -> None:
        self.run.finish()

    def _do(self, action: str, fn: Any, *args: Any) -> Any:
        result, error = self.run.step(action, fn, *args)
        note(f"{action}: {'refused ' + type(error).__name__ if error else 'ok'}")
        return None if error else result

    @initialize(target=vms)
    @recorded
    def first_vm(self) -> Any:
        return self._do("create_vm", self.stack.create_vm)

    @rule(target=vms)
    @recorded
    def create_vm(self) -> Any:
        return self._do("create_vm", self.stack.create_vm)

    @rule(target=fds, fn=st.integers(0, 1))
    @recorded
    def open_device(self, fn: int) -> Any:
        return self._do("vfio_open", self.stack.vfio.open_device, self.device_name, self.rids[fn % len(self.rids)])

    @rule(fd=fds)
    @recorded
    def close_device(self, fd: Any) -> None:
        self._do("vfio_close", self.stack.vfio.close_device, fd)

    @rule(target=ids, vm=vms)
    @recorded
    def ioas_alloc(self, vm: Any) -> Any:
        return self._do("ioas_alloc", self.stack.iommufd.ioas_alloc, vm, frozenset({4, 5}))

    @rule(target=ids, idev=ids, ioas=ids)
    @recorded
    def hwpt_alloc(self, idev: Any, ioas: Any) -> Any:
        return self._do("hwpt_alloc", self.stack.iommufd.hwpt_alloc, idev, ioas)

    @rule(target=ids, fd=fds)
    @recorded
    def idev_of(self, fd: Any) -> Any:
        for f, _, _, idev in self.run._snap.vfio.open_fds:
            if f == fd:
                return idev
        return -1

    @rule(idev=ids, hwpt=ids)
    @recorded
    def attach(self, idev: Any, hwpt: Any) -> None:
        self._do("attach", self.stack.iommufd.attach, idev, hwpt)

    @rule(target=ids, hwpt=ids, vm=vms)
    @recorded
    def viommu_alloc(self, hwpt: Any, vm: Any) -> Any:
        return self._do("viommu_alloc", self.stack.iommufd.viommu_alloc, hwpt, vm)

    @rule(target=ids, viommu=ids, idev=ids, virt=st.integers(0x10, 0x11), fn=st.integers(0, 1))
    @recorded
    def vdevice_alloc(self, viommu: Any, idev: Any, virt: int, fn: int) -> Any:
        return self._do("vdevice_alloc", self.stack.iommufd.vdevice_alloc, viommu, idev, virt,
                        self.rids[fn % len(self.rids)])

    @rule(obj=ids)
    @recorded
    def destroy(self, obj: Any) -> None:
        self._do("iommu_destroy", self.stack.iommufd.destroy, obj)

    @rule(vm=vms)
    @recorded
    def run_vm(self, vm: Any) -> None:
        self._do("kvm_run", self.stack.kvm.run, vm)

    @rule(vm=vms)
    @recorded
    def stop_vm(self, vm: Any) -> None:
        self._do("kvm_stop", self.stack.kvm.stop, vm)

    @rule(vm=vms)
    @recorded
    def destroy_vm(self, vm: Any) -> None:
        self._do("kvm_destroy", self.stack.kvm.destroy_vm, vm)

    @rule()
    @recorded
    def close_iommufd(self) -> None:
        self._do("iommufd_close", self.stack.iommufd.close)
