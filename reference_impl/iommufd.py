"""IOMMUFD: idev, IOAS, hwpt, vIOMMU and vDEVICE objects, and the vdevice's TSM operations.

Object lifetimes follow the merged kernel code and the maintainer's corrections:

* one vdevice per idev (EEXIST), created before KVM run (flow correction 1), holding a reference on
  its vIOMMU, which holds its hwpt and the VM (rules-seed A.10, A.11, A.12);
* *bind* is an operation on the existing vdevice (correction 3); guest requests are an opaque RPC
  tunnelled through it (correction 4); guest unbind leaves the vdevice in place (correction 5);
* a vIOMMU is never torn down while its VM runs (correction 6);
* a vIOMMU allocated for a confidential VM is a *CC vIOMMU*: it takes over the T=1 translation of
  its vdevices. Bind sets it up for the vdevice (step 17: the IOMMU's T=1 context of the function
  becomes the vIOMMU's), and the TSM enables and disables trusted DMA *through* IOMMUFD, which
  programs the IOMMU (accept DMA, step 29; the disable callback at unbind, steps 45-46). The
  callback disables one vdevice's T=1 translation, never the vIOMMU itself (correction 6); the
  vdevice leaves the CC context when the TSM frees the TDI (steps 47, 39);
* when VFIO drops the idev under a live vdevice, the vdevice is destroyed (rolling back the TSM
  bind) and its ID becomes a tombstone: unusable and not reusable until the iommufd closes
  (rules-seed A.8, A.9).

Every object has a numeric ID in one namespace, as IOMMU_DESTROY expects.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

from teeio_conformance.contract.errors import (
    AlreadyExists,
    Busy,
    InvalidArgument,
    InvalidState,
    NotFound,
    StackError,
)
from teeio_conformance.contract.guest_request import GuestRequest
from teeio_conformance.contract.trace import Actor, Trace, operation, query

__all__ = ["GuestRequest", "Iommufd", "IommufdSnapshot", "ObjKind", "ObjSnapshot"]


def request_step(first: int) -> Any:
    """Flow step of a guest-request crossing: attest 21-24, accept 26-29, start 31-34."""

    def step(*args: Any, **kwargs: Any) -> str | None:
        req = next((a for a in args if isinstance(a, GuestRequest)), None)
        if req is None:
            return None
        base = {"report": 21, "accept_mmio": 26, "accept_dma": 26, "start": 31}.get(req.kind)
        return None if base is None else str(base + first)

    return step


class ObjKind(enum.Enum):
    IDEV = "idev"
    IOAS = "ioas"
    HWPT = "hwpt"
    VIOMMU = "viommu"
    VDEVICE = "vdevice"


@attrs.frozen
class ObjSnapshot:
    id: int
    kind: ObjKind
    users: int
    device: str | None = None
    vm: str | None = None
    parent: int | None = None  # hwpt: ioas; viommu: hwpt; vdevice: viommu
    idev: int | None = None
    virt_id: int | None = None
    rid: int | None = None
    bound: bool = False
    cc: bool = False  # viommu: a CC vIOMMU (owns T=1 translation); vdevice: attached to its CC context (17)
    trusted: bool = False  # vdevice: T=1 DMA enabled through its CC vIOMMU (29; cleared at 45-46)


@attrs.frozen
class IommufdSnapshot:
    objects: tuple[ObjSnapshot, ...]
    tombstones: tuple[int, ...]
    closed: bool


@attrs.define
class _Obj:
    id: int
    kind: ObjKind
    users: int = 0
    device: str | None = None
    vm: str | None = None
    parent: int | None = None
    idev: int | None = None
    virt_id: int | None = None
    rid: int | None = None
    bound: bool = False
    cc: bool = False
    trusted: bool = False
    gfns: frozenset[int] = frozenset()
    attached: set[int] = attrs.Factory(set)  # hwpt: idevs attached
    hwpt: int | None = None  # idev: attached hwpt


class Iommufd(Actor):
    actor_name = "iommufd"

    def __init__(self, trace: Trace) -> None:
        super().__init__(trace)
        self._objs: dict[int, _Obj] = {}
        self._tombstones: set[int] = set()
        self._next = 0
        self._closed = False
        self._kvm: Any = None
        self._tsm: Any = None
        self._iommu: Any = None
        self._devices: dict[str, Any] = {}

    def _wire(self, kvm: Any, tsm: Any, iommu: Any, devices: dict[str, Any]) -> None:
        self._kvm, self._tsm, self._iommu, self._devices = kvm, tsm, iommu, devices

    def _new(self, kind: ObjKind, **kw: Any) -> _Obj:
        if self._closed:
            raise InvalidState("iommufd is closed")
        self._next += 1
        obj = _Obj(id=self._next, kind=kind, **kw)
        self._objs[obj.id] = obj
        return obj

    def _get(self, obj_id: int, kind: ObjKind) -> _Obj:
        if obj_id in self._tombstones:
            raise NotFound(f"object {obj_id} is a tombstone (its vdevice died with its idev)")
        obj = self._objs.get(obj_id)
        if obj is None or obj.kind is not kind:
            raise NotFound(f"no {kind.value} with id {obj_id}")
        return obj

    # ------------------------------------------------------------------ idev (from VFIO)
    @operation(step="2")
    def bind_device(self, device: str, rid: int) -> int:
        if device not in self._devices:
            raise NotFound(f"no device {device!r}")
        if any(o.kind is ObjKind.IDEV and o.device == device and o.rid == rid for o in self._objs.values()):
            raise AlreadyExists(f"function {rid:#06x} of {device} is already bound to this iommufd")
        return self._new(ObjKind.IDEV, device=device, rid=rid).id

    @operation()
    def unbind_device(self, idev: int) -> None:
        """VFIO closed the device: force down its vdevice (tombstoning the ID) and detach it."""
        obj = self._get(idev, ObjKind.IDEV)
        for v in [o for o in self._objs.values() if o.kind is ObjKind.VDEVICE and o.idev == idev]:
            self._destroy_vdevice(v)
            self._tombstones.add(v.id)
        if obj.hwpt is not None:
            self._detach(obj)
        del self._objs[idev]

    # ------------------------------------------------------------------ IOAS / hwpt (steps 7-9)
    @operation(step="7")
    def ioas_alloc(self, vm: str, gfns: frozenset[int]) -> int:
        """An IOAS mapping the VM's shared pages (QEMU maps guest RAM at IOVA == GPA)."""
        return self._new(ObjKind.IOAS, vm=vm, gfns=frozenset(gfns)).id

    @operation(step="8")
    def hwpt_alloc(self, idev: int, ioas: int) -> int:
        self._get(idev, ObjKind.IDEV)
        io = self._get(ioas, ObjKind.IOAS)
        io.users += 1
        return self._new(ObjKind.HWPT, parent=ioas, vm=io.vm, gfns=io.gfns).id

    @operation(step="9")
    def attach(self, idev: int, hwpt: int) -> None:
        dev = self._get(idev, ObjKind.IDEV)
        hw = self._get(hwpt, ObjKind.HWPT)
        if dev.hwpt is not None:
            raise Busy(f"idev {idev} is already attached to hwpt {dev.hwpt}")
        self._iommu.attach_shared(dev.rid, hw.vm, hw.gfns)  # the hardware first: if it fails, nothing changed
        dev.hwpt = hwpt
        hw.users += 1
        hw.attached.add(idev)

    @operation()
    def detach(self, idev: int) -> None:
        dev = self._get(idev, ObjKind.IDEV)
        if dev.hwpt is None:
            raise InvalidState(f"idev {idev} is not attached")
        self._detach(dev)

    def _detach(self, dev: _Obj) -> None:
        self._iommu.detach_shared(dev.rid)  # the hardware first: if it fails, the detach can be retried
        hw = self._objs[dev.hwpt]  # type: ignore[index]
        hw.users -= 1
        hw.attached.discard(dev.id)
        dev.hwpt = None

    # ------------------------------------------------------------------ vIOMMU / vDEVICE (steps 15-16)
    @operation(step="15")
    def viommu_alloc(self, hwpt: int, vm: str, *, cc: bool = True) -> int:
        """A vIOMMU for ``vm``; ``cc`` (every VM of this model is confidential) makes it a CC vIOMMU."""
        hw = self._get(hwpt, ObjKind.HWPT)
        self._kvm.get_ref(vm)
        hw.users += 1
        return self._new(ObjKind.VIOMMU, parent=hwpt, vm=vm, cc=cc).id

    @operation(step="16")
    def vdevice_alloc(self, viommu: int, idev: int, virt_id: int, rid: int) -> int:
        vi = self._get(viommu, ObjKind.VIOMMU)
        dev = self._get(idev, ObjKind.IDEV)
        if any(o.kind is ObjKind.VDEVICE and o.idev == idev for o in self._objs.values()):
            raise AlreadyExists(f"idev {idev} already has a vdevice")
        if any(o.kind is ObjKind.VDEVICE and o.parent == viommu and o.virt_id == virt_id for o in self._objs.values()):
            raise AlreadyExists(f"virtual ID {virt_id:#x} is taken on viommu {viommu}")
        if rid != dev.rid:
            raise InvalidArgument(f"idev {idev} is function {dev.rid:#06x}, not {rid:#06x}")
        self._kvm.get_ref(vi.vm)  # first: if it fails, nothing changed
        vi.users += 1
        dev.users += 1
        return self._new(
            ObjKind.VDEVICE, parent=viommu, idev=idev, virt_id=virt_id, vm=vi.vm, rid=rid, device=dev.device
        ).id

    def _destroy_vdevice(self, v: _Obj) -> None:
        if v.bound:
            self._tsm.unbind(v.rid)  # rolls the TSM bind back first (rules-seed A.13)
            v.bound = False
        if v.cc:  # the TSM's free detaches it (47, 39); a vdevice whose TSM forgot still dies detached
            self._iommu.clear_trusted(v.rid)
            self._iommu.cc_detach(v.rid)
            v.cc = v.trusted = False
        self._kvm.put_ref(v.vm)  # first: if it fails, nothing below has changed and the destroy can be retried
        self._objs[v.parent].users -= 1  # type: ignore[index]
        self._objs[v.idev].users -= 1  # type: ignore[index]
        del self._objs[v.id]

    @operation()
    def destroy(self, obj_id: int) -> None:
        """IOMMU_DESTROY: refused while the object has users (-EBUSY) or while its VM runs (viommu)."""
        if obj_id in self._tombstones:
            raise NotFound(f"object {obj_id} is a tombstone; it goes away when the iommufd closes")
        obj = self._objs.get(obj_id)
        if obj is None:
            raise NotFound(f"no object with id {obj_id}")
        if obj.kind is ObjKind.IDEV:
            raise InvalidArgument("an idev is destroyed by closing its VFIO device, not IOMMU_DESTROY")
        if obj.users:
            raise Busy(f"{obj.kind.value} {obj_id} still has {obj.users} user(s)")
        if obj.kind is ObjKind.VDEVICE:
            self._destroy_vdevice(obj)
            return
        if obj.kind is ObjKind.VIOMMU:
            if self._kvm.vm_state(obj.vm).value == "running":
                raise Busy(f"viommu {obj_id} cannot be destroyed while {obj.vm} runs (flow correction 6)")
            self._kvm.put_ref(obj.vm)
            self._objs[obj.parent].users -= 1  # type: ignore[index]
        elif obj.kind is ObjKind.HWPT:
            self._objs[obj.parent].users -= 1  # type: ignore[index]
        del self._objs[obj_id]

    @operation()
    def close(self) -> None:
        """Close the iommufd: everything goes, tombstones too."""
        for v in [o for o in self._objs.values() if o.kind is ObjKind.VDEVICE]:
            self._destroy_vdevice(v)
        for o in [o for o in self._objs.values() if o.kind is ObjKind.VIOMMU]:
            self._kvm.put_ref(o.vm)
        for o in [o for o in self._objs.values() if o.kind is ObjKind.IDEV and o.hwpt is not None]:
            self._detach(o)
        self._objs.clear()
        self._tombstones.clear()
        self._closed = True

    # ------------------------------------------------------------------ vdevice TSM operations
    def _vdev(self, vdevice: int) -> _Obj:
        return self._get(vdevice, ObjKind.VDEVICE)

    @operation(step="14")
    def vdevice_tsm_bind(self, vdevice: int) -> None:
        """Bind acts on the existing vdevice (correction 3): set up its CC vIOMMU (17), then the TSM
        locks the TDI for its VM (18-19). A refused bind undoes the setup."""
        v = self._vdev(vdevice)
        vi = self._objs[v.parent]  # type: ignore[index]
        if not vi.cc:
            raise InvalidState(f"vdevice {vdevice} sits on viommu {vi.id}, which is not a CC vIOMMU: no TDI bind")
        fresh = not v.cc
        if fresh:
            self._iommu.cc_attach(v.rid, vi.id, v.vm)
            v.cc = True
        try:
            self._tsm.bind(v.rid, v.vm, v.virt_id)
        except StackError:
            if fresh:
                self._iommu.cc_detach(v.rid)
                v.cc = False
            raise
        v.bound = True

    def _vdev_of(self, rid: int, vm: str | None = None) -> _Obj | None:
        return next(
            (
                o
                for o in self._objs.values()
                if o.kind is ObjKind.VDEVICE and o.rid == rid and (vm is None or o.vm == vm)
            ),
            None,
        )

    @operation(step="29")
    def cc_enable_dma(self, rid: int, vm: str) -> None:
        """The TSM enables trusted DMA of a bound TDI: IOMMUFD programs it in the CC vIOMMU's context."""
        v = self._vdev_of(rid, vm)
        if v is None or not v.bound or not v.cc:
            raise InvalidState(f"{vm} has no vdevice of {rid:#06x} bound under a CC vIOMMU")
        self._iommu.set_trusted(rid, vm)
        v.trusted = True

    @operation(step="45")
    def cc_disable_dma(self, rid: int) -> None:
        """The TSM's disable-DMA callback at unbind (45): clear the TDI's T=1 translation (46). Only this
        vdevice's: the CC vIOMMU stays set up while its VM runs (flow corr. 6). Never refused."""
        self._iommu.clear_trusted(rid)
        v = self._vdev_of(rid)
        if v is not None:
            v.trusted = False

    @operation(step="38")
    def vdevice_tsm_unbind(self, vdevice: int) -> None:
        """Unbind; the vdevice stays until the VM stops (correction 5)."""
        v = self._vdev(vdevice)
        self._tsm.unbind(v.rid)
        v.bound = False

    @operation(step=request_step(2))
    def vdevice_guest_request(self, vdevice: int, request: GuestRequest) -> Any:
        """Tunnel an opaque guest request to the TSM with the vdevice's IDs (correction 4)."""
        v = self._vdev(vdevice)
        return self._tsm.guest_request(v.rid, v.vm, request)

    @operation(step="33")
    def vdevice_host_start(self, vdevice: int) -> None:
        """CCA: the host starts the TDI on the realm's request (RMI_VDEV_START)."""
        v = self._vdev(vdevice)
        self._tsm.host_start(v.rid, v.vm)

    @operation(step="47")
    def tdi_unbound(self, rid: int) -> None:
        """The TSM freed the TDI (47; after a guest unbind, a disconnect, a reset or a close): its vdevice
        is no longer bound and leaves the CC vIOMMU's T=1 context (39 -- after the TSM has stopped the
        TDI and disabled its DMA, so no vdevice of a locked TDI is ever outside its vIOMMU)."""
        for o in self._objs.values():
            if o.kind is ObjKind.VDEVICE and o.rid == rid:
                o.bound = False
                if o.cc:
                    self._iommu.cc_detach(rid)
                    o.cc = False

    @query
    def find_vdevice(self, vm: str, virt_id: int) -> int:
        for o in self._objs.values():
            if o.kind is ObjKind.VDEVICE and o.vm == vm and o.virt_id == virt_id:
                return o.id
        raise NotFound(f"{vm} has no vdevice with virtual ID {virt_id:#x}")

    @query
    def snapshot(self) -> IommufdSnapshot:
        objs = tuple(
            ObjSnapshot(
                id=o.id,
                kind=o.kind,
                users=o.users,
                device=o.device,
                vm=o.vm,
                parent=o.parent,
                idev=o.idev,
                virt_id=o.virt_id,
                rid=o.rid,
                bound=o.bound,
                cc=o.cc,
                trusted=o.trusted,
            )
            for o in self._objs.values()
        )
        return IommufdSnapshot(objects=objs, tombstones=tuple(sorted(self._tombstones)), closed=self._closed)
