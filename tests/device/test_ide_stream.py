"""IDE stream ends and links: AES-256-GCM round trips, tampering, replay, key sets, Secure / Insecure.

The properties follow PCIe §6.33 as summarised in rules-seed (c): any failed integrity check makes the
receiving stream Insecure (sticky until re-keyed), a key refresh to the other key set keeps it Secure, and
key material never leaves the stream end (snapshot and repr hold no key bytes).
"""

from __future__ import annotations

import struct

import attrs
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from teeio_conformance.contract.errors import AccessFault, InvalidArgument, InvalidState
from teeio_conformance.contract.ide_km import Direction, KeySet, KeySubStream, SubStream
from teeio_conformance.reference_impl.device.ide.stream import (
    MAC_LEN,
    IdeIntegrityError,
    IdeLink,
    IdeStreamEndpoint,
    ProtectedTlp,
    StreamState,
    Tlp,
    flip_bit,
    protected_bit_length,
    with_key_set,
)

RID_BASE, RID_LIMIT = 0x0100, 0x0107
PAIRS = [(d, s) for d in Direction for s in SubStream]

kinds = st.sampled_from(["MRd", "MWr", "Cpl", "Msg"])
tlps = st.builds(
    Tlp,
    kind=kinds,
    requester_id=st.integers(RID_BASE, RID_LIMIT),
    address=st.integers(0, 2**64 - 1),
    t_bit=st.booleans(),
    payload=st.binary(max_size=64),
    stream_id=st.just(0),
)


def _link(key_set: KeySet = KeySet.K0, **kw) -> IdeLink:
    link = IdeLink.create(rid_base=RID_BASE, rid_limit=RID_LIMIT, **kw)
    link.bring_up(key_set)
    return link


def _mwr(payload: bytes = b"data", rid: int = RID_BASE, address: int = 0x1000) -> Tlp:
    return Tlp(kind="MWr", requester_id=rid, address=address, t_bit=True, payload=payload, stream_id=0)


def _secure(link: IdeLink) -> bool:
    return link.endpoint.state is StreamState.SECURE and link.root_port.state is StreamState.SECURE


# ------------------------------------------------------------------------------------------ round trips
@settings(max_examples=200)
@given(tlp=tlps, upstream=st.booleans())
def test_a_tlp_round_trips_through_the_link(tlp, upstream):
    link = _link()
    got = link.send_upstream(tlp) if upstream else link.send_downstream(tlp)
    assert got == tlp
    packet = link.last_upstream if upstream else link.last_downstream
    assert packet is not None
    assert len(packet.ciphertext) == len(tlp.payload) + MAC_LEN
    assert _secure(link)


def test_the_payload_is_encrypted_with_the_documented_iv_and_aad():
    """IV = 32 zero bits || (IFV + counter) as 64 bits; IFV from KEY_PROG's DW1, DW0; header as AAD;
    MAC = GCM tag truncated to 96 bits. Checked against an independent AESGCM computation."""
    key = bytes(range(32))
    iv = struct.pack("<II", 0, 1)  # IFV words {0, 1} -> IFV 1
    link = IdeLink.create(rid_base=RID_BASE, rid_limit=RID_LIMIT)
    link.program(KeySet.K0, dict.fromkeys(PAIRS, key), iv=iv)
    link.go(KeySet.K0)
    link.enable()
    tlp = _mwr(b"secret payload")
    first, second = link.root_port.protect(tlp), link.root_port.protect(tlp)
    aead = AESGCM(key)
    for counter, packet in ((0, first), (1, second)):
        nonce = bytes(4) + (1 + counter).to_bytes(8, "big")
        assert packet.counter == counter
        full = aead.encrypt(nonce, tlp.payload, tlp.header_bytes())  # payload + 128-bit GCM tag
        assert packet.ciphertext == full[:-4]  # IDE's MAC: the tag's first 96 bits
    assert first.ciphertext != second.ciphertext  # a fresh IV per TLP


def test_each_sub_stream_uses_its_own_key_and_counter():
    link = _link()
    for kind, sub in (
        ("MWr", SubStream.PR),
        ("Msg", SubStream.PR),
        ("MRd", SubStream.NPR),
        ("Cpl", SubStream.CPL),
    ):
        tlp = attrs.evolve(_mwr(), kind=kind)
        assert tlp.sub_stream() is sub
        link.send_downstream(tlp)
    counters = dict(link.endpoint.snapshot().counters)
    assert counters == {**counters, "K0/RX/PR": 2, "K0/RX/NPR": 1, "K0/RX/CPL": 1}


# ------------------------------------------------------------------------------------------ tampering
@settings(max_examples=400)
@given(data=st.data(), tlp=tlps, upstream=st.booleans())
def test_flipping_any_one_bit_of_a_protected_tlp_fails_and_makes_the_stream_insecure(data, tlp, upstream):
    probe = _link().root_port.protect(tlp)  # only for its bit length
    link = _link()
    receiver = link.root_port if upstream else link.endpoint
    index = data.draw(st.integers(0, protected_bit_length(probe) - 1), label="bit")
    link.tamper_next(lambda p: flip_bit(p, index))
    with pytest.raises(IdeIntegrityError) as caught:
        link.send_upstream(tlp) if upstream else link.send_downstream(tlp)
    assert isinstance(caught.value, AccessFault)
    assert receiver.state is StreamState.INSECURE
    assert (receiver.snapshot().insecure_reason or "").startswith("integrity failure")


def test_flip_bit_covers_every_header_field_and_the_ciphertext():
    packet = _link().root_port.protect(_mwr(b"xy"))
    changed = set()
    for index in range(protected_bit_length(packet)):
        flipped = flip_bit(packet, index)
        changed |= {f.name for f in attrs.fields(ProtectedTlp) if getattr(flipped, f.name) != getattr(packet, f.name)}
    assert changed == {f.name for f in attrs.fields(ProtectedTlp)}
    with pytest.raises(InvalidArgument):
        flip_bit(packet, protected_bit_length(packet))


@pytest.mark.parametrize("upstream", [False, True])
def test_a_replayed_tlp_fails_and_makes_the_stream_insecure(upstream):
    link = _link()
    if upstream:
        link.send_upstream(_mwr())
        receiver, replay = link.root_port, link.replay_upstream
    else:
        link.send_downstream(_mwr())
        receiver, replay = link.endpoint, link.replay_downstream
    with pytest.raises(IdeIntegrityError, match="replayed"):
        replay()
    assert receiver.state is StreamState.INSECURE


def test_a_reordered_tlp_fails():
    link = _link()
    older, newer = link.root_port.protect(_mwr(b"1")), link.root_port.protect(_mwr(b"2"))
    assert link.endpoint.unprotect(newer).payload == b"2"
    with pytest.raises(IdeIntegrityError, match="replayed or reordered"):
        link.endpoint.unprotect(older)


def test_replay_with_nothing_sent_is_a_caller_error():
    with pytest.raises(InvalidState):
        _link().replay_downstream()


@pytest.mark.parametrize("other_programmed", [False, True])
def test_the_wrong_key_set_fails(other_programmed):
    link = _link(KeySet.K0)
    if other_programmed:
        link.program(KeySet.K1)  # programmed, but not gone: still not the active set
    link.tamper_next(lambda p: with_key_set(p, KeySet.K1))
    with pytest.raises(IdeIntegrityError, match="not the active Rx key set"):
        link.send_downstream(_mwr())
    assert link.endpoint.state is StreamState.INSECURE
    assert link.root_port.state is StreamState.SECURE  # the sender saw nothing wrong


def test_a_tlp_for_another_stream_fails():
    link = _link()
    link.tamper_next(lambda p: attrs.evolve(p, stream_id=1))
    with pytest.raises(IdeIntegrityError, match="arrived on stream 0"):
        link.send_downstream(_mwr())


def test_a_requester_outside_the_rid_association_fails_even_with_a_valid_key():
    link = _link()
    with pytest.raises(IdeIntegrityError, match="RID association"):
        link.send_upstream(_mwr(rid=RID_LIMIT + 1))
    assert link.root_port.state is StreamState.INSECURE


def test_a_memory_request_outside_the_address_association_fails():
    link = _link(addr_ranges=[(0x1000, 0x1FFF)])
    assert link.send_downstream(_mwr(address=0x1FF0)).address == 0x1FF0
    with pytest.raises(IdeIntegrityError, match="address association"):
        link.send_downstream(_mwr(address=0x2000))


def test_completions_are_not_subject_to_the_address_association():
    link = _link(addr_ranges=[(0x1000, 0x1FFF)])
    cpl = Tlp(kind="Cpl", requester_id=RID_BASE, address=0x9000, t_bit=True, payload=b"ok", stream_id=0)
    assert link.send_upstream(cpl) == cpl


# ------------------------------------------------------------------------------------------ keys and state
def test_key_refresh_to_the_other_set_keeps_the_stream_secure_and_tlps_flow_with_it():
    link = _link(KeySet.K0)
    link.send_downstream(_mwr(b"before"))
    old = link.last_downstream
    assert old is not None
    link.program(KeySet.K1)
    assert _secure(link)
    for direction in (Direction.RX, Direction.TX):  # go one slot at a time: Secure after every step
        for sub in SubStream:
            for end in (link.endpoint, link.root_port):
                end.go(KeySubStream(KeySet.K1, direction, sub))
                assert end.state is StreamState.SECURE
    for upstream in (False, True):
        got = link.send_upstream(_mwr(b"after")) if upstream else link.send_downstream(_mwr(b"after"))
        assert got.payload == b"after"
    assert link.last_downstream is not None and link.last_downstream.key_set is KeySet.K1
    assert link.last_upstream is not None and link.last_upstream.key_set is KeySet.K1
    with pytest.raises(IdeIntegrityError):
        link.endpoint.unprotect(old)  # a K0 TLP after the switch is not accepted


def test_refresh_back_and_forth_keeps_working():
    link = _link(KeySet.K0)
    for key_set in (KeySet.K1, KeySet.K0, KeySet.K1):
        link.program(key_set)
        link.go(key_set)
        assert link.send_downstream(_mwr(key_set.name.encode())).payload == key_set.name.encode()
        assert _secure(link)


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0].name}-{p[1].name}")
def test_stop_of_the_active_set_makes_the_stream_insecure(pair):
    link = _link(KeySet.K0)
    link.endpoint.stop(KeySubStream(KeySet.K0, *pair))
    assert link.endpoint.state is StreamState.INSECURE
    assert not link.endpoint.is_programmed(KeySubStream(KeySet.K0, *pair))
    assert f"{pair[0].name}/{pair[1].name}" in (link.endpoint.snapshot().insecure_reason or "")


def test_stop_of_the_inactive_set_keeps_the_stream_secure():
    link = _link(KeySet.K0)
    link.program(KeySet.K1)
    for direction, sub in PAIRS:
        link.endpoint.stop(KeySubStream(KeySet.K1, direction, sub))
    assert link.endpoint.state is StreamState.SECURE
    assert link.send_downstream(_mwr()).payload == b"data"


def test_go_on_an_empty_slot_is_refused_and_changes_nothing():
    link = _link(KeySet.K0)
    before = link.endpoint.snapshot()
    with pytest.raises(InvalidState, match="no key"):
        link.endpoint.go(KeySubStream(KeySet.K1, Direction.RX, SubStream.PR))
    assert link.endpoint.snapshot() == before


def test_secure_needs_enable_and_all_six_pairs():
    link = IdeLink.create(rid_base=RID_BASE, rid_limit=RID_LIMIT)
    link.program(KeySet.K0)
    ep = link.endpoint
    ep.enable()
    for i, (direction, sub) in enumerate(PAIRS):
        assert ep.state is StreamState.INSECURE, f"Secure with only {i} of 6 pairs live"
        ep.go(KeySubStream(KeySet.K0, direction, sub))
    assert ep.state is StreamState.SECURE
    ep.disable()
    assert ep.state is StreamState.INSECURE and ep.snapshot().insecure_reason == "stream not enabled"
    ep.enable()  # disabling is not a failure: the keys are still there
    assert ep.state is StreamState.SECURE


def test_protect_needs_a_secure_stream():
    link = IdeLink.create(rid_base=RID_BASE, rid_limit=RID_LIMIT)
    link.program(KeySet.K0)
    link.go(KeySet.K0)
    with pytest.raises(InvalidState, match="not Secure"):
        link.root_port.protect(_mwr())


def test_an_integrity_failure_is_sticky_until_re_programmed_gone_and_enabled():
    link = _link(KeySet.K0)
    link.tamper_next(lambda p: flip_bit(p, protected_bit_length(p) - 1))
    with pytest.raises(IdeIntegrityError):
        link.send_downstream(_mwr())
    ep = link.endpoint
    assert not ep.snapshot().enabled
    ep.enable()
    link.go(KeySet.K0)  # the old keys again: not enough
    assert ep.state is StreamState.INSECURE
    assert len(ep.snapshot().rekey_pending) == 6
    with pytest.raises(IdeIntegrityError):  # and a Tx side cannot push TLPs through it either
        link.send_downstream(_mwr())
    link.program(KeySet.K0)
    link.go(KeySet.K0)
    assert ep.state is StreamState.INSECURE  # re-keyed and gone, but the failure also cleared enable
    link.enable()
    assert _secure(link)
    assert ep.snapshot().insecure_reason is None
    assert link.send_downstream(_mwr(b"again")).payload == b"again"


def test_mark_insecure_records_the_reason():
    link = _link()
    link.endpoint.mark_insecure("SPDM session 7 ended")
    snap = link.endpoint.snapshot()
    assert (snap.state, snap.insecure_reason) == ("INSECURE", "SPDM session 7 ended")


def test_the_invocation_counter_cannot_wrap():
    """The 64-bit IV space runs out: the sender refuses (and the stream drops) rather than reuse an IV."""
    link = IdeLink.create(rid_base=RID_BASE, rid_limit=RID_LIMIT)
    link.program(KeySet.K0, iv=struct.pack("<II", 0xFFFF_FFFF, 0xFFFF_FFFE))  # IFV = 2**64 - 2
    link.go(KeySet.K0)
    link.enable()
    link.send_downstream(_mwr(b"1"))
    link.send_downstream(_mwr(b"2"))  # IV low 64 bits = 2**64 - 1: the last one
    with pytest.raises(InvalidState, match="used up"):
        link.send_downstream(_mwr(b"3"))
    assert link.root_port.state is StreamState.INSECURE


def test_a_counter_beyond_the_iv_space_fails_on_receive():
    link = IdeLink.create(rid_base=RID_BASE, rid_limit=RID_LIMIT)
    link.program(KeySet.K0, iv=struct.pack("<II", 0xFFFF_FFFF, 0xFFFF_FFFF))
    link.go(KeySet.K0)
    link.enable()
    link.tamper_next(lambda p: attrs.evolve(p, counter=1))
    with pytest.raises(IdeIntegrityError, match="IV space"):
        link.send_downstream(_mwr())


# ------------------------------------------------------------------------------------------ key secrecy
@settings(max_examples=50)
@given(
    keys=st.lists(st.binary(min_size=32, max_size=32), min_size=6, max_size=6, unique=True),
    ifv=st.integers(0, 2**32),
)
def test_snapshots_and_reprs_never_contain_key_bytes(keys, ifv):
    link = IdeLink.create(rid_base=RID_BASE, rid_limit=RID_LIMIT)
    iv = struct.pack("<II", ifv >> 32, ifv & 0xFFFF_FFFF)
    link.program(KeySet.K0, dict(zip(PAIRS, keys)), iv=iv)
    link.go(KeySet.K0)
    link.enable()
    link.send_downstream(_mwr())
    link.program(KeySet.K1, dict(zip(PAIRS, reversed(keys))), iv=iv)
    for end in (link.endpoint, link.root_port):
        snap = end.snapshot()
        assert not _holds_bytes(attrs.asdict(snap, recurse=True)), "snapshot carries raw bytes"
        text = repr(snap) + repr(end) + repr(end._slots) + repr(link.last_downstream)
        for key in keys:
            assert key.hex() not in text and repr(key) not in text


def _holds_bytes(value) -> bool:
    if isinstance(value, bytes | bytearray | memoryview):
        return True
    if isinstance(value, dict):
        return any(_holds_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_bytes(v) for v in value)
    return False


# ------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kind", "IORd"),
        ("requester_id", 0x10000),
        ("requester_id", -1),
        ("address", 2**64),
        ("t_bit", 1),
        ("payload", "text"),
        ("stream_id", 256),
        ("requester_id", True),
    ],
)
def test_a_bad_tlp_field_is_refused_naming_the_field(field, value):
    fields = {
        "kind": "MWr",
        "requester_id": 1,
        "address": 0,
        "t_bit": False,
        "payload": b"",
        "stream_id": None,
    }
    with pytest.raises(InvalidArgument, match=f"Tlp.{field}"):
        Tlp(**{**fields, field: value})


@pytest.mark.parametrize(
    ("field", "value"), [("key_set", 0), ("counter", 2**64), ("ciphertext", b"short"), ("stream_id", None)]
)
def test_a_bad_protected_tlp_field_is_refused_naming_the_field(field, value):
    packet = _link().root_port.protect(_mwr())
    with pytest.raises(InvalidArgument, match=f"ProtectedTlp.{field}"):
        attrs.evolve(packet, **{field: value})


def test_protect_refuses_a_tlp_naming_another_stream():
    with pytest.raises(InvalidArgument, match="stream 5"):
        _link().root_port.protect(attrs.evolve(_mwr(), stream_id=5))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"stream_id": 256}, "stream_id"),
        ({"rid_base": 9, "rid_limit": 8}, "rid_base"),
        ({"addr_ranges": [(5, 4)]}, "addr_ranges"),
    ],
)
def test_a_bad_endpoint_configuration_is_refused(kw, match):
    with pytest.raises(InvalidArgument, match=match):
        IdeStreamEndpoint(**{"stream_id": 0, "rid_base": 0, "rid_limit": 1, **kw})


@pytest.mark.parametrize(("key", "iv"), [(b"k" * 31, b"i" * 8), (b"k" * 32, b"i" * 9), ("k" * 32, b"i" * 8)])
def test_program_key_refuses_bad_lengths_and_changes_nothing(key, iv):
    ep = IdeStreamEndpoint(stream_id=0, rid_base=0, rid_limit=1)
    with pytest.raises(InvalidArgument):
        ep.program_key(KeySubStream(KeySet.K0, Direction.RX, SubStream.PR), key, iv)
    assert ep.snapshot().programmed == ()


def test_a_link_needs_both_ends_on_one_stream():
    a = IdeStreamEndpoint(stream_id=0, rid_base=0, rid_limit=1)
    b = IdeStreamEndpoint(stream_id=1, rid_base=0, rid_limit=1)
    with pytest.raises(InvalidArgument):
        IdeLink(root_port=a, endpoint=b)


@pytest.mark.parametrize("operation", ["program_key", "go", "stop", "is_programmed"])
def test_slot_operations_refuse_a_non_slot(operation):
    ep = IdeStreamEndpoint(stream_id=0, rid_base=0, rid_limit=1)
    args = {"program_key": (0x02, b"k" * 32, b"i" * 8)}.get(operation, (0x02,))
    with pytest.raises(InvalidArgument, match="KeySubStream"):
        getattr(ep, operation)(*args)


@pytest.mark.parametrize("ranges", [[(1,)], [("a", "b")], [(0, 2**64)], 5])
def test_bad_address_ranges_are_refused(ranges):
    with pytest.raises(InvalidArgument, match="addr_ranges"):
        IdeStreamEndpoint(stream_id=0, rid_base=0, rid_limit=1, addr_ranges=ranges)
