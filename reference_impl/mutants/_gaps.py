"""Mutants for the rule gaps of issue 14: IDE replay, key freshness, K_SET_GO of an empty slot, the VFIO reset
and close paths, guest requests from the wrong VM, and the two findings the rules used to drop.

Each breaks its behaviour through a code path no older mutant touches: the IDE stream end's receive check, the
TSM's key derivation, the IDE_KM responder's GO handling, VFIO's reset and close, the TSM's owner check, the
device's reaction to a failed receive, and IOMMU_DESTROY of a tombstone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import attrs

from teeio_conformance.contract import ide_km as km
from teeio_conformance.contract.errors import AccessFault, CodecError, NotFound
from teeio_conformance.reference_impl.device.device import Device
from teeio_conformance.reference_impl.device.ide.km_responder import IdeKmResponder
from teeio_conformance.reference_impl.device.ide.stream import (
    IdeIntegrityError,
    IdeStreamEndpoint,
    ProtectedTlp,
    Tlp,
)
from teeio_conformance.reference_impl.guest import Guest
from teeio_conformance.reference_impl.iommufd import Iommufd
from teeio_conformance.reference_impl.stack import Stack
from teeio_conformance.reference_impl.tsm import Tsm
from teeio_conformance.reference_impl.vfio import Vfio
from teeio_conformance.reference_impl.vmm import Vmm

# ------------------------------------------------------------------ IDE-09: replay


class _ReplayBlindEnd(IdeStreamEndpoint):
    """A stream end whose receive check lets a counter it has already passed through: it rewinds its own
    expectation to the TLP's counter before checking (the replay window never closes)."""

    def _receive_slot(self, p: ProtectedTlp) -> Any:
        held = self._slots.get(int(p.key_set) | int(p.sub_stream()) << 4)
        if held is not None and p.counter < held.counter:
            held.counter = p.counter
        return super()._receive_slot(p)


class DeviceAcceptsReplayedTlp(Device):
    """The device's IDE receiver takes a replayed TLP: a counter it already accepted passes again."""

    def __init__(self, trace: Any, config: Any = None, *, name: str | None = None) -> None:
        super().__init__(trace, config, name=name)
        old = self.ide
        self.ide = _ReplayBlindEnd(stream_id=old.stream_id, rid_base=old.rid_base, rid_limit=old.rid_limit)
        for streams in self.ide_km.ports.values():
            for sid in list(streams):
                if streams[sid] is old:
                    streams[sid] = self.ide


# ------------------------------------------------------------------ IDE-10: key freshness


class TsmRefreshReusesKeys(Tsm):
    """A key refresh programs the other key set with the keys the stream was last given: the TSM derives keys
    from a counter it winds back by one stream's worth (six sub-stream keys) before the refresh."""

    def refresh_keys(self, device: str) -> None:
        self._key_counter = max(0, self._key_counter - 6)
        super().refresh_keys(device)


# ------------------------------------------------------------------ IDE-11: GO of an empty slot


class _GoAnyResponder(IdeKmResponder):
    """Acknowledges a K_SET_GO of a slot with no key (and does nothing with it)."""

    def _go_stop(self, msg: km.KSetGo | km.KSetStop) -> bytes | None:
        stream = self._stream(msg.port_index, msg.stream_id)
        if isinstance(msg, km.KSetGo) and stream is not None:
            try:
                slot = km.KeySubStream.from_byte(msg.key_sub_stream)
            except CodecError:  # a bad slot byte goes the reference's way
                return super()._go_stop(msg)
            if not stream.is_programmed(slot):
                return km.encode(
                    km.KGoStopAck(stream_id=msg.stream_id, key_sub_stream=msg.key_sub_stream, port_index=msg.port_index)
                )
        return super()._go_stop(msg)


class DeviceAcksGoOnEmptySlot(Device):
    """The device's IDE_KM responder acknowledges K_SET_GO of a slot no KEY_PROG filled (a GO it cannot do)."""

    def __init__(self, trace: Any, config: Any = None, *, name: str | None = None) -> None:
        super().__init__(trace, config, name=name)
        old = self.ide_km
        self.ide_km = _GoAnyResponder(
            ports=old.ports,
            dev_func_num=old.dev_func_num,
            bus_num=old.bus_num,
            segment=old.segment,
            max_port_index=old.max_port_index,
            ide_registers=old.ide_registers,
        )


# ------------------------------------------------------------------ MMIO-09, DOWN-07, MMIO-06: reset and close


class VfioResetNoRevoke(Vfio):
    """VFIO_DEVICE_RESET unbinds the TDI and issues the FLR, but never revokes the function's dmabufs: KVM keeps
    the BAR mapped across the reset."""

    def reset(self, fd: int, rid: int) -> None:
        f = self._fd(fd)
        if rid != f.rid:
            return super().reset(fd, rid)
        self._tsm.unbind(rid)
        f.device.flr(rid)


class VfioResetFlrFirst(Vfio):
    """VFIO_DEVICE_RESET revokes the function's dmabufs and issues the FLR, and only then unbinds the TDI: the
    TDI is reset while it is still locked and bound (its STOP comes after, from ERROR)."""

    def reset(self, fd: int, rid: int) -> None:
        f = self._fd(fd)
        if rid != f.rid:
            return super().reset(fd, rid)
        revoked = [d for d in f.dmabufs if self._dmabufs[d].rid == rid and not self._dmabufs[d].revoked]
        for d in revoked:
            self.revoke_mmio_dmabuf(d)
        f.device.flr(rid)
        self._tsm.unbind(rid)
        for d in revoked:
            if self._dmabufs[d].revoked:
                self._recover(self._dmabufs[d])


class VfioCloseRevokesBeforeUnbind(Vfio):
    """Closing the device revokes its dmabufs first and only then drops the idev and unbinds the TDI: the TSM's
    free (steps 47-49) then recovers them, so the closed device's dmabufs end valid and still imported."""

    def close_device(self, fd: int) -> None:
        f = self._fd(fd)
        for d in f.dmabufs:
            self.revoke_mmio_dmabuf(d)
        with contextlib.suppress(NotFound):
            self._iommufd.unbind_device(f.idev)
        self._tsm.unbind(f.rid)
        for d in f.dmabufs:
            dm = self._dmabufs[d]
            dm.orphaned = True
            if not dm.attachments:
                del self._dmabufs[d]
        self._private.discard(f.rid)
        self._mmaps.discard((fd, f.rid))
        del self._fds[fd]


# ------------------------------------------------------------------ LIFE-15: guest requests from the wrong VM


class TsmGuestRequestAnyVm(Tsm):
    """The TSM carries out a guest request for a bound TDI whatever VM it names (it takes the TDI's own VM)."""

    def guest_request(self, rid: int, vm: str, request: Any) -> Any:
        ctx = self._tdis.get(rid)
        if ctx is not None and ctx.vm is not None:
            vm = ctx.vm
        return super().guest_request(rid, vm, request)


# ------------------------------------------------ IDE-03 (a dropped finding): TDIs after a failed receive


class DeviceIntegrityFailureKeepsTdis(Device):
    """A TLP that fails its IDE check makes the stream Insecure (the stream end does that itself), but the device
    leaves its locked TDIs as they were: its receive path refuses the TLP without the ERROR transition."""

    def receive(self, packet: Tlp | ProtectedTlp) -> bytes:
        if isinstance(packet, ProtectedTlp):
            try:
                tlp = self.ide.unprotect(packet)
            except IdeIntegrityError as exc:
                raise AccessFault(f"IDE integrity failure: {exc}") from exc
            return self._complete(tlp)
        return super().receive(packet)


# ------------------------------------------------------------------ LIFE-04 (a dropped finding): the last tombstone


class IommufdDestroyDropsTombstone(Iommufd):
    """IOMMU_DESTROY of a tombstoned ID succeeds and frees it, before the iommufd is closed."""

    def destroy(self, obj_id: int) -> None:
        if obj_id in self._tombstones:
            self._tombstones.discard(obj_id)
            return
        super().destroy(obj_id)


# ------------------------------------------------------------------ MMIO-01: the exporter's side of a revoke


class VfioMapsRevoked(Vfio):
    """VFIO's ``dmabuf_map`` hands an importer the pages of a revoked dmabuf: a memslot created on it after the
    revoke is mapped (shared) while the revoke still stands."""

    def dmabuf_map(self, attachment: int) -> int:
        for d in self._dmabufs.values():
            if attachment in d.attachments:
                base, _ = d.device.bar_range(d.rid)
                return int(base)
        return super().dmabuf_map(attachment)


def mutants(m: Callable[..., Any]) -> list[Any]:
    full, dev = "full_stack", "device"
    return [
        m(
            "device-accepts-replayed-tlp",
            "IDE-09",
            dev,
            "tdx",
            DeviceAcceptsReplayedTlp.__doc__,
            device=DeviceAcceptsReplayedTlp,
        ),
        m(
            "tsm-refresh-reuses-keys",
            "IDE-10",
            full,
            "tdx",
            TsmRefreshReusesKeys.__doc__,
            overrides={"tsm_factory": TsmRefreshReusesKeys},
        ),
        m(
            "device-acks-go-on-empty-slot",
            "IDE-11",
            dev,
            "tdx",
            DeviceAcksGoOnEmptySlot.__doc__,
            device=DeviceAcksGoOnEmptySlot,
        ),
        m(
            "vfio-maps-revoked-dmabuf",
            "MMIO-01",
            full,
            "cca",
            VfioMapsRevoked.__doc__,
            overrides={"vfio_factory": VfioMapsRevoked},
        ),
        m(
            "vfio-reset-no-revoke",
            "MMIO-09",
            full,
            "tdx",
            VfioResetNoRevoke.__doc__,
            overrides={"vfio_factory": VfioResetNoRevoke},
        ),
        m(
            "vfio-reset-flr-first",
            "DOWN-07",
            full,
            "sev-tio",
            VfioResetFlrFirst.__doc__,
            overrides={"vfio_factory": VfioResetFlrFirst},
        ),
        m(
            "vfio-close-revokes-before-unbind",
            "MMIO-06",
            full,
            "sev-tio",
            VfioCloseRevokesBeforeUnbind.__doc__,
            overrides={"vfio_factory": VfioCloseRevokesBeforeUnbind},
        ),
        m(
            "tsm-guest-request-any-vm",
            "LIFE-15",
            full,
            "tdx",
            TsmGuestRequestAnyVm.__doc__,
            overrides={"tsm_factory": TsmGuestRequestAnyVm},
        ),
        m(
            "device-integrity-failure-keeps-tdis",
            "IDE-03",
            dev,
            "cca",
            DeviceIntegrityFailureKeepsTdis.__doc__,
            device=DeviceIntegrityFailureKeepsTdis,
        ),
        m(
            "iommufd-destroy-drops-tombstone",
            "LIFE-04",
            "host_lifetimes",
            "sev-tio",
            IommufdDestroyDropsTombstone.__doc__,
            overrides={"iommufd_factory": IommufdDestroyDropsTombstone},
        ),
        m(
            "vmm-imports-after-run",
            "FLOW-14",
            full,
            "cca",
            VmmImportsAfterRun.__doc__,
            overrides={"vmm_factory": VmmImportsAfterRun},
        ),
    ]


# ------------------------------------------------------------------ ATT-05: accept without attest


class _TrustingGuest(Guest):
    """A guest kernel that accepts a bound function whether or not it attested it."""

    def accept(self, virt_id: int) -> None:
        v = self._v(virt_id)
        self._tsm.accept(virt_id)
        v.accepted = True


class TrustingGuestStack(Stack):
    def create_vm(self) -> str:
        vm = super().create_vm()
        guest = _TrustingGuest(self.trace, vm, self.guest_tsms[vm])
        guest._wire(self.kvm)
        self.guests[vm] = guest
        return vm


def trusting_guest_factory(*, profile: str = "tdx", num_devices: int = 1, num_vfs: int = 1, trace: bool = True) -> Any:
    """The guest accepts a function it never attested (no verified report): the reference stack otherwise."""
    from teeio_conformance.reference_impl.device.device import DeviceConfig
    from teeio_conformance.reference_impl.stack import StackConfig

    devices = tuple(DeviceConfig(num_vfs=num_vfs, seed=1 + i) for i in range(num_devices))
    return TrustingGuestStack(StackConfig(profile=profile, devices=devices, trace=trace))


def stack_mutants(stack_m: Callable[..., Any]) -> list[Any]:
    return [
        stack_m(
            "guest-accepts-unattested",
            "ATT-05",
            "full_stack",
            "sev-tio",
            trusting_guest_factory.__doc__,
            trusting_guest_factory,
        ),
    ]


# ------------------------------------------------------------------ FLOW-14: the memslot after KVM run


class VmmImportsAfterRun(Vmm):
    """At KVM run the VMM drops each function's memslot and creates it again, importing the MMIO dmabuf anew
    after the VM started (steps 5-6 after step 10, as if it re-mapped the BARs once the guest runs)."""

    def run(self, vm: str) -> None:
        super().run(vm)
        for key, a in list(self._assignments.items()):
            if a.vm == vm:
                self._kvm.destroy_memslot(a.memslot)
                slot = self._kvm.create_memslot(vm, a.bar_gpa, a.dmabuf)
                self._assignments[key] = attrs.evolve(a, memslot=slot)
