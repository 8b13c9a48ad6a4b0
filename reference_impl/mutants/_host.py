"""Host-side mutants: VMM, VFIO, IOMMUFD, KVM, TSM and IOMMU that each break one promise."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from teeio_conformance.contract.errors import AlreadyExists, Busy, InvalidArgument, InvalidState, NotFound
from teeio_conformance.contract.profiles import StartSender
from teeio_conformance.reference_impl.guest import GuestTsm
from teeio_conformance.reference_impl.iommu import Iommu
from teeio_conformance.reference_impl.iommufd import GuestRequest, Iommufd, ObjKind
from teeio_conformance.reference_impl.kvm import Kvm, SlotMapping
from teeio_conformance.reference_impl.tsm import Tsm
from teeio_conformance.reference_impl.vfio import Vfio
from teeio_conformance.reference_impl.vmm import Vmm

# ------------------------------------------------------------------ FLOW


class VmmLazyVdevice(Vmm):
    """The pre-correction chart: vIOMMU and vdevice are created at guest bind, after KVM run."""

    def assign(self, vm: str, device: str, rid: int, virt_id: int) -> Any:
        self._lazy = getattr(self, "_lazy", {})
        self._lazy[(vm, virt_id)] = (device, rid)
        real = self._iommufd.vdevice_alloc
        self._iommufd.vdevice_alloc = lambda *a: -1  # type: ignore[method-assign]
        viommu_alloc = self._iommufd.viommu_alloc
        self._iommufd.viommu_alloc = lambda *a: -1  # type: ignore[method-assign]
        try:
            return super().assign(vm, device, rid, virt_id)
        finally:
            self._iommufd.vdevice_alloc = real  # type: ignore[method-assign]
            self._iommufd.viommu_alloc = viommu_alloc  # type: ignore[method-assign]

    def ghci_bind(self, vm: str, virt_id: int) -> None:
        import attrs

        a = self._assignments[(vm, virt_id)]
        if a.vdevice == -1:
            viommu = self._iommufd.viommu_alloc(a.hwpt, vm)
            idev = {f: i for f, _, _, i in self._vfio.snapshot().open_fds}[a.fd]
            vdev = self._iommufd.vdevice_alloc(viommu, idev, virt_id, a.rid)
            self._assignments[(vm, virt_id)] = attrs.evolve(a, viommu=viommu, vdevice=vdev)
        super().ghci_bind(vm, virt_id)


class IommufdBindCreatesVdevice(Iommufd):
    """Bind replaces the vdevice with a fresh one instead of acting on the existing one."""

    def vdevice_tsm_bind(self, vdevice: int) -> None:
        v = self._vdev(vdevice)
        self._objs[v.parent].users += 1  # type: ignore[index]
        self._kvm.get_ref(v.vm)
        fresh = self._new(
            ObjKind.VDEVICE,
            parent=v.parent,
            idev=v.idev,
            virt_id=v.virt_id + 0x100,
            vm=v.vm,
            rid=v.rid,
            device=v.device,
        )
        self._tsm.bind(v.rid, v.vm, v.virt_id)
        fresh.bound = v.bound = True


class VmmBindsTsmDirectly(Vmm):
    """The VMM calls the TSM's bind itself, bypassing the vdevice."""

    def ghci_bind(self, vm: str, virt_id: int) -> None:
        a = self._assignments[(vm, virt_id)]
        self._tsm.bind(a.rid, vm, virt_id)


class VmmForwardsGuestRequestsDirectly(Vmm):
    """Guest requests go from QEMU straight to the TSM, not through the vdevice."""

    def ghci_guest_request(self, vm: str, virt_id: int, request: GuestRequest) -> Any:
        a = self._assignments[(vm, virt_id)]
        if request.kind == "start" and self.profile.start_sender is StartSender.HOST:
            return super().ghci_guest_request(vm, virt_id, request)
        return self._tsm.guest_request(a.rid, vm, request)


class IommufdUnbindDestroysVdevice(Iommufd):
    """Guest unbind destroys the vdevice (the chart's step 39 read literally)."""

    def vdevice_tsm_unbind(self, vdevice: int) -> None:
        v = self._vdev(vdevice)
        self._tsm.unbind(v.rid)
        v.bound = False
        self._destroy_vdevice(v)


class IommufdViommuDestroyWhileRunning(Iommufd):
    """IOMMU_DESTROY of a vIOMMU is allowed while its VM runs (the chart's step 46)."""

    def destroy(self, obj_id: int) -> None:
        obj = self._objs.get(obj_id)
        if obj is not None and obj.kind is ObjKind.VIOMMU and not obj.users:
            self._objs[obj.parent].users -= 1  # type: ignore[index]
            self._kvm.put_ref(obj.vm)
            del self._objs[obj_id]
            return
        super().destroy(obj_id)


class TsmUnmapWhileLocked(Tsm):
    """The TSM lets KVM unmap private MMIO of a TDI that is still locked or running."""

    def sept_remove(self, vm: str, rid: int) -> None:
        self._ctx(rid).private_mapped = False


class TsmStopBeforeUnmapCca(Tsm):
    """CCA: unbind stops (unlocks) the TDI before unmapping its private MMIO."""

    def unbind(self, rid: int) -> None:
        ctx = self._ctx(rid)
        if ctx.vm is None:
            return
        mapped, ctx.private_mapped = ctx.private_mapped, False
        self._stop(ctx)
        ctx.private_mapped = mapped
        self._vfio.revoke_mmio(rid)
        if ctx.trusted_dma:
            self._iommufd.cc_disable_dma(rid)
            ctx.trusted_dma = False
        self._free(ctx)
        self._vfio.set_private(rid, False)
        self._vfio.recover_mmio(rid)


class TsmHostMayStartTdx(Tsm):
    """TDX: the host may start the TDI (only the TD may)."""

    def host_start(self, rid: int, vm: str) -> None:
        self._start(self._ctx(rid))


class VmmHostStartsTdx(Vmm):
    def ghci_guest_request(self, vm: str, virt_id: int, request: GuestRequest) -> Any:
        if request.kind == "start":
            return self._iommufd.vdevice_host_start(self._vdev(vm, virt_id))
        return super().ghci_guest_request(vm, virt_id, request)


class TsmStartBeforeAccept(Tsm):
    """TDX: START is accepted before the guest has accepted MMIO and DMA."""

    def _guest_start(self, ctx: Any, request: Any) -> None:
        self._start(ctx)


class TsmNoStartAtAttest(Tsm):
    """SEV-TIO: the TDI is left LOCKED after attest."""

    def _guest_report(self, ctx: Any, request: Any) -> Any:
        ctx.started = True  # pretend, so the reference does not start it
        try:
            return super()._guest_report(ctx, request)
        finally:
            ctx.started = False


class TsmGuestStartsCca(Tsm):
    """CCA: the realm's START is forwarded as a guest message instead of a host RMI call."""

    def _guest_start(self, ctx: Any, request: Any) -> None:
        self._start(ctx)

    def _check_guest_may(self, request: str | None) -> None:
        return None  # and the guest whitelist (no START on CCA) is not consulted


class VmmGuestStartCca(Vmm):
    def ghci_guest_request(self, vm: str, virt_id: int, request: GuestRequest) -> Any:
        return self._iommufd.vdevice_guest_request(self._vdev(vm, virt_id), request)


class TsmHostMayReadReportTdx(Tsm):
    """TDX: the host may originate GET_DEVICE_INTERFACE_REPORT (only the TD may)."""

    def host_tdisp(self, rid: int, request: str) -> str:
        if request == "GET_DEVICE_INTERFACE_REPORT":
            return "DeviceInterfaceReport"
        return super().host_tdisp(rid, request)


# ------------------------------------------------------------------ LIFE


class IommufdTwoVdevicesPerIdev(Iommufd):
    """A second vdevice may be allocated on an idev that already has one (the -EEXIST check is missing)."""

    def vdevice_alloc(self, viommu: int, idev: int, virt_id: int, rid: int) -> int:
        vi = self._get(viommu, ObjKind.VIOMMU)
        dev = self._get(idev, ObjKind.IDEV)
        if any(o.kind is ObjKind.VDEVICE and o.parent == viommu and o.virt_id == virt_id for o in self._objs.values()):
            raise AlreadyExists(f"virtual ID {virt_id:#x} is taken on viommu {viommu}")
        if rid != dev.rid:
            raise InvalidArgument(f"idev {idev} is function {dev.rid:#06x}, not {rid:#06x}")
        vi.users += 1
        dev.users += 1
        self._kvm.get_ref(vi.vm)
        return self._new(
            ObjKind.VDEVICE, parent=viommu, idev=idev, virt_id=virt_id, vm=vi.vm, rid=rid, device=dev.device
        ).id


class IommufdVdeviceNoViommuRef(Iommufd):
    """A vdevice does not hold its vIOMMU: the vIOMMU can be destroyed under it."""

    def vdevice_alloc(self, viommu: int, idev: int, virt_id: int, rid: int) -> int:
        vid = super().vdevice_alloc(viommu, idev, virt_id, rid)
        self._objs[viommu].users -= 1
        return vid

    def _destroy_vdevice(self, v: Any) -> None:
        self._objs[v.parent].users += 1  # type: ignore[index]
        super()._destroy_vdevice(v)


class IommufdDuplicateVirtId(Iommufd):
    """Two vdevices on one vIOMMU may share a virtual ID (the per-vIOMMU uniqueness check is missing)."""

    def vdevice_alloc(self, viommu: int, idev: int, virt_id: int, rid: int) -> int:
        vi = self._get(viommu, ObjKind.VIOMMU)
        dev = self._get(idev, ObjKind.IDEV)
        if any(o.kind is ObjKind.VDEVICE and o.idev == idev for o in self._objs.values()):
            raise AlreadyExists(f"idev {idev} already has a vdevice")
        if rid != dev.rid:
            raise InvalidArgument(f"idev {idev} is function {dev.rid:#06x}, not {rid:#06x}")
        vi.users += 1
        dev.users += 1
        self._kvm.get_ref(vi.vm)
        return self._new(
            ObjKind.VDEVICE, parent=viommu, idev=idev, virt_id=virt_id, vm=vi.vm, rid=rid, device=dev.device
        ).id


class IommufdNoTombstone(Iommufd):
    """A vdevice destroyed with its idev leaves no tombstone; its ID is free at once."""

    def unbind_device(self, idev: int) -> None:
        super().unbind_device(idev)
        self._tombstones.clear()


class IommufdLeaksKvmRef(Iommufd):
    """Destroying a vdevice forgets to drop its KVM reference."""

    def _destroy_vdevice(self, v: Any) -> None:
        self._kvm.get_ref(v.vm)
        super()._destroy_vdevice(v)


class TsmBindNotIdempotent(Tsm):
    """Binding a TDI again to the same VM locks it again (and fails)."""

    def bind(self, rid: int, vm: str | None, virt_id: int | None = None) -> None:
        ctx = self._ctx(rid)
        if ctx.vm is not None and ctx.vm == vm:
            self._lock(rid, 0)
        super().bind(rid, vm, virt_id)


class TsmBindOtherVmWrongError(Tsm):
    """Binding a TDI held by another VM fails with -EINVAL instead of -EBUSY."""

    def bind(self, rid: int, vm: str | None, virt_id: int | None = None) -> None:
        try:
            super().bind(rid, vm, virt_id)
        except Busy as exc:
            raise InvalidState(str(exc)) from None


class TsmBindWithoutConnectWrongError(Tsm):
    """Bind without connect fails with -ENOENT instead of -EINVAL."""

    def bind(self, rid: int, vm: str | None, virt_id: int | None = None) -> None:
        if self._ctx(rid).device not in self._sessions:
            raise NotFound("not connected")
        super().bind(rid, vm, virt_id)


class TsmUnbindFailsWhenUnbound(Tsm):
    """Unbind of an unbound TDI fails instead of being a no-op."""

    def unbind(self, rid: int) -> None:
        if self._ctx(rid).vm is None:
            raise InvalidState("not bound")
        super().unbind(rid)


class TsmGuestRequestWrongError(Tsm):
    """A guest request outside the bound window fails with -EINVAL instead of -ENXIO."""

    def guest_request(self, rid: int, vm: str, request: GuestRequest) -> Any:
        if self._ctx(rid).vm is None:
            raise InvalidArgument("not bound")
        return super().guest_request(rid, vm, request)


class TsmBindStealsTdi(Tsm):
    """Binding a TDI held by another VM moves it to the new VM."""

    def bind(self, rid: int, vm: str | None, virt_id: int | None = None) -> None:
        ctx = self._ctx(rid)
        if ctx.vm is not None and vm and ctx.vm != vm:
            ctx.vm = vm
            return
        super().bind(rid, vm, virt_id)


class IommufdCloseKeepsVdevice(Iommufd):
    """Closing the VFIO device leaves its vdevice alive (a dangling vdevice)."""

    def unbind_device(self, idev: int) -> None:
        obj = self._get(idev, ObjKind.IDEV)
        if obj.hwpt is not None:
            self._detach(obj)
        obj.kind = ObjKind.IOAS  # hide the idev, keep its vdevice
        obj.device = None


class TsmDisconnectKeepsBinding(Tsm):
    """Disconnect ends the session without unbinding the TDIs."""

    def disconnect(self, device: str) -> None:
        dev = self._device(device)
        sid = self._sessions.pop(device, None)
        if sid is not None:
            self._iommu.rp_stream_enable(dev.config.default_stream_id, False)
            if sid in dev.snapshot().sessions:  # as the reference: a session the device lost is not ended again
                dev.spdm_end(sid)


class IommufdDestroyHwptInUse(Iommufd):
    """IOMMU_DESTROY of an hwpt (or IOAS) succeeds while a vIOMMU still sits on it."""

    def destroy(self, obj_id: int) -> None:
        obj = self._objs.get(obj_id)
        if obj is not None and obj.kind in (ObjKind.HWPT, ObjKind.IOAS) and obj.users:
            del self._objs[obj_id]
            return
        super().destroy(obj_id)


# ------------------------------------------------------------------ MMIO


class KvmIgnoresMoveNotify(Kvm):
    """KVM keeps mapping a dmabuf after the exporter revoked it."""

    def move_notify(self, attachment: int) -> None:
        return None


class VfioMmapWhilePrivate(Vfio):
    """VFIO lets the host mmap a function that is private."""

    def mmap_bar(self, fd: int, rid: int) -> None:
        self._fd(fd)
        self._mmaps.add((fd, rid))


class TsmMapsIntoAnyVm(Tsm):
    """The TSM lets KVM map a TDI's private MMIO into a VM it is not bound to."""

    def sept_add(self, vm: str, rid: int) -> None:
        self._ctx(rid).private_mapped = True


class KvmAliasesPrivateMmio(Kvm):
    """KVM maps the same device pages private at two guest addresses."""

    def map_private_mmio(self, vm: str, rid: int) -> int:
        n = super().map_private_mmio(vm, rid)
        slots = [s for s in self._slots.values() if s.vm == vm and s.rid == rid]
        if slots:
            from teeio_conformance.reference_impl.kvm import _Memslot

            s = slots[0]
            twin = _Memslot(
                slot=self._next_slot,
                vm=vm,
                gpa=s.gpa + 0x8000,
                pages=s.pages,
                dmabuf=s.dmabuf,
                attachment=s.attachment,
                rid=rid,
                host_base=s.host_base,
                mapping=SlotMapping.PRIVATE,
            )
            self._next_slot += 1
            self._slots[twin.slot] = twin
        return n


class TsmForgetsToRevoke(Tsm):
    """Unbind does not revoke MMIO: private mappings outlive the unlocked TDI (SEV-TIO allows unmap later)."""

    def unbind(self, rid: int) -> None:
        ctx = self._ctx(rid)
        if ctx.vm is None:
            return
        self._stop(ctx)
        if ctx.trusted_dma:
            self._iommufd.cc_disable_dma(rid)
            ctx.trusted_dma = False
        self._free(ctx)
        self._vfio.set_private(rid, False)


class VfioCloseKeepsDmabufs(Vfio):
    """Closing the device leaves its dmabufs valid and mapped."""

    def close_device(self, fd: int) -> None:
        f = self._fd(fd)
        self._iommufd.unbind_device(f.idev)
        self._private.discard(f.rid)
        del self._fds[fd]


class VfioRecoversEarly(Vfio):
    """VFIO recovers MMIO right after revoking it, while the TDI is still bound."""

    def revoke_mmio(self, rid: int) -> int:
        n = super().revoke_mmio(rid)
        for d in self._dmabufs.values():
            if d.rid == rid and d.revoked:
                self._recover(d)
        return n


class KvmUntypedUnmapRefusal(Kvm):
    """A forbidden unmap is refused with a bare RuntimeError instead of a typed error."""

    def move_notify(self, attachment: int) -> None:
        try:
            super().move_notify(attachment)
        except InvalidState as exc:
            raise RuntimeError(str(exc)) from None


# ------------------------------------------------------------------ DMA


class IommuIgnoresTBit(Iommu):
    """The IOMMU sends T=0 DMA through the trusted table when one exists (ignores the T bit)."""

    def dma(self, packet: Any) -> None:
        tlp = getattr(packet, "t_bit", None)
        if tlp is False and packet.requester_id in self._trusted:
            self._kvm.dma_write(self._trusted[packet.requester_id], packet.address, packet.payload, private=True)
            return
        super().dma(packet)


class KvmDmaAnywhere(Kvm):
    """KVM lets a T=0 DMA write private memory."""

    def dma_write(self, vm: str, gpa: int, data: bytes, *, private: bool) -> None:
        v = self._live_vm(vm)
        if gpa >= 0 and gpa + len(data) <= len(v.memory):
            v.memory[gpa : gpa + len(data)] = data
            return
        super().dma_write(vm, gpa, data, private=private)


class IommuRefusedDmaWrites(Iommu):
    """A DMA the IOMMU refuses still lands in memory (the write happens before the check)."""

    def dma(self, packet: Any) -> None:
        try:
            super().dma(packet)
        except Exception:
            vm = next(iter(self._trusted.values()), None) or next((v for v, _ in self._shared.values()), None)
            if vm is not None and getattr(packet, "payload", None) is not None:
                try:
                    self._kvm.dma_write(vm, 0x5000, b"leak", private=False)
                except Exception:
                    pass
            raise


class IommuNoFaultRecord(Iommu):
    """Refused DMAs leave no fault record."""

    def _fault(self, rid: int, address: int, t_bit: bool, reason: str) -> None:
        return None


class IommuNoFence(Iommu):
    """SEV-TIO: a fault on a bound TDI does not fence the guest."""

    def _fault(self, rid: int, address: int, t_bit: bool, reason: str) -> None:
        from teeio_conformance.reference_impl.iommu import Fault

        self._faults.append(Fault(rid, address, t_bit, reason))


# ------------------------------------------------------------------ CONF


class VmmLogsGuestSecrets(Vmm):
    """QEMU copies guest private memory into shared memory "for migration" when the VM starts."""

    def run(self, vm: str) -> None:
        super().run(vm)
        # copy guest private memory into shared memory "for migration"
        v = self._kvm._vms[vm]
        v.memory[v.private_pages * 4096 : v.private_pages * 4096 + 32] = v.memory[0:32]


class VfioHostReadsPrivate(Vfio):
    """Host MMIO reads go out with T=1, so the host reads TEE memory of a running TDI."""

    def host_mmio_read(self, fd: int, rid: int, offset: int, length: int) -> bytes:
        from teeio_conformance.reference_impl.device.ide.stream import Tlp

        f = self._fd(fd)
        base, _ = f.device.bar_range(rid)
        tlp = Tlp(
            kind="MRd",
            requester_id=rid,
            address=base + offset,
            t_bit=True,
            payload=length.to_bytes(4, "little"),
            stream_id=0,
        )
        try:
            data: bytes = self._iommu.mmio(None, tlp)
        except Exception:
            return super().host_mmio_read(fd, rid, offset, length)
        self._host_reads.append(data)
        return data


class TsmPassesKeysThroughVmm(Tsm):
    """The TSM programs root-port keys through QEMU, exposing them to the host."""

    def _program_stream(self, dev: Any, sid: int, key_set: Any) -> None:
        real = self._iommu.rp_key_prog
        vmm_log = self._vfio

        def via_host(stream: int, slot: Any, key: bytes, iv: bytes) -> None:
            vmm_log.dmabuf_info_note(key)
            real(stream, slot, key, iv)

        self._iommu.rp_key_prog = via_host  # type: ignore[method-assign]
        try:
            super()._program_stream(dev, sid, key_set)
        finally:
            self._iommu.rp_key_prog = real  # type: ignore[method-assign]


class VfioWithNote(Vfio):
    from teeio_conformance.contract.trace import operation as _op

    @_op()
    def dmabuf_info_note(self, note: bytes) -> None:
        """A host-side log entry (what a leaky TSM hands to host software)."""


# ------------------------------------------------------------------ DOWN


class TsmUnbindNoStop(Tsm):
    """Unbind frees the TSM's record but never stops the TDI."""

    def _stop(self, ctx: Any) -> None:
        ctx.stopped = True
        ctx.nonce = None


class KvmDestroyKeepsSlots(Kvm):
    """Destroying a VM leaves its memslots (and their dmabuf imports) behind."""

    def _destroy(self, v: Any) -> None:
        v.state = v.state.__class__.DESTROYED
        v.destroy_pending = False
        v.memory[:] = bytes(len(v.memory))


class IommufdCloseSkipsUnbind(Iommufd):
    """The vdevice destroyed by VFIO close does not roll back the TSM bind."""

    def _destroy_vdevice(self, v: Any) -> None:
        v.bound = False
        super()._destroy_vdevice(v)


class VfioCloseTrustsIommufd(Vfio):
    """VFIO close leaves the TSM unbind to IOMMUFD's vdevice teardown (no unbind of its own)."""

    def close_device(self, fd: int) -> None:
        real = self._tsm
        self._tsm = _NoUnbind(real)
        try:
            super().close_device(fd)
        finally:
            self._tsm = real


class _NoUnbind:
    """The TSM as VFIO's close path sees it in :class:`VfioCloseTrustsIommufd`: unbind does nothing."""

    def __init__(self, tsm: Any) -> None:
        self._real = tsm

    def unbind(self, rid: int) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


# ------------------------------------------------------------------ SUT-HANG

HANG_SECONDS = 10.0
"""How long a hanging mutant blocks: far past the short step limit its tests use, yet bounded, so a
harness that failed to time it out would still finish."""

HANG_STEP_LIMIT = 0.1
"""The per-step limit a hang mutant runs under. Shrinking replays the hanging step on every candidate
that keeps it (20-45 times), so this limit multiplies straight into the time to a shrunk result; the
slowest honest call of the full-stack machine takes under 2 ms (a guest's attestation, which checks
signatures; measured over 15,551 calls), 50x below it. A slow honest call taken for a hang only moves
where a hang mutant is caught, never whether."""


class KvmDestroyWaitsForRefs(Kvm):
    """Destroying a referenced VM blocks until the references go (they never do while it waits),
    instead of deferring the destroy to the last put."""

    def destroy_vm(self, vm: str) -> None:
        if self._vm(vm).refs:
            time.sleep(HANG_SECONDS)
        super().destroy_vm(vm)


class IommufdCloseWaitsForDevices(Iommufd):
    """Closing the iommufd blocks while VFIO still has devices bound to it, instead of tearing down."""

    def close(self) -> None:
        if any(o.kind is ObjKind.IDEV for o in self._objs.values()):
            time.sleep(HANG_SECONDS)
        super().close()


# ------------------------------------------------------------------ ERR


class VfioRevokeNotAtomic(Vfio):
    """A refused revoke marks the dmabuf revoked before asking the importer."""

    def revoke_mmio_dmabuf(self, dmabuf: int) -> None:
        d = self._dmabuf(dmabuf)
        d.revoked = True
        for att in list(d.attachments):
            self._kvm.move_notify(att)


class IommufdCrashesOnUnknownId(Iommufd):
    """IOMMU_DESTROY of an unknown ID raises KeyError instead of -ENOENT."""

    def destroy(self, obj_id: int) -> None:
        if obj_id not in self._objs and obj_id not in self._tombstones:
            raise KeyError(obj_id)
        super().destroy(obj_id)


class KvmGuestMmioKeyError(Kvm):
    """A guest MMIO to a revoked slot raises KeyError (an untyped hardware-path failure)."""

    def _guest_mmio(self, vm: str, gpa: int, length: int, data: bytes | None = None) -> bytes:
        for s in self._slots.values():
            if s.vm == vm and s.gpa <= gpa < s.gpa + s.pages * 4096 and s.mapping is SlotMapping.UNMAPPED:
                raise KeyError(gpa)
        return super()._guest_mmio(vm, gpa, length, data)


def mutants(m: Callable[..., Any]) -> list[Any]:
    full = "full_stack"
    host = "host_lifetimes"
    return [
        m(
            "vmm-lazy-vdevice",
            "FLOW-01",
            full,
            "tdx",
            VmmLazyVdevice.__doc__,
            overrides={"vmm_factory": VmmLazyVdevice},
        ),
        m(
            "iommufd-bind-creates-vdevice",
            "FLOW-02",
            full,
            "tdx",
            IommufdBindCreatesVdevice.__doc__,
            overrides={"iommufd_factory": IommufdBindCreatesVdevice},
        ),
        m(
            "vmm-binds-tsm-directly",
            "FLOW-03",
            full,
            "tdx",
            VmmBindsTsmDirectly.__doc__,
            overrides={"vmm_factory": VmmBindsTsmDirectly},
        ),
        m(
            "vmm-guest-requests-direct",
            "FLOW-04",
            full,
            "tdx",
            VmmForwardsGuestRequestsDirectly.__doc__,
            overrides={"vmm_factory": VmmForwardsGuestRequestsDirectly},
        ),
        m(
            "iommufd-unbind-destroys-vdevice",
            "FLOW-05",
            full,
            "tdx",
            IommufdUnbindDestroysVdevice.__doc__,
            overrides={"iommufd_factory": IommufdUnbindDestroysVdevice},
        ),
        m(
            "iommufd-viommu-destroy-running",
            "FLOW-06",
            full,
            "tdx",
            IommufdViommuDestroyWhileRunning.__doc__,
            overrides={"iommufd_factory": IommufdViommuDestroyWhileRunning},
        ),
        m(
            "tsm-unmap-while-locked",
            "FLOW-07",
            full,
            "tdx",
            TsmUnmapWhileLocked.__doc__,
            overrides={"tsm_factory": TsmUnmapWhileLocked},
        ),
        m(
            "tsm-cca-stop-before-unmap",
            "FLOW-08",
            full,
            "cca",
            TsmStopBeforeUnmapCca.__doc__,
            overrides={"tsm_factory": TsmStopBeforeUnmapCca},
        ),
        m(
            "tdx-host-starts",
            "FLOW-09",
            full,
            "tdx",
            TsmHostMayStartTdx.__doc__,
            overrides={"tsm_factory": TsmHostMayStartTdx, "vmm_factory": VmmHostStartsTdx},
        ),
        m(
            "tsm-start-before-accept",
            "FLOW-10",
            full,
            "tdx",
            TsmStartBeforeAccept.__doc__,
            overrides={"tsm_factory": TsmStartBeforeAccept},
        ),
        m(
            "sev-no-start-at-attest",
            "FLOW-11",
            full,
            "sev-tio",
            TsmNoStartAtAttest.__doc__,
            overrides={"tsm_factory": TsmNoStartAtAttest},
        ),
        m(
            "cca-guest-starts",
            "FLOW-12",
            full,
            "cca",
            TsmGuestStartsCca.__doc__,
            overrides={"tsm_factory": TsmGuestStartsCca, "vmm_factory": VmmGuestStartCca},
        ),
        m(
            "tdx-host-reads-report",
            "FLOW-13",
            full,
            "tdx",
            TsmHostMayReadReportTdx.__doc__,
            overrides={"tsm_factory": TsmHostMayReadReportTdx},
        ),
        m(
            "iommufd-two-vdevices-per-idev",
            "LIFE-01",
            host,
            "tdx",
            IommufdTwoVdevicesPerIdev.__doc__,
            overrides={"iommufd_factory": IommufdTwoVdevicesPerIdev},
        ),
        m(
            "iommufd-vdevice-no-viommu-ref",
            "LIFE-02",
            host,
            "tdx",
            IommufdVdeviceNoViommuRef.__doc__,
            overrides={"iommufd_factory": IommufdVdeviceNoViommuRef},
        ),
        m(
            "iommufd-duplicate-virt-id",
            "LIFE-03",
            host,
            "tdx",
            IommufdDuplicateVirtId.__doc__,
            overrides={"iommufd_factory": IommufdDuplicateVirtId},
        ),
        m(
            "iommufd-no-tombstone",
            "LIFE-04",
            full,
            "tdx",
            IommufdNoTombstone.__doc__,
            overrides={"iommufd_factory": IommufdNoTombstone},
        ),
        m(
            "iommufd-leaks-kvm-ref",
            "LIFE-05",
            host,
            "tdx",
            IommufdLeaksKvmRef.__doc__,
            overrides={"iommufd_factory": IommufdLeaksKvmRef},
        ),
        m(
            "tsm-bind-not-idempotent",
            "LIFE-06",
            full,
            "tdx",
            TsmBindNotIdempotent.__doc__,
            overrides={"tsm_factory": TsmBindNotIdempotent},
        ),
        m(
            "tsm-bind-other-vm-einval",
            "LIFE-07",
            full,
            "tdx",
            TsmBindOtherVmWrongError.__doc__,
            overrides={"tsm_factory": TsmBindOtherVmWrongError},
        ),
        m(
            "tsm-bind-unconnected-enoent",
            "LIFE-08",
            full,
            "tdx",
            TsmBindWithoutConnectWrongError.__doc__,
            overrides={"tsm_factory": TsmBindWithoutConnectWrongError},
        ),
        m(
            "tsm-unbind-fails-unbound",
            "LIFE-09",
            full,
            "tdx",
            TsmUnbindFailsWhenUnbound.__doc__,
            overrides={"tsm_factory": TsmUnbindFailsWhenUnbound},
        ),
        m(
            "tsm-guest-request-einval",
            "LIFE-10",
            full,
            "tdx",
            TsmGuestRequestWrongError.__doc__,
            overrides={"tsm_factory": TsmGuestRequestWrongError},
        ),
        m(
            "tsm-bind-steals-tdi",
            "LIFE-11",
            full,
            "tdx",
            TsmBindStealsTdi.__doc__,
            overrides={"tsm_factory": TsmBindStealsTdi},
        ),
        m(
            "iommufd-close-keeps-vdevice",
            "LIFE-12",
            full,
            "tdx",
            IommufdCloseKeepsVdevice.__doc__,
            overrides={"iommufd_factory": IommufdCloseKeepsVdevice},
        ),
        m(
            "tsm-disconnect-keeps-binding",
            "LIFE-13",
            full,
            "tdx",
            TsmDisconnectKeepsBinding.__doc__,
            overrides={"tsm_factory": TsmDisconnectKeepsBinding},
        ),
        m(
            "iommufd-destroy-hwpt-in-use",
            "LIFE-14",
            host,
            "tdx",
            IommufdDestroyHwptInUse.__doc__,
            overrides={"iommufd_factory": IommufdDestroyHwptInUse},
        ),
        m(
            "kvm-ignores-move-notify",
            "MMIO-01",
            full,
            "tdx",
            KvmIgnoresMoveNotify.__doc__,
            overrides={"kvm_factory": KvmIgnoresMoveNotify},
        ),
        m(
            "vfio-mmap-while-private",
            "MMIO-02",
            full,
            "tdx",
            VfioMmapWhilePrivate.__doc__,
            overrides={"vfio_factory": VfioMmapWhilePrivate},
        ),
        m(
            "tsm-maps-into-any-vm",
            "MMIO-03",
            full,
            "tdx",
            TsmMapsIntoAnyVm.__doc__,
            overrides={"tsm_factory": TsmMapsIntoAnyVm},
        ),
        m(
            "kvm-aliases-private-mmio",
            "MMIO-04",
            full,
            "tdx",
            KvmAliasesPrivateMmio.__doc__,
            overrides={"kvm_factory": KvmAliasesPrivateMmio},
        ),
        m(
            "tsm-forgets-to-revoke",
            "MMIO-05",
            full,
            "sev-tio",
            TsmForgetsToRevoke.__doc__,
            overrides={"tsm_factory": TsmForgetsToRevoke},
        ),
        m(
            "vfio-close-keeps-dmabufs",
            "MMIO-06",
            full,
            "tdx",
            VfioCloseKeepsDmabufs.__doc__,
            overrides={"vfio_factory": VfioCloseKeepsDmabufs},
        ),
        m(
            "vfio-recovers-early",
            "MMIO-07",
            full,
            "tdx",
            VfioRecoversEarly.__doc__,
            overrides={"vfio_factory": VfioRecoversEarly},
        ),
        m(
            "kvm-untyped-unmap-refusal",
            "MMIO-08",
            full,
            "tdx",
            KvmUntypedUnmapRefusal.__doc__,
            overrides={"kvm_factory": KvmUntypedUnmapRefusal},
        ),
        m(
            "iommu-ignores-t-bit",
            "DMA-01",
            full,
            "tdx",
            IommuIgnoresTBit.__doc__,
            overrides={"iommu_factory": IommuIgnoresTBit},
        ),
        m("kvm-dma-anywhere", "DMA-02", full, "tdx", KvmDmaAnywhere.__doc__, overrides={"kvm_factory": KvmDmaAnywhere}),
        m(
            "iommu-refused-dma-writes",
            "DMA-03",
            full,
            "tdx",
            IommuRefusedDmaWrites.__doc__,
            overrides={"iommu_factory": IommuRefusedDmaWrites},
        ),
        m(
            "iommu-no-fault-record",
            "DMA-04",
            full,
            "tdx",
            IommuNoFaultRecord.__doc__,
            overrides={"iommu_factory": IommuNoFaultRecord},
        ),
        m(
            "iommu-sev-no-fence",
            "DMA-06",
            full,
            "sev-tio",
            IommuNoFence.__doc__,
            overrides={"iommu_factory": IommuNoFence},
        ),
        m(
            "vmm-copies-guest-secret",
            "CONF-01",
            full,
            "tdx",
            VmmLogsGuestSecrets.__doc__,
            overrides={"vmm_factory": VmmLogsGuestSecrets},
        ),
        m(
            "vfio-host-reads-private",
            "CONF-02",
            full,
            "tdx",
            VfioHostReadsPrivate.__doc__,
            overrides={"vfio_factory": VfioHostReadsPrivate},
        ),
        m(
            "tsm-keys-through-host",
            "CONF-03",
            full,
            "tdx",
            TsmPassesKeysThroughVmm.__doc__,
            overrides={"tsm_factory": TsmPassesKeysThroughVmm, "vfio_factory": VfioWithNote},
        ),
        m(
            "tsm-unbind-no-stop",
            "DOWN-01",
            full,
            "sev-tio",
            TsmUnbindNoStop.__doc__,
            overrides={"tsm_factory": TsmUnbindNoStop},
        ),
        m(
            "kvm-destroy-keeps-slots",
            "DOWN-02",
            full,
            "tdx",
            KvmDestroyKeepsSlots.__doc__,
            overrides={"kvm_factory": KvmDestroyKeepsSlots},
        ),
        m(
            "iommufd-close-skips-unbind",
            "DOWN-03",
            full,
            "sev-tio",
            f"{IommufdCloseSkipsUnbind.__doc__} {VfioCloseTrustsIommufd.__doc__}",
            overrides={"iommufd_factory": IommufdCloseSkipsUnbind, "vfio_factory": VfioCloseTrustsIommufd},
        ),
        m(
            "tsm-disconnect-no-stop",
            "DOWN-04",
            full,
            "sev-tio",
            TsmUnbindNoStop.__doc__,
            overrides={"tsm_factory": TsmUnbindNoStop},
        ),
        m(
            "vfio-revoke-not-atomic",
            "ERR-01",
            full,
            "tdx",
            VfioRevokeNotAtomic.__doc__,
            overrides={"vfio_factory": VfioRevokeNotAtomic},
        ),
        m(
            "iommufd-keyerror-on-unknown-id",
            "ERR-02",
            host,
            "tdx",
            IommufdCrashesOnUnknownId.__doc__,
            overrides={"iommufd_factory": IommufdCrashesOnUnknownId},
        ),
        m(
            "kvm-keyerror-on-revoked-mmio",
            "ERR-03",
            full,
            "sev-tio",
            KvmGuestMmioKeyError.__doc__,
            overrides={"kvm_factory": KvmGuestMmioKeyError},
        ),
        m(
            "kvm-destroy-waits-for-refs",
            "SUT-HANG",
            full,
            "tdx",
            KvmDestroyWaitsForRefs.__doc__,
            overrides={"kvm_factory": KvmDestroyWaitsForRefs},
            timeout=HANG_STEP_LIMIT,
        ),
        m(
            "iommufd-close-waits-for-devices",
            "SUT-HANG",
            host,
            "tdx",
            IommufdCloseWaitsForDevices.__doc__,
            overrides={"iommufd_factory": IommufdCloseWaitsForDevices},
            timeout=HANG_STEP_LIMIT,
        ),
    ]


del GuestTsm
