"""Device mutants: TDISP / IDE_KM responders that each break one rule of the state table or IDE_KM."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from teeio_conformance.contract import ide_km as km
from teeio_conformance.contract.tdisp import codec as td
from teeio_conformance.reference_impl.device import device as _dev
from teeio_conformance.reference_impl.device.device import Device
from teeio_conformance.reference_impl.mutants._host import HANG_SECONDS, HANG_STEP_LIMIT


class IllegalLockRelocks(Device):
    """LOCK of an already locked TDI succeeds again (re-lock from CONFIG_LOCKED)."""

    def _tdisp(self, message: bytes, session_id: int | None) -> td.Response:
        try:
            req = td.decode_request(message)
        except td.TdispDecodeError:
            return super()._tdisp(message, session_id)
        fn = self._by_function_id(req.interface_id.function_id)
        if isinstance(req, td.LockInterface) and fn is not None and fn.tdi.state is td.TdiState.CONFIG_LOCKED:
            return td.LockInterfaceResponse(
                interface_id=req.interface_id, start_interface_nonce=fn.tdi.nonce or b"\1" * 32
            )
        return super()._tdisp(message, session_id)


class QueryChangesState(Device):
    """GET_DEVICE_INTERFACE_STATE in RUN drops the TDI back to CONFIG_LOCKED."""

    def _on_get_device_interface_state(self, fn: Any, req: Any, sid: int) -> td.Response:
        resp = super()._on_get_device_interface_state(fn, req, sid)
        if fn.tdi.state is td.TdiState.RUN:
            fn.tdi.state = td.TdiState.CONFIG_LOCKED
        return resp


class LockLeavesUnlocked(Device):
    """LOCK answers success but the TDI stays CONFIG_UNLOCKED."""

    def _on_lock_interface(self, fn: Any, req: Any, sid: int) -> td.Response:
        resp = super()._on_lock_interface(fn, req, sid)
        if isinstance(resp, td.LockInterfaceResponse):
            fn.tdi.state = td.TdiState.CONFIG_UNLOCKED
        return resp


class LockWithoutKeys(Device):
    """LOCK succeeds without a Secure, keyed default stream (validator LockInterface.2)."""

    def _on_lock_interface(self, fn: Any, req: Any, sid: int) -> td.Response:
        real = self.ide_km.owner_session
        state = self.ide.state
        try:
            self.ide_km.owner_session = sid  # type: ignore[misc]
            self.ide._force_state = _dev.StreamState.SECURE  # type: ignore[attr-defined]
            return self._lock_unchecked(fn, req, sid)
        finally:
            self.ide_km.owner_session = real  # type: ignore[misc]
            del state

    def _lock_unchecked(self, fn: Any, req: Any, sid: int) -> td.Response:
        tdi = fn.tdi
        tdi.nonce = self._rng.randbytes(32)
        tdi.lock_session = sid
        tdi.state = td.TdiState.CONFIG_LOCKED
        tdi.reported_bar_base = fn.bar_base
        tdi.report = self._build_report(fn, req.mmio_reporting_offset)
        return td.LockInterfaceResponse(interface_id=req.interface_id, start_interface_nonce=tdi.nonce)


class StartIgnoresNonce(Device):
    """START over the locking session moves to RUN whatever nonce it carries (validator StartInterface.2). The
    session is still checked: a START from another session is TDISP-15's mutant (device-start-from-any-session)."""

    def _on_start_interface(self, fn: Any, req: Any, sid: int) -> td.Response:
        if fn.tdi.lock_session == sid and fn.tdi.nonce is not None:
            fn.tdi.nonce = req.start_interface_nonce
        return super()._on_start_interface(fn, req, sid)


class NonceReused(Device):
    """Every LOCK returns the same START nonce (no fresh randomness)."""

    def _on_lock_interface(self, fn: Any, req: Any, sid: int) -> td.Response:
        resp = super()._on_lock_interface(fn, req, sid)
        if isinstance(resp, td.LockInterfaceResponse):
            fn.tdi.nonce = b"\x5a" * 32
            return td.LockInterfaceResponse(interface_id=req.interface_id, start_interface_nonce=fn.tdi.nonce)
        return resp


class StopLeavesLocked(Device):
    """STOP answers success but leaves a RUN TDI in CONFIG_LOCKED."""

    def _on_stop_interface(self, fn: Any, req: Any, sid: int) -> td.Response:
        was = fn.tdi.state
        resp = super()._on_stop_interface(fn, req, sid)
        if was is td.TdiState.RUN:
            fn.tdi.state = td.TdiState.CONFIG_LOCKED
        return resp


class ErrorRecoversByItself(Device):
    """A TDI in ERROR returns to CONFIG_LOCKED on the next GET_TDISP_VERSION (ERROR not sticky)."""

    def _on_get_tdisp_version(self, fn: Any, req: Any, sid: int) -> td.Response:
        for f in self._functions.values():
            if f.tdi.state is td.TdiState.ERROR:
                f.tdi.state = td.TdiState.CONFIG_UNLOCKED
        return super()._on_get_tdisp_version(fn, req, sid)


class ConfigWriteUntracked(Device):
    """Config writes and poisoned TLPs on a locked TDI are not tracked (no ERROR)."""

    def _to_error(self, fn: Any, reason: str) -> None:
        if reason.startswith(("config write", "poisoned")):
            return
        super()._to_error(fn, reason)


class PfFlrSparesVfs(Device):
    """An FLR of the PF leaves the VFs' TDIs locked (validator does not test this; PCIe §11.4.9 does)."""

    def flr(self, rid: int) -> None:
        fn = self._function(rid)
        self._to_error(fn, "FLR")


class ReportInUnlocked(Device):
    """GET_DEVICE_INTERFACE_REPORT in CONFIG_UNLOCKED returns an (empty-state) report."""

    def _tdisp(self, message: bytes, session_id: int | None) -> td.Response:
        try:
            req = td.decode_request(message)
        except td.TdispDecodeError:
            return super()._tdisp(message, session_id)
        fn = self._by_function_id(req.interface_id.function_id)
        if (
            isinstance(req, td.GetDeviceInterfaceReport)
            and fn is not None
            and fn.tdi.state is td.TdiState.CONFIG_UNLOCKED
            and session_id in self._sessions  # only the state check is gone, not the session's
        ):
            return td.DeviceInterfaceReport(interface_id=req.interface_id, portion=b"\0" * 4, remainder_length=0)
        return super()._tdisp(message, session_id)


class MalformedGetsSilence(Device):
    """A request with a wrong TDISP version is answered with a success-shaped garbage message."""

    def _tdisp(self, message: bytes, session_id: int | None) -> td.Response:
        if message and message[0] >> 4 != td.TDISP_VERSION_1_0 >> 4:  # not 1.x: malformed (1.1 is still 1.x)
            return td.DeviceInterfaceState(interface_id=td.InterfaceId(function_id=0), tdi_state=td.TdiState.RUN)
        return super()._tdisp(message, session_id)


class WrongInterfaceEcho(Device):
    """Responses carry the PF's INTERFACE_ID whatever TDI was addressed."""

    def _tdisp(self, message: bytes, session_id: int | None) -> td.Response:
        resp = super()._tdisp(message, session_id)
        if isinstance(resp, td.DeviceInterfaceState):
            return td.DeviceInterfaceState(
                interface_id=td.InterfaceId(function_id=self.pf_rid ^ 1), tdi_state=resp.tdi_state
            )
        return resp


class CapsMissStop(Device):
    """GET_TDISP_CAPABILITIES forgets to advertise STOP_INTERFACE."""

    def _on_get_tdisp_capabilities(self, fn: Any, req: Any, sid: int) -> td.Response:
        resp = super()._on_get_tdisp_capabilities(fn, req, sid)
        bits = int.from_bytes(resp.req_msgs_supported, "little") & ~(1 << 7)  # type: ignore[union-attr]
        return td.TdispCapabilities(
            interface_id=req.interface_id,
            dsm_caps=0,
            req_msgs_supported=bits.to_bytes(16, "little"),
            lock_interface_flags_supported=resp.lock_interface_flags_supported,  # type: ignore[union-attr]
            dev_addr_width=52,
            num_req_this=1,
            num_req_all=4,
        )


class StartFromAnySession(Device):
    """START is accepted from any session, not only the one that locked (the TDI stays bound to the locking
    session: only the START's session check is gone)."""

    def _on_start_interface(self, fn: Any, req: Any, sid: int) -> td.Response:
        locker = fn.tdi.lock_session
        return super()._on_start_interface(fn, req, sid if locker is None else locker)


class ReportRangesUnordered(Device):
    """The interface report lists its MMIO ranges out of address order."""

    def _build_report(self, fn: Any, offset: int) -> bytes:
        rep = td.InterfaceReport.decode(super()._build_report(fn, offset))
        return td.InterfaceReport(
            interface_info=rep.interface_info,
            msix_message_control=0,
            lnr_control=0,
            tph_control=0,
            mmio_ranges=tuple(reversed(rep.mmio_ranges)),
            device_specific_info=rep.device_specific_info,
        ).encode()


class TdispOutsideSession(Device):
    """TDISP with no SPDM session is answered as if it came over a live one (PCIe §11.2.2: TDISP only in
    a secure session)."""

    def _tdisp(self, message: bytes, session_id: int | None) -> td.Response:
        if session_id is not None:
            return super()._tdisp(message, session_id)
        self._sessions.add(0)  # a phantom session for the one request
        try:
            return super()._tdisp(message, 0)
        finally:
            self._sessions.discard(0)


class SecondSessionKeys(Device):
    """IDE_KM from a second SPDM session is answered (and may reprogram keys)."""

    def handle_vendor_message(self, protocol_id: int, message: bytes, *, session_id: int | None) -> bytes | None:
        if protocol_id == _dev.PROTOCOL_IDE_KM and session_id in self._sessions:
            owner = self.ide_km.owner_session
            if owner is not None and owner != session_id:
                self.ide_km.owner_session = session_id  # type: ignore[misc]
        return super().handle_vendor_message(protocol_id, message, session_id=session_id)


class KpAckWrongEcho(Device):
    """KP_ACK answers every KEY_PROG with status success, even truncated ones."""

    def handle_vendor_message(self, protocol_id: int, message: bytes, *, session_id: int | None) -> bytes | None:
        resp = super().handle_vendor_message(protocol_id, message, session_id=session_id)
        if protocol_id == _dev.PROTOCOL_IDE_KM and message[:1] == bytes([km.ObjectId.KEY_PROG]) and resp:
            ack = km.decode(resp)
            if isinstance(ack, km.KpAck):
                return km.encode(
                    km.KpAck(
                        stream_id=ack.stream_id,
                        status=km.KpAckStatus.SUCCESS,
                        key_sub_stream=ack.key_sub_stream,
                        port_index=ack.port_index,
                    )
                )
        return resp


class IntegrityFailureIgnored(Device):
    """A TLP that fails IDE integrity is dropped, but the stream stays Secure and TDIs stay locked."""

    def _on_stream_insecure(self, reason: str) -> None:
        return None

    def receive(self, packet: Any) -> bytes:
        try:
            return super().receive(packet)
        finally:
            self.ide._force_state = _dev.StreamState.SECURE  # type: ignore[attr-defined]


class GoStopAckWrongEcho(Device):
    """K_GOSTOP_ACK echoes stream ID 0xFF instead of the request's."""

    def handle_vendor_message(self, protocol_id: int, message: bytes, *, session_id: int | None) -> bytes | None:
        resp = super().handle_vendor_message(protocol_id, message, session_id=session_id)
        if protocol_id == _dev.PROTOCOL_IDE_KM and resp and resp[:1] == bytes([km.ObjectId.K_GOSTOP_ACK]):
            ack = km.decode(resp)
            return km.encode(
                km.KGoStopAck(
                    stream_id=0xFF,
                    key_sub_stream=ack.key_sub_stream,  # type: ignore[union-attr]
                    port_index=ack.port_index,
                )
            )  # type: ignore[union-attr]
        return resp


class QueryRespWrongPort(Device):
    """QUERY_RESP reports a max port index below the port asked about."""

    def handle_vendor_message(self, protocol_id: int, message: bytes, *, session_id: int | None) -> bytes | None:
        resp = super().handle_vendor_message(protocol_id, message, session_id=session_id)
        if protocol_id == _dev.PROTOCOL_IDE_KM and resp and resp[:1] == bytes([km.ObjectId.QUERY_RESP]):
            q = km.decode(resp)
            return km.encode(
                km.QueryResp(
                    port_index=q.port_index + 1,
                    dev_func_num=q.dev_func_num,  # type: ignore[union-attr]
                    bus_num=q.bus_num,
                    segment=q.segment,
                    max_port_index=0,  # type: ignore[union-attr]
                    ide_registers=q.ide_registers,
                )
            )  # type: ignore[union-attr]
        return resp


class DmaT1InTheClear(Device):
    """The device sends T=1 DMA writes without IDE protection (its DMA engine bypasses the stream)."""

    def issue_dma(self, rid: int, address: int, payload: bytes, *, t_bit: bool) -> None:
        if not t_bit:
            return super().issue_dma(rid, address, payload, t_bit=t_bit)
        self._iommu.dma(self.make_dma(rid, address, payload, t_bit=True))


class SessionEndKeepsStream(Device):
    """Ending the SPDM session leaves the IDE stream Secure (keys live on)."""

    def spdm_end(self, session_id: int) -> None:
        super().spdm_end(session_id)
        self.ide._force_state = _dev.StreamState.SECURE  # type: ignore[attr-defined]


class RefreshBreaksStream(Device):
    """K_SET_GO to the other key set retires the old key but never activates the new one: the stream
    falls Insecure on every key refresh."""

    def handle_vendor_message(self, protocol_id: int, message: bytes, *, session_id: int | None) -> bytes | None:
        had = dict(self.ide._active)
        resp = super().handle_vendor_message(protocol_id, message, session_id=session_id)
        if protocol_id == _dev.PROTOCOL_IDE_KM and message[:1] == bytes([km.ObjectId.K_SET_GO]) and len(message) > 5:
            slot = km.KeySubStream.from_byte(message[5])
            old = had.get((slot.direction, slot.sub_stream))
            if old is not None and old is not slot.key_set:
                self.ide._active.pop((slot.direction, slot.sub_stream), None)
        return resp


class PrivateMmioInLocked(Device):
    """The device completes T=1 MMIO to TEE memory while the TDI is only CONFIG_LOCKED."""

    def _complete(self, tlp: Any) -> bytes:
        fn = self._by_address(tlp.address)
        if tlp.t_bit and fn.tdi.state is td.TdiState.CONFIG_LOCKED:
            off = tlp.address - fn.bar_base
            return bytes(fn.mmio[off : off + 8])
        return super()._complete(tlp)


class CrashOnMalformed(Device):
    """A truncated TDISP request raises IndexError out of the responder (crashes instead of answering)."""

    def handle_vendor_message(self, protocol_id: int, message: bytes, *, session_id: int | None) -> bytes | None:
        if protocol_id == _dev.PROTOCOL_TDISP and len(message) < 16:
            raise IndexError("message too short")
        return super().handle_vendor_message(protocol_id, message, session_id=session_id)


class HangsOnIdeQuery(Device):
    """The device's IDE_KM responder never answers QUERY (firmware stuck): the caller waits forever."""

    def handle_vendor_message(self, protocol_id: int, message: bytes, *, session_id: int | None) -> bytes | None:
        if protocol_id == _dev.PROTOCOL_IDE_KM and message[:1] == bytes([km.ObjectId.QUERY]):
            time.sleep(HANG_SECONDS)
        return super().handle_vendor_message(protocol_id, message, session_id=session_id)


class GarbageLockResponse(Device):
    """LOCK_INTERFACE is answered with a truncated message (a success-coded header and nothing else)."""

    def handle_vendor_message(self, protocol_id: int, message: bytes, *, session_id: int | None) -> bytes | None:
        resp = super().handle_vendor_message(protocol_id, message, session_id=session_id)
        if (
            protocol_id == _dev.PROTOCOL_TDISP
            and len(message) > 1
            and message[1] == td.RequestCode.LOCK_INTERFACE
            and resp is not None
        ):
            return resp[:6]
        return resp


def mutants(m: Callable[..., Any]) -> list[Any]:
    dev = "device"
    return [
        m("device-relock-from-locked", "TDISP-01", dev, "tdx", IllegalLockRelocks.__doc__, device=IllegalLockRelocks),
        m("device-query-changes-state", "TDISP-02", dev, "tdx", QueryChangesState.__doc__, device=QueryChangesState),
        m("device-lock-leaves-unlocked", "TDISP-03", dev, "tdx", LockLeavesUnlocked.__doc__, device=LockLeavesUnlocked),
        m("device-lock-without-keys", "TDISP-04", dev, "tdx", LockWithoutKeys.__doc__, device=LockWithoutKeys),
        m("device-start-ignores-nonce", "TDISP-05", dev, "tdx", StartIgnoresNonce.__doc__, device=StartIgnoresNonce),
        m("device-nonce-reused", "TDISP-06", dev, "tdx", NonceReused.__doc__, device=NonceReused),
        m("device-stop-leaves-locked", "TDISP-07", dev, "tdx", StopLeavesLocked.__doc__, device=StopLeavesLocked),
        m(
            "device-error-not-sticky",
            "TDISP-08",
            dev,
            "tdx",
            ErrorRecoversByItself.__doc__,
            device=ErrorRecoversByItself,
        ),
        m(
            "device-config-write-untracked",
            "TDISP-09",
            dev,
            "tdx",
            ConfigWriteUntracked.__doc__,
            device=ConfigWriteUntracked,
        ),
        m("device-pf-flr-spares-vfs", "TDISP-10", dev, "tdx", PfFlrSparesVfs.__doc__, device=PfFlrSparesVfs),
        m("device-report-in-unlocked", "TDISP-11", dev, "tdx", ReportInUnlocked.__doc__, device=ReportInUnlocked),
        m(
            "device-malformed-gets-garbage",
            "TDISP-12",
            dev,
            "tdx",
            MalformedGetsSilence.__doc__,
            device=MalformedGetsSilence,
        ),
        m("device-wrong-interface-echo", "TDISP-13", dev, "tdx", WrongInterfaceEcho.__doc__, device=WrongInterfaceEcho),
        m("device-caps-miss-stop", "TDISP-14", dev, "tdx", CapsMissStop.__doc__, device=CapsMissStop),
        m(
            "device-start-from-any-session",
            "TDISP-15",
            dev,
            "tdx",
            StartFromAnySession.__doc__,
            device=StartFromAnySession,
        ),
        m(
            "device-tdisp-outside-session",
            "TDISP-12",
            dev,
            "tdx",
            TdispOutsideSession.__doc__,
            device=TdispOutsideSession,
        ),
        m(
            "device-report-ranges-unordered",
            "TDISP-16",
            dev,
            "tdx",
            ReportRangesUnordered.__doc__,
            device=ReportRangesUnordered,
        ),
        m("device-second-session-keys", "IDE-01", dev, "tdx", SecondSessionKeys.__doc__, device=SecondSessionKeys),
        m("device-kp-ack-always-success", "IDE-02", dev, "tdx", KpAckWrongEcho.__doc__, device=KpAckWrongEcho),
        m(
            "device-integrity-failure-ignored",
            "IDE-03",
            dev,
            "tdx",
            IntegrityFailureIgnored.__doc__,
            device=IntegrityFailureIgnored,
        ),
        m("device-gostop-ack-wrong-echo", "IDE-04", dev, "tdx", GoStopAckWrongEcho.__doc__, device=GoStopAckWrongEcho),
        m("device-query-resp-wrong-port", "IDE-05", dev, "tdx", QueryRespWrongPort.__doc__, device=QueryRespWrongPort),
        m("device-dma-t1-in-the-clear", "IDE-06", "full_stack", "tdx", DmaT1InTheClear.__doc__, device=DmaT1InTheClear),
        m(
            "device-session-end-keeps-stream",
            "IDE-07",
            dev,
            "tdx",
            SessionEndKeepsStream.__doc__,
            device=SessionEndKeepsStream,
        ),
        m(
            "device-refresh-breaks-stream",
            "IDE-08",
            "full_stack",
            "tdx",
            RefreshBreaksStream.__doc__,
            device=RefreshBreaksStream,
        ),
        m(
            "device-private-mmio-in-locked",
            "DMA-05",
            "full_stack",
            "tdx",
            PrivateMmioInLocked.__doc__,
            device=PrivateMmioInLocked,
        ),
        m("device-crashes-on-malformed", "ERR-02", dev, "tdx", CrashOnMalformed.__doc__, device=CrashOnMalformed),
        m(
            "device-garbage-lock-response",
            "TDISP-12",
            "full_stack",
            "tdx",
            GarbageLockResponse.__doc__,
            device=GarbageLockResponse,
        ),
        m(
            "device-hangs-on-ide-query",
            "SUT-HANG",
            dev,
            "tdx",
            HangsOnIdeQuery.__doc__,
            device=HangsOnIdeQuery,
            timeout=HANG_STEP_LIMIT,
        ),
    ]
