"""The PCIe device: a DSM (function 0) with PFs/VFs, each function a TDI, answering TDISP and IDE_KM.

The device is the far end of the flow: the host TSM talks to it over an SPDM session (TDISP and
IDE_KM as vendor-defined messages), the host pokes its config space (MSE, BARs, FLR), and TLPs reach
it through the root port's IDE stream. Every way in is an ``@operation`` so the trace shows it.

TDISP semantics come from the table in :mod:`teeio_conformance.contract.tdisp.state`; this module only
adds what the table cannot say: nonces, the IDE precondition of LOCK, reports, and the events that
push a locked TDI to ERROR (PCIe §11.2, §11.4.6, §11.4.9).
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import attrs

from teeio_conformance.contract.errors import AccessFault, InvalidArgument, InvalidState, NotFound
from teeio_conformance.contract.tdisp import codec as td
from teeio_conformance.contract.tdisp.state import EVENT_TRIGGERED_ERROR_FROM, LEGAL_IN, TRANSITIONS, stop_legal_in
from teeio_conformance.contract.trace import Actor, Trace, operation, query
from teeio_conformance.reference_impl.device.ide.km_responder import IdeKmResponder
from teeio_conformance.reference_impl.device.ide.stream import (
    IdeIntegrityError,
    IdeStreamEndpoint,
    ProtectedTlp,
    StreamState,
    Tlp,
)
from teeio_conformance.reference_impl.device.identity import DeviceIdentity, SignedEvidence, make_evidence

__all__ = [
    "PAGE",
    "PROTOCOL_IDE_KM",
    "PROTOCOL_TDISP",
    "VENDOR_ID",
    "Device",
    "DeviceConfig",
    "DeviceSnapshot",
    "FunctionSnapshot",
    "vendor_error_data",
]

PAGE = 4096
PROTOCOL_IDE_KM = 0
PROTOCOL_TDISP = 1
REPORT_PORTION_MAX = 0x400
MMIO_REPORTING_OFFSET_DEFAULT = 0
VENDOR_ID = b"\xfe\xff"  # a made-up PCI-SIG vendor ID (0xFFFE) for the model's own VDM protocol
REGISTRY_PCI_SIG = 0
REGISTRY_CXL = 1


def vendor_error_data(registry_id: int, vendor_id: bytes, data: bytes = b"") -> bytes:
    """EXTENDED_ERROR_DATA of a VENDOR_SPECIFIC_ERROR: REGISTRY_ID u8, VENDOR_ID_LEN u8, VENDOR_ID, then the
    vendor's own error data (PCIe §11.3.26)."""
    return bytes([registry_id, len(vendor_id)]) + vendor_id + data


@attrs.frozen(kw_only=True)
class DeviceConfig:
    """Shape of one device: how many VFs, BAR size, limits; everything else is derived."""

    name: str = "dev0"
    segment: int = 0
    bus: int = 0x3A
    num_vfs: int = 1
    bar_pages: int = 4  # page 0: registers (MSI-X table lives here), pages 1..: TEE data
    num_req_this: int = 1
    num_req_all: int = 4
    stop_in_unlocked_idempotent: bool = False
    default_stream_id: int = 0
    seed: int = 1
    bar_base: int = 0xE000_0000
    p2p_stream_id: int | None = 1  # the selective IDE stream kept for peer-to-peer; None: no P2P support
    vendor_id: bytes = VENDOR_ID  # the vendor-defined (VDM) protocol the device speaks, PCI-SIG registry
    first_session: int = 1  # the ID of the first SPDM session (a stack of several devices keeps them apart)
    identity_curve: str = "P-384"  # the curve of its SPDM identity: "P-256" for a device that signs with ECDSA P-256


@attrs.frozen
class FunctionSnapshot:
    rid: int
    function_id: int
    is_pf: bool
    tdi_state: td.TdiState
    mse: bool
    bme: bool
    bar_base: int
    bar_pages: int
    locked_session: int | None
    has_nonce: bool
    reported_bar_base: int | None
    error_reason: str | None
    p2p_streams: tuple[int, ...] = ()  # P2P stream IDs bound to the TDI (BIND_P2P_STREAM)
    non_tee_pages: tuple[int, ...] = ()  # BAR pages SET_MMIO_ATTRIBUTE turned into non-TEE memory


@attrs.frozen
class DeviceSnapshot:
    name: str
    functions: tuple[FunctionSnapshot, ...]
    sessions: tuple[int, ...]
    stream_state: str
    secrets: tuple[bytes, ...]  # what must never reach the host (device private MMIO data)
    p2p_stream_state: str | None = None  # the P2P IDE stream's state (None: the device has no P2P stream)


@attrs.define
class _Tdi:
    state: td.TdiState = td.TdiState.CONFIG_UNLOCKED
    nonce: bytes | None = None
    lock_session: int | None = None
    report: bytes | None = None
    reported_bar_base: int | None = None
    error_reason: str | None = None
    outstanding: int = 0
    p2p_streams: set[int] = attrs.Factory(set)
    ranges: list[td.MmioRange] = attrs.Factory(list)  # the report's MMIO ranges, as SET_MMIO_ATTRIBUTE left them
    offset: int = 0  # the LOCK's MMIO_REPORTING_OFFSET
    non_tee: set[int] = attrs.Factory(set)  # BAR page indices made non-TEE memory by SET_MMIO_ATTRIBUTE


@attrs.define
class _Function:
    rid: int
    is_pf: bool
    bar_base: int
    mmio: bytearray
    mse: bool = True
    bme: bool = True
    tdi: _Tdi = attrs.Factory(_Tdi)

    @property
    def function_id(self) -> int:
        return self.rid  # segment-valid bit unset: FUNCTION_ID = RID


_TDISP_STEPS = {0x83: "19", 0x84: "24", 0x86: "34", 0x87: "41"}
_P2P_REQUESTS = (td.RequestCode.BIND_P2P_STREAM, td.RequestCode.UNBIND_P2P_STREAM)


def _message_step(protocol_id: int, message: bytes) -> str | None:
    """Flow step of a TDISP message: LOCK 19, GET_REPORT 24, START 34, STOP 41; IDE_KM is step 1."""
    if protocol_id == PROTOCOL_IDE_KM:
        return "1"
    return _TDISP_STEPS.get(message[1]) if isinstance(message, bytes) and len(message) > 1 else None


class Device(Actor):
    """A TEE-IO capable PCIe device (one DSM) with a PF and ``num_vfs`` VFs, each a TDI."""

    actor_name = "device"
    ide_km_class: type[IdeKmResponder] = IdeKmResponder  # the DSM's IDE_KM responder (a part, not an actor)

    def __init__(self, trace: Trace, config: DeviceConfig | None = None, *, name: str | None = None) -> None:
        super().__init__(trace)
        self.config = cfg = config or DeviceConfig()
        if name is not None:
            self.actor_name = "device"
        self.name = name or cfg.name
        rng = random.Random(f"device/{cfg.name}/{cfg.seed}")
        self._rng = rng
        self._busy: dict[int, int] = {}  # rid -> TDISP requests still to answer BUSY (inject_busy)
        self._removed = False  # surprise-removed: gone from the bus until replug
        self._entropy_failures = 0  # LOCKs still to fail for want of entropy (inject_entropy_failure)
        self.identity = DeviceIdentity(seed=cfg.seed, curve=cfg.identity_curve)
        size = cfg.bar_pages * PAGE
        self._functions: dict[int, _Function] = {}
        for index in range(1 + cfg.num_vfs):
            rid = (cfg.bus << 8) | index
            data = bytearray(rng.randbytes(PAGE)) + bytearray(size - PAGE)  # registers; TEE memory zeroed
            self._functions[rid] = _Function(rid=rid, is_pf=index == 0, bar_base=cfg.bar_base + index * size, mmio=data)
        self.pf_rid = cfg.bus << 8
        self._sessions: set[int] = set()
        self._secrets: list[bytes] = []
        self._next_session = cfg.first_session
        self._new_streams()
        self._stop_legal = stop_legal_in(idempotent=cfg.stop_in_unlocked_idempotent)
        self._iommu: Any = None

    def _wire(self, iommu: Any) -> None:
        self._iommu = iommu

    def _new_streams(self) -> None:
        """The IDE stream ends at power-on: the default stream to the root port and, with P2P support, the
        stream kept for a peer device (its RID association is the peer's, set by the host: left open here)."""
        cfg = self.config
        self.ide = IdeStreamEndpoint(
            stream_id=cfg.default_stream_id, rid_base=self.pf_rid, rid_limit=self.pf_rid + cfg.num_vfs
        )
        streams = {cfg.default_stream_id: self.ide}
        self.p2p_ide: IdeStreamEndpoint | None = None
        if cfg.p2p_stream_id is not None and cfg.p2p_stream_id != cfg.default_stream_id:
            self.p2p_ide = IdeStreamEndpoint(stream_id=cfg.p2p_stream_id, rid_base=0, rid_limit=0xFFFF)
            streams[cfg.p2p_stream_id] = self.p2p_ide
        self.ide_km = self.ide_km_class(
            ports={0: streams}, dev_func_num=0, bus_num=cfg.bus, segment=cfg.segment, max_port_index=0
        )

    # ------------------------------------------------------------------ views
    @property
    def function_ids(self) -> tuple[int, ...]:
        return tuple(f.function_id for f in self._functions.values())

    @query
    def rids(self) -> tuple[int, ...]:
        return tuple(self._functions)

    @query
    def bar_range(self, rid: int) -> tuple[int, int]:
        """(base, size) of the function's BAR as the host configured it."""
        fn = self._function(rid)
        return fn.bar_base, len(fn.mmio)

    @query
    def tdi_state(self, rid: int) -> td.TdiState:
        return self._function(rid).tdi.state

    @query
    def snapshot(self) -> DeviceSnapshot:
        fns = tuple(
            FunctionSnapshot(
                rid=f.rid,
                function_id=f.function_id,
                is_pf=f.is_pf,
                tdi_state=f.tdi.state,
                mse=f.mse,
                bme=f.bme,
                bar_base=f.bar_base,
                bar_pages=len(f.mmio) // PAGE,
                locked_session=f.tdi.lock_session,
                has_nonce=f.tdi.nonce is not None,
                reported_bar_base=f.tdi.reported_bar_base,
                error_reason=f.tdi.error_reason,
                p2p_streams=tuple(sorted(f.tdi.p2p_streams)),
                non_tee_pages=tuple(sorted(f.tdi.non_tee)),
            )
            for f in self._functions.values()
        )
        secrets = tuple(self._secrets)
        return DeviceSnapshot(
            name=self.name,
            functions=fns,
            sessions=tuple(sorted(self._sessions)),
            stream_state=self.ide.state.name,
            secrets=secrets,
            p2p_stream_state=None if self.p2p_ide is None else self.p2p_ide.state.name,
        )

    # ------------------------------------------------------------------ SPDM (simplified, honest)
    @operation()
    def spdm_connect(self) -> int:
        """Open an SPDM session (the real SPDM exchange is a later issue; this keeps the seam)."""
        if self._removed:
            raise NotFound(f"{self.name} has been removed")
        sid = self._next_session
        self._next_session += 1
        self._sessions.add(sid)
        return sid

    @operation()
    def spdm_end(self, session_id: int) -> None:
        """End a session: its IDE streams go Insecure and TDIs locked over it go ERROR (PCIe §11.4.5)."""
        if session_id not in self._sessions:
            raise NotFound(f"no SPDM session {session_id}")
        self._sessions.discard(session_id)
        self.ide_km.session_ended(session_id)
        for fn in self._functions.values():
            if fn.tdi.lock_session == session_id:
                self._to_error(fn, "SPDM session ended")

    @operation()
    def certificate_chain(self) -> tuple[bytes, ...]:
        return self.identity.certificate_chain()

    @operation()
    def sign_evidence(self, session_id: int, function_id: int, nonce: bytes) -> SignedEvidence:
        """Evidence for the TDI's current report, bound to ``nonce`` (SPDM signed measurements)."""
        if session_id not in self._sessions:
            raise NotFound(f"no SPDM session {session_id}")
        fn = self._by_function_id(function_id)
        if fn is None or fn.tdi.report is None or fn.tdi.state not in (td.TdiState.CONFIG_LOCKED, td.TdiState.RUN):
            raise InvalidState(f"TDI {function_id:#x} has no report: not CONFIG_LOCKED or RUN")
        return make_evidence(self.identity, fn.tdi.report, nonce)

    # ------------------------------------------------------------------ vendor-defined messages
    @operation(step=lambda protocol_id, message, **kw: _message_step(protocol_id, message))
    def handle_vendor_message(self, protocol_id: int, message: bytes, *, session_id: int | None) -> bytes | None:
        """One TDISP or IDE_KM request in, its response out (None: dropped, as the spec allows)."""
        if self._removed:
            return None  # nothing answers on the bus any more
        if protocol_id == PROTOCOL_IDE_KM:
            if session_id is not None and session_id not in self._sessions:
                return None
            return self.ide_km.handle(message, session_id=session_id)
        if protocol_id == PROTOCOL_TDISP:
            return td.encode(self._tdisp(message, session_id))
        raise InvalidArgument(f"unknown PCI protocol id {protocol_id}; expected 0 (IDE_KM) or 1 (TDISP)")

    @operation()
    def end_session(self, session_id: int) -> None:
        """Transport seam (the socket server's connection closed): end that session if it is live."""
        if session_id in self._sessions:
            self.spdm_end(session_id)

    def _tdisp(self, message: bytes, session_id: int | None) -> td.Response:
        try:
            req = td.decode_request(message)
        except td.TdispDecodeError as exc:
            iid = exc.interface_id or td.InterfaceId(function_id=0)
            return td.TdispError(interface_id=iid, error_code=int(exc.code or td.ErrorCode.INVALID_REQUEST))
        iid = req.interface_id
        fn = self._by_function_id(iid.function_id)
        if fn is None:
            return td.TdispError(interface_id=iid, error_code=td.ErrorCode.INVALID_INTERFACE)
        if session_id is None or session_id not in self._sessions:
            # TDISP is only spoken inside a secure session (PCIe §11.2.2)
            return td.TdispError(interface_id=iid, error_code=td.ErrorCode.INVALID_REQUEST)
        if self._busy.get(fn.rid):
            self._busy[fn.rid] -= 1  # past its outstanding-request limit: not acted on (PCIe §11.2.3)
            return td.TdispError(interface_id=iid, error_code=td.ErrorCode.BUSY)
        code = td.RequestCode(req.code)
        legal = self._stop_legal if code is td.RequestCode.STOP_INTERFACE else LEGAL_IN[code]
        if fn.tdi.state not in legal:
            return td.TdispError(interface_id=iid, error_code=td.ErrorCode.INVALID_INTERFACE_STATE)
        handler = getattr(self, f"_on_{code.name.lower()}")
        resp: td.Response = handler(fn, req, session_id)
        return resp

    def _by_function_id(self, function_id: int) -> _Function | None:
        return self._functions.get(function_id & 0xFFFF) if function_id >> 16 == 0 else None

    def _on_get_tdisp_version(self, fn: _Function, req: Any, sid: int) -> td.Response:
        return td.TdispVersion(interface_id=req.interface_id, versions=(td.TDISP_VERSION_1_0,))

    def _on_get_tdisp_capabilities(self, fn: _Function, req: Any, sid: int) -> td.Response:
        bitmap = 0
        for code in LEGAL_IN:
            if self.p2p_ide is not None or code not in _P2P_REQUESTS:
                bitmap |= 1 << (code - 0x80)
        return td.TdispCapabilities(
            interface_id=req.interface_id,
            dsm_caps=0,
            req_msgs_supported=bitmap.to_bytes(16, "little"),
            lock_interface_flags_supported=int(td.LockFlags.NO_FW_UPDATE | td.LockFlags.LOCK_MSIX),
            dev_addr_width=52,
            num_req_this=self.config.num_req_this,
            num_req_all=self.config.num_req_all,
        )

    def _on_lock_interface(self, fn: _Function, req: td.LockInterface, sid: int) -> td.Response:
        iid = req.interface_id
        unsupported = req.flags & ~int(td.LockFlags.NO_FW_UPDATE | td.LockFlags.LOCK_MSIX)
        if unsupported:
            return td.TdispError(interface_id=iid, error_code=td.ErrorCode.UNSUPPORTED_REQUEST)
        # LOCK needs the default stream keyed and Secure over *this* session (validator LockInterface.2)
        if (
            req.default_stream_id != self.config.default_stream_id
            or self.ide.state is not StreamState.SECURE
            or self.ide_km.owner_session != sid
        ):
            return td.TdispError(interface_id=iid, error_code=td.ErrorCode.INVALID_REQUEST)
        if not fn.mse:
            return td.TdispError(interface_id=iid, error_code=td.ErrorCode.INVALID_DEVICE_CONFIGURATION)
        if self._entropy_failures:
            self._entropy_failures -= 1  # the nonce generator failed: no LOCK (PCIe §11.3.6)
            return td.TdispError(interface_id=iid, error_code=td.ErrorCode.INSUFFICIENT_ENTROPY)
        tdi = fn.tdi
        tdi.nonce = self._rng.randbytes(32)
        tdi.lock_session = sid
        tdi.state = TRANSITIONS[(tdi.state, td.RequestCode.LOCK_INTERFACE)]
        tdi.reported_bar_base = fn.bar_base
        tdi.report = self._build_report(fn, req.mmio_reporting_offset)
        tdi.error_reason = None
        return td.LockInterfaceResponse(interface_id=iid, start_interface_nonce=tdi.nonce)

    @staticmethod
    def _lock_ranges(fn: _Function, offset: int) -> tuple[td.MmioRange, ...]:
        """The MMIO ranges a LOCK reports: the register page (MSI-X table, non-TEE) and the TEE pages,
        whose attributes the TVM may change in RUN (IS_MEM_ATTR_UPDATABLE, PCIe §11.3.22)."""
        pages = len(fn.mmio) // PAGE
        return (
            td.MmioRange(
                first_page=(fn.bar_base + offset) & (2**64 - 1),
                number_of_pages=1,
                attributes=int(td.RangeAttr.MSIX_TABLE | td.RangeAttr.IS_NON_TEE_MEM),
                range_id=0,
            ),
            td.MmioRange(
                first_page=(fn.bar_base + PAGE + offset) & (2**64 - 1),
                number_of_pages=pages - 1,
                attributes=int(td.RangeAttr.IS_MEM_ATTR_UPDATABLE),
                range_id=0,
            ),
        )

    def _build_report(self, fn: _Function, offset: int) -> bytes:
        """The report a LOCK with MMIO_REPORTING_OFFSET ``offset`` gives: the lock-time ranges, kept in the TDI
        (SET_MMIO_ATTRIBUTE changes them later, :meth:`_encode_report`)."""
        tdi = fn.tdi
        tdi.offset = offset
        tdi.ranges = list(self._lock_ranges(fn, offset))
        tdi.non_tee = set()
        return self._encode_report(fn)

    def _encode_report(self, fn: _Function) -> bytes:
        info = hashlib.sha384(bytes(fn.mmio[:64])).digest()[:16]
        report = td.InterfaceReport(
            interface_info=0x2,
            msix_message_control=0,
            lnr_control=0,
            tph_control=0,
            mmio_ranges=tuple(fn.tdi.ranges),
            device_specific_info=info,
        )
        return report.encode()

    def _on_get_device_interface_report(self, fn: _Function, req: td.GetDeviceInterfaceReport, sid: int) -> td.Response:
        report = fn.tdi.report or b""
        if req.length == 0 or req.offset >= len(report):
            return td.TdispError(interface_id=req.interface_id, error_code=td.ErrorCode.INVALID_REQUEST)
        portion = report[req.offset : req.offset + min(req.length, REPORT_PORTION_MAX)]
        return td.DeviceInterfaceReport(
            interface_id=req.interface_id, portion=portion, remainder_length=len(report) - req.offset - len(portion)
        )

    def _on_get_device_interface_state(self, fn: _Function, req: Any, sid: int) -> td.Response:
        return td.DeviceInterfaceState(interface_id=req.interface_id, tdi_state=fn.tdi.state)

    def _on_start_interface(self, fn: _Function, req: td.StartInterface, sid: int) -> td.Response:
        tdi = fn.tdi
        if tdi.nonce is None or req.start_interface_nonce != tdi.nonce or tdi.lock_session != sid:
            return td.TdispError(interface_id=req.interface_id, error_code=td.ErrorCode.INVALID_NONCE)
        tdi.nonce = None  # single use (PCIe §11.3.14)
        tdi.state = TRANSITIONS[(tdi.state, td.RequestCode.START_INTERFACE)]
        secret = self._rng.randbytes(32)  # the TVM's data in the TDI's TEE memory from now on
        fn.mmio[PAGE : PAGE + 32] = secret
        self._secrets.append(secret)
        return td.StartInterfaceResponse(interface_id=req.interface_id)

    def _on_stop_interface(self, fn: _Function, req: Any, sid: int) -> td.Response:
        tdi = fn.tdi
        if tdi.lock_session is not None and tdi.lock_session in self._sessions and sid != tdi.lock_session:
            # a locked TDI belongs to the session that locked it while that session lives (PCIe §11.4.5,
            # §11.6.3): another requester may not unlock and scrub it (rule TDISP-17)
            return td.TdispError(interface_id=req.interface_id, error_code=td.ErrorCode.INVALID_REQUEST)
        if tdi.state is not td.TdiState.CONFIG_UNLOCKED:
            tdi.state = TRANSITIONS[(tdi.state, td.RequestCode.STOP_INTERFACE)]
        self._scrub(fn)
        return td.StopInterfaceResponse(interface_id=req.interface_id)

    def _on_bind_p2p_stream(self, fn: _Function, req: td.BindP2PStream, sid: int) -> td.Response:
        """Bind the TDI (in RUN: the state table saw to that) to a P2P stream: the stream must be the
        device's P2P stream, keyed over the session that locked the TDI and Secure (PCIe §11.3.18: keys
        from the lock session), and not bound to it already. Anything else: INVALID_REQUEST, no change."""
        iid = req.interface_id
        if self.p2p_ide is None:
            return td.TdispError(interface_id=iid, error_code=td.ErrorCode.UNSUPPORTED_REQUEST)
        if not self._p2p_stream_ready(req.p2p_stream_id, fn.tdi.lock_session) or (
            req.p2p_stream_id in fn.tdi.p2p_streams
        ):
            return td.TdispError(interface_id=iid, error_code=td.ErrorCode.INVALID_REQUEST)
        fn.tdi.p2p_streams.add(req.p2p_stream_id)
        return td.BindP2PStreamResponse(interface_id=iid)

    def _p2p_stream_ready(self, stream_id: int, session: int | None) -> bool:
        p2p = self.p2p_ide
        return (
            p2p is not None
            and stream_id == p2p.stream_id
            and p2p.state is StreamState.SECURE
            and session is not None
            and (0, stream_id, session) in self.ide_km.snapshot().keyed_by
        )

    def _on_unbind_p2p_stream(self, fn: _Function, req: td.UnbindP2PStream, sid: int) -> td.Response:
        """Unbind a P2P stream bound to the TDI (its P2P traffic stops); a stream not bound: INVALID_REQUEST."""
        iid = req.interface_id
        if self.p2p_ide is None:
            return td.TdispError(interface_id=iid, error_code=td.ErrorCode.UNSUPPORTED_REQUEST)
        if req.p2p_stream_id not in fn.tdi.p2p_streams:
            return td.TdispError(interface_id=iid, error_code=td.ErrorCode.INVALID_REQUEST)
        fn.tdi.p2p_streams.discard(req.p2p_stream_id)
        return td.UnbindP2PStreamResponse(interface_id=iid)

    def _on_set_mmio_attribute(self, fn: _Function, req: td.SetMmioAttribute, sid: int) -> td.Response:
        """Change IS_NON_TEE_MEM of pages inside one reported range marked IS_MEM_ATTR_UPDATABLE (PCIe
        §11.3.22); the report shows the change from now on (the range is split where needed). A range not
        inside such a reported range, with another RANGE_ID, or changing any other attribute bit:
        INVALID_REQUEST, nothing changes."""
        iid = req.interface_id
        bad = td.TdispError(interface_id=iid, error_code=td.ErrorCode.INVALID_REQUEST)
        want = req.mmio_range
        tdi = fn.tdi
        start, end = want.first_page, want.first_page + want.number_of_pages * PAGE
        if want.number_of_pages == 0 or want.first_page % PAGE:
            return bad
        for i, r in enumerate(tdi.ranges):
            r_end = r.first_page + r.number_of_pages * PAGE
            if not (r.first_page <= start and end <= r_end):
                continue
            keep = r.attributes & ~int(td.RangeAttr.IS_NON_TEE_MEM)
            if not r.attributes & td.RangeAttr.IS_MEM_ATTR_UPDATABLE or r.range_id != want.range_id:
                return bad
            if want.attributes & ~int(td.RangeAttr.IS_NON_TEE_MEM) != keep:
                return bad
            parts = [
                attrs.evolve(r, number_of_pages=(start - r.first_page) // PAGE),
                attrs.evolve(r, first_page=start, number_of_pages=want.number_of_pages, attributes=want.attributes),
                attrs.evolve(r, first_page=end, number_of_pages=(r_end - end) // PAGE),
            ]
            tdi.ranges[i : i + 1] = [p for p in parts if p.number_of_pages]
            first = (start - tdi.offset - fn.bar_base) % 2**64 // PAGE
            pages = set(range(first, first + want.number_of_pages))
            tdi.non_tee = tdi.non_tee | pages if want.attributes & td.RangeAttr.IS_NON_TEE_MEM else tdi.non_tee - pages
            tdi.report = self._encode_report(fn)
            return td.SetMmioAttributeResponse(interface_id=iid)
        return bad

    def _on_vdm(self, fn: _Function, req: td.VdmRequest, sid: int) -> td.Response:
        """A vendor-defined request: the device's own protocol (PCI-SIG registry, its vendor ID) answers
        with the payload echoed; any other vendor's gets VENDOR_SPECIFIC_ERROR naming that registry and
        vendor ID in its extended error data (PCIe §11.3.26: REGISTRY_ID, VENDOR_ID_LEN, VENDOR_ID)."""
        iid = req.interface_id
        if req.registry_id not in (REGISTRY_PCI_SIG, REGISTRY_CXL):
            return td.TdispError(interface_id=iid, error_code=td.ErrorCode.INVALID_REQUEST)
        if req.registry_id == REGISTRY_PCI_SIG and req.vendor_id == self.config.vendor_id:
            return td.VdmResponse(
                interface_id=iid, registry_id=req.registry_id, vendor_id=req.vendor_id, payload=req.payload
            )
        return td.TdispError(
            interface_id=iid,
            error_code=td.ErrorCode.VENDOR_SPECIFIC_ERROR,
            extended_error_data=vendor_error_data(req.registry_id, req.vendor_id),
        )

    def _scrub(self, fn: _Function) -> None:
        """STOP: drop nonce and lock binding; TDI secrets are scrubbed (PCIe §11.3.16)."""
        fn.mmio[PAGE:] = bytes(len(fn.mmio) - PAGE)
        tdi = fn.tdi
        tdi.nonce = None
        tdi.lock_session = None
        tdi.report = None
        tdi.reported_bar_base = None
        tdi.p2p_streams = set()  # STOP unbinds every P2P stream (PCIe §11.3.16)
        tdi.ranges = []
        tdi.non_tee = set()
        if tdi.state is td.TdiState.CONFIG_UNLOCKED:
            tdi.error_reason = None

    def _to_error(self, fn: _Function, reason: str) -> None:
        if fn.tdi.state in EVENT_TRIGGERED_ERROR_FROM:
            fn.tdi.state = td.TdiState.ERROR
            fn.tdi.nonce = None  # the START nonce dies when LOCKED is left
            fn.tdi.error_reason = reason
            fn.tdi.p2p_streams = set()  # out of RUN: no P2P stream stays bound (PCIe §11.2)

    def _function(self, rid: int) -> _Function:
        try:
            return self._functions[rid]
        except KeyError:
            raise NotFound(f"device {self.name} has no function with RID {rid:#06x}") from None

    # ------------------------------------------------------------------ host config-space events
    @operation()
    def config_write(self, rid: int, register: str, value: int) -> None:
        """A host write to a locked-tracked register pushes LOCKED/RUN to ERROR (PCIe §11.2)."""
        fn = self._function(rid)
        if register not in ("command", "bar0", "msix_control", "device_control", "bus_number"):
            raise InvalidArgument(f"unknown config register {register!r}")
        if register == "command":
            fn.mse = bool(value & 0x2)
            fn.bme = bool(value & 0x4)
        elif register == "bar0":
            if value % PAGE:
                raise InvalidArgument(f"BAR base {value:#x} is not page aligned")
            fn.bar_base = value
        self._to_error(fn, f"config write to {register}")

    @operation()
    def flr(self, rid: int) -> None:
        """Function-level reset: the function's TDI (and a PF's VFs) go ERROR (PCIe §11.4.9)."""
        fn = self._function(rid)
        hit = [f for f in self._functions.values() if f is fn or (fn.is_pf and not f.is_pf)]
        for f in hit:
            self._to_error(f, "FLR")
            if f.tdi.state is not td.TdiState.ERROR:
                self._scrub(f)

    @operation()
    def surprise_remove(self) -> None:
        """The device is pulled from the bus without warning (surprise removal): every SPDM session ends
        (TDIs locked over one go ERROR), the IDE stream is lost, and from now on nothing answers --
        messages are dropped, MMIO completes with an error, no DMA goes out -- until :meth:`replug`."""
        if self._removed:
            raise InvalidState(f"{self.name} has been removed already")
        for sid in sorted(self._sessions):
            self.spdm_end(sid)
        self.ide_failure("surprise removal")
        self._removed = True

    @operation()
    def replug(self) -> None:
        """The device is plugged in again (hot-add): at power-on state -- every TDI CONFIG_UNLOCKED with
        its TEE memory scrubbed, no session, a fresh IDE stream, BARs where the config put them -- with
        the same identity. Its START nonces keep coming from the same generator, so none repeats."""
        if not self._removed:
            raise InvalidState(f"{self.name} is present: nothing to plug in")
        cfg = self.config
        size = cfg.bar_pages * PAGE
        for index, fn in enumerate(self._functions.values()):
            fn.tdi = _Tdi()
            fn.mse = fn.bme = True
            fn.bar_base = cfg.bar_base + index * size
            fn.mmio[PAGE:] = bytes(len(fn.mmio) - PAGE)
        self._sessions.clear()
        self._busy.clear()
        self._new_streams()
        self._removed = False

    @operation()
    def inject_entropy_failure(self, count: int) -> None:
        """A fault: the device's next ``count`` LOCKs fail with INSUFFICIENT_ENTROPY (its random number
        generator cannot produce a START nonce), changing nothing. A knob, kept out of the snapshot."""
        if count < 0:
            raise InvalidArgument(f"a failure count cannot be negative ({count})")
        self._entropy_failures = count

    @operation()
    def inject_busy(self, rid: int, count: int) -> None:
        """A fault: the TDI answers its next ``count`` TDISP requests BUSY without acting on them, as a
        responder past its NUM_REQ_THIS may (PCIe §11.2.3). Not device state a host can see: a knob of
        the environment, kept out of the snapshot."""
        self._function(rid)
        if count < 0:
            raise InvalidArgument(f"a BUSY count cannot be negative ({count})")
        self._busy[rid] = count

    @operation()
    def poison(self, rid: int) -> None:
        """An uncorrectable data-integrity error on the function: LOCKED/RUN -> ERROR."""
        self._to_error(self._function(rid), "poisoned TLP")

    @operation()
    def ide_failure(self, reason: str) -> None:
        """The default stream went Insecure (integrity failure, key trouble): bound TDIs -> ERROR."""
        self.ide.mark_insecure(reason)
        self._on_stream_insecure(reason)

    def _on_stream_insecure(self, reason: str) -> None:
        for fn in self._functions.values():
            self._to_error(fn, f"IDE stream Insecure: {reason}")

    def _check_stream(self) -> None:
        if self.ide.state is not StreamState.SECURE:
            self._on_stream_insecure(self.ide.snapshot().insecure_reason or "stream not Secure")

    @operation()
    def ide_p2p_enable(self, enable: bool) -> str:
        """Set or clear the enable bit of the device's P2P IDE stream; returns its state. Clearing it
        makes the stream Insecure: the TDIs bound to it lose it (their peer traffic has no stream)."""
        p2p = self.p2p_ide
        if p2p is None:
            raise InvalidState(f"{self.name} has no P2P IDE stream")
        if enable:
            p2p.enable()
        else:
            p2p.disable()
            for fn in self._functions.values():
                fn.tdi.p2p_streams.discard(p2p.stream_id)
        return p2p.state.name

    @operation()
    def ide_enable(self, enable: bool) -> str:
        """Set or clear the endpoint's IDE stream enable bit; returns the stream state."""
        if enable:
            self.ide.enable()
        else:
            self.ide.disable()
            self._check_stream()
        return self.ide.state.name

    # ------------------------------------------------------------------ TLPs (MMIO completer, DMA requester)
    @operation()
    def receive(self, packet: Tlp | ProtectedTlp) -> bytes:
        """A downstream request; protected ones are checked on the IDE stream first."""
        if self._removed:
            raise AccessFault(f"{self.name} has been removed: the request completes with an error")
        if isinstance(packet, ProtectedTlp):
            try:
                tlp = self.ide.unprotect(packet)
            except IdeIntegrityError as exc:
                self._on_stream_insecure(str(exc))
                raise AccessFault(f"IDE integrity failure: {exc}") from exc
        else:
            tlp = packet
        return self._complete(tlp)

    @operation()
    def issue_dma(self, rid: int, address: int, payload: bytes, *, t_bit: bool) -> None:
        """Function ``rid`` writes ``payload`` at ``address``; T=1 goes out on the IDE stream."""
        if self._removed:
            raise InvalidState(f"{self.name} has been removed")
        tlp = self.make_dma(rid, address, payload, t_bit=t_bit)
        packet: Tlp | ProtectedTlp = tlp
        if t_bit:
            if self.ide.state is not StreamState.SECURE:
                raise InvalidState("T=1 DMA needs a Secure IDE stream")
            packet = self.ide.protect(tlp)
        self._iommu.dma(packet)

    def _tee_range(self, fn: _Function, offset: int, length: int) -> bool:
        if not (offset >= PAGE and offset + length <= len(fn.mmio)):
            return False
        non_tee = fn.tdi.non_tee
        return not non_tee or not any(p in non_tee for p in range(offset // PAGE, (offset + length - 1) // PAGE + 1))

    def _complete(self, tlp: Tlp) -> bytes:
        """Complete an MMIO request; T=1 only in RUN, inside a locked TEE range (PCIe §11.2.1)."""
        fn = self._by_address(tlp.address)
        offset = tlp.address - fn.bar_base
        length = len(tlp.payload) if tlp.kind == "MWr" else int.from_bytes(tlp.payload or b"\x04", "little")
        if not fn.mse:
            raise AccessFault(f"MMIO to {tlp.address:#x}: memory space disabled (MSE=0)")
        if offset + length > len(fn.mmio) or length <= 0:
            raise AccessFault(f"MMIO to {tlp.address:#x}+{length} runs past the BAR")
        tee = self._tee_range(fn, offset, length)
        state = fn.tdi.state
        if tlp.t_bit:
            if state is not td.TdiState.RUN or not tee:
                raise AccessFault(f"T=1 MMIO to TDI {fn.rid:#06x} in {state.name}: rejected (PCIe §11.2.1)")
        elif tee and state in (td.TdiState.CONFIG_LOCKED, td.TdiState.RUN, td.TdiState.ERROR):
            raise AccessFault(f"T=0 MMIO to TEE memory of TDI {fn.rid:#06x} in {state.name}: rejected")
        if tlp.kind == "MWr":
            fn.mmio[offset : offset + length] = tlp.payload
            return b""
        return bytes(fn.mmio[offset : offset + length])

    def _by_address(self, address: int) -> _Function:
        for fn in self._functions.values():
            if fn.bar_base <= address < fn.bar_base + len(fn.mmio):
                return fn
        raise AccessFault(f"no BAR decodes address {address:#x}")

    @query
    def make_dma(self, rid: int, address: int, payload: bytes, *, t_bit: bool) -> Tlp:
        """The TLP function ``rid`` would send for a DMA write; T=1 only from a TDI in RUN."""
        fn = self._function(rid)
        if not fn.bme:
            raise InvalidState(f"function {rid:#06x} has bus mastering disabled")
        if t_bit and fn.tdi.state is not td.TdiState.RUN:
            raise InvalidState(f"TDI {rid:#06x} in {fn.tdi.state.name} may not issue T=1 requests")
        return Tlp(
            kind="MWr",
            requester_id=rid,
            address=address,
            t_bit=t_bit,
            payload=payload,
            stream_id=self.config.default_stream_id if t_bit else None,
        )
