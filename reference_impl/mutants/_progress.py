"""Progress mutants (issue 14): devices that refuse, drop or falsely acknowledge requests the spec says
must succeed -- each by a code path of its own, caught by the rule that owns the request's answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from teeio_conformance.contract import ide_km as km
from teeio_conformance.contract.tdisp import codec as td
from teeio_conformance.reference_impl.device import device as _dev
from teeio_conformance.reference_impl.device.device import Device


class LockRefusedInvalidRequest(Device):
    """A valid LOCK_INTERFACE (keys programmed and the stream Secure over this session) is answered
    TDISP_ERROR INVALID_REQUEST -- a code the old rule accepted for any LOCK."""

    def _on_lock_interface(self, fn: Any, req: Any, sid: int) -> td.Response:
        return td.TdispError(interface_id=req.interface_id, error_code=td.ErrorCode.INVALID_REQUEST)


class ReportAlwaysInvalidRequest(Device):
    """Every GET_DEVICE_INTERFACE_REPORT of a locked TDI is answered INVALID_REQUEST, valid or not."""

    def _on_get_device_interface_report(self, fn: Any, req: Any, sid: int) -> td.Response:
        return td.TdispError(interface_id=req.interface_id, error_code=td.ErrorCode.INVALID_REQUEST)


class KpAcksBadFields(Device):
    """KEY_PROG is acknowledged SUCCESS whatever its port, sub-stream or IV (KeyProg.3-.5): the responder
    checks only the stream and then programs what it can."""

    def handle_vendor_message(self, protocol_id: int, message: bytes, *, session_id: int | None) -> bytes | None:
        resp = super().handle_vendor_message(protocol_id, message, session_id=session_id)
        if protocol_id != _dev.PROTOCOL_IDE_KM or resp is None:
            return resp
        try:
            req, ack = km.decode(bytes(message)), km.decode(resp)
        except Exception:
            return resp
        if isinstance(req, km.KeyProg) and isinstance(ack, km.KpAck) and ack.status != km.KpAckStatus.SUCCESS:
            if ack.status != km.KpAckStatus.INCORRECT_LENGTH:
                return km.encode(
                    km.KpAck(
                        stream_id=req.stream_id,
                        status=km.KpAckStatus.SUCCESS,
                        key_sub_stream=req.key_sub_stream,
                        port_index=req.port_index,
                    )
                )
        return resp


class DropsQuery(Device):
    """QUERY is never answered, even from the key owner's session for port 0 (Query.1)."""

    def handle_vendor_message(self, protocol_id: int, message: bytes, *, session_id: int | None) -> bytes | None:
        if protocol_id == _dev.PROTOCOL_IDE_KM and message[:1] == bytes([km.ObjectId.QUERY]):
            return None
        return super().handle_vendor_message(protocol_id, message, session_id=session_id)


class DropsGoAfterKeyProg(Device):
    """K_SET_GO is dropped although the slot was just programmed: the stream is never made Secure by it."""

    def handle_vendor_message(self, protocol_id: int, message: bytes, *, session_id: int | None) -> bytes | None:
        if protocol_id == _dev.PROTOCOL_IDE_KM and message[:1] == bytes([km.ObjectId.K_SET_GO]):
            return None
        return super().handle_vendor_message(protocol_id, message, session_id=session_id)


class CapsDsmCapsSet(Device):
    """GET_TDISP_CAPABILITIES reports a DSM_CAPS bit and a reserved request bit (Capabilities.1 .5/.6)."""

    def _on_get_tdisp_capabilities(self, fn: Any, req: Any, sid: int) -> td.Response:
        resp: Any = super()._on_get_tdisp_capabilities(fn, req, sid)
        bits = int.from_bytes(resp.req_msgs_supported, "little") | 1 << 20
        return td.TdispCapabilities(
            interface_id=req.interface_id,
            dsm_caps=1,
            req_msgs_supported=bits.to_bytes(16, "little"),
            lock_interface_flags_supported=resp.lock_interface_flags_supported,
            dev_addr_width=resp.dev_addr_width,
            num_req_this=resp.num_req_this,
            num_req_all=resp.num_req_all,
        )


def mutants(m: Callable[..., Any]) -> list[Any]:
    dev = "device"
    return [
        m(
            "device-lock-refused-invalid-request",
            "TDISP-03",
            dev,
            "tdx",
            LockRefusedInvalidRequest.__doc__,
            device=LockRefusedInvalidRequest,
        ),
        m(
            "device-report-always-invalid-request",
            "TDISP-11",
            dev,
            "cca",
            ReportAlwaysInvalidRequest.__doc__,
            device=ReportAlwaysInvalidRequest,
        ),
        m("device-kp-acks-bad-fields", "IDE-02", dev, "tdx", KpAcksBadFields.__doc__, device=KpAcksBadFields),
        m("device-drops-query", "IDE-05", dev, "sev-tio", DropsQuery.__doc__, device=DropsQuery),
        m(
            "device-drops-go-after-keyprog",
            "IDE-04",
            dev,
            "tdx",
            DropsGoAfterKeyProg.__doc__,
            device=DropsGoAfterKeyProg,
        ),
        m("device-caps-dsm-caps-set", "TDISP-14", dev, "tdx", CapsDsmCapsSet.__doc__, device=CapsDsmCapsSet),
    ]


class StopFromAnySession(Device):
    """STOP is obeyed from any session, even while the session that locked the TDI lives."""

    def _on_stop_interface(self, fn: Any, req: Any, sid: int) -> td.Response:
        return super()._on_stop_interface(fn, req, fn.tdi.lock_session if fn.tdi.lock_session is not None else sid)


def session_mutants(m: Callable[..., Any]) -> list[Any]:
    return [
        m(
            "device-stop-from-any-session",
            "TDISP-17",
            "device",
            "cca",
            StopFromAnySession.__doc__,
            device=StopFromAnySession,
        )
    ]
