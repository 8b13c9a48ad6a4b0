"""IDE_KM codec: round trips, byte-exact layouts (libspdm pci_idekm.h), fuzz of malformed bytes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from reference_impl.device.ide import km_codec as km
from reference_impl.errors import CodecError
from strategies.messages import ide_km_requests, ide_km_responses, malformed_ide_km_requests

KEY = bytes(range(32))
IV = bytes.fromhex("0000000001000000")


@given(ide_km_requests())
def test_requests_round_trip(msg):
    assert km.decode(km.encode(msg)) == msg


@given(ide_km_responses())
def test_responses_round_trip(msg):
    assert km.decode(km.encode(msg)) == msg


@pytest.mark.parametrize(
    ("msg", "hexbytes"),
    [
        (km.Query(port_index=2), "00" "00" "02"),  # object_id, reserved, port_index
        (km.QueryResp(port_index=0, dev_func_num=1, bus_num=0x3A, segment=0, max_port_index=3,
                      ide_registers=(0x11223344,)), "01" "00" "00" "01" "3a" "00" "03" "44332211"),
        # object_id, reserved[2], stream_id, reserved, key_sub_stream, port_index, key[32], IFV[8] = 47 bytes
        (km.KeyProg(stream_id=5, key_sub_stream=0x12, port_index=1, key=KEY, iv=IV),
         "02" "0000" "05" "00" "12" "01" + KEY.hex() + IV.hex()),
        (km.KpAck(stream_id=5, status=km.KpAckStatus.UNSUPPORTED_VALUE, key_sub_stream=0x12, port_index=1),
         "03" "0000" "05" "03" "12" "01"),
        (km.KSetGo(stream_id=5, key_sub_stream=0x22, port_index=0), "04" "0000" "05" "00" "22" "00"),
        (km.KSetStop(stream_id=5, key_sub_stream=0x23, port_index=0), "05" "0000" "05" "00" "23" "00"),
        (km.KGoStopAck(stream_id=5, key_sub_stream=0x23, port_index=0), "06" "0000" "05" "00" "23" "00"),
    ],
)
def test_bytes_match_the_spec_layout(msg, hexbytes):
    assert km.encode(msg).hex() == hexbytes


def test_key_sub_stream_byte():
    """bit 0 key set, bit 1 direction (Tx=1), bits 7:4 sub-stream (PR 0, NPR 1, CPL 2)."""
    slot = km.KeySubStream(km.KeySet.K1, km.Direction.TX, km.SubStream.CPL)
    assert slot.to_byte() == 0x23 and km.KeySubStream.from_byte(0x23) == slot
    with pytest.raises(CodecError):
        km.KeySubStream.from_byte(0x30)  # sub-stream 3


def test_truncated_key_prog_keeps_the_fields_it_could_read():
    raw = km.encode(km.KeyProg(stream_id=5, key_sub_stream=0x12, port_index=1, key=KEY, iv=IV))[:-8]
    with pytest.raises(km.IdeKmDecodeError) as e:
        km.decode(raw)
    assert e.value.code == km.KpAckStatus.INCORRECT_LENGTH
    assert e.value.partial == {"stream_id": 5, "key_sub_stream": 0x12, "port_index": 1}


@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(malformed_ide_km_requests())
def test_fuzz_decoder_raises_only_its_typed_error(raw):
    """10,000 malformed inputs: a message or IdeKmDecodeError, never anything else."""
    try:
        km.decode(raw)
    except km.IdeKmDecodeError:
        pass
