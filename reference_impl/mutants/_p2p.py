"""Mutants of the optional TDISP features (issue 19): P2P streams, SET_MMIO_ATTRIBUTE, vendor-defined messages.

One per rule of ``conformance/rules/p2p.py``, each a small subclass of the reference device or TSM that breaks
exactly that rule's promise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from teeio_conformance.contract.tdisp import codec as td
from teeio_conformance.reference_impl.device.device import Device
from teeio_conformance.reference_impl.tsm import Tsm


class P2pBindsAnyStream(Device):
    """BIND_P2P_STREAM binds whatever stream ID it names, keyed or not, Secure or not."""

    def _on_bind_p2p_stream(self, fn: Any, req: td.BindP2PStream, sid: int) -> td.Response:
        fn.tdi.p2p_streams.add(req.p2p_stream_id)
        return td.BindP2PStreamResponse(interface_id=req.interface_id)


class P2pUnbindsUnbound(Device):
    """UNBIND_P2P_STREAM of a stream the TDI has not bound answers success."""

    def _on_unbind_p2p_stream(self, fn: Any, req: td.UnbindP2PStream, sid: int) -> td.Response:
        fn.tdi.p2p_streams.discard(req.p2p_stream_id)
        return td.UnbindP2PStreamResponse(interface_id=req.interface_id)


class P2pSurvivesStop(Device):
    """STOP scrubs the TDI but keeps its P2P streams bound (CONFIG_UNLOCKED with a live peer stream)."""

    def _scrub(self, fn: Any) -> None:
        kept = set(fn.tdi.p2p_streams)
        super()._scrub(fn)
        fn.tdi.p2p_streams = kept


class MmioAttrAnyRange(Device):
    """SET_MMIO_ATTRIBUTE of a range outside every reported range answers success (and changes nothing)."""

    def _on_set_mmio_attribute(self, fn: Any, req: td.SetMmioAttribute, sid: int) -> td.Response:
        resp = super()._on_set_mmio_attribute(fn, req, sid)
        if isinstance(resp, td.TdispError):
            return td.SetMmioAttributeResponse(interface_id=req.interface_id)
        return resp


class VdmErrorWithoutVendor(Device):
    """VENDOR_SPECIFIC_ERROR for an unknown vendor carries no extended error data (no registry, no vendor ID)."""

    def _on_vdm(self, fn: Any, req: td.VdmRequest, sid: int) -> td.Response:
        resp = super()._on_vdm(fn, req, sid)
        if isinstance(resp, td.TdispError) and resp.error_code == td.ErrorCode.VENDOR_SPECIFIC_ERROR:
            return td.TdispError(interface_id=req.interface_id, error_code=resp.error_code)
        return resp


class TsmVdmStripsErrorData(Tsm):
    """The TSM hands the guest only the fixed 24 bytes of a TDISP_ERROR answering its vendor request: the
    VENDOR_SPECIFIC_ERROR's extended data (registry and vendor ID) is lost on the way back."""

    def _guest_vdm(self, ctx: Any, request: Any) -> bytes:
        raw = super()._guest_vdm(ctx, request)
        return raw[:24] if raw[1:2] == bytes([td.ResponseCode.TDISP_ERROR]) else raw


class TsmP2pAnyPair(Tsm):
    """bind_p2p joins whatever two TDIs it is given -- no check that they are started TDIs of two devices,
    both bound to the VM that asks -- and sends BIND_P2P_STREAM to each."""

    def bind_p2p(self, vm: str, rid: int, peer_rid: int) -> int:
        a, b = self._ctx(rid), self._ctx(peer_rid)
        return self._join(a, b, self._p2p_stream(a.device))


def mutants(m: Callable[..., Any]) -> list[Any]:
    dev, full = "device", "full_stack"
    return [
        m("device-p2p-binds-any-stream", "P2P-01", dev, "tdx", P2pBindsAnyStream.__doc__, device=P2pBindsAnyStream),
        m(
            "device-p2p-unbinds-unbound",
            "P2P-02",
            dev,
            "sev-tio",
            P2pUnbindsUnbound.__doc__,
            device=P2pUnbindsUnbound,
        ),
        m("device-p2p-survives-stop", "P2P-03", dev, "cca", P2pSurvivesStop.__doc__, device=P2pSurvivesStop),
        m("device-mmio-attr-any-range", "MMIOATTR-01", dev, "tdx", MmioAttrAnyRange.__doc__, device=MmioAttrAnyRange),
        m(
            "device-vdm-error-without-vendor",
            "VDM-01",
            dev,
            "sev-tio",
            VdmErrorWithoutVendor.__doc__,
            device=VdmErrorWithoutVendor,
        ),
        m(
            "tsm-p2p-any-pair",
            "P2P-04",
            full,
            "tdx",
            TsmP2pAnyPair.__doc__,
            overrides={"tsm_factory": TsmP2pAnyPair},
        ),
        m(
            "tsm-vdm-strips-error-data",
            "VDM-02",
            full,
            "cca",
            TsmVdmStripsErrorData.__doc__,
            overrides={"tsm_factory": TsmVdmStripsErrorData},
        ),
    ]
