"""IDE rules that issue 14 found uncovered: replay protection, key freshness across a refresh, and K_SET_GO of
a slot no KEY_PROG filled.

All three read trace crossings only (the IDE_KM messages and the TLPs a device receives), so they judge a
recorded trace and a device behind an adapter as well as the model. Each keeps what it needs of the past in a
:func:`fold_history` fold, so a step costs its own events.
"""

from __future__ import annotations

from typing import Any

from teeio_conformance.contract import ide_km as km
from teeio_conformance.contract.errors import StackError
from teeio_conformance.contract.ide_stream import ProtectedTlp

from ._model import HELD, Area, Level, Needs, Observation, Rule, fold_history, make_rule
from ._view import session_of, subtree

__all__ = ["DEVICE_SIDE", "RULES"]

M = Level.MUST

_IFV_INITIAL = km.ifv_to_wire(1)  # a fresh key's IV starts at the initial invocation field 1 (KeyProg.5)


def _idekm(e: Any) -> tuple[Any, Any] | None:
    """(request, response or None) of an IDE_KM exchange with a device, or None for anything else."""
    if e.callee != "device" or e.operation != "handle_vendor_message" or not e.ok or len(e.arguments) < 2:
        return None
    if e.arguments[0] != 0:
        return None
    try:
        req = km.decode(bytes(e.arguments[1]))
    except (StackError, TypeError):
        return None
    resp: Any = None
    if e.result is not None:
        try:
            resp = km.decode(bytes(e.result))
        except (StackError, TypeError):
            resp = None
    return req, resp


def _key_prog_ok(e: Any) -> km.KeyProg | None:
    """The KEY_PROG of ``e`` if the device acknowledged it with SUCCESS."""
    x = _idekm(e)
    if x is None:
        return None
    req, resp = x
    if isinstance(req, km.KeyProg) and isinstance(resp, km.KpAck) and resp.status == km.KpAckStatus.SUCCESS:
        return req
    return None


# ------------------------------------------------------------------------------------------ IDE-09 replay
def _rx_key(p: ProtectedTlp) -> tuple[int, int, int, int]:
    """The receiver's counter space a TLP falls in: its device (the bus of the function it addresses), stream,
    key set and sub-stream. Counters belong to an Rx key slot (PCIe §6.33.5), not to a requester."""
    return (p.requester_id >> 8, p.stream_id, int(p.key_set), int(p.sub_stream()))


def _note_accepted(acc: dict[Any, int], e: Any) -> dict[Any, int]:
    """Highest invocation counter each Rx counter space has accepted; a fresh key (any successful KEY_PROG),
    a session end or a replug starts the spaces again (a new key restarts its counter)."""
    if e.callee != "device" or not e.ok:
        return acc
    if e.operation in ("spdm_end", "replug", "surprise_remove") or _key_prog_ok(e) is not None:
        return {}
    if e.operation == "receive" and e.arguments and isinstance(e.arguments[0], ProtectedTlp):
        p = e.arguments[0]
        k = _rx_key(p)
        acc = dict(acc)
        acc[k] = max(acc.get(k, -1), p.counter)
    return acc


def ide_replay_refused(o: Observation) -> str | None:
    """An IDE receiver takes a TLP only if its invocation counter is beyond the last one it accepted under that
    key; a replayed (or reordered) TLP is an integrity failure and is refused (the stream then goes Insecure:
    IDE-03). Judged whenever a device is handed a protected TLP whose counter it already passed."""
    if not any(e.callee == "device" and e.operation == "receive" for e in o.events):
        return None
    accepted = dict(fold_history(o, "ide.accepted", dict, _note_accepted))
    verdict: str | None = None
    for e in o.events:
        if (
            e.callee == "device"
            and e.operation == "receive"
            and e.arguments
            and isinstance(e.arguments[0], ProtectedTlp)
        ):
            p = e.arguments[0]
            last = accepted.get(_rx_key(p))
            if last is not None and p.counter <= last:
                if e.ok:
                    return (
                        f"the device accepted a replayed IDE TLP: counter {p.counter} on stream {p.stream_id} "
                        f"{p.key_set.name}/{p.sub_stream().name}, after it had accepted counter {last}"
                    )
                verdict = HELD
        accepted = _note_accepted(accepted, e)
    return verdict


# ------------------------------------------------------------------------------------------ IDE-10 key freshness
def _note_tsm_keys(acc: frozenset[bytes], e: Any) -> frozenset[bytes]:
    req = _key_prog_ok(e) if e.caller == "tsm" else None
    return acc | {req.key} if req is not None else acc


def ide_keys_fresh(o: Observation) -> str | None:
    """Every key the TSM has a device program is new: never one it programmed before -- so a key refresh
    (KEY_PROG of the other key set, then K_SET_GO) brings keys that differ from the old ones -- and each
    starts its IV afresh at the initial invocation field. Only the TSM's KEY_PROGs are judged: what a test
    harness sends by hand is not the SUT's choice."""
    progs = [
        e for e in o.events if e.caller == "tsm" and e.callee == "device" and e.operation == "handle_vendor_message"
    ]
    if not progs:
        return None
    seen = fold_history(o, "ide.tsm_keys", frozenset, _note_tsm_keys)
    now: dict[bytes, tuple[int | None, int, int]] = {}  # key -> (session, stream, slot byte) first given it here
    hit = False
    for e in progs:
        req = _key_prog_ok(e)
        if req is None:
            continue
        hit = True
        first = now.get(req.key)
        end = (session_of(e), req.stream_id, req.key_sub_stream)
        if req.key in seen or (first is not None and not _other_end(first, end)):
            return (
                f"the TSM programmed slot {req.key_sub_stream:#04x} of stream {req.stream_id} with a key it had "
                "programmed before (a refresh must bring new keys)"
            )
        if req.iv != _IFV_INITIAL:
            return f"the TSM programmed a fresh key with IFV {req.iv.hex()}, not the initial invocation field 1"
        now.setdefault(req.key, end)
    return HELD if hit else None


def _other_end(a: tuple[int | None, int, int], b: tuple[int | None, int, int]) -> bool:
    """Are ``a`` and ``b`` (session, stream, slot byte) the two ends of one sub-stream -- two devices (their
    sessions differ), the same stream, key set and sub-stream, opposite directions? A P2P stream's two devices
    get the same key that way, in one step (one end's Tx is the other's Rx, PCIe §6.33.4)."""
    try:
        x, y = km.KeySubStream.from_byte(a[2]), km.KeySubStream.from_byte(b[2])
    except StackError:
        return False
    same_sub = (x.key_set, x.sub_stream) == (y.key_set, y.sub_stream)
    return a[0] != b[0] and a[1] == b[1] and same_sub and x.direction != y.direction


# ------------------------------------------------------------------------------------------ IDE-11 GO on an empty slot
def _note_filled(acc: frozenset[tuple[int, int, int]], e: Any) -> frozenset[tuple[int, int, int]]:
    """Every (port, stream, slot) a KEY_PROG may have filled: set by a successful KEY_PROG, cleared only by an
    acknowledged K_SET_STOP of it. Anything else that might empty a slot (a session end, a reset) is left
    out, so the rule never calls a slot empty that a device could still hold a key in."""
    x = _idekm(e)
    if x is None:
        return acc
    req, resp = x
    if isinstance(req, km.KeyProg) and isinstance(resp, km.KpAck) and resp.status == km.KpAckStatus.SUCCESS:
        return acc | {(req.port_index, req.stream_id, req.key_sub_stream)}
    if isinstance(req, km.KSetStop) and isinstance(resp, km.KGoStopAck):
        return acc - {(req.port_index, req.stream_id, req.key_sub_stream)}
    return acc


def ide_go_needs_key(o: Observation) -> str | None:
    """K_SET_GO makes a programmed key set live; K_GOSTOP_ACK carries no status, so acknowledging a GO of a slot
    that no KEY_PROG ever filled claims a key set is live when there is no key. Such a GO is dropped. Judged
    at each K_SET_GO of a valid slot (port, stream, key set, direction, sub-stream) never programmed."""
    gos = [e for e in o.events if (x := _idekm(e)) is not None and isinstance(x[0], km.KSetGo)]
    if not gos:
        return None
    filled = set(fold_history(o, "ide.filled", frozenset, _note_filled))
    verdict: str | None = None
    for e in o.events:
        x = _idekm(e)
        if x is not None and isinstance(x[0], km.KSetGo):
            req, resp = x
            try:
                km.KeySubStream.from_byte(req.key_sub_stream)
            except StackError:
                filled = set(_note_filled(frozenset(filled), e))
                continue
            if (req.port_index, req.stream_id, req.key_sub_stream) not in filled:
                if isinstance(resp, km.KGoStopAck):
                    return (
                        f"K_SET_GO of slot {req.key_sub_stream:#04x} (port {req.port_index}, stream {req.stream_id}) "
                        f"from session {session_of(e)} was acknowledged, but no KEY_PROG ever filled that slot"
                    )
                verdict = HELD
        filled = set(_note_filled(frozenset(filled), e))
    return verdict


def ide_refresh_goes_live(o: Observation) -> str | None:
    """A key refresh the TSM reports done has made the key set it programmed live: every slot a KEY_PROG of
    the refresh filled on a device was then switched to with an acknowledged K_SET_GO. Programming the other
    key set and never going to it leaves the stream on the old keys while the host believes them replaced."""
    refreshes = o.ops("tsm", "refresh_keys", ok=True)
    if not refreshes:
        return None
    for r in refreshes:
        filled: set[tuple[int | None, int, int]] = set()
        live: set[tuple[int | None, int, int]] = set()
        for e in subtree(o, r):
            x = _idekm(e)
            if x is None:
                continue
            req, resp = x
            slot = (session_of(e), getattr(req, "stream_id", -1), getattr(req, "key_sub_stream", -1))
            if isinstance(req, km.KeyProg) and isinstance(resp, km.KpAck) and resp.status == km.KpAckStatus.SUCCESS:
                filled.add(slot)
            elif isinstance(req, km.KSetGo) and isinstance(resp, km.KGoStopAck):
                live.add(slot)
        missing = sorted(filled - live, key=repr)
        if missing:
            _, stream, sub = missing[0]
            return (
                f"refresh_keys returned with slot {sub:#04x} of stream {stream} programmed but never made live "
                f"(no acknowledged K_SET_GO; {len(missing)} slot(s) in all)"
            )
    return HELD


_IDEKM = "device.handle_vendor_message"

RULES: list[Rule] = [
    make_rule(
        "IDE-09",
        "a replayed or reordered IDE TLP (invocation counter not beyond the last accepted) is refused",
        Area.IDE,
        M,
        "PCIe §6.33 (IDE: a TLP whose counter is not the next expected is an integrity failure); rules-seed "
        "(c)/E.68; issue 14 (IDE replay protection)",
        ide_replay_refused,
        on={"device.receive"},
        needs=Needs(
            crossings={"device.receive", _IDEKM, "device.spdm_end", "device.replug", "device.surprise_remove"},
            errors=False,
            snapshots=(),
        ),
    ),
    make_rule(
        "IDE-10",
        "every key the TSM programs is new (a refresh brings other keys) and starts at the initial IFV",
        Area.IDE,
        M,
        "PCIe §11.5.5 (a key is never reused); rules-seed E.71/E.72; [TEEIO-VAL] KeyProg.5 (IFV 1); issue 14 "
        "(key freshness across a refresh)",
        ide_keys_fresh,
        on={_IDEKM},
        needs=Needs(crossings={_IDEKM}, errors=False, snapshots=()),
    ),
    make_rule(
        "IDE-11",
        "K_SET_GO of a slot no KEY_PROG filled is not acknowledged",
        Area.IDE,
        M,
        "[LIBSPDM-IDEKM] K_GOSTOP_ACK (no status field: an ACK means done); PCIe §6.33.3 (IDE_KM); rules-seed "
        "E.66; issue 14 (K_SET_GO on a slot never programmed)",
        ide_go_needs_key,
        on={_IDEKM},
        needs=Needs(crossings={_IDEKM}, errors=False, snapshots=()),
    ),
    make_rule(
        "IDE-12",
        "a key refresh that returns has made the key set it programmed live (K_SET_GO of every slot)",
        Area.IDE,
        M,
        "PCIe §11.4.5; rules-seed E.72 (program the other key set, then K_SET_GO it); issue 14 (key freshness "
        "across a refresh)",
        ide_refresh_goes_live,
        on={"tsm.refresh_keys"},
        needs=Needs(crossings={"tsm.refresh_keys", _IDEKM}, errors=False, snapshots=()),
    ),
]

DEVICE_SIDE = frozenset({"IDE-09", "IDE-11"})
"""The rules here that judge a device (the rest judge the TSM): what a device socket cannot carry -- TLPs --
makes IDE-09 not applicable there."""
