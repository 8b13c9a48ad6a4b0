"""Hypothesis strategies for TDISP and IDE_KM messages: every valid message, and malformed bytes.

Valid strategies build the attrs values of :mod:`teeio_conformance.contract.tdisp.codec` and
:mod:`teeio_conformance.contract.ide_km` (every message type, every field over its whole range).

Malformed strategies produce *bytes* near a decoder's edges, built straight from raw layouts so that
tens of thousands of examples stay cheap: a wrong version byte, a truncated or over-long message, an
unknown code, an INTERFACE_ID nobody owns, bad report offsets, inconsistent length fields, one flipped
bit, or plain random bytes. Some of them decode (an unknown INTERFACE_ID, an out-of-range report offset,
non-zero reserved bytes, a flipped bit in a payload): those must be refused by the *responder*, not the
codec, which is what a responder fuzz wants to exercise.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence

from hypothesis import strategies as st

from teeio_conformance.contract import ide_km as km
from teeio_conformance.contract.tdisp import codec as td

__all__ = [
    "ide_km_requests",
    "ide_km_responses",
    "interface_ids",
    "interface_reports",
    "key_sub_stream_bytes",
    "malformed_ide_km_requests",
    "malformed_tdisp_requests",
    "mmio_ranges",
    "tdisp_requests",
    "tdisp_responses",
]

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, 2**64 - 1)
_NONCE = st.binary(min_size=td.NONCE_LEN, max_size=td.NONCE_LEN)


# ---------------------------------------------------------------------------------------- TDISP, valid
def interface_ids(function_ids: st.SearchStrategy[int] | None = None) -> st.SearchStrategy[td.InterfaceId]:
    """INTERFACE_IDs: plain RIDs, RIDs with a segment, any u32; reserved mostly zero."""
    fids = function_ids if function_ids is not None else st.one_of(u16, u32)
    return st.builds(td.InterfaceId, function_id=fids, reserved=st.one_of(st.just(0), u64))


def mmio_ranges() -> st.SearchStrategy[td.MmioRange]:
    return st.builds(td.MmioRange, first_page=u64, number_of_pages=u32, attributes=u16, range_id=u16)


def interface_reports() -> st.SearchStrategy[td.InterfaceReport]:
    return st.builds(
        td.InterfaceReport,
        interface_info=u16,
        msix_message_control=u16,
        lnr_control=u16,
        tph_control=u32,
        mmio_ranges=st.lists(mmio_ranges(), max_size=4).map(tuple),
        device_specific_info=st.binary(max_size=32),
    )


def _versions(versions: st.SearchStrategy[int] | None) -> st.SearchStrategy[int]:
    return versions if versions is not None else st.just(td.TDISP_VERSION_1_0)


def tdisp_requests(
    ids: st.SearchStrategy[td.InterfaceId] | None = None, versions: st.SearchStrategy[int] | None = None
) -> st.SearchStrategy[td.Request]:
    """Every TDISP request type with every field drawn over its range (version 1.0 unless given)."""
    i = ids if ids is not None else interface_ids()
    v = _versions(versions)
    strategies: list[st.SearchStrategy[td.Request]] = [
        st.builds(td.GetTdispVersion, interface_id=i, version=v),
        st.builds(td.GetTdispCapabilities, interface_id=i, version=v, tsm_caps=u32),
        st.builds(
            td.LockInterface,
            interface_id=i,
            version=v,
            flags=u16,
            default_stream_id=u8,
            mmio_reporting_offset=u64,
            bind_p2p_address_mask=u64,
        ),
        st.builds(td.GetDeviceInterfaceReport, interface_id=i, version=v, offset=u16, length=u16),
        st.builds(td.GetDeviceInterfaceState, interface_id=i, version=v),
        st.builds(td.StartInterface, interface_id=i, version=v, start_interface_nonce=_NONCE),
        st.builds(td.StopInterface, interface_id=i, version=v),
        st.builds(td.BindP2PStream, interface_id=i, version=v, p2p_stream_id=u8, stream_config=st.none() | u8),
        st.builds(td.UnbindP2PStream, interface_id=i, version=v, p2p_stream_id=u8),
        st.builds(td.SetMmioAttribute, interface_id=i, version=v, mmio_range=mmio_ranges()),
        st.builds(
            td.VdmRequest,
            interface_id=i,
            version=v,
            registry_id=u8,
            vendor_id=st.binary(max_size=8),
            payload=st.binary(max_size=32),
        ),
    ]
    return st.one_of(strategies)


def tdisp_responses(
    ids: st.SearchStrategy[td.InterfaceId] | None = None, versions: st.SearchStrategy[int] | None = None
) -> st.SearchStrategy[td.Response]:
    """Every TDISP response type, TDISP_ERROR included, with every field drawn over its range."""
    i = ids if ids is not None else interface_ids()
    v = _versions(versions)
    strategies: list[st.SearchStrategy[td.Response]] = [
        st.builds(td.TdispVersion, interface_id=i, version=v, versions=st.lists(u8, max_size=4).map(tuple)),
        st.builds(
            td.TdispCapabilities,
            interface_id=i,
            version=v,
            dsm_caps=u32,
            req_msgs_supported=st.binary(min_size=16, max_size=16),
            lock_interface_flags_supported=u16,
            dev_addr_width=u8,
            num_req_this=u8,
            num_req_all=u8,
        ),
        st.builds(td.LockInterfaceResponse, interface_id=i, version=v, start_interface_nonce=_NONCE),
        st.builds(
            td.DeviceInterfaceReport,
            interface_id=i,
            version=v,
            portion=st.binary(max_size=64),
            remainder_length=u16,
        ),
        st.builds(td.DeviceInterfaceState, interface_id=i, version=v, tdi_state=st.sampled_from(td.TdiState)),
        st.builds(td.StartInterfaceResponse, interface_id=i, version=v),
        st.builds(td.StopInterfaceResponse, interface_id=i, version=v),
        st.builds(td.BindP2PStreamResponse, interface_id=i, version=v),
        st.builds(td.UnbindP2PStreamResponse, interface_id=i, version=v),
        st.builds(td.SetMmioAttributeResponse, interface_id=i, version=v),
        st.builds(
            td.VdmResponse,
            interface_id=i,
            version=v,
            registry_id=u8,
            vendor_id=st.binary(max_size=8),
            payload=st.binary(max_size=32),
        ),
        st.builds(
            td.TdispError,
            interface_id=i,
            version=v,
            error_code=st.one_of(st.sampled_from(td.ErrorCode), u32),
            error_data=u32,
            extended_error_data=st.binary(max_size=16),
        ),
    ]
    return st.one_of(strategies)


# ---------------------------------------------------------------------------------------- TDISP, malformed
# Body lengths of the fixed-layout requests (PCIe Table 11-3; see codec.py for the fields).
_FIXED_BODY = {
    td.RequestCode.GET_TDISP_VERSION: 0,
    td.RequestCode.GET_TDISP_CAPABILITIES: 4,
    td.RequestCode.LOCK_INTERFACE: 20,
    td.RequestCode.GET_DEVICE_INTERFACE_REPORT: 4,
    td.RequestCode.GET_DEVICE_INTERFACE_STATE: 0,
    td.RequestCode.START_INTERFACE: td.NONCE_LEN,
    td.RequestCode.STOP_INTERFACE: 0,
    td.RequestCode.UNBIND_P2P_STREAM: 1,
    td.RequestCode.SET_MMIO_ATTRIBUTE: 16,
}
_BAD_VERSIONS = tuple(v for v in range(256) if v >> 4 != td.TDISP_VERSION_1_0 >> 4)
_UNKNOWN_REQUEST_CODES = tuple(c for c in range(256) if c not in td.RequestCode._value2member_map_)
_HEADER = struct.Struct("<BBHIQ")


def _frame(code: int, function_id: int, body: bytes) -> bytes:
    return _HEADER.pack(td.TDISP_VERSION_1_0, code, 0, function_id, 0) + body


def _vdm_body(registry: int, vendor_id: bytes, payload: bytes) -> bytes:
    return bytes([registry, len(vendor_id)]) + vendor_id + payload


def _raw_tdisp_requests(fids: st.SearchStrategy[int]) -> st.SearchStrategy[bytes]:
    """Well-formed request bytes of every type with random bodies (cheap: no attrs values built)."""
    options: list[st.SearchStrategy[bytes]] = [
        st.builds(functools.partial(_frame, code), fids, st.binary(min_size=n, max_size=n))
        for code, n in _FIXED_BODY.items()
    ]
    options.append(
        st.builds(functools.partial(_frame, td.RequestCode.BIND_P2P_STREAM), fids, st.binary(min_size=1, max_size=2))
    )
    vdm = st.builds(_vdm_body, u8, st.binary(max_size=4), st.binary(max_size=8))
    options.append(st.builds(functools.partial(_frame, td.RequestCode.VDM), fids, vdm))
    return st.one_of(options)


def _set_byte(raw: bytes, offset: int, value: int) -> bytes:
    return raw[:offset] + bytes([value]) + raw[offset + 1 :]


def _truncate(raw: bytes, n: int) -> bytes:
    return raw[: n % len(raw)] if raw else raw


def _flip(raw: bytes, n: int) -> bytes:
    if not raw:
        return raw
    bit = n % (len(raw) * 8)
    return _set_byte(raw, bit // 8, raw[bit // 8] ^ (1 << (bit % 8)))


def _with_function_id(raw: bytes, function_id: int) -> bytes:
    return raw[:4] + function_id.to_bytes(4, "little") + raw[8:]


def _with_reserved(raw: bytes, header_reserved: int, iid_reserved: int) -> bytes:
    return raw[:2] + header_reserved.to_bytes(2, "little") + raw[4:8] + iid_reserved.to_bytes(8, "little") + raw[16:]


def _report_request(function_id: int, offset: int, length: int) -> bytes:
    return _frame(td.RequestCode.GET_DEVICE_INTERFACE_REPORT, function_id, struct.pack("<HH", offset, length))


def _lying_vdm(function_id: int, claimed: int, vendor_id: bytes) -> bytes:
    """A VDM whose VENDOR_ID_LEN claims more bytes than follow."""
    return _frame(td.RequestCode.VDM, function_id, bytes([0, len(vendor_id) + claimed]) + vendor_id)


def _near_misses(valid: Sequence[int]) -> tuple[int, ...]:
    """INTERFACE_IDs one step from a valid one: other segment, segment-valid bit, neighbouring RID."""
    out = {f ^ flip for f in valid for flip in (1 << 16, 1 << 24, 1, 0x100, 0x8000)}
    return tuple(sorted(out - set(valid))) or (0xFFFF_FFFF,)


@functools.lru_cache(maxsize=32)
def _malformed_tdisp(valid: tuple[int, ...]) -> st.SearchStrategy[bytes]:
    valid_set = frozenset(valid)
    fids = st.sampled_from(valid) if valid else u32
    base = _raw_tdisp_requests(fids)
    foreign = st.one_of(st.sampled_from(_near_misses(valid)), u32.filter(lambda f: f not in valid_set))
    bad_offsets = st.sampled_from([(0xFFFF, 1), (0, 0), (0x1000, 0x40), (0x7FFF, 0xFFFF), (0xFFFF, 0xFFFF)])
    kinds: list[st.SearchStrategy[bytes]] = [
        st.builds(functools.partial(_set_byte, offset=0), base, value=st.sampled_from(_BAD_VERSIONS)),
        st.builds(_truncate, base, st.integers(0, 255)),
        st.builds(bytes.__add__, base, st.binary(min_size=1, max_size=8)),
        st.builds(functools.partial(_set_byte, offset=1), base, value=st.sampled_from(_UNKNOWN_REQUEST_CODES)),
        st.builds(_with_function_id, base, foreign),
        st.builds(lambda f, ol: _report_request(f, *ol), fids, bad_offsets),
        st.builds(_report_request, fids, u16, u16),
        st.builds(_lying_vdm, fids, st.integers(1, 8), st.binary(max_size=4)),
        st.builds(_with_reserved, base, st.integers(1, 0xFFFF), st.one_of(st.just(0), u64)),
        st.builds(_flip, base, st.integers(0, 1 << 12)),
        st.builds(
            lambda code, tail: bytes([td.TDISP_VERSION_1_0, code]) + tail,
            st.sampled_from(td.RequestCode),
            st.binary(max_size=40),
        ),
        st.binary(max_size=48),
    ]
    return st.one_of(kinds)


def malformed_tdisp_requests(valid_function_ids: Sequence[int] = ()) -> st.SearchStrategy[bytes]:
    """Bytes near a valid TDISP request that a responder must answer with TDISP_ERROR.

    ``valid_function_ids`` are the FUNCTION_IDs the responder hosts: mutated requests are addressed to
    them, and the "wrong INTERFACE_ID" kind picks a FUNCTION_ID outside them.
    """
    return _malformed_tdisp(tuple(valid_function_ids))


# ---------------------------------------------------------------------------------------- IDE_KM, valid
def key_sub_stream_bytes() -> st.SearchStrategy[int]:
    """The 12 valid key_sub_stream bytes."""
    return st.sampled_from([slot.to_byte() for slot in km.ALL_SLOTS])


def ide_km_requests() -> st.SearchStrategy[km.IdeKmMessage]:
    """QUERY, KEY_PROG, K_SET_GO and K_SET_STOP with valid key_sub_stream bytes."""
    kss = key_sub_stream_bytes()
    strategies: list[st.SearchStrategy[km.IdeKmMessage]] = [
        st.builds(km.Query, port_index=u8),
        st.builds(
            km.KeyProg,
            stream_id=u8,
            key_sub_stream=kss,
            port_index=u8,
            key=st.binary(min_size=km.KEY_LEN, max_size=km.KEY_LEN),
            iv=st.binary(min_size=km.IV_LEN, max_size=km.IV_LEN),
        ),
        st.builds(km.KSetGo, stream_id=u8, key_sub_stream=kss, port_index=u8),
        st.builds(km.KSetStop, stream_id=u8, key_sub_stream=kss, port_index=u8),
    ]
    return st.one_of(strategies)


def ide_km_responses() -> st.SearchStrategy[km.IdeKmMessage]:
    """QUERY_RESP, KP_ACK and K_GOSTOP_ACK (echo fields are raw bytes, any value)."""
    strategies: list[st.SearchStrategy[km.IdeKmMessage]] = [
        st.builds(
            km.QueryResp,
            port_index=u8,
            dev_func_num=u8,
            bus_num=u8,
            segment=u8,
            max_port_index=u8,
            ide_registers=st.lists(u32, max_size=8).map(tuple),
        ),
        st.builds(
            km.KpAck,
            stream_id=u8,
            status=st.one_of(st.sampled_from(km.KpAckStatus), u8),
            key_sub_stream=u8,
            port_index=u8,
        ),
        st.builds(km.KGoStopAck, stream_id=u8, key_sub_stream=u8, port_index=u8),
    ]
    return st.one_of(strategies)


# ---------------------------------------------------------------------------------------- IDE_KM, malformed
_STREAM_HEAD = struct.Struct("<BxxBBBB")
_GOOD_IFV = km.ifv_to_wire(1)  # the IFV the validator programs (tee-io-validator KeyProg case 2.1)
_BAD_IFVS = tuple(km.ifv_to_wire(v) for v in (0, *range(2, 0x100), 1 << 32, 2**64 - 1))
_TRUNCATED_KEY_PROG = tuple(range(7, km.KEY_PROG_LEN, 4))  # KeyProg case 2.2 lengths, protocol byte excluded


def _key_prog(stream_id: int, kss: int, port: int, key: bytes = bytes(range(32)), iv: bytes = _GOOD_IFV) -> bytes:
    return _STREAM_HEAD.pack(km.ObjectId.KEY_PROG, stream_id, 0, kss, port) + key + iv


def _short(oid: int, stream_id: int, kss: int, port: int) -> bytes:
    return _STREAM_HEAD.pack(oid, stream_id, 0, kss, port)


@functools.lru_cache(maxsize=32)
def _malformed_ide_km(max_port_index: int, valid_streams: tuple[int, ...]) -> st.SearchStrategy[bytes]:
    streams = st.sampled_from(valid_streams) if valid_streams else u8
    ports = st.integers(0, max_port_index)
    kss = key_sub_stream_bytes()
    bad_ports = st.integers(max_port_index + 1, 0xFF) if max_port_index < 0xFF else st.nothing()
    bad_streams = st.sampled_from([s for s in range(256) if s not in valid_streams] or [0xFF])
    bad_substream = st.builds(lambda low, sub: (low & 0x3) | sub << 4, u8, st.integers(3, 15))
    reserved_kss = st.builds(lambda good, bits: good | bits << 2, kss, st.integers(1, 3))
    bad_kss = st.one_of(bad_substream, reserved_kss)
    good = st.builds(_key_prog, streams, kss, ports)
    go_stop = st.sampled_from([km.ObjectId.K_SET_GO, km.ObjectId.K_SET_STOP])
    kinds: list[st.SearchStrategy[bytes]] = [
        st.builds(lambda raw, n: raw[:n], good, st.sampled_from(_TRUNCATED_KEY_PROG)),
        st.builds(_truncate, good, st.integers(0, 255)),
        st.builds(bytes.__add__, good, st.binary(min_size=1, max_size=8)),
        st.builds(_key_prog, streams, kss, bad_ports),
        st.builds(_key_prog, streams, bad_kss, ports),
        st.builds(lambda s, k, p, iv: _key_prog(s, k, p, iv=iv), streams, kss, ports, st.sampled_from(_BAD_IFVS)),
        st.builds(_key_prog, bad_streams, kss, ports),
        st.builds(_short, go_stop, streams, bad_kss, ports),
        st.builds(_short, go_stop, bad_streams, kss, ports),
        st.builds(_short, go_stop, streams, kss, bad_ports),
        st.builds(_truncate, st.builds(_short, go_stop, streams, kss, ports), st.integers(0, 255)),
        st.builds(bytes.__add__, st.builds(_short, go_stop, streams, kss, ports), st.binary(min_size=1, max_size=4)),
        st.builds(
            lambda port, tail: bytes([km.ObjectId.QUERY, 0, port]) + tail,
            u8,
            st.binary(min_size=1, max_size=4),
        ),
        st.just(bytes([km.ObjectId.QUERY, 0])),
        st.builds(functools.partial(_set_byte, offset=0), good, value=st.integers(7, 0xFF)),
        st.builds(
            functools.partial(_set_byte, offset=0),
            good,
            value=st.sampled_from([km.ObjectId.QUERY_RESP, km.ObjectId.KP_ACK, km.ObjectId.K_GOSTOP_ACK]),
        ),
        st.builds(_short, st.sampled_from([km.ObjectId.KP_ACK, km.ObjectId.K_GOSTOP_ACK]), u8, u8, u8),
        st.builds(_flip, good, st.integers(0, 7 * 8 - 1)),  # in the header fields, not the key
        st.binary(max_size=48),
    ]
    return st.one_of(kinds)


def malformed_ide_km_requests(
    max_port_index: int = 0, valid_stream_ids: Sequence[int] = (0,)
) -> st.SearchStrategy[bytes]:
    """IDE_KM bytes a responder must refuse or answer with a non-success status.

    Covers the tee-io-validator KEY_PROG cases: truncated KEY_PROG (2.2), port beyond MaxPortIndex
    (2.3), bad sub-stream (2.4), IFV other than 1 (2.5), unknown stream ID (2.6); the same faults in
    K_SET_GO / K_SET_STOP; wrong lengths, unknown or response object IDs, flipped header bits and random
    bytes. ``max_port_index`` / ``valid_stream_ids`` describe the responder (defaults: one port, stream 0).
    """
    return _malformed_ide_km(max_port_index, tuple(valid_stream_ids))
