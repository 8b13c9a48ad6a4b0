"""KVM: VMs, guest memory (private and shared pages), memslots, and the private MMIO mapping.

Guest memory holds real bytes. Pages below ``private_pages`` are private (only the guest and T=1
DMA reach them); the rest are shared with the host. A memslot may be backed by a VFIO dmabuf
(flow steps 5-6): KVM is the *importer* and never maps the device's pages on its own -- it asks the
exporter (VFIO) for them, and drops them the moment VFIO revokes (``move_notify``; rules-seed B.29,
B.31). Mapping a slot *private* (S-EPT / stage-2, step 30) and unmapping it (step 44) go through the
TSM, which owns the secure tables and enforces the platform's ordering (TDX: stop first).
"""

from __future__ import annotations

import enum
import random
from typing import Any

import attrs

from teeio_conformance.contract.errors import AccessFault, Busy, InvalidArgument, InvalidState, NotFound
from teeio_conformance.contract.trace import Actor, Trace, operation, query
from teeio_conformance.reference_impl.device.ide.stream import Tlp

__all__ = ["Kvm", "KvmSnapshot", "MemslotSnapshot", "SlotMapping", "VmSnapshot", "VmState"]

PAGE = 4096


class VmState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"
    DESTROYED = "destroyed"


class SlotMapping(enum.Enum):
    UNMAPPED = "unmapped"
    SHARED = "shared"  # T=0 MMIO through the normal EPT
    PRIVATE = "private"  # T=1 MMIO through the secure EPT / stage-2


@attrs.frozen
class MemslotSnapshot:
    slot: int
    vm: str
    gpa: int
    pages: int
    dmabuf: int
    attachment: int
    rid: int
    mapping: SlotMapping
    host_base: int  # the exporter's physical pages behind the slot, as the exporter last gave them


@attrs.frozen
class VmSnapshot:
    name: str
    state: VmState
    refs: int  # references held by vdevices / viommus (KVM cannot be destroyed while > 0)
    private_pages: int
    shared_memory: bytes  # host-visible
    private_digest: int  # hash of private memory (not its bytes), for "nothing written" checks
    secrets: tuple[bytes, ...]


@attrs.frozen
class KvmSnapshot:
    vms: tuple[VmSnapshot, ...]
    memslots: tuple[MemslotSnapshot, ...]


@attrs.define
class _Vm:
    name: str
    memory: bytearray
    private_pages: int
    state: VmState = VmState.CREATED
    refs: int = 0
    destroy_pending: bool = False
    secrets: list[bytes] = attrs.Factory(list)


@attrs.define
class _Memslot:
    slot: int
    vm: str
    gpa: int
    pages: int
    dmabuf: int
    attachment: int
    rid: int
    host_base: int
    mapping: SlotMapping = SlotMapping.UNMAPPED


class Kvm(Actor):
    actor_name = "kvm"

    def __init__(
        self,
        trace: Trace,
        *,
        guest_pages: int = 8,
        private_pages: int = 4,
        seed: int = 7,
        first_vm_seed: int | None = None,
    ) -> None:
        super().__init__(trace)
        self._vms: dict[str, _Vm] = {}
        self._slots: dict[int, _Memslot] = {}
        self._next_slot = 1
        self._guest_pages = guest_pages
        self._private_pages = private_pages
        self._rng = random.Random(f"kvm-guest-secrets/{seed}")
        # the isolation test's capability: the first VM's secrets from their own seed, every other VM's as without
        self._first_rng = None if first_vm_seed is None else random.Random(f"kvm-first-vm-secrets/{first_vm_seed}")
        self._vfio: Any = None
        self._tsm: Any = None
        self._iommu: Any = None

    def _wire(self, vfio: Any, tsm: Any, iommu: Any) -> None:
        self._vfio, self._tsm, self._iommu = vfio, tsm, iommu

    # ------------------------------------------------------------------ VM lifecycle
    @operation()
    def create_vm(self) -> str:
        name = f"vm{len(self._vms) + 1}"
        mem = bytearray(self._guest_pages * PAGE)
        vm = _Vm(name=name, memory=mem, private_pages=self._private_pages)
        secret = self._rng.randbytes(32)  # the guest's secret, in private memory
        if self._first_rng is not None and not self._vms:
            secret = self._first_rng.randbytes(32)  # VM A's own (the shared draw above keeps the others' as they were)
        mem[0:32] = secret
        vm.secrets.append(secret)
        self._vms[name] = vm
        return name

    @operation(step="10")
    def run(self, vm: str) -> None:
        v = self._vm(vm)
        if v.state is not VmState.CREATED:
            raise InvalidState(f"{vm} is {v.state.value}, not created")
        v.state = VmState.RUNNING

    @operation()
    def stop(self, vm: str) -> None:
        """The guest stops running (QEMU quits the vCPUs); objects can now be torn down."""
        v = self._vm(vm)
        if v.state is not VmState.RUNNING:
            raise InvalidState(f"{vm} is {v.state.value}, not running")
        v.state = VmState.STOPPED

    @query
    def vm_state(self, vm: str) -> VmState:
        return self._vm(vm).state

    @operation()
    def get_ref(self, vm: str) -> None:
        """A vIOMMU/vdevice holds the VM (the kernel's kvm_get_kvm)."""
        v = self._vm(vm)
        if v.state is VmState.DESTROYED:
            raise InvalidState(f"{vm} is destroyed")
        v.refs += 1

    @operation()
    def put_ref(self, vm: str) -> None:
        v = self._vm(vm)
        if v.refs <= 0:
            raise InvalidState(f"{vm} holds no references")
        v.refs -= 1
        if v.refs == 0 and v.destroy_pending:
            self._destroy(v)

    @operation()
    def destroy_vm(self, vm: str) -> None:
        """Drop the VMM's reference: the VM is destroyed once no vIOMMU, vdevice or bound TDI holds it.

        Like kvm_put_kvm(): while references remain the VM stays (stopped, destroy pending), so a
        vdevice never outlives its VM (rules-seed A.12, A.14).
        """
        v = self._vm(vm)
        if v.state is VmState.DESTROYED:
            raise InvalidState(f"{vm} is already destroyed")
        if v.state is VmState.RUNNING:
            v.state = VmState.STOPPED
        if v.refs:
            v.destroy_pending = True
            return
        self._destroy(v)

    def _destroy(self, v: _Vm) -> None:
        for s in [s for s in self._slots.values() if s.vm == v.name]:
            self._drop_slot(s)
        v.state = VmState.DESTROYED
        v.destroy_pending = False
        v.memory[:] = bytes(len(v.memory))  # scrub on teardown

    def _vm(self, vm: str) -> _Vm:
        v = self._vms.get(vm)
        if v is None:
            raise NotFound(f"no VM {vm!r}")
        return v

    def _live_vm(self, vm: str) -> _Vm:
        v = self._vm(vm)
        if v.state is VmState.DESTROYED:
            raise InvalidState(f"{vm} is destroyed")
        return v

    # ------------------------------------------------------------------ memslots backed by a dmabuf
    @operation(step="5")
    def create_memslot(self, vm: str, gpa: int, dmabuf: int) -> int:
        v = self._live_vm(vm)
        if gpa % PAGE or gpa < len(v.memory):
            raise InvalidArgument(f"memslot GPA {gpa:#x} must be page aligned and above guest RAM")
        info = self._vfio.dmabuf_info(dmabuf)
        pages = info.size // PAGE
        for s in self._slots.values():
            if s.vm == vm and s.gpa < gpa + pages * PAGE and gpa < s.gpa + s.pages * PAGE:
                raise Busy(f"memslot at {gpa:#x} overlaps slot {s.slot}")
        att = self._import(dmabuf, vm)
        slot = _Memslot(
            slot=self._next_slot,
            vm=vm,
            gpa=gpa,
            pages=pages,
            dmabuf=dmabuf,
            attachment=att,
            rid=info.rid,
            host_base=info.base,
        )
        self._next_slot += 1
        self._slots[slot.slot] = slot
        self._map_shared(slot)
        return slot.slot

    def _import(self, dmabuf: int, vm: str) -> int:
        att: int = self._vfio.dmabuf_attach(dmabuf, f"kvm:{vm}")  # step 6: import the dmabuf
        return att

    def _map_shared(self, slot: _Memslot) -> None:
        try:
            base = self._vfio.dmabuf_map(slot.attachment)
        except (InvalidState, NotFound):
            return  # revoked: stays unmapped until the exporter recovers it
        slot.host_base = base
        slot.mapping = SlotMapping.SHARED

    @operation()
    def destroy_memslot(self, slot: int) -> None:
        self._drop_slot(self._slot(slot))

    def _drop_slot(self, s: _Memslot) -> None:
        if s.mapping is SlotMapping.PRIVATE:
            self._tsm.sept_remove(s.vm, s.rid)
        s.mapping = SlotMapping.UNMAPPED
        del self._slots[s.slot]  # first: the exporter refuses to detach an attachment a memslot still uses
        try:
            self._vfio.dmabuf_detach(s.attachment)
        except NotFound:
            pass  # the exporter is gone already (its device file closed): nothing left to detach

    @query
    def imports(self, attachment: int) -> bool:
        """Whether a memslot still uses this dmabuf attachment (only KVM, the importer, may detach it)."""
        return any(s.attachment == attachment for s in self._slots.values())

    def _slot(self, slot: int) -> _Memslot:
        s = self._slots.get(slot)
        if s is None:
            raise NotFound(f"no memslot {slot}")
        return s

    # ------------------------------------------------------------------ private MMIO (via the TSM)
    @operation(step="30")
    def map_private_mmio(self, vm: str, rid: int) -> int:
        """Map every slot of ``rid`` in ``vm`` private; the TSM checks binding and state first."""
        self._live_vm(vm)
        slots = [s for s in self._slots.values() if s.vm == vm and s.rid == rid]
        if not slots:
            raise NotFound(f"{vm} has no memslot backed by function {rid:#06x}")
        if any(s.mapping is SlotMapping.UNMAPPED for s in slots):
            raise InvalidState(f"a memslot of {rid:#06x} is revoked; nothing to map")
        self._tsm.sept_add(vm, rid)
        for s in slots:
            s.mapping = SlotMapping.PRIVATE
        return len(slots)

    @operation(step="44")
    def unmap_private_mmio(self, vm: str, rid: int) -> int:
        slots = [s for s in self._slots.values() if s.vm == vm and s.rid == rid and s.mapping is SlotMapping.PRIVATE]
        if not slots:
            return 0
        self._tsm.sept_remove(vm, rid)  # TDX refuses while the TDI is LOCKED/RUN (stop first)
        for s in slots:
            s.mapping = SlotMapping.UNMAPPED
        return len(slots)

    # ------------------------------------------------------------------ importer callbacks from VFIO
    @operation(step="44")
    def move_notify(self, attachment: int) -> None:
        """The exporter revoked: unmap at once; later accesses fault (rules-seed B.31)."""
        for s in self._slots.values():
            if s.attachment == attachment and s.mapping is not SlotMapping.UNMAPPED:
                if s.mapping is SlotMapping.PRIVATE:
                    self._tsm.sept_remove(s.vm, s.rid)
                s.mapping = SlotMapping.UNMAPPED

    @operation(step="49")
    def dmabuf_recovered(self, attachment: int) -> None:
        """The exporter restored access (step 49): map the slot shared again."""
        for s in self._slots.values():
            if s.attachment == attachment and s.mapping is SlotMapping.UNMAPPED:
                self._map_shared(s)

    # ------------------------------------------------------------------ guest accesses
    @operation()
    def guest_read(self, vm: str, gpa: int, length: int) -> bytes:
        v = self._running(vm)
        if gpa < 0 or length <= 0 or gpa + length > len(v.memory):
            raise AccessFault(f"guest read at {gpa:#x} is outside guest RAM")
        return bytes(v.memory[gpa : gpa + length])

    @operation()
    def guest_write(self, vm: str, gpa: int, data: bytes) -> None:
        v = self._running(vm)
        if gpa < 0 or gpa + len(data) > len(v.memory):
            raise AccessFault(f"guest write to {gpa:#x} is outside guest RAM")
        v.memory[gpa : gpa + len(data)] = data

    @operation()
    def guest_mmio_read(self, vm: str, gpa: int, length: int) -> bytes:
        """A guest load from a BAR: private slots go out T=1, shared ones T=0; revoked ones fault."""
        self._running(vm)
        return self._guest_mmio(vm, gpa, length)

    def _guest_mmio(self, vm: str, gpa: int, length: int, data: bytes | None = None) -> bytes:
        for s in self._slots.values():
            if s.vm == vm and s.gpa <= gpa < s.gpa + s.pages * PAGE:
                if s.mapping is SlotMapping.UNMAPPED:
                    raise AccessFault(f"{vm}: MMIO at {gpa:#x} hits a revoked memslot (EPT violation)")
                addr = s.host_base + (gpa - s.gpa)
                payload = data if data is not None else length.to_bytes(4, "little")
                tlp = Tlp(
                    kind="MWr" if data is not None else "MRd",
                    requester_id=s.rid,
                    address=addr,
                    t_bit=s.mapping is SlotMapping.PRIVATE,
                    payload=payload,
                    stream_id=0 if s.mapping is SlotMapping.PRIVATE else None,
                )
                result: bytes = self._iommu.mmio(vm, tlp)
                return result
        raise AccessFault(f"{vm}: no memory or memslot at {gpa:#x}")

    @operation()
    def guest_mmio_write(self, vm: str, gpa: int, data: bytes) -> None:
        self._running(vm)
        self._guest_mmio(vm, gpa, len(data), data)

    def _running(self, vm: str) -> _Vm:
        v = self._vm(vm)
        if v.state is not VmState.RUNNING:
            raise InvalidState(f"{vm} is not running")
        return v

    @operation()
    def dma_write(self, vm: str, gpa: int, data: bytes, *, private: bool) -> None:
        """A DMA the IOMMU translated: private pages only for T=1, shared only for T=0."""
        v = self._live_vm(vm)
        if gpa < 0 or gpa + len(data) > len(v.memory):
            raise AccessFault(f"DMA to {gpa:#x} is outside {vm}'s memory")
        first, last = gpa // PAGE, (gpa + len(data) - 1) // PAGE
        is_private = last < v.private_pages
        is_shared = first >= v.private_pages
        if (private and not is_private) or (not private and not is_shared):
            raise AccessFault(
                f"DMA to {gpa:#x}: T={int(private)} may not write {'shared' if private else 'private'} memory"
            )
        v.memory[gpa : gpa + len(data)] = data

    @query
    def host_read_shared(self, vm: str, gpa: int, length: int) -> bytes:
        """What the host (VMM) can read of guest memory: shared pages only."""
        v = self._vm(vm)
        start = max(gpa, v.private_pages * PAGE)
        return bytes(v.memory[start : gpa + length]) if start < gpa + length else b""

    @query
    def snapshot(self) -> KvmSnapshot:
        vms = tuple(
            VmSnapshot(
                name=v.name,
                state=v.state,
                refs=v.refs,
                private_pages=v.private_pages,
                # a destroyed VM's private pages went back to the host (reclaimed): all of it is host-visible
                shared_memory=bytes(v.memory[0 if v.state is VmState.DESTROYED else v.private_pages * PAGE :]),
                private_digest=hash(bytes(v.memory[: v.private_pages * PAGE])),
                secrets=tuple(v.secrets),
            )
            for v in self._vms.values()
        )
        slots = tuple(
            MemslotSnapshot(
                slot=s.slot,
                vm=s.vm,
                gpa=s.gpa,
                pages=s.pages,
                dmabuf=s.dmabuf,
                attachment=s.attachment,
                rid=s.rid,
                mapping=s.mapping,
                host_base=s.host_base,
            )
            for s in self._slots.values()
        )
        return KvmSnapshot(vms=vms, memslots=slots)
