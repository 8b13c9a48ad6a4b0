"""Selective IDE streams: key slots, AES-256-GCM protection of TLPs, Secure / Insecure.

Theory of operation
-------------------
One :class:`IdeStreamEndpoint` is one end (root port or endpoint) of one selective IDE stream
(PCIe r6.2 §6.33.4). It holds 12 key slots -- 2 key sets x {Rx, Tx} x {PR, NPR, CPL} -- each empty or
holding a 256-bit key and its 64-bit IFV (IDE_KM KEY_PROG). K_SET_GO makes a programmed slot's key set the
*active* one for its (direction, sub-stream); K_SET_STOP forgets a slot's key and, if that set was
active, leaves the pair without a key. The stream is SECURE only while it is enabled and all six
(direction, sub-stream) pairs have an active key set; otherwise INSECURE (rules-seed (c): Selective IDE
Stream Status).

Protection (rules-seed (c), tee-io-validator ``key_byte_order.md``): AES-GCM with the 256-bit key, a
96-bit IV whose top 32 bits are zero and whose low 64 bits are IFV + the slot's invocation counter, the
TLP header (every non-payload field) as additional authenticated data, and the payload encrypted with a
96-bit MAC appended. Counters belong to a slot and restart when the slot is programmed: a fresh key
starts a fresh counter space, so an IV is never reused under one key and a key refresh (program K1, go
K1) needs no counter hand-over.

Any failed receive check -- stream not Secure, wrong stream, RID or address outside the association,
key set not the active one, replayed counter, bad MAC -- is an IDE integrity failure: the stream goes
INSECURE and stays so (sticky) until every pair has been re-programmed *and* re-gone and the stream
re-enabled (PCIe §6.33: a Secure stream can drop to Insecure at any time, the host treats it like a link
going down -- rules-seed E.68). The sticky mark also clears the enable bit, so the host has to set it
again after re-keying, as Linux ``pci_ide`` does.

Model simplifications (documented, deliberate):

* TLPs carry their invocation counter (real IDE receivers keep their own, so a lost TLP breaks the
  MAC); the receiver accepts any counter >= the next expected one and refuses anything lower
  (replay, reordering). Gaps are allowed because the model does not lose TLPs.
* A receiver uses only the *active* key set of the sub-stream; real receivers select the key by the K bit
  of the IDE prefix and may briefly accept both sets during a refresh. The model's links are synchronous
  (no TLP in flight while keys change), so the difference is invisible.
* Associations are enforced on receive only: :meth:`IdeStreamEndpoint.protect` encrypts whatever it is
  given, so tests can model a rogue sender; the honest receiver is the gatekeeper.
* The AES key is the 32 bytes given to :meth:`IdeStreamEndpoint.program_key` as they are; both ends of a
  stream are given the same bytes, so byte order (KEY_PROG's DW7..DW0) cannot matter inside the model.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from teeio_conformance.contract.errors import AccessFault, InvalidArgument, InvalidState
from teeio_conformance.contract.ide_km import Direction, KeySet, KeySubStream, SubStream

__all__ = [
    "MAC_LEN",
    "IdeIntegrityError",
    "IdeLink",
    "IdeStreamEndpoint",
    "ProtectedTlp",
    "StreamSnapshot",
    "StreamState",
    "Tlp",
    "flip_bit",
    "protected_bit_length",
    "with_key_set",
]

MAC_LEN = 12  # 96-bit MAC (PCIe §6.33.5; rules-seed (c))
_GCM_TAG = 16  # what AESGCM appends
_TRUNCATE = MAC_LEN - _GCM_TAG  # slice end that keeps the first 96 tag bits
KEY_LEN = 32
IFV_LEN = 8
_U64 = (1 << 64) - 1
_PAIRS: tuple[tuple[Direction, SubStream], ...] = tuple((d, s) for d in Direction for s in SubStream)
_TX_BIT = 1 << 1  # key_sub_stream byte: bit 0 key set, bit 1 direction, bits 7:4 sub-stream
_KIND_CODE = {"MRd": 0, "MWr": 1, "Cpl": 2, "Msg": 3}
_CODE_KIND = {code: kind for kind, code in _KIND_CODE.items()}
_KIND_SUB = {"MWr": SubStream.PR, "Msg": SubStream.PR, "MRd": SubStream.NPR, "Cpl": SubStream.CPL}
_MEMORY = frozenset({"MRd", "MWr"})
_HEADER = struct.Struct("<BHQBH")  # kind code, RID, address, T bit, stream id (0xFFFF: not IDE)
_NO_STREAM = 0xFFFF
_IV_PAD = bytes(4)  # PCIe: IV bits 95:64 are zero (CXL would put 0x80000000 there)


class StreamState(enum.Enum):
    """Selective IDE Stream Status state (IDE extended capability, bits 3:0)."""

    INSECURE = "insecure"
    SECURE = "secure"


class IdeIntegrityError(AccessFault):
    """A protected TLP failed a receive check; the receiving stream is now Insecure (PCIe §6.33)."""


# ------------------------------------------------------------------------------------------ TLPs
# One validation function per class (run from __attrs_post_init__) rather than one attrs validator per
# field: a TLP is built twice per protect+unprotect round trip, and seven validator calls were a fifth
# of its cost.
def _uint(v: Any, bits: int) -> bool:
    if type(v) is int:  # the common case, kept cheap
        return v >= 0 and v >> bits == 0
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << bits


def _bad(inst: Any, field: str, expected: str, got: Any) -> InvalidArgument:
    return InvalidArgument(f"{type(inst).__name__}.{field}: expected {expected}, got {got!r:.60}")


def _check_header(t: Tlp | ProtectedTlp) -> None:
    if not isinstance(t.kind, str) or t.kind not in _KIND_CODE:
        raise _bad(t, "kind", "MRd, MWr, Cpl or Msg", t.kind)
    if not _uint(t.requester_id, 16):
        raise _bad(t, "requester_id", "an unsigned 16-bit RID", t.requester_id)
    if not _uint(t.address, 64):
        raise _bad(t, "address", "an unsigned 64-bit address", t.address)
    if not isinstance(t.t_bit, bool):
        raise _bad(t, "t_bit", "a bool", t.t_bit)


def _header(kind: str, rid: int, address: int, t_bit: bool, stream_id: int | None) -> bytes:
    return _HEADER.pack(_KIND_CODE[kind], rid, address, t_bit, _NO_STREAM if stream_id is None else stream_id)


@attrs.frozen(kw_only=True)
class Tlp:
    """A TLP as the model needs it. ``stream_id`` None: not IDE-protected (sent in the clear)."""

    kind: str
    requester_id: int
    address: int
    t_bit: bool
    payload: bytes = attrs.field(repr=False)
    stream_id: int | None = None

    def __attrs_post_init__(self) -> None:
        _check_header(self)
        if not isinstance(self.payload, bytes):
            raise _bad(self, "payload", "bytes", type(self.payload).__name__)
        if self.stream_id is not None and not _uint(self.stream_id, 8):
            raise _bad(self, "stream_id", "None or a stream ID 0..255", self.stream_id)

    def sub_stream(self) -> SubStream:
        """Posted (MWr, Msg) -> PR, non-posted (MRd) -> NPR, completions -> CPL (PCIe §6.33.4)."""
        return _KIND_SUB[self.kind]

    def header_bytes(self) -> bytes:
        """Every non-payload field, packed: the AAD of IDE's AES-GCM."""
        return _header(self.kind, self.requester_id, self.address, self.t_bit, self.stream_id)


@attrs.frozen(kw_only=True)
class ProtectedTlp:
    """A TLP after IDE: header fields in the clear, payload encrypted with the MAC appended."""

    kind: str
    requester_id: int
    address: int
    t_bit: bool
    stream_id: int
    key_set: KeySet
    counter: int
    ciphertext: bytes = attrs.field(repr=False)

    def __attrs_post_init__(self) -> None:
        _check_header(self)
        if not _uint(self.stream_id, 8):
            raise _bad(self, "stream_id", "a stream ID 0..255", self.stream_id)
        if not isinstance(self.key_set, KeySet):
            raise _bad(self, "key_set", "a KeySet", self.key_set)
        if not _uint(self.counter, 64):
            raise _bad(self, "counter", "an unsigned 64-bit invocation counter", self.counter)
        if not isinstance(self.ciphertext, bytes) or len(self.ciphertext) < MAC_LEN:
            raise _bad(self, "ciphertext", f"bytes ending in a {MAC_LEN}-byte MAC", self.ciphertext)

    def sub_stream(self) -> SubStream:
        return _KIND_SUB[self.kind]

    def header_bytes(self) -> bytes:
        """The AAD the sender used (same packing as :meth:`Tlp.header_bytes`)."""
        return _header(self.kind, self.requester_id, self.address, self.t_bit, self.stream_id)


# Bit layout used by :func:`flip_bit`: (field, width) in order, then the ciphertext bytes.
_FIELD_BITS: tuple[tuple[str, int], ...] = (
    ("kind", 2),
    ("requester_id", 16),
    ("address", 64),
    ("t_bit", 1),
    ("stream_id", 8),
    ("key_set", 1),
    ("counter", 64),
)
_FIXED_BITS = sum(w for _, w in _FIELD_BITS)


def protected_bit_length(p: ProtectedTlp) -> int:
    """How many bits :func:`flip_bit` can flip in ``p``: every header field, then the ciphertext."""
    return _FIXED_BITS + 8 * len(p.ciphertext)


def flip_bit(p: ProtectedTlp, index: int) -> ProtectedTlp:
    """``p`` with one bit flipped: a tamper hook for tests (kind is coded MRd 0, MWr 1, Cpl 2, Msg 3)."""
    if not 0 <= index < protected_bit_length(p):
        raise InvalidArgument(f"flip_bit: index must be in 0..{protected_bit_length(p) - 1}, got {index}")
    for name, width in _FIELD_BITS:
        if index < width:
            return _flip_field(p, name, index)
        index -= width
    data = bytearray(p.ciphertext)
    data[index // 8] ^= 1 << (index % 8)
    return attrs.evolve(p, ciphertext=bytes(data))


def _flip_field(p: ProtectedTlp, name: str, bit: int) -> ProtectedTlp:
    if name == "kind":
        return attrs.evolve(p, kind=_CODE_KIND[_KIND_CODE[p.kind] ^ 1 << bit])
    if name == "t_bit":
        return attrs.evolve(p, t_bit=not p.t_bit)
    if name == "key_set":
        return with_key_set(p, KeySet(1 - p.key_set))
    return attrs.evolve(p, **{name: getattr(p, name) ^ 1 << bit})


def with_key_set(p: ProtectedTlp, key_set: KeySet) -> ProtectedTlp:
    """``p`` claiming another key set (tamper hook: the wrong-key-set case)."""
    return attrs.evolve(p, key_set=key_set)


# ------------------------------------------------------------------------------------------ snapshot
@attrs.frozen(kw_only=True)
class StreamSnapshot:
    """Plain-data view of one stream end. Names which slots hold a key, never the key or IFV."""

    stream_id: int
    state: str
    enabled: bool
    rid_base: int
    rid_limit: int
    addr_ranges: tuple[tuple[int, int], ...]
    programmed: tuple[str, ...]  # "K0/RX/PR" ...
    active: tuple[tuple[str, str, str], ...]  # (direction, sub-stream, key set)
    counters: tuple[tuple[str, int], ...]  # slot -> next Tx counter / next acceptable Rx counter
    rekey_pending: tuple[tuple[str, str], ...]  # (direction, sub-stream) still to re-key after a failure
    insecure_reason: str | None


@attrs.define
class _Slot:
    """One programmed key slot; the cipher object is cached (building one per TLP is slow).

    IDE's MAC is GCM's tag truncated to 96 bits (MSB_96), but ``AESGCM`` only makes and checks full
    128-bit tags. So :meth:`seal` drops the last 4 tag bytes, and :meth:`open` recovers the plaintext
    with the GCM keystream (the sealing of zeros under the same IV and AAD) and recomputes the tag,
    comparing the 96 bits in constant time -- the standard truncated-tag check, at two AESGCM calls
    (the lower-level ``Cipher(GCM(min_tag_length=12))`` path costs about three times as much per TLP).
    """

    aead: AESGCM = attrs.field(repr=False)
    ifv: int = attrs.field(repr=False)
    counter: int = 0
    fresh: bool = True  # programmed since the last integrity failure

    def seal(self, nonce: bytes, payload: bytes, aad: bytes) -> bytes:
        return self.aead.encrypt(nonce, payload, aad)[:_TRUNCATE]

    def open(self, nonce: bytes, sealed: bytes, aad: bytes) -> bytes | None:
        """The payload, or None when the 96-bit MAC does not match."""
        size = len(sealed) - MAC_LEN
        body, mac = sealed[:size], sealed[size:]
        stream = self.aead.encrypt(nonce, bytes(size), aad)[:size]
        payload = (int.from_bytes(body, "little") ^ int.from_bytes(stream, "little")).to_bytes(size, "little")
        expected = self.aead.encrypt(nonce, payload, aad)[size : size + MAC_LEN]
        return payload if hmac.compare_digest(expected, mac) else None


def _nonce(ifv: int, counter: int) -> bytes | None:
    """The 96-bit AES-GCM IV: 32 zero bits, then IFV + counter; None once the 64 bits run out."""
    value = ifv + counter
    return None if value > _U64 else _IV_PAD + value.to_bytes(8, "big")


def _ifv(iv: bytes) -> int:
    """KEY_PROG carries the IFV as DW1 then DW0, each little-endian (tee-io-validator key_byte_order.md)."""
    high, low = struct.unpack("<II", iv)
    return int(high) << 32 | int(low)


def _check_u(name: str, value: Any, bits: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << bits:
        raise InvalidArgument(f"IdeStreamEndpoint {name}: expected an unsigned {bits}-bit integer, got {value!r}")
    return value


def _check_ranges(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    try:
        out = tuple((base, limit) for base, limit in ranges)
    except (TypeError, ValueError):
        raise InvalidArgument(
            f"IdeStreamEndpoint addr_ranges: expected (base, limit) pairs, got {ranges!r:.60}"
        ) from None
    for base, limit in out:
        if not (_uint(base, 64) and _uint(limit, 64) and base <= limit):
            raise InvalidArgument(
                f"IdeStreamEndpoint addr_ranges: need 0 <= base <= limit < 2**64, got ({base!r}, {limit!r})"
            )
    return out


def _slot_byte(slot: Any, operation: str) -> int:
    if not isinstance(slot, KeySubStream):
        raise InvalidArgument(f"{operation}: expected a KeySubStream slot, got {slot!r:.60}")
    return slot.to_byte()


# ------------------------------------------------------------------------------------------ endpoint
class IdeStreamEndpoint:
    """One end of a selective IDE stream with its RID (and optional address) association."""

    def __init__(
        self, *, stream_id: int, rid_base: int, rid_limit: int, addr_ranges: Iterable[tuple[int, int]] = ()
    ) -> None:
        self.stream_id = _check_u("stream_id", stream_id, 8)
        self.rid_base = _check_u("rid_base", rid_base, 16)
        self.rid_limit = _check_u("rid_limit", rid_limit, 16)
        if rid_base > rid_limit:
            raise InvalidArgument(f"IdeStreamEndpoint: rid_base {rid_base:#06x} > rid_limit {rid_limit:#06x}")
        self.addr_ranges = _check_ranges(addr_ranges)
        self._slots: dict[int, _Slot] = {}  # by key_sub_stream byte: cheap to hash per TLP
        self._active: dict[tuple[Direction, SubStream], KeySet] = {}
        self._enabled = False
        self._rekey: set[tuple[Direction, SubStream]] = set()
        self._insecure_reason: str | None = None
        self._force_state: StreamState | None = None  # seam for deliberately broken devices (mutants)

    def __repr__(self) -> str:
        return f"IdeStreamEndpoint(stream_id={self.stream_id}, state={self.state.name})"

    # ------------------------------------------------------------------ key management (IDE_KM)
    def program_key(self, slot: KeySubStream, key: bytes, iv: bytes) -> None:
        """KEY_PROG: put ``key`` and IFV ``iv`` (wire order) into ``slot``; its counter restarts."""
        index = _slot_byte(slot, "program_key")
        if not isinstance(key, bytes) or len(key) != KEY_LEN:
            raise InvalidArgument(f"program_key key: expected {KEY_LEN} bytes, got {_describe(key)}")
        if not isinstance(iv, bytes) or len(iv) != IFV_LEN:
            raise InvalidArgument(f"program_key iv: expected {IFV_LEN} bytes (IFV), got {_describe(iv)}")
        self._slots[index] = _Slot(aead=AESGCM(key), ifv=_ifv(iv))

    def is_programmed(self, slot: KeySubStream) -> bool:
        return _slot_byte(slot, "is_programmed") in self._slots

    def go(self, slot: KeySubStream) -> None:
        """K_SET_GO: make ``slot``'s key set the active one for its direction and sub-stream."""
        held = self._slots.get(_slot_byte(slot, "K_SET_GO"))
        if held is None:
            raise InvalidState(f"K_SET_GO {slot}: no key programmed in that slot")
        pair = (slot.direction, slot.sub_stream)
        self._active[pair] = slot.key_set
        if held.fresh:
            self._rekey.discard(pair)
            if not self._rekey:
                self._insecure_reason = None

    def stop(self, slot: KeySubStream) -> None:
        """K_SET_STOP: forget ``slot``'s key; if its set was the active one, the pair has none now."""
        index = _slot_byte(slot, "K_SET_STOP")
        pair = (slot.direction, slot.sub_stream)
        if self._active.get(pair) is slot.key_set:
            del self._active[pair]
        self._slots.pop(index, None)

    def enable(self) -> None:
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def mark_insecure(self, reason: str) -> None:
        """Drop to Insecure until every pair is re-programmed and re-gone and the stream re-enabled."""
        self._insecure_reason = reason
        self._rekey = set(_PAIRS)
        self._enabled = False
        self._force_state = None
        for held in self._slots.values():
            held.fresh = False

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> StreamState:
        if self._force_state is not None:
            return self._force_state
        if self._enabled and not self._rekey and len(self._active) == len(_PAIRS):
            return StreamState.SECURE
        return StreamState.INSECURE

    @property
    def insecure_reason(self) -> str | None:
        """Why the stream is not Secure (None when it is)."""
        if self.state is StreamState.SECURE:
            return None
        if self._insecure_reason is not None:
            return self._insecure_reason
        missing = [f"{d.name}/{s.name}" for d, s in _PAIRS if (d, s) not in self._active]
        if missing:
            return f"no active key for {', '.join(missing)}"
        return "stream not enabled"

    def snapshot(self) -> StreamSnapshot:
        return StreamSnapshot(
            stream_id=self.stream_id,
            state=self.state.name,
            enabled=self._enabled,
            rid_base=self.rid_base,
            rid_limit=self.rid_limit,
            addr_ranges=self.addr_ranges,
            programmed=tuple(str(KeySubStream.from_byte(b)) for b in sorted(self._slots)),
            active=tuple((d.name, s.name, self._active[(d, s)].name) for d, s in _PAIRS if (d, s) in self._active),
            counters=tuple((str(KeySubStream.from_byte(b)), self._slots[b].counter) for b in sorted(self._slots)),
            rekey_pending=tuple((d.name, s.name) for d, s in _PAIRS if (d, s) in self._rekey),
            insecure_reason=self.insecure_reason,
        )

    # ------------------------------------------------------------------ TLP protection
    def protect(self, tlp: Tlp) -> ProtectedTlp:
        """Tx: encrypt and tag ``tlp`` with the active Tx key of its sub-stream; InvalidState if none."""
        if self.state is not StreamState.SECURE:
            raise InvalidState(f"IDE stream {self.stream_id} is not Secure: {self.insecure_reason}")
        if tlp.stream_id is not None and tlp.stream_id != self.stream_id:
            raise InvalidArgument(f"TLP names IDE stream {tlp.stream_id}, this is stream {self.stream_id}")
        sub = _KIND_SUB[tlp.kind]
        key_set = self._active.get((Direction.TX, sub))
        held = None if key_set is None else self._slots.get(key_set | _TX_BIT | sub << 4)
        if key_set is None or held is None:
            raise InvalidState(f"IDE stream {self.stream_id}: no active Tx key for {sub.name}")
        nonce = _nonce(held.ifv, held.counter)
        if nonce is None:
            self.mark_insecure(f"Tx invocation counter exhausted on {key_set.name}/TX/{sub.name}")
            raise InvalidState(f"IDE stream {self.stream_id}: Tx key {key_set.name}/{sub.name} is used up")
        aad = _header(tlp.kind, tlp.requester_id, tlp.address, tlp.t_bit, self.stream_id)
        sealed = held.seal(nonce, tlp.payload, aad)
        counter, held.counter = held.counter, held.counter + 1
        return ProtectedTlp(
            kind=tlp.kind,
            requester_id=tlp.requester_id,
            address=tlp.address,
            t_bit=tlp.t_bit,
            stream_id=self.stream_id,
            key_set=key_set,
            counter=counter,
            ciphertext=sealed,
        )

    def unprotect(self, p: ProtectedTlp) -> Tlp:
        """Rx: check and decrypt; any failure makes the stream Insecure and raises IdeIntegrityError."""
        held = self._receive_slot(p)
        nonce = _nonce(held.ifv, p.counter)
        if nonce is None:
            raise self._fail(f"invocation counter {p.counter} is beyond the key's IV space")
        payload = held.open(nonce, p.ciphertext, p.header_bytes())
        if payload is None:
            raise self._fail("MAC check failed (TLP altered or wrong key)")
        held.counter = p.counter + 1
        return Tlp(
            kind=p.kind,
            requester_id=p.requester_id,
            address=p.address,
            t_bit=p.t_bit,
            payload=payload,
            stream_id=p.stream_id,
        )

    def _receive_slot(self, p: ProtectedTlp) -> _Slot:
        """The Rx slot for ``p`` after the association, key-set and replay checks."""
        if self.state is not StreamState.SECURE:
            raise self._fail(f"received on a stream that is not Secure ({self.insecure_reason})")
        if p.stream_id != self.stream_id:
            raise self._fail(f"TLP for stream {p.stream_id} arrived on stream {self.stream_id}")
        if not self.rid_base <= p.requester_id <= self.rid_limit:
            raise self._fail(
                f"RID {p.requester_id:#06x} is outside the RID association {self.rid_base:#06x}..{self.rid_limit:#06x}"
            )
        if self.addr_ranges and p.kind in _MEMORY and not self._in_ranges(p.address):
            raise self._fail(f"address {p.address:#x} is outside the address association (misrouted)")
        sub = _KIND_SUB[p.kind]
        held = self._slots.get(p.key_set | sub << 4)  # Rx: direction bit 0
        if held is None or self._active.get((Direction.RX, sub)) is not p.key_set:
            raise self._fail(f"key set {p.key_set.name} is not the active Rx key set for {sub.name}")
        if p.counter < held.counter:
            raise self._fail(f"replayed or reordered TLP: counter {p.counter} < next expected {held.counter}")
        return held

    def _in_ranges(self, address: int) -> bool:
        return any(base <= address <= limit for base, limit in self.addr_ranges)

    def _fail(self, why: str) -> IdeIntegrityError:
        self.mark_insecure(f"integrity failure: {why}")
        return IdeIntegrityError(f"IDE stream {self.stream_id}: {why}")


def _describe(value: Any) -> str:
    return f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__


# ------------------------------------------------------------------------------------------ link
def _default_key(stream_id: int, key_set: KeySet, pair: tuple[Direction, SubStream], generation: int) -> bytes:
    """A distinct key per stream, set, pair and generation (PCIe §11.5.5: never reuse a key)."""
    label = f"ide-link/{stream_id}/{key_set.name}/{pair[0].name}/{pair[1].name}/{generation}"
    return hashlib.sha256(label.encode()).digest()


class IdeLink:
    """The root-port and endpoint ends of one stream, back to back: a bench for tests.

    The endpoint's Rx key of a sub-stream is the root port's Tx key and vice versa. ``tamper_next``
    installs a one-shot transformation of the next protected TLP on the wire (see :func:`flip_bit`,
    :func:`with_key_set`); ``replay_downstream`` / ``replay_upstream`` deliver the last packet again.
    """

    DEFAULT_IV = struct.pack("<II", 0, 1)  # IFV words {0, 1}, as tee-io-validator programs them

    def __init__(self, *, root_port: IdeStreamEndpoint, endpoint: IdeStreamEndpoint) -> None:
        if root_port.stream_id != endpoint.stream_id:
            raise InvalidArgument(
                f"IdeLink: root port stream {root_port.stream_id} != endpoint stream {endpoint.stream_id}"
            )
        self.root_port = root_port
        self.endpoint = endpoint
        self.last_downstream: ProtectedTlp | None = None
        self.last_upstream: ProtectedTlp | None = None
        self._tamper: Callable[[ProtectedTlp], ProtectedTlp] | None = None
        self._generation = 0

    @classmethod
    def create(
        cls,
        *,
        stream_id: int = 0,
        rid_base: int = 0x0100,
        rid_limit: int = 0x0107,
        addr_ranges: Iterable[tuple[int, int]] = (),
    ) -> IdeLink:
        ranges = tuple(addr_ranges)
        ends = [
            IdeStreamEndpoint(stream_id=stream_id, rid_base=rid_base, rid_limit=rid_limit, addr_ranges=ranges)
            for _ in range(2)
        ]
        return cls(root_port=ends[0], endpoint=ends[1])

    def program(
        self,
        key_set: KeySet,
        keys: Mapping[tuple[Direction, SubStream], bytes] | None = None,
        iv: bytes = DEFAULT_IV,
    ) -> None:
        """KEY_PROG all six pairs of ``key_set`` on both ends; ``keys`` is keyed by the endpoint's side."""
        self._generation += 1
        for pair in _PAIRS:
            key = (
                keys[pair]
                if keys is not None
                else _default_key(self.endpoint.stream_id, key_set, pair, self._generation)
            )
            direction, sub = pair
            self.endpoint.program_key(KeySubStream(key_set, direction, sub), key, iv)
            self.root_port.program_key(KeySubStream(key_set, Direction(1 - direction), sub), key, iv)

    def go(self, key_set: KeySet) -> None:
        """K_SET_GO on both ends, Rx before Tx (rules-seed E.66)."""
        for direction in (Direction.RX, Direction.TX):
            for sub in SubStream:
                for end in (self.endpoint, self.root_port):
                    end.go(KeySubStream(key_set, direction, sub))

    def enable(self) -> None:
        self.endpoint.enable()
        self.root_port.enable()

    def bring_up(self, key_set: KeySet = KeySet.K0) -> None:
        """Program, go and enable: both ends Secure."""
        self.program(key_set)
        self.go(key_set)
        self.enable()

    def tamper_next(self, change: Callable[[ProtectedTlp], ProtectedTlp]) -> None:
        self._tamper = change

    def send_downstream(self, tlp: Tlp) -> Tlp:
        """Root port protects, the wire (maybe tampered) carries, the endpoint unprotects."""
        packet = self._on_wire(self.root_port.protect(tlp))
        self.last_downstream = packet
        return self.endpoint.unprotect(packet)

    def send_upstream(self, tlp: Tlp) -> Tlp:
        packet = self._on_wire(self.endpoint.protect(tlp))
        self.last_upstream = packet
        return self.root_port.unprotect(packet)

    def replay_downstream(self) -> Tlp:
        return self.endpoint.unprotect(self._last(self.last_downstream))

    def replay_upstream(self) -> Tlp:
        return self.root_port.unprotect(self._last(self.last_upstream))

    def _on_wire(self, packet: ProtectedTlp) -> ProtectedTlp:
        change, self._tamper = self._tamper, None
        return packet if change is None else change(packet)

    @staticmethod
    def _last(packet: ProtectedTlp | None) -> ProtectedTlp:
        if packet is None:
            raise InvalidState("nothing to replay: no TLP has crossed the link in that direction")
        return packet
