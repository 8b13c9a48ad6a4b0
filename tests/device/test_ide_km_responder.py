"""IDE_KM responder: the tee-io-validator IDE_KM cases (teeio-validator-cases.md §3), session binding,
the choices the spec leaves open, and a property that refused messages never change the responder.

Each validator case is one test named after its ID (``test_keyprog_2_...`` is KeyProg.2), asserting the
case's exact responses. Sizes: the validator counts the 1-byte PCI protocol ID that precedes IDE_KM in
the SPDM VENDOR_DEFINED message (KP_ACK / K_GOSTOP_ACK "8 bytes", KEY_PROG "48 bytes"); the responder
handles the bytes after it, so here those are 7 and 47.

The bench plays the host: the responder is the device (ports 0 and 2 carry stream 3, port 1 none,
MaxPortIndex 2), and the test programs the root port's end of the stream with the same keys, so
"configuration check: Secure" is checked on both ends and by TLPs crossing an :class:`IdeLink`.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from teeio_conformance.contract import ide_km as km
from teeio_conformance.contract.errors import CodecError, InvalidArgument
from teeio_conformance.reference_impl.device.ide.km_responder import EXPECTED_IFV, IdeKmResponder
from teeio_conformance.reference_impl.device.ide.stream import IdeLink, IdeStreamEndpoint, StreamState, Tlp

STREAM = 3
PORT = 0
MAX_PORT = 2
DEV_FUNC, BUS, SEGMENT = 0x00, 0x3A, 0x01
X, Y = 11, 22  # SPDM session IDs
RID_BASE, RID_LIMIT = 0x3A00, 0x3A03
COMBOS = [
    (km.Direction.RX, km.SubStream.PR),
    (km.Direction.RX, km.SubStream.NPR),
    (km.Direction.RX, km.SubStream.CPL),
    (km.Direction.TX, km.SubStream.PR),
    (km.Direction.TX, km.SubStream.NPR),
    (km.Direction.TX, km.SubStream.CPL),
]  # the validator's six combos, in its order
COMBO_IDS = [f"{d.name}-{s.name}" for d, s in COMBOS]
KP_ACK_LEN = GOSTOP_ACK_LEN = 7  # validator: 8 with the protocol ID byte
KEY_PROG_LEN = 47  # validator: 48


def _slot(key_set: km.KeySet, combo: tuple[km.Direction, km.SubStream]) -> km.KeySubStream:
    return km.KeySubStream(key_set, *combo)


class Bench:
    """A responder (the device) plus the root port's end of its stream, programmed by the 'host'."""

    def __init__(self) -> None:
        self.ep = IdeStreamEndpoint(stream_id=STREAM, rid_base=RID_BASE, rid_limit=RID_LIMIT)
        self.ep2 = IdeStreamEndpoint(stream_id=STREAM, rid_base=RID_BASE, rid_limit=RID_LIMIT)
        self.rp = IdeStreamEndpoint(stream_id=STREAM, rid_base=RID_BASE, rid_limit=RID_LIMIT)
        self.responder = IdeKmResponder(
            ports={PORT: {STREAM: self.ep}, 2: {STREAM: self.ep2}},
            dev_func_num=DEV_FUNC,
            bus_num=BUS,
            segment=SEGMENT,
            max_port_index=MAX_PORT,
        )
        self.link = IdeLink(root_port=self.rp, endpoint=self.ep)
        self._keys = 0

    def send(self, msg: km.IdeKmMessage | bytes, session: int | None = X) -> bytes | None:
        raw = msg if isinstance(msg, bytes) else km.encode(msg)
        return self.responder.handle(raw, session_id=session)

    def fresh_key(self) -> bytes:
        self._keys += 1
        return struct.pack("<I", self._keys) * 8

    def key_prog(self, key_set: km.KeySet, combo, session: int = X) -> tuple[km.KeyProg, bytes | None]:
        """KEY_PROG on the device; on success the root port's opposite slot gets the same key."""
        key = self.fresh_key()
        req = km.KeyProg(
            stream_id=STREAM,
            key_sub_stream=_slot(key_set, combo).to_byte(),
            port_index=PORT,
            key=key,
            iv=EXPECTED_IFV,
        )
        raw = self.send(req, session)
        ack = None if raw is None else km.decode(raw)
        if isinstance(ack, km.KpAck) and ack.status == km.KpAckStatus.SUCCESS:
            mirror = km.KeySubStream(key_set, km.Direction(1 - combo[0]), combo[1])
            self.rp.program_key(mirror, key, EXPECTED_IFV)
        return req, raw

    def program(self, key_set: km.KeySet, session: int = X) -> None:
        for combo in COMBOS:
            self.key_prog(key_set, combo, session)

    def go(self, key_set: km.KeySet, session: int = X) -> list[tuple[km.KSetGo, bytes | None]]:
        """K_SET_GO the six combos; the root port's key-set select follows (Rx combos first)."""
        out = []
        for combo in COMBOS:
            req = km.KSetGo(stream_id=STREAM, key_sub_stream=_slot(key_set, combo).to_byte(), port_index=PORT)
            out.append((req, self.send(req, session)))
            self.rp.go(km.KeySubStream(key_set, km.Direction(1 - combo[0]), combo[1]))
        return out

    def stop(self, key_set: km.KeySet) -> list[tuple[km.KSetStop, bytes | None]]:
        out = []
        for combo in COMBOS:
            req = km.KSetStop(stream_id=STREAM, key_sub_stream=_slot(key_set, combo).to_byte(), port_index=PORT)
            out.append((req, self.send(req)))
        return out

    def enable(self, on: bool = True) -> None:
        for end in (self.ep, self.rp):
            end.enable() if on else end.disable()

    def stream(self, key_set: km.KeySet) -> None:
        """STREAM(K): keys programmed, gone and enabled; Secure (the validator's KEYS setup)."""
        self.send(km.Query(port_index=PORT))
        self.program(key_set)
        self.go(key_set)
        self.enable()
        assert self.secure()

    def secure(self) -> bool:
        return self.ep.state is StreamState.SECURE and self.rp.state is StreamState.SECURE

    def traffic_uses(self, key_set: km.KeySet) -> None:
        """TLPs cross the stream both ways, protected with ``key_set``."""
        tlp = Tlp(kind="MWr", requester_id=RID_BASE, address=0x1000, t_bit=True, payload=b"ping", stream_id=STREAM)
        assert self.link.send_downstream(tlp) == tlp
        assert self.link.send_upstream(tlp) == tlp
        down, up = self.link.last_downstream, self.link.last_upstream
        assert down is not None and down.key_set is key_set
        assert up is not None and up.key_set is key_set


@pytest.fixture
def bench() -> Bench:
    return Bench()


def assert_kpack(raw: bytes | None, status: km.KpAckStatus, *, stream: int, kss: int, port: int) -> None:
    """KPACK(s): .1 size, .2 ObjectID KP_ACK, .3 Status, .4 PortIndex, .5 StreamID, .6 whole ksub byte."""
    assert raw is not None, "no KP_ACK"
    assert len(raw) == KP_ACK_LEN
    ack = km.decode(raw)
    assert isinstance(ack, km.KpAck)
    assert raw[0] == km.ObjectId.KP_ACK
    assert ack.status == status
    assert (ack.port_index, ack.stream_id, ack.key_sub_stream) == (port, stream, kss)


def assert_gsack(raw: bytes | None, req: km.KSetGo | km.KSetStop) -> None:
    """GSACK: .1 size, .2 ObjectID K_GOSTOP_ACK, .3 PortIndex, .4 StreamID, .5 ksub echo."""
    assert raw is not None, "no K_GOSTOP_ACK"
    assert len(raw) == GOSTOP_ACK_LEN
    ack = km.decode(raw)
    assert isinstance(ack, km.KGoStopAck)
    assert (ack.port_index, ack.stream_id, ack.key_sub_stream) == (
        req.port_index,
        req.stream_id,
        req.key_sub_stream,
    )


def assert_query_resp(raw: bytes | None, port: int) -> km.QueryResp:
    """.1 size = 7 + whole register words, .2 ObjectID QUERY_RESP, .3 PortIndex echo, .4 Max >= port."""
    assert raw is not None
    assert len(raw) >= 7 and (len(raw) - 7) % 4 == 0
    resp = km.decode(raw)
    assert isinstance(resp, km.QueryResp)
    assert resp.port_index == port
    assert resp.max_port_index >= port
    return resp


# ------------------------------------------------------------------------------------------ Query
def test_query_1_port_0_answers_query_resp(bench):
    resp = assert_query_resp(bench.send(km.Query(port_index=0)), 0)
    assert resp.max_port_index == MAX_PORT
    assert resp.ide_registers and resp.ide_registers[0] & 0b100_0010 == 0b100_0010  # selective + IDE_KM


def test_query_2_max_port_answers_query_resp(bench):
    first = assert_query_resp(bench.send(km.Query(port_index=0)), 0)
    assert first.max_port_index > 0  # the validator skips the case when MaxPortIndex is 0
    assert_query_resp(bench.send(km.Query(port_index=first.max_port_index)), first.max_port_index)


def test_query_beyond_max_port_index_is_dropped(bench):
    assert bench.send(km.Query(port_index=MAX_PORT + 1)) is None


# ------------------------------------------------------------------------------------------ KeyProg
@pytest.fixture
def queried(bench) -> Bench:
    """KeyProg setup: QUERY(0), recording MaxPortIndex."""
    assert_query_resp(bench.send(km.Query(port_index=0)), 0)
    return bench


@pytest.mark.parametrize("combo", COMBOS, ids=COMBO_IDS)
def test_keyprog_1_valid_key_prog_answers_success(queried, combo):
    req, raw = queried.key_prog(km.KeySet.K0, combo)
    assert_kpack(raw, km.KpAckStatus.SUCCESS, stream=STREAM, kss=req.key_sub_stream, port=PORT)
    assert queried.ep.is_programmed(_slot(km.KeySet.K0, combo))


@pytest.mark.parametrize(("combo", "cut"), list(zip(COMBOS, range(4, 28, 4))), ids=COMBO_IDS)
def test_keyprog_2_truncated_key_prog_answers_incorrect_length(queried, combo, cut):
    before = queried.responder.snapshot()
    kss = _slot(km.KeySet.K0, combo).to_byte()
    full = km.encode(km.KeyProg(stream_id=STREAM, key_sub_stream=kss, port_index=PORT, key=bytes(32), iv=EXPECTED_IFV))
    assert len(full) == KEY_PROG_LEN
    raw = queried.send(full[:-cut])
    assert_kpack(raw, km.KpAckStatus.INCORRECT_LENGTH, stream=STREAM, kss=kss, port=PORT)
    assert queried.responder.snapshot() == before


@pytest.mark.parametrize(("combo", "over"), list(zip(COMBOS, range(1, 7))), ids=COMBO_IDS)
def test_keyprog_3_port_beyond_max_answers_unsupported_port_index(queried, combo, over):
    before = queried.responder.snapshot()
    port = (MAX_PORT + over) & 0xFF
    kss = _slot(km.KeySet.K0, combo).to_byte()
    raw = queried.send(
        km.KeyProg(stream_id=STREAM, key_sub_stream=kss, port_index=port, key=bytes(32), iv=EXPECTED_IFV)
    )
    assert_kpack(raw, km.KpAckStatus.UNSUPPORTED_PORT_INDEX, stream=STREAM, kss=kss, port=port)
    assert queried.responder.snapshot() == before


@pytest.mark.parametrize("combo", COMBOS, ids=COMBO_IDS)
def test_keyprog_4_bad_sub_stream_answers_unsupported_value(queried, combo):
    """Sub-stream field 3, 4, 5 in the PR, NPR and CPL slots respectively."""
    before = queried.responder.snapshot()
    direction, sub = combo
    kss = int(km.KeySet.K0) | int(direction) << 1 | (int(sub) + 3) << 4
    raw = queried.send(
        km.KeyProg(stream_id=STREAM, key_sub_stream=kss, port_index=PORT, key=bytes(32), iv=EXPECTED_IFV)
    )
    assert_kpack(raw, km.KpAckStatus.UNSUPPORTED_VALUE, stream=STREAM, kss=kss, port=PORT)
    assert queried.responder.snapshot() == before


@pytest.mark.parametrize(("combo", "second_word"), list(zip(COMBOS, range(2, 8))), ids=COMBO_IDS)
def test_keyprog_5_bad_ifv_answers_unsupported_value(queried, combo, second_word):
    """IV words must be {0, 1}; the validator sends first word 0 and second word 2..7."""
    before = queried.responder.snapshot()
    kss = _slot(km.KeySet.K0, combo).to_byte()
    iv = struct.pack("<II", 0, second_word)
    raw = queried.send(km.KeyProg(stream_id=STREAM, key_sub_stream=kss, port_index=PORT, key=bytes(32), iv=iv))
    assert_kpack(raw, km.KpAckStatus.UNSUPPORTED_VALUE, stream=STREAM, kss=kss, port=PORT)
    assert queried.responder.snapshot() == before


@pytest.mark.parametrize("iv", [struct.pack("<II", 0, 0), struct.pack("<II", 1, 1), struct.pack("<II", 1, 0)])
def test_keyprog_5_other_ifvs_are_refused_too(queried, iv):
    """The doc's wider range (IFV 0, high word set) gets the same answer."""
    kss = _slot(km.KeySet.K0, COMBOS[0]).to_byte()
    raw = queried.send(km.KeyProg(stream_id=STREAM, key_sub_stream=kss, port_index=PORT, key=bytes(32), iv=iv))
    assert_kpack(raw, km.KpAckStatus.UNSUPPORTED_VALUE, stream=STREAM, kss=kss, port=PORT)


@pytest.mark.parametrize(("combo", "plus"), list(zip(COMBOS, range(1, 7))), ids=COMBO_IDS)
def test_keyprog_6_unknown_stream_answers_unsupported_value(queried, combo, plus):
    before = queried.responder.snapshot()
    kss = _slot(km.KeySet.K0, combo).to_byte()
    raw = queried.send(
        km.KeyProg(stream_id=STREAM + plus, key_sub_stream=kss, port_index=PORT, key=bytes(32), iv=EXPECTED_IFV)
    )
    assert_kpack(raw, km.KpAckStatus.UNSUPPORTED_VALUE, stream=STREAM + plus, kss=kss, port=PORT)
    assert queried.responder.snapshot() == before


def test_key_prog_to_a_port_with_no_such_stream_answers_unsupported_value(queried):
    kss = _slot(km.KeySet.K0, COMBOS[0]).to_byte()
    raw = queried.send(km.KeyProg(stream_id=STREAM, key_sub_stream=kss, port_index=1, key=bytes(32), iv=EXPECTED_IFV))
    assert_kpack(raw, km.KpAckStatus.UNSUPPORTED_VALUE, stream=STREAM, kss=kss, port=1)


def test_key_prog_reaches_the_stream_of_the_port_it_names(queried):
    kss = _slot(km.KeySet.K1, COMBOS[4]).to_byte()
    raw = queried.send(km.KeyProg(stream_id=STREAM, key_sub_stream=kss, port_index=2, key=bytes(32), iv=EXPECTED_IFV))
    assert_kpack(raw, km.KpAckStatus.SUCCESS, stream=STREAM, kss=kss, port=2)
    assert queried.ep2.snapshot().programmed == ("K1/TX/NPR",)
    assert queried.ep.snapshot().programmed == ()


@pytest.mark.parametrize("extra", [1, 4])
def test_an_overlong_key_prog_answers_incorrect_length(queried, extra):
    kss = _slot(km.KeySet.K0, COMBOS[0]).to_byte()
    full = km.encode(km.KeyProg(stream_id=STREAM, key_sub_stream=kss, port_index=PORT, key=bytes(32), iv=EXPECTED_IFV))
    assert_kpack(queried.send(full + bytes(extra)), km.KpAckStatus.INCORRECT_LENGTH, stream=STREAM, kss=kss, port=PORT)


def test_a_key_prog_cut_before_its_fields_echoes_zeros(queried):
    assert_kpack(
        queried.send(bytes([km.ObjectId.KEY_PROG, 0, 0])),
        km.KpAckStatus.INCORRECT_LENGTH,
        stream=0,
        kss=0,
        port=0,
    )


# ------------------------------------------------------------------------------------------ KSetGo
def _go_case(bench: Bench, key_set: km.KeySet) -> None:
    """KSetGo.1/.2: QUERY, KEY_PROG six combos, GO six combos (GSACK each), enable, Secure."""
    bench.send(km.Query(port_index=PORT))
    bench.program(key_set)  # ACKs not checked by the case
    for req, raw in bench.go(key_set):
        assert_gsack(raw, req)
    bench.enable()
    assert bench.secure()  # the post-run configuration check (root port Secure), and the device too
    bench.traffic_uses(key_set)


def test_ksetgo_1_go_k0_answers_gsack_per_combo(bench):
    _go_case(bench, km.KeySet.K0)


def test_ksetgo_2_go_k1_answers_gsack_per_combo(bench):
    _go_case(bench, km.KeySet.K1)


def _switch_case(bench: Bench, first: km.KeySet, second: km.KeySet) -> None:
    """KSetGo.3: STREAM(K0) without GO, GO K0 (phase 1), program K1, GO K1 (phase 2). KSetGo.4: mirror."""
    bench.send(km.Query(port_index=PORT))
    bench.program(first)
    for req, raw in bench.go(first):
        assert_gsack(raw, req)  # 3.3.1-.5
    bench.enable()
    assert bench.secure()
    for combo in COMBOS:
        prog, raw = bench.key_prog(second, combo)
        assert_kpack(raw, km.KpAckStatus.SUCCESS, stream=STREAM, kss=prog.key_sub_stream, port=PORT)
    for go, raw in bench.go(second):
        assert_gsack(raw, go)  # 3.3.6-.10
        assert bench.ep.state is StreamState.SECURE
    assert bench.secure()
    bench.traffic_uses(second)


def test_ksetgo_3_switch_k0_to_k1_answers_gsack_and_stays_secure(bench):
    _switch_case(bench, km.KeySet.K0, km.KeySet.K1)


def test_ksetgo_4_switch_k1_to_k0_answers_gsack_and_stays_secure(bench):
    _switch_case(bench, km.KeySet.K1, km.KeySet.K0)


# ------------------------------------------------------------------------------------------ KSetStop
def _stop_and_check(bench: Bench, key_set: km.KeySet) -> None:
    for req, raw in bench.stop(key_set):
        assert_gsack(raw, req)
    # beyond the validator (it checks nothing after the ACKs): the keys are gone, the stream Insecure
    assert not any(bench.ep.is_programmed(_slot(key_set, c)) for c in COMBOS)
    assert bench.ep.state is StreamState.INSECURE


def test_ksetstop_1_stop_k0_answers_gsack(bench):
    bench.stream(km.KeySet.K0)
    bench.enable(False)  # the code clears the enable bits first
    _stop_and_check(bench, km.KeySet.K0)


def test_ksetstop_2_stop_k1_answers_gsack(bench):
    bench.stream(km.KeySet.K1)
    bench.enable(False)
    _stop_and_check(bench, km.KeySet.K1)


def _refresh_then_stop(bench: Bench, first: km.KeySet, second: km.KeySet) -> None:
    bench.stream(first)
    bench.program(second)
    bench.go(second)
    assert bench.secure()
    bench.enable(False)
    _stop_and_check(bench, second)
    assert all(bench.ep.is_programmed(_slot(first, c)) for c in COMBOS)  # the retired set is untouched


def test_ksetstop_3_stop_k1_after_refresh_from_k0(bench):
    _refresh_then_stop(bench, km.KeySet.K0, km.KeySet.K1)


def test_ksetstop_4_stop_k0_after_refresh_from_k1(bench):
    _refresh_then_stop(bench, km.KeySet.K1, km.KeySet.K0)


def test_stop_on_a_live_enabled_stream_makes_it_insecure(bench):
    bench.stream(km.KeySet.K0)
    req = km.KSetStop(stream_id=STREAM, key_sub_stream=_slot(km.KeySet.K0, COMBOS[3]).to_byte(), port_index=PORT)
    assert_gsack(bench.send(req), req)
    assert bench.ep.state is StreamState.INSECURE


# ------------------------------------------------------------------------------------------ SpdmSession
def test_spdmsession_1_second_session_gets_no_response(bench):
    bench.stream(km.KeySet.K0)  # session X programmed the keys
    before = bench.responder.snapshot()
    assert bench.send(km.Query(port_index=0), session=Y) is None  # 5.1.1
    req = km.KeyProg(
        stream_id=STREAM,
        key_sub_stream=_slot(km.KeySet.K1, COMBOS[0]).to_byte(),
        port_index=PORT,
        key=bytes(32),
        iv=EXPECTED_IFV,
    )
    assert bench.send(req, session=Y) is None  # 5.1.2
    for msg in (
        km.KSetGo(stream_id=STREAM, key_sub_stream=0, port_index=PORT),
        km.KSetStop(stream_id=STREAM, key_sub_stream=0, port_index=PORT),
    ):
        assert bench.send(msg, session=Y) is None
    assert bench.responder.snapshot() == before
    assert bench.secure()


def test_spdmsession_2_after_first_session_ends_second_session_may_program(bench):
    bench.stream(km.KeySet.K0)
    bench.responder.session_ended(X)
    assert bench.ep.state is StreamState.INSECURE  # PCIe §11.4.5: keys die with the session
    assert bench.ep.snapshot().insecure_reason == f"SPDM session {X} ended"
    resp = assert_query_resp(bench.send(km.Query(port_index=0), session=Y), 0)  # 5.2.1-.4
    assert (resp.dev_func_num, resp.bus_num, resp.segment) == (DEV_FUNC, BUS, SEGMENT)  # 5.2.5
    for combo in COMBOS:  # 5.2.6-.11
        req, raw = bench.key_prog(km.KeySet.K0, combo, session=Y)
        assert_kpack(raw, km.KpAckStatus.SUCCESS, stream=STREAM, kss=req.key_sub_stream, port=PORT)
    assert bench.responder.owner_session == Y
    bench.go(km.KeySet.K0, session=Y)
    bench.enable()
    assert bench.secure()
    bench.traffic_uses(km.KeySet.K0)
    assert bench.send(km.Query(port_index=0), session=X) is None  # now X is the stranger


def test_ide_km_outside_a_secure_session_is_dropped(bench):
    before = bench.responder.snapshot()
    assert bench.send(km.Query(port_index=0), session=None) is None
    req = km.KeyProg(stream_id=STREAM, key_sub_stream=0, port_index=PORT, key=bytes(32), iv=EXPECTED_IFV)
    assert bench.send(req, session=None) is None
    assert bench.responder.snapshot() == before


def test_a_refused_key_prog_does_not_take_ownership(bench):
    bad = km.KeyProg(stream_id=STREAM + 1, key_sub_stream=0, port_index=PORT, key=bytes(32), iv=EXPECTED_IFV)
    assert_kpack(bench.send(bad, session=Y), km.KpAckStatus.UNSUPPORTED_VALUE, stream=STREAM + 1, kss=0, port=PORT)
    assert bench.responder.owner_session is None
    bench.stream(km.KeySet.K0)  # session X can still take it
    assert bench.responder.owner_session == X


def test_the_end_of_a_session_that_owns_nothing_changes_nothing(bench):
    bench.stream(km.KeySet.K0)
    before = bench.responder.snapshot()
    bench.responder.session_ended(Y)
    assert bench.responder.snapshot() == before


def test_session_end_marks_only_the_streams_that_session_keyed(bench):
    bench.stream(km.KeySet.K0)
    bench.responder.session_ended(X)
    assert bench.ep.state is StreamState.INSECURE
    assert bench.ep2.snapshot().insecure_reason != f"SPDM session {X} ended"  # never keyed over X
    assert bench.responder.snapshot().keyed_by == ()


def test_after_a_session_end_the_stream_needs_fresh_keys(bench):
    bench.stream(km.KeySet.K0)
    bench.responder.session_ended(X)
    assert bench.ep.snapshot().programmed == ()  # keys never outlive their session
    for _, raw in bench.go(km.KeySet.K0, session=Y):  # the old keys again: gone, so GO is dropped
        assert raw is None
    bench.enable()
    assert bench.ep.state is StreamState.INSECURE


# ------------------------------------------------------------------------------------------ GO / STOP choices
@pytest.mark.parametrize("combo", COMBOS, ids=COMBO_IDS)
def test_go_on_an_empty_slot_is_dropped_and_changes_nothing(bench, combo):
    """Our choice: no K_GOSTOP_ACK (it has no status, so it would claim a live key set)."""
    bench.stream(km.KeySet.K0)
    before = bench.responder.snapshot()
    req = km.KSetGo(stream_id=STREAM, key_sub_stream=_slot(km.KeySet.K1, combo).to_byte(), port_index=PORT)
    assert bench.send(req) is None
    assert bench.responder.snapshot() == before
    assert bench.secure()


def test_stop_on_an_empty_slot_is_acknowledged_and_changes_nothing(bench):
    """Our choice: STOP is idempotent (the requested end state already holds)."""
    bench.stream(km.KeySet.K0)
    before = bench.responder.snapshot()
    req = km.KSetStop(stream_id=STREAM, key_sub_stream=_slot(km.KeySet.K1, COMBOS[0]).to_byte(), port_index=PORT)
    assert_gsack(bench.send(req), req)
    assert bench.responder.snapshot() == before


def test_go_of_the_active_set_again_is_acknowledged_and_changes_nothing(bench):
    bench.stream(km.KeySet.K0)
    before = bench.responder.snapshot()
    for req, raw in bench.go(km.KeySet.K0):
        assert_gsack(raw, req)
    assert bench.responder.snapshot() == before


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(bytes([km.ObjectId.K_SET_GO, 0, 0, STREAM, 0, 0x30, PORT]), id="go-bad-sub-stream"),
        pytest.param(bytes([km.ObjectId.K_SET_GO, 0, 0, STREAM, 0, 0x04, PORT]), id="go-reserved-bits"),
        pytest.param(bytes([km.ObjectId.K_SET_GO, 0, 0, STREAM + 1, 0, 0x00, PORT]), id="go-unknown-stream"),
        pytest.param(bytes([km.ObjectId.K_SET_GO, 0, 0, STREAM, 0, 0x00, MAX_PORT + 1]), id="go-bad-port"),
        pytest.param(bytes([km.ObjectId.K_SET_GO, 0, 0, STREAM, 0, 0x00]), id="go-truncated"),
        pytest.param(bytes([km.ObjectId.K_SET_STOP, 0, 0, STREAM, 0, 0x00, PORT, 0]), id="stop-overlong"),
        pytest.param(bytes([km.ObjectId.K_SET_STOP, 0, 0, STREAM, 0, 0x30, PORT]), id="stop-bad-sub-stream"),
        pytest.param(bytes([km.ObjectId.K_SET_STOP, 0, 0, STREAM + 1, 0, 0x00, PORT]), id="stop-unknown-stream"),
        pytest.param(bytes([km.ObjectId.QUERY, 0]), id="query-truncated"),
        pytest.param(bytes([km.ObjectId.KP_ACK, 0, 0, STREAM, 0, 0, PORT]), id="kp-ack-as-request"),
        pytest.param(bytes([km.ObjectId.K_GOSTOP_ACK, 0, 0, STREAM, 0, 0, PORT]), id="gostop-ack-as-request"),
        pytest.param(bytes([km.ObjectId.QUERY_RESP, 0, 0, 0, 0, 0, 0]), id="query-resp-as-request"),
        pytest.param(bytes([0x7F, 1, 2, 3]), id="unknown-object"),
        pytest.param(b"", id="empty"),
    ],
)
def test_malformed_non_key_prog_messages_are_dropped_and_change_nothing(bench, raw):
    bench.stream(km.KeySet.K0)
    before = bench.responder.snapshot()
    assert bench.send(raw) is None
    assert bench.responder.snapshot() == before


def test_snapshot_is_plain_data_without_keys(bench):
    bench.stream(km.KeySet.K0)
    snap = bench.responder.snapshot()
    assert snap.owner_session == X
    assert snap.keyed_by == ((PORT, STREAM, X),)
    text = repr(snap)
    assert "SECURE" in text and struct.pack("<I", 1).hex() * 8 not in text


def test_a_bad_configuration_is_refused():
    ep = IdeStreamEndpoint(stream_id=STREAM, rid_base=0, rid_limit=1)
    with pytest.raises(InvalidArgument, match="max_port_index"):
        IdeKmResponder(ports={3: {STREAM: ep}}, dev_func_num=0, bus_num=0, segment=0, max_port_index=2)
    with pytest.raises(InvalidArgument, match="maps to"):
        IdeKmResponder(ports={0: {STREAM + 1: ep}}, dev_func_num=0, bus_num=0, segment=0, max_port_index=0)
    with pytest.raises(InvalidArgument, match="bus_num"):
        IdeKmResponder(ports={}, dev_func_num=0, bus_num=256, segment=0, max_port_index=0)


# ------------------------------------------------------------------------------------------ property
def _valid_key_prog(stream: int, kss: int, port: int, iv: bytes = EXPECTED_IFV) -> bytes:
    return km.encode(km.KeyProg(stream_id=stream, key_sub_stream=kss, port_index=port, key=bytes(range(32)), iv=iv))


_u8 = st.integers(0, 255)
_seeds = st.one_of(
    st.builds(_valid_key_prog, st.sampled_from([STREAM, STREAM + 1, 0]), _u8, st.integers(0, 4)),
    st.builds(
        lambda o, s, k, p: bytes([o, 0, 0, s, 0, k, p]),
        st.sampled_from([4, 5]),
        st.sampled_from([STREAM, 0]),
        _u8,
        st.integers(0, 4),
    ),
    st.builds(lambda p: bytes([0, 0, p]), _u8),
)


@st.composite
def _mutated(draw) -> bytes:
    raw = bytearray(draw(_seeds))
    how = draw(st.sampled_from(["truncate", "extend", "set", "flip", "iv", "none"]))
    if how == "truncate" and raw:
        del raw[draw(st.integers(0, len(raw) - 1)) :]
    elif how == "extend":
        raw += draw(st.binary(min_size=1, max_size=8))
    elif how == "set" and raw:
        raw[draw(st.integers(0, len(raw) - 1))] = draw(_u8)
    elif how == "flip" and raw:
        bit = draw(st.integers(0, 8 * len(raw) - 1))
        raw[bit // 8] ^= 1 << bit % 8
    elif how == "iv" and len(raw) == KEY_PROG_LEN:
        raw[-8:] = draw(st.binary(min_size=8, max_size=8))
    return bytes(raw)


def _legal(bench: Bench, raw: bytes) -> bool:
    """Would a correct responder act on ``raw`` (from the owner)? An oracle written from the case table."""
    try:
        msg = km.decode(raw)
    except km.IdeKmDecodeError:
        return False
    if not isinstance(msg, km.KeyProg | km.KSetGo | km.KSetStop):
        return False  # QUERY and responses never change anything
    stream = bench.responder.ports.get(msg.port_index, {}).get(msg.stream_id)
    try:
        slot = km.KeySubStream.from_byte(msg.key_sub_stream)
    except CodecError:
        return False
    if stream is None or msg.port_index > MAX_PORT:
        return False
    if isinstance(msg, km.KeyProg):
        return msg.iv == EXPECTED_IFV
    return isinstance(msg, km.KSetStop) or stream.is_programmed(slot)


def _valid_query(raw: bytes) -> bool:
    return len(raw) == 3 and raw[0] == km.ObjectId.QUERY and raw[2] <= MAX_PORT


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.one_of(_mutated(), st.binary(max_size=56)), session=st.sampled_from([X, X, X, Y, None]))
def test_refused_messages_never_change_the_responder(raw, session):
    bench = Bench()
    bench.stream(km.KeySet.K0)
    bench.program(km.KeySet.K1)  # both sets held, K0 live: something for a bad message to break
    before = bench.responder.snapshot()
    answer = bench.send(raw, session)
    if session != X:
        event("not the owner session")
        assert answer is None, "answered a session that does not own key programming"
    elif _legal(bench, raw):
        event("legal request")
        return  # a well-formed request may change state; the case tests cover what it must do
    elif answer is not None:
        event("refused with an answer")
        reply = km.decode(answer)
        if _valid_query(raw):
            assert isinstance(reply, km.QueryResp)
        else:
            assert isinstance(reply, km.KpAck), f"refused message answered {type(reply).__name__}"
            assert reply.status != km.KpAckStatus.SUCCESS
    else:
        event("refused by dropping")
    assert bench.responder.snapshot() == before
    assert bench.secure()


def test_a_codec_error_outside_the_decoder_contract_is_still_answered_safely(bench, monkeypatch):
    """Whatever the decoder raises, the responder answers (never SUCCESS) or drops; it never raises."""

    def broken(data):
        raise CodecError("a field a message type refused", code=km.KpAckStatus.UNSUPPORTED_VALUE)

    monkeypatch.setattr(km, "decode", broken)
    raw = bench.send(bytes([km.ObjectId.KEY_PROG]) + bytes(46))
    assert raw is not None and raw[0] == km.ObjectId.KP_ACK and raw[4] == km.KpAckStatus.UNSUPPORTED_VALUE
    assert bench.send(bytes([km.ObjectId.K_SET_GO]) + bytes(6)) is None
