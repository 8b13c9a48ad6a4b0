"""IDE_KM codec: round trips, byte-exact layouts (libspdm pci_idekm.h), key byte order, errors, fuzz.

Byte strings start at the IDE_KM Object ID (the PCI protocol-ID byte 0x00 is the transport's).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teeio_conformance.contract import ide_km as km
from teeio_conformance.contract.errors import CodecError
from teeio_conformance.strategies.messages import ide_km_requests, ide_km_responses, malformed_ide_km_requests

KEY = bytes(range(32))
IFV_1 = bytes.fromhex("0000000001000000")  # IFV DW1 = 0, DW0 = 1, each little-endian


def hx(*fields: str) -> bytes:
    return bytes.fromhex("".join(fields).replace(" ", ""))


# ------------------------------------------------------------------------------------- byte-exact layouts
LAYOUTS = [
    pytest.param(
        km.Query(port_index=2),
        hx(
            "00",  # 0 object_id QUERY
            "00",  # 1 reserved
            "02",  # 2 port_index
        ),
        id="QUERY",
    ),
    pytest.param(
        km.QueryResp(
            port_index=0,
            dev_func_num=0x08,
            bus_num=0x3A,
            segment=1,
            max_port_index=3,
            ide_registers=(0x0030_0030, 0x1122_3344),
        ),
        hx(
            "01",  # 0 object_id QUERY_RESP
            "00",  # 1 reserved
            "00",  # 2 port_index
            "08",  # 3 dev_func_num
            "3a",  # 4 bus_num
            "01",  # 5 segment
            "03",  # 6 max_port_index
            "30003000",  # 7  IDE register word 0 (u32 LE)
            "44332211",  # 11 IDE register word 1
        ),
        id="QUERY_RESP",
    ),
    pytest.param(
        km.KeyProg(stream_id=5, key_sub_stream=0x12, port_index=1, key=KEY, iv=IFV_1),
        hx(
            "02",  # 0 object_id KEY_PROG
            "0000",  # 1 reserved[2]
            "05",  # 3 stream_id
            "00",  # 4 reserved
            "12",  # 5 key_sub_stream: K0, Tx, NPR
            "01",  # 6 port_index
            KEY.hex(),  # 7  KEY (8 DW)
            "00000000",  # 39 IFV DW1
            "01000000",  # 43 IFV DW0
        ),
        id="KEY_PROG",
    ),
    pytest.param(
        km.KpAck(stream_id=5, status=km.KpAckStatus.UNSUPPORTED_VALUE, key_sub_stream=0x12, port_index=1),
        hx(
            "03",  # 0 object_id KP_ACK
            "0000",  # 1 reserved[2]
            "05",  # 3 stream_id
            "03",  # 4 status: UNSUPPORTED_VALUE
            "12",  # 5 key_sub_stream
            "01",  # 6 port_index
        ),
        id="KP_ACK",
    ),
    pytest.param(
        km.KSetGo(stream_id=5, key_sub_stream=0x21, port_index=0),
        hx(
            "04",  # 0 object_id K_SET_GO
            "0000",  # 1 reserved[2]
            "05",  # 3 stream_id
            "00",  # 4 reserved
            "21",  # 5 key_sub_stream: K1, Rx, CPL
            "00",  # 6 port_index
        ),
        id="K_SET_GO",
    ),
    pytest.param(
        km.KSetStop(stream_id=5, key_sub_stream=0x23, port_index=0),
        hx(
            "05",  # 0 object_id K_SET_STOP
            "0000",  # 1 reserved[2]
            "05",  # 3 stream_id
            "00",  # 4 reserved
            "23",  # 5 key_sub_stream: K1, Tx, CPL
            "00",  # 6 port_index
        ),
        id="K_SET_STOP",
    ),
    pytest.param(
        km.KGoStopAck(stream_id=5, key_sub_stream=0x23, port_index=0),
        hx(
            "06",  # 0 object_id K_GOSTOP_ACK
            "0000",  # 1 reserved[2]
            "05",  # 3 stream_id
            "00",  # 4 reserved
            "23",  # 5 key_sub_stream
            "00",  # 6 port_index
        ),
        id="K_GOSTOP_ACK",
    ),
]


@pytest.mark.parametrize(("msg", "raw"), LAYOUTS)
def test_bytes_match_the_spec_layout(msg: km.IdeKmMessage, raw: bytes) -> None:
    assert km.encode(msg) == raw
    assert km.decode(raw) == msg


def test_every_message_type_has_a_layout_test() -> None:
    assert {type(p.values[0]) for p in LAYOUTS} == set(km.OBJECT_TYPES.values())
    assert set(km.OBJECT_TYPES) == set(km.ObjectId)


def test_key_prog_is_47_bytes() -> None:
    assert km.KEY_PROG_LEN == 47  # 48 with the protocol-ID byte, as libspdm sizes it


def test_key_and_ifv_byte_order_follow_the_validator_document() -> None:
    """tee-io-validator doc/key_byte_order.md: AES key df 25 41 52 ... 20 travels as DW7..DW0, each
    little-endian; IV 00000000 0000000000000001 travels as IFV DW1, DW0."""
    aes_key = hx("df254152056e02e0ef8b7feb9739d4d96a4eb80103241df7cd5e24b49ccd2720")
    wire = km.key_to_wire(aes_key)
    assert wire == hx(
        "524125df",  # Key_DW7 bytes 0..3
        "e0026e05",  # Key_DW6
        "eb7f8bef",  # Key_DW5
        "d9d43997",  # Key_DW4
        "01b84e6a",  # Key_DW3
        "f71d2403",  # Key_DW2
        "b4245ecd",  # Key_DW1
        "2027cd9c",  # Key_DW0
    )
    assert km.key_from_wire(wire) == aes_key
    assert km.ifv_to_wire(1) == IFV_1
    msg = km.KeyProg(stream_id=1, key_sub_stream=0, port_index=0, key=wire, iv=km.ifv_to_wire(1))
    assert msg.aes_key == aes_key and msg.ifv == 1
    assert km.KeyProg(stream_id=1, key_sub_stream=0, port_index=0, key=wire, iv=km.ifv_to_wire(2**40 + 7)).ifv == (
        2**40 + 7
    )


# ------------------------------------------------------------------------------------- key slots
def test_key_sub_stream_byte_for_every_slot() -> None:
    """bit 0 key set, bit 1 direction (Tx = 1), bits 7:4 sub-stream (PR 0, NPR 1, CPL 2)."""
    assert len(set(km.ALL_SLOTS)) == 12
    for slot in km.ALL_SLOTS:
        b = slot.to_byte()
        assert b == slot.key_set | slot.direction << 1 | slot.sub_stream << 4
        assert km.KeySubStream.from_byte(b) == slot
    assert sorted(s.to_byte() for s in km.ALL_SLOTS) == [
        0x00,
        0x01,
        0x02,
        0x03,
        0x10,
        0x11,
        0x12,
        0x13,
        0x20,
        0x21,
        0x22,
        0x23,
    ]
    assert str(km.KeySubStream(km.KeySet.K1, km.Direction.TX, km.SubStream.CPL)) == "K1/TX/CPL"


@pytest.mark.parametrize(
    ("b", "why"),
    [
        (0x30, "sub-stream 3"),
        (0xF0, "sub-stream 15"),
        (0x04, "reserved bits"),
        (0x08, "reserved bits"),
        (0x100, "must be a byte"),
        (-1, "must be a byte"),
    ],
)
def test_bad_key_sub_stream_bytes_are_unsupported_values(b: int, why: str) -> None:
    with pytest.raises(CodecError, match=why) as e:
        km.KeySubStream.from_byte(b)
    assert e.value.code == km.KpAckStatus.UNSUPPORTED_VALUE


def test_key_sub_stream_converts_and_refuses_its_fields() -> None:
    assert km.KeySubStream(1, 0, 2) == km.KeySubStream(km.KeySet.K1, km.Direction.RX, km.SubStream.CPL)
    with pytest.raises(CodecError, match=r"KeySubStream.sub_stream: expected a SubStream .* got 3"):
        km.KeySubStream(0, 0, 3)
    with pytest.raises(CodecError, match=r"KeySubStream\.key_set"):
        km.KeySubStream("K0", 0, 0)


# ------------------------------------------------------------------------------------- round trips
@given(ide_km_requests())
def test_requests_round_trip(msg: km.IdeKmMessage) -> None:
    assert km.decode(km.encode(msg)) == msg


@given(ide_km_responses())
def test_responses_round_trip(msg: km.IdeKmMessage) -> None:
    assert km.decode(km.encode(msg)) == msg


@given(st.sampled_from(km.ALL_SLOTS))
def test_slots_round_trip(slot: km.KeySubStream) -> None:
    assert km.KeySubStream.from_byte(slot.to_byte()) == slot


@given(st.binary(min_size=32, max_size=32))
def test_key_byte_order_is_an_involution(key: bytes) -> None:
    assert km.key_from_wire(km.key_to_wire(key)) == key


# ------------------------------------------------------------------------------------- decode errors
GOOD_KEY_PROG = km.encode(km.KeyProg(stream_id=5, key_sub_stream=0x12, port_index=1, key=KEY, iv=IFV_1))


@pytest.mark.parametrize("length", range(7, 47, 4))
def test_truncated_key_prog_keeps_the_fields_it_could_read(length: int) -> None:
    """tee-io-validator KeyProg 2.2: lengths 8..sizeof-4 step 4 with the protocol byte, 7..43 without;
    the KP_ACK(INCORRECT_LENGTH) must echo stream, slot and port."""
    with pytest.raises(km.IdeKmDecodeError) as e:
        km.decode(GOOD_KEY_PROG[:length])
    assert e.value.code == km.KpAckStatus.INCORRECT_LENGTH
    assert e.value.object_id == km.ObjectId.KEY_PROG
    assert e.value.partial == {"stream_id": 5, "key_sub_stream": 0x12, "port_index": 1}


@pytest.mark.parametrize(
    ("length", "partial"),
    [(1, {}), (3, {}), (4, {"stream_id": 5}), (6, {"stream_id": 5, "key_sub_stream": 0x12})],
)
def test_very_short_key_prog_echoes_what_is_there(length: int, partial: dict[str, int]) -> None:
    with pytest.raises(km.IdeKmDecodeError) as e:
        km.decode(GOOD_KEY_PROG[:length])
    assert e.value.partial == partial


@pytest.mark.parametrize(
    ("raw", "code", "object_id"),
    [
        pytest.param(b"", km.KpAckStatus.INCORRECT_LENGTH, None, id="empty"),
        pytest.param(GOOD_KEY_PROG + b"\0", km.KpAckStatus.INCORRECT_LENGTH, 2, id="key-prog-over-long"),
        pytest.param(hx("0000"), km.KpAckStatus.INCORRECT_LENGTH, 0, id="query-short"),
        pytest.param(hx("00000000"), km.KpAckStatus.INCORRECT_LENGTH, 0, id="query-long"),
        pytest.param(hx("01000000000000", "aabb"), km.KpAckStatus.INCORRECT_LENGTH, 1, id="query-resp-half-word"),
        pytest.param(hx("010000000000"), km.KpAckStatus.INCORRECT_LENGTH, 1, id="query-resp-short"),
        pytest.param(hx("04000005000000", "00"), km.KpAckStatus.INCORRECT_LENGTH, 4, id="k-set-go-long"),
        pytest.param(hx("050000050000"), km.KpAckStatus.INCORRECT_LENGTH, 5, id="k-set-stop-short"),
        pytest.param(hx("0300000500"), km.KpAckStatus.INCORRECT_LENGTH, 3, id="kp-ack-short"),
        pytest.param(hx("07000005000000"), km.KpAckStatus.UNSUPPORTED_VALUE, 7, id="object-7"),
        pytest.param(hx("ff"), km.KpAckStatus.UNSUPPORTED_VALUE, 0xFF, id="object-ff"),
    ],
)
def test_decode_errors_carry_a_kp_ack_status(raw: bytes, code: km.KpAckStatus, object_id: int | None) -> None:
    with pytest.raises(km.IdeKmDecodeError) as e:
        km.decode(raw)
    assert e.value.code == code
    assert e.value.object_id == object_id


def test_reserved_bytes_are_ignored_and_the_slot_byte_is_carried_raw() -> None:
    raw = bytearray(km.encode(km.KSetGo(stream_id=5, key_sub_stream=0x12, port_index=1)))
    raw[1:3] = b"\xff\xff"
    raw[4] = 0xAA
    raw[5] = 0xFC  # sub-stream 15 and reserved bits: judged by the responder, not the codec
    msg = km.decode(bytes(raw))
    assert msg == km.KSetGo(stream_id=5, key_sub_stream=0xFC, port_index=1)
    assert km.encode(msg) == hx("04", "0000", "05", "00", "fc", "01")


def test_decode_accepts_buffers_and_refuses_other_types() -> None:
    assert km.decode(bytearray(GOOD_KEY_PROG)) == km.decode(memoryview(GOOD_KEY_PROG))
    with pytest.raises(km.IdeKmDecodeError):
        km.decode("00")  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="not an IDE_KM message"):
        km.encode(object())  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- validators
@pytest.mark.parametrize(
    ("build", "match"),
    [
        (
            lambda: km.KeyProg(stream_id=0, key_sub_stream=0, port_index=0, key=bytes(31), iv=IFV_1),
            "KeyProg.key: expected exactly 32 bytes, got 31",
        ),
        (
            lambda: km.KeyProg(stream_id=0, key_sub_stream=0, port_index=0, key=KEY, iv=bytes(12)),
            "KeyProg.iv: expected exactly 8 bytes, got 12",
        ),
        (
            lambda: km.KeyProg(stream_id=256, key_sub_stream=0, port_index=0, key=KEY, iv=IFV_1),
            r"KeyProg.stream_id: expected an unsigned 8-bit integer \(0..0xff\), got 256",
        ),
        (lambda: km.KpAck(stream_id=0, status=-1, key_sub_stream=0, port_index=0), "KpAck.status"),
        (lambda: km.KSetGo(stream_id=0, key_sub_stream=0x100, port_index=0), "KSetGo.key_sub_stream"),
        (
            lambda: km.KSetStop(stream_id=0, key_sub_stream=0, port_index=True),
            "KSetStop.port_index: .* got True",
        ),
        (lambda: km.Query(port_index=1.0), "Query.port_index"),  # type: ignore[arg-type]
        (
            lambda: km.QueryResp(
                port_index=0, dev_func_num=0, bus_num=0, segment=0, max_port_index=0, ide_registers=(2**32,)
            ),
            "ide_registers: expected unsigned 32-bit register words",
        ),
        (
            lambda: km.QueryResp(
                port_index=0,
                dev_func_num=0,
                bus_num=0,
                segment=0,
                max_port_index=0,
                ide_registers=7,  # type: ignore[arg-type]
            ),
            "expected a sequence of u32 words, got int",
        ),
        (lambda: km.key_to_wire(bytes(16)), "AES-256 key is 32 bytes"),
        (lambda: km.ifv_to_wire(2**64), "unsigned 64-bit"),
    ],
)
def test_validators_refuse_out_of_range_fields_naming_them(build: object, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        build()  # type: ignore[operator]


# ------------------------------------------------------------------------------------- fuzz
FUZZ_EXAMPLES = 10_000
_RESERVED_OFFSETS = {
    km.ObjectId.QUERY: {1},
    km.ObjectId.QUERY_RESP: {1},
    km.ObjectId.KEY_PROG: {1, 2, 4},
    km.ObjectId.KP_ACK: {1, 2},
    km.ObjectId.K_SET_GO: {1, 2, 4},
    km.ObjectId.K_SET_STOP: {1, 2, 4},
    km.ObjectId.K_GOSTOP_ACK: {1, 2, 4},
}


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(malformed_ide_km_requests())
def test_fuzz_decoder_raises_only_its_typed_error(raw: bytes) -> None:
    """10,000 malformed inputs: a message or IdeKmDecodeError, never anything else.

    A refusal carries INCORRECT_LENGTH or UNSUPPORTED_VALUE, the object ID and exactly the echo fields
    present in the bytes; a message that decodes re-encodes to the same bytes except reserved ones.
    """
    try:
        msg = km.decode(raw)
    except km.IdeKmDecodeError as exc:
        assert exc.code in (km.KpAckStatus.INCORRECT_LENGTH, km.KpAckStatus.UNSUPPORTED_VALUE)
        assert exc.object_id == (raw[0] if raw else None)
        for name, value in exc.partial.items():
            offset = {"stream_id": 3, "key_sub_stream": 5, "port_index": 6 if raw[0] >= 2 else 2}[name]
            assert raw[offset] == value
    else:
        again = km.encode(msg)
        assert len(again) == len(raw)
        skip = _RESERVED_OFFSETS[km.ObjectId(raw[0])]
        assert [b for i, b in enumerate(again) if i not in skip] == [b for i, b in enumerate(raw) if i not in skip]
