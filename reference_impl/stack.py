"""``build_stack(config)``: wire every actor of the flow together -- the default system under test.

A *stack* is what the conformance suite drives: the actors (by the names of flow.md's columns), the
shared trace, and ``snapshot()``, the read-only plain-data view rules look at. Any implementation
offering the same attributes, operations, typed errors, trace and snapshot is a SUT
(``docs/sut-contract.md``); this module is the reference one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from teeio_conformance.contract.profiles import TDX, Profile, StopInUnlocked, get_profile
from teeio_conformance.contract.trace import Trace
from teeio_conformance.reference_impl.device.device import Device, DeviceConfig, DeviceSnapshot
from teeio_conformance.reference_impl.guest import Guest, GuestSnapshot, GuestTsm
from teeio_conformance.reference_impl.iommu import Iommu, IommuSnapshot
from teeio_conformance.reference_impl.iommufd import Iommufd, IommufdSnapshot
from teeio_conformance.reference_impl.kvm import Kvm, KvmSnapshot
from teeio_conformance.reference_impl.tsm import Tsm, TsmSnapshot
from teeio_conformance.reference_impl.vfio import Vfio, VfioSnapshot
from teeio_conformance.reference_impl.vmm import Vmm, VmmSnapshot

__all__ = ["Stack", "StackConfig", "StackSnapshot", "build_stack", "make_sut"]


@attrs.frozen(kw_only=True)
class StackConfig:
    profile: str = TDX.name
    devices: tuple[DeviceConfig, ...] = (DeviceConfig(),)
    trace: bool = True
    guest_pages: int = 8
    private_pages: int = 4


@attrs.frozen
class StackSnapshot:
    """Everything a rule may look at, as plain data. Built on demand; never shared with the stack."""

    profile: str
    devices: tuple[DeviceSnapshot, ...]
    iommu: IommuSnapshot
    kvm: KvmSnapshot
    vfio: VfioSnapshot
    iommufd: IommufdSnapshot
    tsm: TsmSnapshot
    vmm: VmmSnapshot
    guests: tuple[GuestSnapshot, ...]


class Stack:
    """The wired actors. Attribute names are the SUT contract (see docs/sut-contract.md)."""

    def __init__(
        self,
        config: StackConfig,
        *,
        device_factory: Callable[..., Device] = Device,
        tsm_factory: Callable[..., Tsm] = Tsm,
        vmm_factory: Callable[..., Vmm] = Vmm,
        kvm_factory: Callable[..., Kvm] = Kvm,
        vfio_factory: Callable[..., Vfio] = Vfio,
        iommufd_factory: Callable[..., Iommufd] = Iommufd,
        iommu_factory: Callable[..., Iommu] = Iommu,
    ) -> None:
        self.config = config
        self.profile: Profile = get_profile(config.profile)
        self.trace = Trace(enabled=config.trace)
        idempotent = self.profile.stop_in_unlocked is StopInUnlocked.IDEMPOTENT
        self.devices: dict[str, Device] = {}
        for i, dc in enumerate(config.devices):
            dc = attrs.evolve(
                dc,
                stop_in_unlocked_idempotent=idempotent,
                bus=dc.bus + i,
                bar_base=dc.bar_base + i * 0x100_0000,
                name=dc.name if i == 0 else f"dev{i}",
                first_session=dc.first_session + i * 0x1000,  # session IDs unique in the stack, as the trace sees them
            )
            self.devices[dc.name] = device_factory(self.trace, dc)
        self.iommu = iommu_factory(self.trace, self.profile)
        self.kvm = kvm_factory(self.trace, guest_pages=config.guest_pages, private_pages=config.private_pages)
        self.vfio = vfio_factory(self.trace)
        self.iommufd = iommufd_factory(self.trace)
        self.tsm = tsm_factory(self.trace, self.profile)
        self.vmm = vmm_factory(self.trace, self.profile)
        self.guests: dict[str, Guest] = {}
        self._snapshots: dict[int, Any] = {}  # id(actor) -> its last snapshot (see snapshot())
        self.guest_tsms: dict[str, GuestTsm] = {}
        by_rid = {rid: d for d in self.devices.values() for rid in d.rids()}
        for d in self.devices.values():
            d._wire(self.iommu)
        self.iommu._wire(self.kvm, by_rid)
        self.kvm._wire(self.vfio, self.tsm, self.iommu)
        self.vfio._wire(self.devices, self.iommufd, self.kvm, self.iommu, self.tsm)
        self.iommufd._wire(self.kvm, self.tsm, self.iommu, self.devices)
        self.tsm._wire(self.devices, self.vfio, self.kvm, self.iommu, self.iommufd)
        self.vmm._wire(self.kvm, self.vfio, self.iommufd, self.tsm, self.devices, self.guests)

    def create_vm(self) -> str:
        """A new VM with its guest kernel and guest TSM (the guest trusts the devices' root CA)."""
        vm: str = self.kvm.create_vm()
        first, *rest = self.devices.values()
        root = first.identity.root_certificate()
        # a second device's vendor is trusted too (a VM with TDIs of two devices, P2P)
        others = tuple(r for d in rest if hasattr(d, "identity") and (r := d.identity.root_certificate()) != root)
        gtsm = GuestTsm(self.trace, vm, self.profile, root, seed=len(self.guests) + 1, also_trusted=others)
        gtsm._wire(self.vmm)
        guest = Guest(self.trace, vm, gtsm)
        guest._wire(self.kvm)
        self.guest_tsms[vm] = gtsm
        self.guests[vm] = guest
        return vm

    def snapshot(self) -> StackSnapshot:
        """The whole stack's state. Incremental: an actor not entered since the last snapshot (the trace
        says which were) gives its previous snapshot object again, so a step costs what it touched and
        an unchanged part is the *same* object before and after (rules may skip it by identity)."""
        touched = self.trace.take_touched()
        cache = self._snapshots

        def snap(actor: Any) -> Any:
            key = id(actor)
            if touched is None or key in touched or key not in cache:
                cache[key] = actor.snapshot()
            return cache[key]

        return StackSnapshot(
            profile=self.profile.name,
            devices=tuple(snap(d) for d in self.devices.values()),
            iommu=snap(self.iommu),
            kvm=snap(self.kvm),
            vfio=snap(self.vfio),
            iommufd=snap(self.iommufd),
            tsm=snap(self.tsm),
            vmm=snap(self.vmm),
            guests=tuple(snap(g) for g in self.guests.values()),
        )


def build_stack(config: StackConfig | None = None, **overrides: Any) -> Stack:
    """The default SUT factory: ``--sut teeio_conformance.reference_impl.stack:build_stack``."""
    return Stack(config or StackConfig(), **overrides)


def make_sut(
    *,
    profile: str = "tdx",
    num_devices: int = 1,
    num_vfs: int = 1,
    trace: bool = True,
    secrets_seed: int | None = None,
    vm_secrets_seed: int | None = None,
) -> Stack:
    """The SUT factory the suite calls by default: see docs/sut-contract.md. ``secrets_seed`` (optional
    capability) draws the guests' secrets from another seed and nothing else, for the noninterference test;
    ``vm_secrets_seed`` (another) draws the first VM's secrets alone from it, for the isolation test."""
    devices = tuple(DeviceConfig(num_vfs=num_vfs, seed=1 + i) for i in range(num_devices))
    if secrets_seed is None and vm_secrets_seed is None:
        return build_stack(StackConfig(profile=profile, devices=devices, trace=trace))

    def kvm(trace_: Trace, **kw: Any) -> Kvm:
        return Kvm(trace_, seed=7 if secrets_seed is None else secrets_seed, first_vm_seed=vm_secrets_seed, **kw)

    return build_stack(StackConfig(profile=profile, devices=devices, trace=trace), kvm_factory=kvm)


def make_device(trace: Trace, profile: str) -> Device:
    """The device factory the device machine calls by default (``DEFAULT_DEVICE`` in conformance/sut.py): one
    reference device with a VF, STOP in CONFIG_UNLOCKED idempotent as the profile says."""
    idempotent = get_profile(profile).stop_in_unlocked is StopInUnlocked.IDEMPOTENT
    return Device(trace, DeviceConfig(num_vfs=1, stop_in_unlocked_idempotent=idempotent))
