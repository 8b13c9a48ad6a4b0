"""VFIO: the device file, host mmap of BARs, and dmabuf export / revoke / recover of MMIO.

VFIO is the dmabuf *exporter* of a function's BAR (flow steps 3-4). It stays in control: an importer
(KVM) asks it for the pages, and when VFIO revokes -- on the TSM's "disable MMIO" callback (step
42-43), on reset/FLR, on close -- every importer is told at once (``move_notify``) and gets nothing
until VFIO recovers (step 48-49). Recover re-validates the *same* dmabuf (rules-seed Q9: we chose
the same fd becomes valid again; a pinned importer could instead be told it is gone for good).

Once the TSM converts a function to private (bind), host mmaps are zapped and refused
(rules-seed B.27) until the TDI is freed.
"""

from __future__ import annotations

import contextlib
from typing import Any

import attrs

from teeio_conformance.contract.errors import (
    Busy,
    InvalidArgument,
    InvalidState,
    NotFound,
    PermissionDenied,
    StackError,
)
from teeio_conformance.contract.trace import Actor, Trace, operation, query
from teeio_conformance.reference_impl.device.ide.stream import Tlp

__all__ = ["DmabufInfo", "DmabufSnapshot", "Vfio", "VfioSnapshot"]


@attrs.frozen
class DmabufInfo:
    dmabuf: int
    rid: int
    base: int
    size: int


@attrs.frozen
class DmabufSnapshot:
    dmabuf: int
    fd: int
    rid: int
    revoked: bool
    attachments: tuple[tuple[int, str], ...]  # (attachment, importer)


@attrs.frozen
class VfioSnapshot:
    open_fds: tuple[tuple[int, str, int, int], ...]  # (fd, device name, rid, idev): one per function
    dmabufs: tuple[DmabufSnapshot, ...]
    private_rids: tuple[int, ...]
    host_mmaps: tuple[tuple[int, int], ...]  # (fd, rid) the host has mapped
    host_reads: tuple[bytes, ...]  # what host MMIO reads returned (host-visible)


@attrs.define
class _Fd:
    fd: int
    device: Any
    rid: int
    idev: int
    dmabufs: list[int] = attrs.Factory(list)


@attrs.define
class _Dmabuf:
    dmabuf: int
    fd: int
    rid: int
    device: Any
    revoked: bool = False
    orphaned: bool = False  # its device fd is closed; only the importers' references keep it
    attachments: dict[int, str] = attrs.Factory(dict)


class Vfio(Actor):
    actor_name = "vfio"

    def __init__(self, trace: Trace) -> None:
        super().__init__(trace)
        self._devices: dict[str, Any] = {}
        self._fds: dict[int, _Fd] = {}
        self._dmabufs: dict[int, _Dmabuf] = {}
        self._private: set[int] = set()
        self._mmaps: set[tuple[int, int]] = set()
        self._host_reads: list[bytes] = []
        self._next = 3
        self._iommufd: Any = None
        self._kvm: Any = None
        self._iommu: Any = None
        self._tsm: Any = None

    def _wire(self, devices: dict[str, Any], iommufd: Any, kvm: Any, iommu: Any, tsm: Any) -> None:
        self._devices = devices
        self._iommufd, self._kvm, self._iommu, self._tsm = iommufd, kvm, iommu, tsm

    def _new_id(self) -> int:
        self._next += 1
        return self._next

    # ------------------------------------------------------------------ device file
    @operation(step="2")
    def open_device(self, device: str, rid: int) -> int:
        """Open /dev/vfio/XX for one function (PF or VF): VFIO binds it to IOMMUFD (the idev)."""
        dev = self._devices.get(device)
        if dev is None:
            raise NotFound(f"no device {device!r}")
        if rid not in dev.rids():
            raise NotFound(f"{device} has no function {rid:#06x}")
        if any(f.device is dev and f.rid == rid for f in self._fds.values()):
            raise Busy(f"function {rid:#06x} of {device} is already open")
        idev = self._iommufd.bind_device(device, rid)
        fd = self._new_id()
        self._fds[fd] = _Fd(fd=fd, device=dev, rid=rid, idev=idev)
        return fd

    @operation()
    def close_device(self, fd: int) -> None:
        """Close: IOMMUFD drops the idev (forcing its vdevice and TSM bind down), then MMIO is revoked.

        Order from rules-seed A.13: detach vdev -> tsm unbind -> TDI stop -> dmabuf revoke -> unmap.
        """
        f = self._fd(fd)
        with contextlib.suppress(NotFound):  # gone already if an earlier close failed after this point
            self._iommufd.unbind_device(f.idev)
        self._tsm.unbind(f.rid)  # bind..unbind stays inside the VFIO-bound lifetime (pci-tsm kdoc)
        for d in f.dmabufs:
            self.revoke_mmio_dmabuf(d)
            dm = self._dmabufs[d]
            dm.orphaned = True  # importers keep their reference; it stays revoked until they detach
            if not dm.attachments:
                del self._dmabufs[d]
        self._private.discard(f.rid)
        self._mmaps.discard((fd, f.rid))
        del self._fds[fd]

    @operation()
    def pci_remove(self, device: str) -> None:
        """The PCI core removes a device that went away (surprise removal): every open function of it is
        closed as if its user had (the TDI unbound, MMIO revoked, the vdevice destroyed), then the TSM
        disconnects it. Nothing of the device is left for anyone to use."""
        dev = self._devices.get(device)
        if dev is None:
            raise NotFound(f"no device {device!r}")
        for fd in [f.fd for f in self._fds.values() if f.device is dev]:
            self.close_device(fd)
        self._tsm.disconnect(device)

    def _fd(self, fd: int) -> _Fd:
        f = self._fds.get(fd)
        if f is None:
            raise NotFound(f"no open VFIO device fd {fd}")
        return f

    def _fd_of_rid(self, rid: int) -> _Fd:
        for f in self._fds.values():
            if f.rid == rid:
                return f
        raise NotFound(f"no open VFIO device has function {rid:#06x}")

    @operation()
    def reset(self, fd: int, rid: int) -> None:
        """FLR: a bound TDI is unbound first (TSM orders stop/revoke/unmap), MMIO revoked, then reset."""
        f = self._fd(fd)
        if rid != f.rid:
            raise NotFound(f"fd {fd} is function {f.rid:#06x}, not {rid:#06x}")
        self._tsm.unbind(rid)
        revoked = [d for d in f.dmabufs if self._dmabufs[d].rid == rid and not self._dmabufs[d].revoked]
        for d in revoked:
            self.revoke_mmio_dmabuf(d)
        f.device.flr(rid)
        for d in revoked:
            self._recover(self._dmabufs[d])

    # ------------------------------------------------------------------ host mmap
    @operation()
    def mmap_bar(self, fd: int, rid: int) -> None:
        f = self._fd(fd)
        if rid != f.rid:
            raise NotFound(f"fd {fd} is function {f.rid:#06x}, not {rid:#06x}")
        if rid in self._private:
            raise PermissionDenied(f"function {rid:#06x} is private: host mmap refused")
        self._mmaps.add((fd, rid))

    @operation()
    def host_mmio_read(self, fd: int, rid: int, offset: int, length: int) -> bytes:
        """The host reads a BAR through its mmap (T=0). A zapped mmap faults."""
        f = self._fd(fd)
        if (fd, rid) not in self._mmaps:
            raise PermissionDenied(f"function {rid:#06x} is not mmapped by the host")
        base, size = f.device.bar_range(rid)
        if offset < 0 or length <= 0 or offset + length > size:
            raise InvalidArgument(f"offset {offset:#x}+{length} is outside the BAR ({size:#x} bytes)")
        tlp = Tlp(
            kind="MRd",
            requester_id=rid,
            address=base + offset,
            t_bit=False,
            payload=length.to_bytes(4, "little"),
            stream_id=None,
        )
        data: bytes = self._iommu.mmio(None, tlp)
        self._host_reads.append(data)
        return data

    # ------------------------------------------------------------------ private conversion (from the TSM)
    @operation()
    def set_private(self, rid: int, private: bool) -> None:
        """The TSM converts a function to private (bind) or back (free): zap host mmaps."""
        try:
            f = self._fd_of_rid(rid)
        except NotFound:
            if private:
                raise
            return
        if private:
            self._private.add(rid)
            self._mmaps.discard((f.fd, rid))
        else:
            self._private.discard(rid)

    # ------------------------------------------------------------------ dmabuf exporter
    @operation(step="3")
    def create_dmabuf(self, fd: int, rid: int) -> int:
        """Create and export (step 4) a dmabuf of the function's BAR."""
        f = self._fd(fd)
        if rid != f.rid:
            raise NotFound(f"fd {fd} is function {f.rid:#06x}, not {rid:#06x}")
        d = _Dmabuf(dmabuf=self._new_id(), fd=fd, rid=rid, device=f.device)
        self._dmabufs[d.dmabuf] = d
        f.dmabufs.append(d.dmabuf)
        return d.dmabuf

    @operation()
    def dmabuf_info(self, dmabuf: int) -> DmabufInfo:
        d = self._dmabuf(dmabuf)
        base, size = d.device.bar_range(d.rid)
        return DmabufInfo(dmabuf=dmabuf, rid=d.rid, base=base, size=size)

    @operation(step="6")
    def dmabuf_attach(self, dmabuf: int, importer: str) -> int:
        """An importer attaches (KVM imports into a memslot). Only revocable importers exist here."""
        d = self._dmabuf(dmabuf)
        if d.orphaned:
            raise NotFound(f"dmabuf {dmabuf} belongs to a closed device")
        att = self._new_id()
        d.attachments[att] = importer
        return att

    @operation()
    def dmabuf_detach(self, attachment: int) -> None:
        """The importer lets go of an attachment. Refused while a memslot still uses it: pulled from
        under KVM, its private mapping could no longer be revoked (move_notify goes to attachments),
        and the VM's teardown would fail halfway."""
        if self._kvm is not None and self._kvm.imports(attachment):
            raise Busy(f"dmabuf attachment {attachment} is still imported into a memslot; KVM detaches it")
        for d in list(self._dmabufs.values()):
            if d.attachments.pop(attachment, None) is not None:
                if d.orphaned and not d.attachments:
                    del self._dmabufs[d.dmabuf]
                return
        raise NotFound(f"no dmabuf attachment {attachment}")

    @operation()
    def dmabuf_map(self, attachment: int) -> int:
        """The importer asks for the pages (it never maps on its own); refused while revoked."""
        for d in self._dmabufs.values():
            if attachment in d.attachments:
                if d.revoked:
                    raise InvalidState(f"dmabuf {d.dmabuf} is revoked")
                base, _ = d.device.bar_range(d.rid)
                return int(base)
        raise NotFound(f"no dmabuf attachment {attachment}")

    @operation(step="43")
    def revoke_mmio_dmabuf(self, dmabuf: int) -> None:
        """Revoke one dmabuf: every importer unmaps now (move_notify) or the revoke is refused."""
        d = self._dmabuf(dmabuf)
        if d.revoked:
            return
        for att in list(d.attachments):
            self._kvm.move_notify(att)  # raises (nothing revoked) if the platform forbids the unmap now
        self._revoke(d)

    @operation(step="42")
    def revoke_mmio(self, rid: int) -> int:
        """The TSM's 'disable MMIO' callback: revoke every dmabuf of the function."""
        ds = [d for d in self._dmabufs.values() if d.rid == rid and not d.revoked]
        for d in ds:
            self.revoke_mmio_dmabuf(d.dmabuf)
        return len(ds)

    @operation(step="48")
    def recover_mmio(self, rid: int) -> int:
        """The TSM's 'enable MMIO' callback after TDI free: dmabufs become valid again (step 49)."""
        ds = [d for d in self._dmabufs.values() if d.rid == rid and d.revoked and not d.orphaned]
        for d in ds:
            self._recover(d)
        return len(ds)

    def _revoke(self, d: _Dmabuf) -> None:
        d.revoked = True

    def _recover(self, d: _Dmabuf) -> None:
        d.revoked = False
        try:
            for att in list(d.attachments):
                self._kvm.dmabuf_recovered(att)
        except StackError:
            d.revoked = True  # the importer was not told: still revoked for everyone, so a retry tells them all
            raise

    def _dmabuf(self, dmabuf: int) -> _Dmabuf:
        d = self._dmabufs.get(dmabuf)
        if d is None:
            raise NotFound(f"no dmabuf {dmabuf}")
        return d

    @query
    def snapshot(self) -> VfioSnapshot:
        return VfioSnapshot(
            open_fds=tuple((f.fd, f.device.name, f.rid, f.idev) for f in self._fds.values()),
            dmabufs=tuple(
                DmabufSnapshot(
                    dmabuf=d.dmabuf,
                    fd=d.fd,
                    rid=d.rid,
                    revoked=d.revoked,
                    attachments=tuple(sorted(d.attachments.items())),
                )
                for d in self._dmabufs.values()
            ),
            private_rids=tuple(sorted(self._private)),
            host_mmaps=tuple(sorted(self._mmaps)),
            host_reads=tuple(self._host_reads[-8:]),
        )
