"""The host TSM: connect (SPDM + IDE keys), bind (LOCK), guest requests, unbind, free.

The TSM is the trusted party on the host side (TDX module, AMD PSP, Arm RMM). It speaks TDISP and
IDE_KM to the device over the SPDM session it opened, owns the root port's IDE keys, the trusted
DMA table and the secure EPT, and decides -- from the platform profile -- which requests the host
and the guest may originate and in which order teardown runs.

pci-tsm semantics (drivers/pci/tsm.c; rules-seed A.16-A.20): bind needs a prior connect and a VM
(-EINVAL), is idempotent for the same VM and -EBUSY for another; unbind always succeeds and is a
no-op when not bound; guest requests work only inside the bound window (-ENXIO).
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

import attrs

from teeio_conformance.contract import ide_km as km
from teeio_conformance.contract.errors import (
    Busy,
    ConformanceViolation,
    InvalidArgument,
    InvalidState,
    NotFound,
    PermissionDenied,
    StackError,
    Unsupported,
)
from teeio_conformance.contract.profiles import Profile, StartSender, UnmapOrder
from teeio_conformance.contract.tdisp import codec as td
from teeio_conformance.contract.trace import Actor, Trace, operation, query
from teeio_conformance.reference_impl.iommufd import GuestRequest, request_step

__all__ = ["Evidence", "TdiRecord", "Tsm", "TsmSnapshot"]

PROTOCOL_IDE_KM = 0
PROTOCOL_TDISP = 1
IDE_IV = (0).to_bytes(4, "little") + (1).to_bytes(4, "little")  # IFV words {0, 1}, as tee-io-validator sends
BUSY_RETRIES = 3
"""How often the TSM sends a request again that the device answered BUSY before it gives up (-EBUSY)."""
_HOST_RAW = frozenset({"GET_DEVICE_INTERFACE_STATE", "GET_TDISP_VERSION", "GET_TDISP_CAPABILITIES"})
"""Host TDISP requests the TSM sends raw for the VMM; LOCK/STOP/START go only through bind/unbind/start."""


@attrs.frozen
class Evidence:
    """What the guest gets back from attest: the signed evidence and the device's certificate chain."""

    signed: Any  # identity.SignedEvidence
    chain: tuple[bytes, ...]


@attrs.frozen
class TdiRecord:
    rid: int
    device: str
    vm: str | None
    virt_id: int | None
    stopped: bool  # the TSM has issued STOP since the last LOCK (TDX checks this, not the device)
    private_mapped: bool
    trusted_dma: bool
    started: bool
    outstanding: tuple[str, ...] = ()  # host TDISP requests submitted and not yet collected (oldest first)
    p2p_peers: tuple[int, ...] = ()  # TDIs of other devices this one shares a bound P2P stream with


@attrs.frozen
class TsmSnapshot:
    connected: tuple[tuple[str, int], ...]  # (device, session)
    tdis: tuple[TdiRecord, ...]


@attrs.define
class _TdiCtx:
    rid: int
    device: str
    vm: str | None = None
    virt_id: int | None = None
    nonce: bytes | None = None
    stopped: bool = True
    private_mapped: bool = False
    trusted_dma: bool = False
    started: bool = False
    outstanding: list[str] = attrs.Factory(list)
    p2p_peers: set[int] = attrs.Factory(set)


_GUEST_KIND_TDISP = {
    "report": "GET_DEVICE_INTERFACE_REPORT",
    "state": "GET_DEVICE_INTERFACE_STATE",
    "start": "START_INTERFACE",
}
"""The TDISP request each guest-request kind makes the TSM send on the guest's behalf."""


class Tsm(Actor):
    actor_name = "tsm"

    def __init__(self, trace: Trace, profile: Profile, *, key_seed: int = 99) -> None:
        super().__init__(trace)
        self.profile = profile
        self._sessions: dict[str, int] = {}
        self._tdis: dict[int, _TdiCtx] = {}
        self._devices: dict[str, Any] = {}
        self._key_counter = key_seed
        self._vfio: Any = None
        self._kvm: Any = None
        self._iommu: Any = None
        self._iommufd: Any = None

    def _wire(self, devices: dict[str, Any], vfio: Any, kvm: Any, iommu: Any, iommufd: Any) -> None:
        self._devices, self._vfio, self._kvm, self._iommu, self._iommufd = devices, vfio, kvm, iommu, iommufd
        for name, dev in devices.items():
            for rid in dev.rids():
                self._tdis[rid] = _TdiCtx(rid=rid, device=name)

    # ------------------------------------------------------------------ messaging
    def _device(self, name: str) -> Any:
        dev = self._devices.get(name)
        if dev is None:
            raise NotFound(f"no device {name!r}")
        return dev

    def _tdisp(self, rid: int, request: td.Request) -> td.Response:
        """Send one TDISP request; a BUSY answer (the device did not act on it) is retried with the same
        request up to ``BUSY_RETRIES`` times, then returned to the caller."""
        ctx = self._ctx(rid)
        sid = self._sessions.get(ctx.device)
        if sid is None:
            raise InvalidState(f"{ctx.device} is not connected")
        return self._exchange(ctx.device, sid, request)[1]

    def _exchange(self, device: str, sid: int, request: td.Request) -> tuple[bytes, td.Response]:
        """One request on the wire and the device's answer, as bytes and decoded, BUSY retried (see _tdisp)."""
        wire = td.encode(request)
        for attempt in range(BUSY_RETRIES + 1):
            raw = self._devices[device].handle_vendor_message(PROTOCOL_TDISP, wire, session_id=sid)
            if raw is None:
                raise ConformanceViolation(f"device dropped {type(request).__name__} (no response)")
            try:
                resp = td.decode_response(raw)
            except StackError as exc:
                raise ConformanceViolation(f"device answered {type(request).__name__} with garbage: {exc}") from exc
            if (
                not (isinstance(resp, td.TdispError) and resp.error_code == td.ErrorCode.BUSY)
                or attempt == BUSY_RETRIES
            ):
                break
        return bytes(raw), resp

    def _expect(self, rid: int, request: td.Request, want: type) -> Any:
        resp = self._tdisp(rid, request)
        if isinstance(resp, td.TdispError) and resp.error_code == td.ErrorCode.BUSY:
            raise Busy(f"device stayed BUSY for {type(request).__name__} after {BUSY_RETRIES} retries")
        if isinstance(resp, td.TdispError):
            code = (
                td.ErrorCode(resp.error_code).name
                if resp.error_code in td.ErrorCode._value2member_map_
                else hex(resp.error_code)
            )
            raise InvalidState(f"device refused {type(request).__name__}: TDISP_ERROR {code}")
        if not isinstance(resp, want):
            raise ConformanceViolation(f"device answered {type(request).__name__} with {type(resp).__name__}")
        return resp

    def _ide_km(self, dev: Any, sid: int, msg: Any) -> Any:
        raw = dev.handle_vendor_message(PROTOCOL_IDE_KM, km.encode(msg), session_id=sid)
        if raw is None:
            raise ConformanceViolation(f"device dropped IDE_KM {type(msg).__name__}")
        try:
            return km.decode(raw)
        except StackError as exc:
            raise ConformanceViolation(f"device answered IDE_KM with garbage: {exc}") from exc

    def _ctx(self, rid: int) -> _TdiCtx:
        ctx = self._tdis.get(rid)
        if ctx is None:
            raise NotFound(f"no TDI with RID {rid:#06x}")
        return ctx

    @staticmethod
    def _iid(rid: int) -> td.InterfaceId:
        return td.InterfaceId(function_id=rid)

    # ------------------------------------------------------------------ connect (step 1)
    @operation(step="1")
    def connect(self, device: str) -> int:
        """SPDM session + IDE stream keys between the TSM and the device (PCI-TSM connect)."""
        dev = self._device(device)
        if device in self._sessions:
            raise Busy(f"{device} is already connected")
        sid: int = dev.spdm_connect()
        self._sessions[device] = sid
        try:
            self._program_stream(dev, sid, km.KeySet.K0)
        except StackError:
            self.disconnect(device)
            raise
        return sid

    def _program_stream(self, dev: Any, sid: int, key_set: km.KeySet) -> None:
        stream = dev.config.default_stream_id
        rids = dev.rids()
        self._iommu.rp_stream_setup(stream, min(rids), max(rids))
        q = self._ide_km(dev, sid, km.Query(port_index=0))
        if not isinstance(q, km.QueryResp):
            raise ConformanceViolation(f"IDE_KM QUERY answered with {type(q).__name__}")
        for direction in (km.Direction.RX, km.Direction.TX):
            for sub in km.SubStream:
                slot = km.KeySubStream(key_set=key_set, direction=direction, sub_stream=sub)
                key = self._fresh_key()
                ack = self._ide_km(
                    dev,
                    sid,
                    km.KeyProg(stream_id=stream, key_sub_stream=slot.to_byte(), port_index=0, key=key, iv=IDE_IV),
                )
                if not isinstance(ack, km.KpAck) or ack.status != km.KpAckStatus.SUCCESS:
                    raise InvalidState(f"device refused KEY_PROG {slot}: {ack}")
                # the root port's opposite direction gets the same key: EP Rx == RP Tx
                rp_slot = km.KeySubStream(key_set=key_set, direction=km.Direction(1 - direction), sub_stream=sub)
                self._iommu.rp_key_prog(stream, rp_slot, key, IDE_IV)
        for direction in (km.Direction.RX, km.Direction.TX):  # Rx first, then Tx (rules-seed E.66)
            for sub in km.SubStream:
                slot = km.KeySubStream(key_set=key_set, direction=direction, sub_stream=sub)
                ack = self._ide_km(dev, sid, km.KSetGo(stream_id=stream, key_sub_stream=slot.to_byte(), port_index=0))
                if not isinstance(ack, km.KGoStopAck):
                    raise InvalidState(f"device refused K_SET_GO {slot}: {ack}")
                rp_slot = km.KeySubStream(key_set=key_set, direction=km.Direction(1 - direction), sub_stream=sub)
                self._iommu.rp_key_go(stream, rp_slot)
        dev.ide_enable(True)
        self._iommu.rp_stream_enable(stream, True)

    def _fresh_key(self) -> bytes:
        """A unique key per sub-stream, never reused (PCIe §11.5.5); deterministic per stack for replay."""
        self._key_counter += 1
        return hashlib.sha256(self._key_counter.to_bytes(8, "little")).digest()

    @operation()
    def refresh_keys(self, device: str) -> None:
        """Switch the stream to the other key set over the same session (rules-seed E.72)."""
        dev = self._device(device)
        sid = self._sessions.get(device)
        if sid is None:
            raise InvalidState(f"{device} is not connected")
        self._key_set_toggle = getattr(self, "_key_set_toggle", {})
        nxt = km.KeySet(1 - self._key_set_toggle.get(device, 0))
        self._program_stream(dev, sid, nxt)
        self._key_set_toggle[device] = int(nxt)

    @operation()
    def disconnect(self, device: str) -> None:
        """Unbind every TDI of the device first (reverse order), then end the session (rules-seed A.23)."""
        dev = self._device(device)
        for rid in sorted(dev.rids(), reverse=True):
            self.unbind(rid)
            self._tdis[rid].outstanding.clear()  # the session goes: queued host requests go with it
        sid = self._sessions.get(device)
        if sid is not None:  # the session is forgotten last, so a disconnect that failed below can run again
            # (no stream if the connect failed before setting it up: that refusal is let go too)
            self._teardown_step(self._iommu.rp_stream_enable, dev.config.default_stream_id, False)
            if sid in dev.snapshot().sessions:
                self._teardown_step(dev.spdm_end, sid)
            self._sessions.pop(device, None)

    # ------------------------------------------------------------------ bind (steps 18-19)
    @operation(step="18")
    def bind(self, rid: int, vm: str | None, virt_id: int | None = None) -> None:
        ctx = self._ctx(rid)
        if ctx.device not in self._sessions:
            raise InvalidState(f"{ctx.device} is not connected (bind needs connect first)")
        if not vm:
            raise InvalidArgument("bind needs a VM")
        if ctx.vm == vm:
            return  # idempotent for the same VM (pci_tsm_bind)
        if ctx.vm is not None:
            raise Busy(f"TDI {rid:#06x} is bound to {ctx.vm}")
        try:
            vm_state = self._kvm.vm_state(vm).value
        except NotFound:
            vm_state = "missing"
        if vm_state in ("missing", "destroyed"):
            raise InvalidArgument(f"bind needs a live VM; {vm} is {vm_state}")
        self._check_host_may("LOCK_INTERFACE")
        if rid not in {r for _, _, r, _ in self._vfio.snapshot().open_fds}:
            raise InvalidState(f"function {rid:#06x} is not open in VFIO: bind only within its VFIO lifetime")
        offset = self._reporting_offset(vm, rid)
        resp = self._lock(rid, offset)  # a refused LOCK leaves everything as it was
        private = False
        try:
            self._vfio.set_private(rid, True)  # then the host loses its mappings of the locked TDI
            private = True
            self._kvm.get_ref(vm)  # a bound TDI holds its VM (rules-seed A.12)
        except StackError:  # a failure below after LOCK: unlock again, so nothing stays locked for no one
            if private:
                self._teardown_step(self._vfio.set_private, rid, False)
            self._teardown_step(self._stop, ctx)
            raise
        ctx.vm, ctx.virt_id, ctx.nonce, ctx.stopped, ctx.started = vm, virt_id, resp.start_interface_nonce, False, False

    def _reporting_offset(self, vm: str, rid: int) -> int:
        """Report MMIO ranges in the guest's address space: offset = vBAR GPA - BAR base."""
        for s in self._kvm.snapshot().memslots:
            if s.vm == vm and s.rid == rid:
                return int((s.gpa - s.host_base) % 2**64)
        return 0

    def _lock(self, rid: int, offset: int) -> Any:
        dev = self._devices[self._ctx(rid).device]
        req = td.LockInterface(
            interface_id=self._iid(rid),
            flags=int(td.LockFlags.NO_FW_UPDATE),
            default_stream_id=dev.config.default_stream_id,
            mmio_reporting_offset=offset,
            bind_p2p_address_mask=0,
        )
        return self._expect(rid, req, td.LockInterfaceResponse)

    def _check_host_may(self, request: str) -> None:
        if request not in self.profile.host_tdisp_requests:
            raise PermissionDenied(f"{self.profile.title}: the host may not originate {request}")

    # ------------------------------------------------------------------ guest requests (24, 29, 34)
    @operation(step=request_step(3))
    def guest_request(self, rid: int, vm: str, request: GuestRequest) -> Any:
        ctx = self._ctx(rid)
        if ctx.vm is None:
            raise Unsupported(f"TDI {rid:#06x} is not bound: no guest requests (-ENXIO)")
        if ctx.vm != vm:
            raise PermissionDenied(f"TDI {rid:#06x} is bound to {ctx.vm}, not {vm}")
        handler = getattr(self, f"_guest_{request.kind}", None)
        if handler is None:
            raise InvalidArgument(f"unknown guest request {request.kind!r}")
        self._check_guest_may(_GUEST_KIND_TDISP.get(request.kind))
        return handler(ctx, request)

    def _check_guest_may(self, request: str | None) -> None:
        """The profile's guest-side TDISP whitelist (TDX: TDG.DEVIF.REQUEST; SEV-TIO, CCA: no START)."""
        if request is not None and request not in self.profile.guest_tdisp_requests:
            raise PermissionDenied(f"{self.profile.title}: the guest may not originate {request}")

    def _guest_tdisp(self, ctx: _TdiCtx, request: GuestRequest) -> str:
        """A TDISP request the guest names itself (``payload`` = the request's name): sent only if the
        profile's guest whitelist has it, else refused before the device sees anything."""
        name = request.payload.decode("ascii", errors="replace")
        self._check_guest_may(name)
        if name == "GET_DEVICE_INTERFACE_STATE":
            return self._guest_state(ctx, request).name
        if name == "GET_DEVICE_INTERFACE_REPORT":
            part = self._expect(
                ctx.rid,
                td.GetDeviceInterfaceReport(interface_id=self._iid(ctx.rid), offset=0, length=0x400),
                td.DeviceInterfaceReport,
            )
            return type(part).__name__
        if name == "START_INTERFACE":
            self._guest_start(ctx, request)
            return "StartInterfaceResponse"
        raise Unsupported(f"the guest-request channel carries no {name}")

    def _guest_state(self, ctx: _TdiCtx, request: GuestRequest) -> td.TdiState:
        resp = self._expect(
            ctx.rid, td.GetDeviceInterfaceState(interface_id=self._iid(ctx.rid)), td.DeviceInterfaceState
        )
        return td.TdiState(resp.tdi_state)

    def _guest_report(self, ctx: _TdiCtx, request: GuestRequest) -> Evidence:
        """Attest: read the report in portions, get it signed with the guest's nonce."""
        if len(request.nonce) != 32:
            raise InvalidArgument(f"attest needs a 32-byte nonce, got {len(request.nonce)} bytes")
        offset, remainder = 0, 1
        while remainder:
            part = self._expect(
                ctx.rid,
                td.GetDeviceInterfaceReport(interface_id=self._iid(ctx.rid), offset=offset, length=0x400),
                td.DeviceInterfaceReport,
            )
            offset += len(part.portion)
            remainder = part.remainder_length
            if not part.portion and remainder:
                raise ConformanceViolation("device sent an empty report portion with data remaining")
        dev = self._devices[ctx.device]
        signed = dev.sign_evidence(self._sessions[ctx.device], ctx.rid, request.nonce)
        if self.profile.start_sender is StartSender.AT_ATTEST and not ctx.started:
            self._start(ctx)  # SEV-TIO: RUN at attest ...
            if not self.profile.dma_blocked_until_guest_enables:
                self._guest_accept_dma(ctx, request)  # ... a platform that does not block DMA opens it with START
        return Evidence(signed=signed, chain=dev.certificate_chain())

    def _guest_accept_mmio(self, ctx: _TdiCtx, request: GuestRequest) -> int:
        if ctx.virt_id is None:
            # bound by the host directly (pci-tsm bind), not through the VM's vdevice: no CC vIOMMU context to
            # accept DMA in either, so the accept is refused here, before it maps anything (ERR-01) -- found by the
            # reach steps: a host rebind after a disconnect, then the guest's accept, changed KVM and was refused
            raise InvalidState(f"TDI {ctx.rid:#06x} was not bound through {ctx.vm}'s vdevice: nothing to accept")
        n: int = self._kvm.map_private_mmio(ctx.vm, ctx.rid)
        return n

    def _guest_accept_dma(self, ctx: _TdiCtx, request: GuestRequest) -> None:
        """The TSM asks IOMMUFD to enable trusted DMA; IOMMUFD programs it in the CC vIOMMU (step 29)."""
        self._iommufd.cc_enable_dma(ctx.rid, ctx.vm)
        ctx.trusted_dma = True

    def _guest_start(self, ctx: _TdiCtx, request: GuestRequest) -> None:
        if self.profile.start_sender is not StartSender.GUEST:
            raise PermissionDenied(f"{self.profile.title}: the guest does not send START itself")
        if not (ctx.private_mapped and ctx.trusted_dma):
            # TDX: the TD accepts MMIO and DMA before START (TDXC-ARCH §3.4.4; rules-seed D.62)
            raise InvalidState(f"{self.profile.title}: accept MMIO and DMA of {ctx.rid:#06x} before START")
        self._start(ctx)

    def _guest_vdm(self, ctx: _TdiCtx, request: GuestRequest) -> bytes:
        """A vendor-defined request of the guest (``payload`` = the VDM_REQUEST body: REGISTRY_ID,
        VENDOR_ID_LEN, VENDOR_ID, data) passed to its TDI, and the device's answer handed back as the bytes
        it sent -- a VDM_RESPONSE or a TDISP_ERROR (VENDOR_SPECIFIC_ERROR and its extended data) alike. The
        TSM reads neither: vendor messages are the device vendor's business (PCIe §11.3.24-§11.3.25). Not
        gated by the profiles' guest whitelists, which name the standard requests."""
        sid = self._sessions.get(ctx.device)
        if sid is None:
            raise InvalidState(f"{ctx.device} is not connected")
        header = bytearray(td.encode(td.GetDeviceInterfaceState(interface_id=self._iid(ctx.rid))))
        header[1] = td.RequestCode.VDM
        try:
            req = td.decode_request(bytes(header) + bytes(request.payload))
        except td.TdispDecodeError as exc:
            raise InvalidArgument(f"the guest's vendor-defined request does not decode: {exc}") from None
        raw, _ = self._exchange(ctx.device, sid, req)
        return raw

    def _start(self, ctx: _TdiCtx) -> None:
        if ctx.nonce is None:
            raise InvalidState(f"TDI {ctx.rid:#06x} has no START nonce (not locked, or already started)")
        self._expect(
            ctx.rid,
            td.StartInterface(interface_id=self._iid(ctx.rid), start_interface_nonce=ctx.nonce),
            td.StartInterfaceResponse,
        )
        ctx.nonce, ctx.started = None, True

    @operation(step="34")
    def host_start(self, rid: int, vm: str) -> None:
        """CCA: the host starts the TDI on the realm's request."""
        ctx = self._ctx(rid)
        if self.profile.start_sender is not StartSender.HOST:
            raise PermissionDenied(f"{self.profile.title}: the host does not send START")
        if ctx.vm != vm:
            raise PermissionDenied(f"TDI {rid:#06x} is not bound to {vm}")
        self._start(ctx)

    # ------------------------------------------------------------------ unbind (steps 40-49)
    @operation(step="40")
    def unbind(self, rid: int) -> None:
        """Always succeeds; a no-op when not bound. Teardown order comes from the profile. Like the kernel's
        void pci_tsm_unbind, it cannot give up halfway: each step that fails below (a firmware or I/O
        error) is tried once more, and the rest runs either way (:meth:`_teardown_step`)."""
        ctx = self._ctx(rid)
        if ctx.vm is None:
            return
        step = self._teardown_step
        if self.profile.unmap_order is UnmapOrder.UNMAP_FIRST:
            step(self._vfio.revoke_mmio, rid)
            step(self._stop, ctx)
        else:
            step(self._stop, ctx)
            step(self._vfio.revoke_mmio, rid)
        if ctx.trusted_dma:
            step(self._disable_dma, ctx)  # the disable-DMA callback into IOMMUFD (steps 45-46)
        for peer in sorted(ctx.p2p_peers):  # STOP unbound this end's P2P stream; the peer lets go of it too
            step(self._p2p_unbind_one, self._ctx(peer), rid)
            ctx.p2p_peers.discard(peer)
        step(self._free, ctx)
        step(self._vfio.set_private, rid, False)
        step(self._vfio.recover_mmio, rid)

    def _teardown_step(self, fn: Any, *args: Any) -> None:
        """One step of a teardown that may not fail: retried once when the component below fails it (a
        transient firmware or I/O error, or a refusal), then left -- what stays is the rules' to judge."""
        try:
            fn(*args)
        except StackError:
            with contextlib.suppress(StackError):
                fn(*args)

    def _disable_dma(self, ctx: _TdiCtx) -> None:
        self._iommufd.cc_disable_dma(ctx.rid)
        ctx.trusted_dma = False

    def _stop(self, ctx: _TdiCtx) -> None:
        if self.profile.unmap_order is UnmapOrder.UNMAP_FIRST and ctx.private_mapped:
            # CCA: VDEV_UNLOCK fails while device granules are mapped (rules-seed B.38)
            raise InvalidState(f"{self.profile.title}: unmap private MMIO of {ctx.rid:#06x} before stopping it")
        sid = self._sessions.get(ctx.device)
        if sid is not None and sid in self._devices[ctx.device].snapshot().sessions:
            # (a session the device has lost -- it ended, or the device is gone -- has nothing left to stop:
            # its locked TDIs went ERROR with it)
            stop = td.StopInterface(interface_id=self._iid(ctx.rid))
            try:
                self._expect(ctx.rid, stop, td.StopInterfaceResponse)
            except InvalidState:
                # refused: fine if it is CONFIG_UNLOCKED already (a strict device after a reset); a device
                # that failed the STOP of a TDI still locked (or in ERROR) gets it once more
                if self._still_locked(ctx.rid):
                    with contextlib.suppress(InvalidState):
                        self._expect(ctx.rid, stop, td.StopInterfaceResponse)
        ctx.stopped = True
        ctx.nonce = None

    def _still_locked(self, rid: int) -> bool:
        resp = self._tdisp(rid, td.GetDeviceInterfaceState(interface_id=self._iid(rid)))
        if not isinstance(resp, td.DeviceInterfaceState):
            return True  # no answer to trust: try the STOP again
        return resp.tdi_state != td.TdiState.CONFIG_UNLOCKED

    def _free(self, ctx: _TdiCtx) -> None:
        """TDX 'tdi free' (step 47): IOMMUFD is told (its vdevice unbound, out of the CC context), the TSM
        lets go of the VM, and forgets the binding -- in that order, so a retry after a failure resumes."""
        vm = ctx.vm
        if vm is None:
            return
        self._iommufd.tdi_unbound(ctx.rid)
        self._kvm.put_ref(vm)
        ctx.vm = ctx.virt_id = None
        ctx.started = False

    # ------------------------------------------------------------------ P2P streams between two TDIs
    @operation()
    def bind_p2p(self, vm: str, rid: int, peer_rid: int) -> int:
        """Join two TDIs of one confidential VM, on two devices, by the devices' P2P IDE stream: the TSM keys
        the stream on both ends over its sessions (one end's Tx key is the other's Rx key), makes it Secure,
        and sends BIND_P2P_STREAM to each TDI (PCIe §11.3.18). Both TDIs must be bound to ``vm`` and started
        (P2P is legal in RUN only, PCIe §11.2), and neither may share its stream with a third TDI. Returns the
        stream ID. A refusal leaves no binding behind (the first end is unbound if the second refuses)."""
        a, b = self._ctx(rid), self._ctx(peer_rid)
        if a.device == b.device:
            raise InvalidArgument(f"{rid:#06x} and {peer_rid:#06x} are functions of one device: no P2P stream")
        for c in (a, b):
            if c.vm != vm:
                raise PermissionDenied(f"TDI {c.rid:#06x} is not bound to {vm}: P2P only within one VM")
            if not c.started:
                raise InvalidState(f"TDI {c.rid:#06x} is not started: P2P streams are bound in RUN only")
        if peer_rid in a.p2p_peers:
            return int(self._p2p_stream(a.device))
        for c, other in ((a, b), (b, a)):
            if self._stream_users(c.device) - {other.rid}:
                raise Busy(f"{c.device}'s P2P stream is bound to another peer already")
        stream = self._p2p_stream(a.device)
        if self._p2p_stream(b.device) != stream:
            raise Unsupported(f"{a.device} and {b.device} keep their P2P streams under different stream IDs")
        return self._join(a, b, stream)

    def _join(self, a: _TdiCtx, b: _TdiCtx, stream: int) -> int:
        """Key and enable the stream, BIND both ends. On a refusal the ends are unbound and a stream that was
        not Secure before is disabled again, so a refused bind_p2p leaves the devices as they were."""
        was = {d: self._device(d).snapshot().p2p_stream_state for d in (a.device, b.device)}
        bound: list[_TdiCtx] = []
        try:
            self._program_p2p(a.device, b.device, stream)
            for c in (a, b):
                bind = td.BindP2PStream(interface_id=self._iid(c.rid), p2p_stream_id=stream)
                self._expect(c.rid, bind, td.BindP2PStreamResponse)
                bound.append(c)
        except StackError:
            for c in bound:
                self._teardown_step(self._p2p_unbind_one, c, (b if c is a else a).rid)
            for d, state in was.items():
                if state != "SECURE":
                    with contextlib.suppress(StackError):
                        self._device(d).ide_p2p_enable(False)
            raise
        a.p2p_peers.add(b.rid)
        b.p2p_peers.add(a.rid)
        return stream

    @operation()
    def unbind_p2p(self, rid: int, peer_rid: int) -> None:
        """Unbind the P2P stream two TDIs share: UNBIND_P2P_STREAM to each end (PCIe §11.3.20). A no-op when
        they share none; like unbind it does not give up halfway."""
        a, b = self._ctx(rid), self._ctx(peer_rid)
        if peer_rid not in a.p2p_peers:
            return
        self._teardown_step(self._p2p_unbind_one, a, peer_rid)
        self._teardown_step(self._p2p_unbind_one, b, rid)

    def _p2p_unbind_one(self, ctx: _TdiCtx, peer_rid: int) -> None:
        ctx.p2p_peers.discard(peer_rid)
        dev = self._devices[ctx.device]
        sid = self._sessions.get(ctx.device)
        if sid is None or sid not in dev.snapshot().sessions or self._ctx(ctx.rid).stopped:
            return  # no session, or stopped: the device dropped the binding with it
        stream = self._p2p_stream(ctx.device)
        resp = self._tdisp(ctx.rid, td.UnbindP2PStream(interface_id=self._iid(ctx.rid), p2p_stream_id=stream))
        if isinstance(resp, td.TdispError) and resp.error_code == td.ErrorCode.BUSY:
            raise Busy(f"device stayed BUSY for UNBIND_P2P_STREAM after {BUSY_RETRIES} retries")

    def _stream_users(self, device: str) -> set[int]:
        return {p for c in self._tdis.values() if c.device == device for p in c.p2p_peers}

    def _p2p_stream(self, device: str) -> int:
        stream = getattr(self._device(device).config, "p2p_stream_id", None)
        if stream is None:
            raise Unsupported(f"{device} has no P2P IDE stream")
        return int(stream)

    def _program_p2p(self, first: str, second: str, stream: int) -> None:
        """Key the P2P stream on both devices over the TSM's sessions (fresh keys, key set 0), GO Rx then Tx
        (rules-seed E.66), and enable both ends."""
        ends: list[tuple[Any, int]] = []
        for d in dict.fromkeys((first, second)):  # each device once: one key must never fill two of its slots
            sid = self._sessions.get(d)
            if sid is None:
                raise InvalidState(f"{first} and {second} must both be connected for a P2P stream")
            ends.append((self._device(d), sid))
        for direction in (km.Direction.RX, km.Direction.TX):
            for sub in km.SubStream:
                key = self._fresh_key()
                for i, (dev, sid) in enumerate(ends):
                    way = direction if i == 0 else km.Direction(1 - direction)  # the peer's opposite direction
                    slot = km.KeySubStream(key_set=km.KeySet.K0, direction=way, sub_stream=sub)
                    ack = self._ide_km(
                        dev,
                        sid,
                        km.KeyProg(stream_id=stream, key_sub_stream=slot.to_byte(), port_index=0, key=key, iv=IDE_IV),
                    )
                    if not isinstance(ack, km.KpAck) or ack.status != km.KpAckStatus.SUCCESS:
                        raise InvalidState(f"{dev.name} refused KEY_PROG {slot} for P2P stream {stream}: {ack}")
        for dev, sid in ends:
            for direction in (km.Direction.RX, km.Direction.TX):
                for sub in km.SubStream:
                    slot = km.KeySubStream(key_set=km.KeySet.K0, direction=direction, sub_stream=sub)
                    ack = self._ide_km(
                        dev, sid, km.KSetGo(stream_id=stream, key_sub_stream=slot.to_byte(), port_index=0)
                    )
                    if not isinstance(ack, km.KGoStopAck):
                        raise InvalidState(f"{dev.name} refused K_SET_GO {slot} for P2P stream {stream}: {ack}")
            dev.ide_p2p_enable(True)

    # ------------------------------------------------------------------ secure EPT (from KVM)
    @operation()
    def sept_add(self, vm: str, rid: int) -> None:
        """KVM maps private MMIO: only for a TDI bound to this VM and locked (rules-seed A.28, F.76)."""
        ctx = self._ctx(rid)
        if ctx.vm != vm:
            raise PermissionDenied(f"MMIO of {rid:#06x} may only be mapped into the VM it is bound to")
        if ctx.stopped:
            raise InvalidState(f"TDI {rid:#06x} is not locked")
        ctx.private_mapped = True

    @operation()
    def sept_remove(self, vm: str, rid: int) -> None:
        """TDX refuses to unmap private MMIO until STOP was issued (rules-seed B.33)."""
        ctx = self._ctx(rid)
        if self.profile.unmap_order is UnmapOrder.STOP_FIRST and not ctx.stopped:
            raise InvalidState(
                f"{self.profile.title}: private MMIO of {rid:#06x} cannot be unmapped before the TDI is stopped"
            )
        ctx.private_mapped = False

    # ------------------------------------------------------------------ host-originated TDISP (the
    # VMM may ask for what its platform lets it send; LOCK/STOP/START only via bind/unbind)
    @operation()
    def host_tdisp(self, rid: int, request: str) -> str:
        self._check_host_may(request)
        return self._host_send(rid, request)

    def _host_send(self, rid: int, request: str) -> str:
        if request == "GET_DEVICE_INTERFACE_STATE":
            resp = self._tdisp(rid, td.GetDeviceInterfaceState(interface_id=self._iid(rid)))
        elif request == "GET_TDISP_VERSION":
            resp = self._tdisp(rid, td.GetTdispVersion(interface_id=self._iid(rid)))
        elif request == "GET_TDISP_CAPABILITIES":
            resp = self._tdisp(rid, td.GetTdispCapabilities(interface_id=self._iid(rid), tsm_caps=0))
        else:
            raise PermissionDenied(f"{request} is sent only through bind/unbind/start, never raw")
        if isinstance(resp, td.TdispError) and resp.error_code == td.ErrorCode.BUSY:
            raise Busy(f"device stayed BUSY for {request} after {BUSY_RETRIES} retries")
        return type(resp).__name__

    @operation()
    def host_tdisp_submit(self, rid: int, request: str) -> None:
        """Queue a host TDISP request for the TDI (TDX: TDH.DEVIF.REQUEST); the device answers when the host
        collects it. At most ``max_outstanding_per_tdi`` may be outstanding: one more is -EBUSY."""
        self._check_host_may(request)
        if request not in _HOST_RAW:
            raise PermissionDenied(f"{request} is sent only through bind/unbind/start, never raw")
        ctx = self._ctx(rid)
        if len(ctx.outstanding) >= self.profile.max_outstanding_per_tdi:
            raise Busy(
                f"{self.profile.title}: TDI {rid:#06x} already has {len(ctx.outstanding)} outstanding request(s) "
                f"(at most {self.profile.max_outstanding_per_tdi})"
            )
        ctx.outstanding.append(request)

    @operation()
    def host_tdisp_collect(self, rid: int) -> str:
        """Send the TDI's oldest outstanding host request and return the device's answer (TDH.DEVIF.RESPONSE)."""
        ctx = self._ctx(rid)
        if not ctx.outstanding:
            raise InvalidState(f"TDI {rid:#06x} has no outstanding host request")
        request = ctx.outstanding[0]
        answer = self._host_send(rid, request)
        ctx.outstanding.pop(0)
        return answer

    @query
    def snapshot(self) -> TsmSnapshot:
        return TsmSnapshot(
            connected=tuple(sorted(self._sessions.items())),
            tdis=tuple(
                TdiRecord(
                    rid=c.rid,
                    device=c.device,
                    vm=c.vm,
                    virt_id=c.virt_id,
                    stopped=c.stopped,
                    private_mapped=c.private_mapped,
                    trusted_dma=c.trusted_dma,
                    started=c.started,
                    outstanding=tuple(c.outstanding),
                    p2p_peers=tuple(sorted(c.p2p_peers)),
                )
                for c in self._tdis.values()
            ),
        )
