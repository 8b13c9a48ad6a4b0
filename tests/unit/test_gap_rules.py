"""The trace-only rules of issue 14's gaps (IDE-09, IDE-10, IDE-11) on hand-made crossings: each holds on the
honest exchange and fails on the broken one, without a machine (as ``check-trace`` judges a recorded trace)."""

from __future__ import annotations

from typing import Any

from teeio_conformance.conformance.rules import BY_ID, HELD, Observation
from teeio_conformance.contract import ide_km as km
from teeio_conformance.contract.ide_stream import IdeLink, Tlp
from teeio_conformance.contract.trace import Event

IV = km.ifv_to_wire(1)
SLOT = km.KeySubStream(key_set=km.KeySet.K0, direction=km.Direction.RX, sub_stream=km.SubStream.PR).to_byte()
EMPTY = km.KeySubStream(key_set=km.KeySet.K1, direction=km.Direction.RX, sub_stream=km.SubStream.PR).to_byte()


def _obs(events: list[Event], history: tuple[Event, ...] | list[Event] = ()) -> Observation:
    return Observation(
        profile="tdx", action="test", events=events, history=list(history), before=None, after=None, error=None
    )


def _idekm(seq: int, msg: Any, resp: Any, caller: str = "tsm") -> Event:
    return Event(
        seq,
        caller,
        "device",
        "handle_vendor_message",
        (0, km.encode(msg)),
        (("session_id", 1),),
        "ok",
        None if resp is None else km.encode(resp),
    )


def _key_prog(seq: int, key: bytes, slot: int = SLOT, caller: str = "tsm", iv: bytes = IV) -> Event:
    msg = km.KeyProg(stream_id=0, key_sub_stream=slot, port_index=0, key=key, iv=iv)
    ack = km.KpAck(stream_id=0, status=km.KpAckStatus.SUCCESS, key_sub_stream=slot, port_index=0)
    return _idekm(seq, msg, ack, caller)


def test_ide09_replayed_tlp() -> None:
    link = IdeLink.create(rid_base=0x3A00, rid_limit=0x3A01)
    link.bring_up()
    packet = link.root_port.protect(
        Tlp(kind="MRd", requester_id=0x3A00, address=0, t_bit=False, payload=b"\x04\0\0\0", stream_id=0)
    )
    first = Event(1, "harness", "device", "receive", (packet,), (), "ok", b"\0" * 4)
    refused = Event(
        2, "harness", "device", "receive", (packet,), (), "error", None, "AccessFault", "IDE integrity failure"
    )
    taken = Event(2, "harness", "device", "receive", (packet,), (), "ok", b"\0" * 4)
    rule = BY_ID["IDE-09"].check
    assert rule(_obs([first])) is None  # a fresh counter: nothing to judge
    assert rule(_obs([refused], [first])) == HELD
    assert "replayed" in (rule(_obs([taken], [first])) or "")
    assert rule(_obs([first, taken])) not in (None, HELD)  # within one step too


def test_ide10_tsm_keys_fresh() -> None:
    rule = BY_ID["IDE-10"].check
    assert rule(_obs([_key_prog(2, b"\2" * 32)], [_key_prog(1, b"\1" * 32)])) == HELD
    assert "programmed before" in (rule(_obs([_key_prog(2, b"\1" * 32)], [_key_prog(1, b"\1" * 32)])) or "")
    assert "IFV" in (rule(_obs([_key_prog(1, b"\3" * 32, iv=km.ifv_to_wire(2))])) or "")
    # what a test harness programs by hand is not the TSM's choice
    assert (
        rule(_obs([_key_prog(2, b"\1" * 32, caller="harness")], [_key_prog(1, b"\1" * 32, caller="harness")])) is None
    )


def test_ide11_go_of_an_empty_slot() -> None:
    rule = BY_ID["IDE-11"].check
    go = km.KSetGo(stream_id=0, key_sub_stream=EMPTY, port_index=0)
    ack = km.KGoStopAck(stream_id=0, key_sub_stream=EMPTY, port_index=0)
    assert rule(_obs([_idekm(2, go, None)], [_key_prog(1, b"\1" * 32)])) == HELD  # dropped: right
    assert "no KEY_PROG" in (rule(_obs([_idekm(2, go, ack)], [_key_prog(1, b"\1" * 32)])) or "")
    # once a KEY_PROG filled it, an acknowledged GO is not this rule's business
    assert rule(_obs([_idekm(2, go, ack)], [_key_prog(1, b"\1" * 32, slot=EMPTY)])) is None
