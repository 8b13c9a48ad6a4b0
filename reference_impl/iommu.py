"""The root complex: root-port IDE, and the IOMMU's two DMA translations (shared and trusted).

A DMA from a device function arrives as a TLP with a requester ID, an address and the T bit:

* T=0 is translated by the *shared* table the VMM built through IOMMUFD (an hwpt: IOVA -> guest
  shared memory). It can never reach guest private memory.
* T=1 is translated only by the *trusted* table of the TDI's CC vIOMMU, and only if it arrived
  protected on the TDI's Secure IDE stream with a matching RID association, from a TDI enabled for
  DMA (TDX: TDXC-ARCH §3.3; SMMU T bit -> Realm SEC_SID). IOMMUFD attaches a bound vdevice's RID to
  its VM's CC vIOMMU (flow step 17: the vIOMMU takes over T=1 translation for it) and, when the TSM
  asks, enables or disables trusted DMA in that context (steps 29, 45-46); a T=1 entry without a CC
  vIOMMU context is refused.

Anything else faults: nothing is written, and a fault record is kept where the host can read it.
MMIO from the CPU goes the other way: KVM hands a request to :meth:`Iommu.mmio`; with T=1 the
root port protects it on the stream (AES-GCM) before the device sees it.

The IOMMU is hardware: it trusts no caller's word about TDI state. It learns what it may do from
its owners -- IOMMUFD (shared tables) and the TSM (trusted tables, root-port keys).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from teeio_conformance.contract.errors import AccessFault, CallerError, InvalidArgument, InvalidState, NotFound
from teeio_conformance.contract.ide_km import KeySubStream
from teeio_conformance.contract.profiles import Profile
from teeio_conformance.contract.trace import Actor, Trace, operation, query
from teeio_conformance.reference_impl.device.ide.stream import (
    IdeIntegrityError,
    IdeStreamEndpoint,
    ProtectedTlp,
    StreamState,
    Tlp,
)

__all__ = ["Fault", "Iommu", "IommuSnapshot"]

ALL_ONES = b"\xff"


@attrs.frozen
class Fault:
    """A refused DMA or MMIO, as the host's fault log shows it (no payload: it may be secret)."""

    requester_id: int
    address: int
    t_bit: bool
    reason: str


@attrs.frozen
class IommuSnapshot:
    shared: tuple[tuple[int, str, tuple[int, ...]], ...]  # (rid, vm, gfns) of attached hwpts
    trusted: tuple[tuple[int, str], ...]  # (rid, vm) enabled for T=1 DMA (through the CC vIOMMU)
    faults: tuple[Fault, ...]
    fenced_vms: tuple[str, ...]
    rp_stream_state: str
    cc: tuple[tuple[int, int, str], ...] = ()  # (rid, viommu, vm): T=1 context owned by a CC vIOMMU (step 17)


class Iommu(Actor):
    actor_name = "iommu"

    def __init__(self, trace: Trace, profile: Profile) -> None:
        super().__init__(trace)
        self.profile = profile
        self._shared: dict[int, tuple[str, frozenset[int]]] = {}
        self._trusted: dict[int, str] = {}
        self._cc: dict[int, tuple[int, str]] = {}  # rid -> (CC vIOMMU, vm) owning its T=1 context
        self._faults: list[Fault] = []
        self._fenced: set[str] = set()
        self._rp: dict[int, IdeStreamEndpoint] = {}
        self._kvm: Any = None
        self._devices: dict[int, Any] = {}

    def _wire(self, kvm: Any, devices: Mapping[int, Any]) -> None:
        """Stack wiring: who is below (devices by RID) and where guest memory lives (KVM)."""
        self._kvm = kvm
        self._devices = dict(devices)

    # ------------------------------------------------------------------ root-port IDE (owned by the TSM)
    @operation()
    def rp_stream_setup(self, stream_id: int, rid_base: int, rid_limit: int) -> None:
        if stream_id in self._rp:
            return
        self._rp[stream_id] = IdeStreamEndpoint(stream_id=stream_id, rid_base=rid_base, rid_limit=rid_limit)

    @operation()
    def rp_key_prog(self, stream_id: int, slot: KeySubStream, key: bytes, iv: bytes) -> None:
        self._stream(stream_id).program_key(slot, key, iv)

    @operation()
    def rp_key_go(self, stream_id: int, slot: KeySubStream) -> None:
        self._stream(stream_id).go(slot)

    @operation()
    def rp_key_stop(self, stream_id: int, slot: KeySubStream) -> None:
        self._stream(stream_id).stop(slot)

    @operation()
    def rp_stream_enable(self, stream_id: int, enable: bool) -> str:
        s = self._stream(stream_id)
        if enable:
            s.enable()
        else:
            s.disable()
        return s.state.name

    @query
    def rp_stream_state(self, stream_id: int) -> StreamState:
        return self._stream(stream_id).state

    def _stream(self, stream_id: int) -> IdeStreamEndpoint:
        try:
            return self._rp[stream_id]
        except KeyError:
            raise NotFound(f"root port has no IDE stream {stream_id}") from None

    # ------------------------------------------------------------------ translations
    @operation()
    def attach_shared(self, rid: int, vm: str, gfns: frozenset[int]) -> None:
        """IOMMUFD attached an hwpt: T=0 DMA from ``rid`` may reach these shared guest pages."""
        self._shared[rid] = (vm, gfns)

    @operation()
    def detach_shared(self, rid: int) -> None:
        self._shared.pop(rid, None)

    @operation(step="17")
    def cc_attach(self, rid: int, viommu: int, vm: str) -> None:
        """Setup CC vIOMMU (step 17): the T=1 context of ``rid`` now belongs to ``vm``'s CC vIOMMU."""
        have = self._cc.get(rid)
        if have is not None and have != (viommu, vm):
            raise InvalidState(f"the T=1 context of {rid:#06x} belongs to viommu {have[0]} of {have[1]}")
        self._cc[rid] = (viommu, vm)

    @operation(step="39")
    def cc_detach(self, rid: int) -> None:
        """Detach vdev (step 39): the CC vIOMMU lets go of ``rid``'s T=1 context once DMA is disabled."""
        if rid in self._trusted:
            raise InvalidState(f"T=1 DMA of {rid:#06x} is still enabled: disable it before detaching")
        self._cc.pop(rid, None)

    @operation(step="29")
    def set_trusted(self, rid: int, vm: str) -> None:
        """Enable T=1 DMA from TDI ``rid`` into ``vm``'s private memory, in its CC vIOMMU's context."""
        have = self._cc.get(rid)
        if have is None or have[1] != vm:
            raise InvalidState(f"no CC vIOMMU of {vm} owns the T=1 context of {rid:#06x}")
        self._trusted[rid] = vm

    @operation(step="46")
    def clear_trusted(self, rid: int) -> None:
        """Disable T=1 DMA of one TDI (step 46 as corrected: its CC vIOMMU itself stays, flow corr. 6)."""
        self._trusted.pop(rid, None)

    @operation()
    def unfence(self, vm: str) -> None:
        self._fenced.discard(vm)

    # ------------------------------------------------------------------ DMA (device -> memory)
    @operation()
    def dma(self, packet: Tlp | ProtectedTlp) -> None:
        """Translate and perform one DMA write; refuse with a recorded fault otherwise."""
        if isinstance(packet, ProtectedTlp):
            try:
                tlp = self._stream(packet.stream_id).unprotect(packet)
            except (IdeIntegrityError, NotFound) as exc:
                self._fault(packet.requester_id, packet.address, packet.t_bit, f"IDE: {exc}")
                raise AccessFault(f"DMA from {packet.requester_id:#06x} failed IDE checks: {exc}") from exc
        else:
            tlp = packet
            if tlp.t_bit:
                self._fault(tlp.requester_id, tlp.address, True, "T=1 TLP not received on an IDE stream")
                raise AccessFault(f"T=1 DMA from {tlp.requester_id:#06x} arrived without IDE protection")
        gfn = tlp.address // 4096
        if tlp.t_bit:
            vm = self._trusted.get(tlp.requester_id)
            if vm is None:
                self._fault(tlp.requester_id, tlp.address, True, "no trusted translation for this RID")
                raise AccessFault(f"T=1 DMA from {tlp.requester_id:#06x}: TSM has not enabled trusted DMA")
            private = True
        else:
            entry = self._shared.get(tlp.requester_id)
            if entry is None or gfn not in entry[1]:
                self._fault(tlp.requester_id, tlp.address, False, "no shared translation")
                raise AccessFault(f"T=0 DMA from {tlp.requester_id:#06x} to {tlp.address:#x}: not mapped")
            vm = entry[0]
            private = False
        try:
            self._kvm.dma_write(vm, tlp.address, tlp.payload, private=private)
        except AccessFault as exc:
            self._fault(tlp.requester_id, tlp.address, tlp.t_bit, str(exc))
            raise
        except CallerError as exc:  # the translation names a VM that is gone: hardware sees a fault, no errno
            self._fault(tlp.requester_id, tlp.address, tlp.t_bit, f"target VM gone: {exc}")
            raise AccessFault(f"DMA from {tlp.requester_id:#06x}: {exc}") from exc

    def _fault(self, rid: int, address: int, t_bit: bool, reason: str) -> None:
        self._faults.append(Fault(rid, address, t_bit, reason))
        if self.profile.fence_on_fault:
            vm = self._trusted.get(rid)
            if vm is not None:
                self._fenced.add(vm)  # SEV-TIO: a fault on a bound TDI fences the guest (FW spec §2.11)

    # ------------------------------------------------------------------ MMIO (CPU -> device)
    @operation()
    def mmio(self, vm: str | None, tlp: Tlp) -> bytes:
        """Route a CPU MMIO request to the device; T=1 goes out protected on the IDE stream."""
        if vm is not None and vm in self._fenced:
            length = int.from_bytes(tlp.payload or b"\x04", "little") if tlp.kind == "MRd" else 0
            return ALL_ONES * length  # fenced guest: reads all-ones, writes dropped
        device = self._devices.get(tlp.requester_id)
        if device is None:
            raise InvalidArgument(f"no device behind requester {tlp.requester_id:#06x}")
        packet: Tlp | ProtectedTlp = tlp
        if tlp.t_bit:
            stream = self._rp.get(tlp.stream_id if tlp.stream_id is not None else -1)
            if stream is None or stream.state is not StreamState.SECURE:
                self._fault(tlp.requester_id, tlp.address, True, "T=1 MMIO without a Secure IDE stream")
                raise AccessFault("T=1 MMIO needs a Secure IDE stream to the device")
            packet = stream.protect(tlp)
        try:
            return device.receive(packet)
        except AccessFault as exc:
            self._fault(tlp.requester_id, tlp.address, tlp.t_bit, str(exc))
            raise

    @query
    def snapshot(self) -> IommuSnapshot:
        return IommuSnapshot(
            shared=tuple((rid, vm, tuple(sorted(g))) for rid, (vm, g) in sorted(self._shared.items())),
            trusted=tuple(sorted(self._trusted.items())),
            faults=tuple(self._faults),
            fenced_vms=tuple(sorted(self._fenced)),
            rp_stream_state=",".join(s.state.name for s in self._rp.values()) or "NONE",
            cc=tuple((rid, vi, vm) for rid, (vi, vm) in sorted(self._cc.items())),
        )
