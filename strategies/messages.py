"""Hypothesis strategies for TDISP and IDE_KM messages: every valid message, and malformed bytes.

Malformed inputs are built from valid ones so they stay near the decoder's edges: a wrong version
byte, a truncated or over-long body, an unknown code, an INTERFACE_ID nobody owns, a bad report
offset, one flipped bit -- plus plain random bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

from reference_impl.device.ide import km_codec as km
from reference_impl.device.tdisp import codec as td

__all__ = ["ide_km_requests", "ide_km_responses", "interface_ids", "interface_reports", "malformed_ide_km_requests",
           "malformed_tdisp_requests", "tdisp_requests", "tdisp_responses"]

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, 2**64 - 1)


def interface_ids() -> st.SearchStrategy[td.InterfaceId]:
    return st.builds(td.InterfaceId, function_id=u32, reserved=st.sampled_from([0, 0, 1, 2**64 - 1]))


def mmio_ranges() -> st.SearchStrategy[td.MmioRange]:
    return st.builds(td.MmioRange, first_page=u64, number_of_pages=u32, attributes=u16, range_id=u16)


def interface_reports() -> st.SearchStrategy[td.InterfaceReport]:
    return st.builds(td.InterfaceReport, interface_info=u16, msix_message_control=u16, lnr_control=u16,
                     tph_control=u32, mmio_ranges=st.lists(mmio_ranges(), max_size=4).map(tuple),
                     device_specific_info=st.binary(max_size=32))


def tdisp_requests(ids: st.SearchStrategy[td.InterfaceId] | None = None) -> st.SearchStrategy[Any]:
    i = ids if ids is not None else interface_ids()
    return st.one_of(
        st.builds(td.GetTdispVersion, interface_id=i),
        st.builds(td.GetTdispCapabilities, interface_id=i, tsm_caps=u32),
        st.builds(td.LockInterface, interface_id=i, flags=u16, default_stream_id=u8, mmio_reporting_offset=u64,
                  bind_p2p_address_mask=u64),
        st.builds(td.GetDeviceInterfaceReport, interface_id=i, offset=u16, length=u16),
        st.builds(td.GetDeviceInterfaceState, interface_id=i),
        st.builds(td.StartInterface, interface_id=i, start_interface_nonce=st.binary(min_size=32, max_size=32)),
        st.builds(td.StopInterface, interface_id=i),
        st.builds(td.BindP2PStream, interface_id=i, p2p_stream_id=u8),
        st.builds(td.UnbindP2PStream, interface_id=i, p2p_stream_id=u8),
        st.builds(td.SetMmioAttribute, interface_id=i, mmio_range=mmio_ranges()),
        st.builds(td.VdmRequest, interface_id=i, registry_id=u8, vendor_id=st.binary(max_size=8),
                  payload=st.binary(max_size=32)),
    )


def tdisp_responses() -> st.SearchStrategy[Any]:
    i = interface_ids()
    return st.one_of(
        st.builds(td.TdispVersion, interface_id=i, versions=st.lists(u8, max_size=4).map(tuple)),
        st.builds(td.TdispCapabilities, interface_id=i, dsm_caps=u32, req_msgs_supported=st.binary(min_size=16,
                  max_size=16), lock_interface_flags_supported=u16, dev_addr_width=u8, num_req_this=u8,
                  num_req_all=u8),
        st.builds(td.LockInterfaceResponse, interface_id=i, start_interface_nonce=st.binary(min_size=32, max_size=32)),
        st.builds(td.DeviceInterfaceReport, interface_id=i, portion=st.binary(max_size=64), remainder_length=u16),
        st.builds(td.DeviceInterfaceState, interface_id=i, tdi_state=st.integers(0, 3)),
        *(st.builds(c, interface_id=i) for c in (td.StartInterfaceResponse, td.StopInterfaceResponse,
                                                 td.BindP2PStreamResponse, td.UnbindP2PStreamResponse,
                                                 td.SetMmioAttributeResponse)),
        st.builds(td.VdmResponse, interface_id=i, registry_id=u8, vendor_id=st.binary(max_size=8),
                  payload=st.binary(max_size=32)),
        st.builds(td.TdispError, interface_id=i, error_code=u32, error_data=u32,
                  extended_error_data=st.binary(max_size=16)),
    )


def _mutate(draw: Any, raw: bytes, valid_function_ids: Sequence[int]) -> bytes:
    kind = draw(st.sampled_from(["version", "truncate", "extend", "code", "interface", "flip", "report",
                                 "random"]))
    if kind == "version":
        return bytes([draw(st.sampled_from([0x00, 0x20, 0x11, 0xFF]))]) + raw[1:]
    if kind == "truncate":
        return raw[: draw(st.integers(0, max(len(raw) - 1, 0)))]
    if kind == "extend":
        return raw + draw(st.binary(min_size=1, max_size=8))
    if kind == "code":
        code = draw(st.integers(0, 0xFF).filter(lambda c: c not in td.RequestCode._value2member_map_))
        return raw[:1] + bytes([code]) + raw[2:]
    if kind == "interface":
        fid = draw(u32.filter(lambda f: f not in valid_function_ids))
        return raw[:4] + fid.to_bytes(4, "little") + raw[8:]
    if kind == "flip":
        bit = draw(st.integers(0, len(raw) * 8 - 1))
        out = bytearray(raw)
        out[bit // 8] ^= 1 << (bit % 8)
        return bytes(out)
    if kind == "report":
        fid = draw(st.sampled_from(list(valid_function_ids) or [0]))
        offset, length = draw(st.sampled_from([(0xFFFF, 1), (0, 0), (0x1000, 0x40), (0x7FFF, 0xFFFF)]))
        return td.encode(td.GetDeviceInterfaceReport(interface_id=td.InterfaceId(function_id=fid), offset=offset,
                                                     length=length))
    return draw(st.binary(max_size=64))


@st.composite
def malformed_tdisp_requests(draw: Any, valid_function_ids: Sequence[int] = ()) -> bytes:
    """Bytes near a valid TDISP request (or random), which a responder must answer with TDISP_ERROR."""
    ids = st.sampled_from([td.InterfaceId(function_id=f) for f in valid_function_ids]) if valid_function_ids \
        else interface_ids()
    raw = td.encode(draw(tdisp_requests(ids)))
    return _mutate(draw, raw, valid_function_ids)


def ide_km_requests() -> st.SearchStrategy[Any]:
    kss = st.sampled_from([s.to_byte() for s in km.ALL_SLOTS])
    return st.one_of(
        st.builds(km.Query, port_index=u8),
        st.builds(km.KeyProg, stream_id=u8, key_sub_stream=kss, port_index=u8, key=st.binary(min_size=32, max_size=32),
                  iv=st.binary(min_size=8, max_size=8)),
        st.builds(km.KSetGo, stream_id=u8, key_sub_stream=kss, port_index=u8),
        st.builds(km.KSetStop, stream_id=u8, key_sub_stream=kss, port_index=u8),
    )


def ide_km_responses() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.builds(km.QueryResp, port_index=u8, dev_func_num=u8, bus_num=u8, segment=u8, max_port_index=u8,
                  ide_registers=st.lists(u32, max_size=4).map(tuple)),
        st.builds(km.KpAck, stream_id=u8, status=st.integers(0, 4), key_sub_stream=u8, port_index=u8),
        st.builds(km.KGoStopAck, stream_id=u8, key_sub_stream=u8, port_index=u8),
    )


@st.composite
def malformed_ide_km_requests(draw: Any) -> bytes:
    """IDE_KM bytes a responder must refuse: truncated KEY_PROG (validator KeyProg.2), bad ports,
    sub-streams, IFVs and stream IDs (KeyProg.3-.6), unknown object IDs, flipped bits, random bytes."""
    kind = draw(st.sampled_from(["truncated", "port", "substream", "ifv", "stream", "object", "flip", "random"]))
    slot = draw(st.sampled_from(km.ALL_SLOTS)).to_byte()
    good = km.KeyProg(stream_id=0, key_sub_stream=slot, port_index=0, key=bytes(range(32)),
                      iv=(0).to_bytes(4, "little") + (1).to_bytes(4, "little"))
    raw = km.encode(good)
    if kind == "truncated":
        return raw[: len(raw) - 4 * draw(st.integers(1, 6))]
    if kind == "port":
        return km.encode(km.KeyProg(stream_id=0, key_sub_stream=slot, port_index=draw(st.integers(1, 6)),
                                    key=good.key, iv=good.iv))
    if kind == "substream":
        return km.encode(km.KeyProg(stream_id=0, key_sub_stream=(slot & 0x0F) | draw(st.integers(3, 15)) << 4,
                                    port_index=0, key=good.key, iv=good.iv))
    if kind == "ifv":
        iv = (0).to_bytes(4, "little") + draw(st.integers(2, 7)).to_bytes(4, "little")
        return km.encode(km.KeyProg(stream_id=0, key_sub_stream=slot, port_index=0, key=good.key, iv=iv))
    if kind == "stream":
        return km.encode(km.KeyProg(stream_id=draw(st.integers(1, 6)), key_sub_stream=slot, port_index=0,
                                    key=good.key, iv=good.iv))
    if kind == "object":
        return bytes([draw(st.integers(7, 0xFF))]) + raw[1:]
    if kind == "flip":
        bit = draw(st.integers(0, 7 * 8 - 1))  # in the header fields, not the key
        out = bytearray(raw)
        out[bit // 8] ^= 1 << (bit % 8)
        return bytes(out)
    return draw(st.binary(max_size=48))
