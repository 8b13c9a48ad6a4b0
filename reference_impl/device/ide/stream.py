"""Selective IDE streams: key slots, AES-256-GCM protection of TLPs, Secure / Insecure.

One :class:`IdeStreamEndpoint` is one end (root port or endpoint) of one selective stream. It has
12 key slots (2 key sets x Rx/Tx x PR/NPR/CPL); K_SET_GO makes a slot's key set the active one for
its direction and sub-stream. The stream is SECURE only while enabled with an active key for all
six (direction, sub-stream) pairs, and it drops to INSECURE -- sticky until re-keyed -- on any
integrity failure (bad tag, replayed or out-of-order counter, RID outside the association).

Protection (PCIe §6.33; tee-io-validator key_byte_order.md): AES-GCM with the 256-bit key, a 96-bit
IV whose top 32 bits are zero and low 64 bits are the IFV plus the per-sub-stream invocation counter,
the TLP header as additional authenticated data, and the payload encrypted with a 96-bit MAC.
"""

from __future__ import annotations

import enum
import struct
from typing import Any

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from reference_impl.device.ide.km_codec import Direction, KeySet, KeySubStream, SubStream
from reference_impl.errors import AccessFault, InvalidArgument, InvalidState

__all__ = ["IdeIntegrityError", "IdeStreamEndpoint", "ProtectedTlp", "StreamSnapshot", "StreamState", "Tlp"]

MAC_LEN = 12


class StreamState(enum.Enum):
    INSECURE = "insecure"
    SECURE = "secure"


class IdeIntegrityError(AccessFault):
    """A protected TLP failed its checks; the stream is now Insecure."""


def _in_range(bits: int) -> Any:
    def check(inst: Any, a: attrs.Attribute[Any], v: Any) -> None:
        if not isinstance(v, int) or not 0 <= v < 1 << bits:
            raise InvalidArgument(f"TLP {a.name} must be an unsigned {bits}-bit value, got {v!r}")

    return check


def _kind(v: Any) -> None:
    if v not in ("MRd", "MWr", "Cpl", "Msg"):
        raise InvalidArgument(f"TLP kind must be MRd, MWr, Cpl or Msg, got {v!r}")


@attrs.frozen(kw_only=True)
class Tlp:
    kind: str = attrs.field(validator=lambda i, a, v: _kind(v))
    requester_id: int = attrs.field(validator=_in_range(16))
    address: int = attrs.field(validator=_in_range(64))
    t_bit: bool
    payload: bytes = attrs.field(repr=False)
    stream_id: int | None = None

    def sub_stream(self) -> SubStream:
        return {"MWr": SubStream.PR, "Msg": SubStream.PR, "MRd": SubStream.NPR}.get(self.kind, SubStream.CPL)

    def header_bytes(self) -> bytes:
        return struct.pack("<4sHQ?h", self.kind.encode().ljust(4, b"\0"), self.requester_id, self.address,
                           self.t_bit, -1 if self.stream_id is None else self.stream_id)


@attrs.frozen(kw_only=True)
class ProtectedTlp:
    kind: str
    requester_id: int
    address: int
    t_bit: bool
    stream_id: int
    key_set: KeySet
    counter: int
    ciphertext: bytes = attrs.field(repr=False)

    def header(self) -> Tlp:
        return Tlp(kind=self.kind, requester_id=self.requester_id, address=self.address, t_bit=self.t_bit,
                   payload=b"", stream_id=self.stream_id)


@attrs.frozen
class StreamSnapshot:
    stream_id: int
    state: str
    enabled: bool
    programmed: tuple[str, ...]  # slots holding a key (never the key itself)
    active: tuple[tuple[str, str, str], ...]  # (direction, sub-stream, key set)
    insecure_reason: str | None


@attrs.define
class _Slot:
    key: bytes = attrs.field(repr=False)
    iv: bytes = attrs.field(repr=False)
    aead: AESGCM = attrs.field(repr=False)


class IdeStreamEndpoint:
    """One end of a selective IDE stream, with its RID association."""

    def __init__(self, *, stream_id: int, rid_base: int, rid_limit: int) -> None:
        self.stream_id = stream_id
        self.rid_base = rid_base
        self.rid_limit = rid_limit
        self._slots: dict[KeySubStream, _Slot] = {}
        self._active: dict[tuple[Direction, SubStream], KeySet] = {}
        self._tx_counter: dict[SubStream, int] = {}
        self._rx_last: dict[SubStream, int] = {}
        self._enabled = False
        self._insecure_reason: str | None = None
        self._force_state: StreamState | None = None  # for deliberately broken devices only

    def __repr__(self) -> str:
        return f"IdeStreamEndpoint(stream_id={self.stream_id}, state={self.state.name})"

    # ------------------------------------------------------------------ key management
    def program_key(self, slot: KeySubStream, key: bytes, iv: bytes) -> None:
        if len(key) != 32 or len(iv) != 8:
            raise InvalidState(f"IDE key must be 32 bytes and IFV 8 bytes, got {len(key)} and {len(iv)}")
        self._slots[slot] = _Slot(key=key, iv=iv, aead=AESGCM(key))

    def is_programmed(self, slot: KeySubStream) -> bool:
        return slot in self._slots

    def go(self, slot: KeySubStream) -> None:
        if slot not in self._slots:
            raise InvalidState(f"K_SET_GO on {slot}: no key programmed")
        self._active[(slot.direction, slot.sub_stream)] = slot.key_set
        if slot.direction is Direction.TX:
            self._tx_counter.setdefault(slot.sub_stream, 0)
        if self._all_active() and self._enabled:
            self._insecure_reason = None

    def stop(self, slot: KeySubStream) -> None:
        if self._active.get((slot.direction, slot.sub_stream)) is slot.key_set:
            del self._active[(slot.direction, slot.sub_stream)]
        self._slots.pop(slot, None)

    def enable(self) -> None:
        self._enabled = True
        if self._all_active():
            self._insecure_reason = None

    def disable(self) -> None:
        self._enabled = False

    def mark_insecure(self, reason: str) -> None:
        self._insecure_reason = reason
        self._force_state = None

    def _all_active(self) -> bool:
        return all((d, s) in self._active for d in Direction for s in SubStream)

    @property
    def state(self) -> StreamState:
        if self._force_state is not None:
            return self._force_state
        if self._enabled and self._all_active() and self._insecure_reason is None:
            return StreamState.SECURE
        return StreamState.INSECURE

    # ------------------------------------------------------------------ TLP protection
    def _iv(self, slot: _Slot, counter: int) -> bytes:
        ifv = int.from_bytes(slot.iv, "little")
        return b"\0\0\0\0" + ((ifv + counter) & (2**64 - 1)).to_bytes(8, "little")

    def protect(self, tlp: Tlp) -> ProtectedTlp:
        """Encrypt and tag ``tlp`` with the active Tx key of its sub-stream."""
        if self.state is not StreamState.SECURE:
            raise InvalidState(f"IDE stream {self.stream_id} is not Secure")
        sub = tlp.sub_stream()
        ks = self._active[(Direction.TX, sub)]
        slot = self._slots[KeySubStream(ks, Direction.TX, sub)]
        counter = self._tx_counter.get(sub, 0) + 1
        self._tx_counter[sub] = counter
        header = attrs.evolve(tlp, payload=b"", stream_id=self.stream_id)
        ct = slot.aead.encrypt(self._iv(slot, counter), tlp.payload, header.header_bytes())
        return ProtectedTlp(kind=tlp.kind, requester_id=tlp.requester_id, address=tlp.address, t_bit=tlp.t_bit,
                            stream_id=self.stream_id, key_set=ks, counter=counter, ciphertext=ct)

    def unprotect(self, p: ProtectedTlp) -> Tlp:
        """Check and decrypt; any failure makes the stream Insecure and raises IdeIntegrityError."""
        sub = Tlp(kind=p.kind, requester_id=0, address=0, t_bit=False, payload=b"").sub_stream()
        if self.state is not StreamState.SECURE:
            raise self._fail(f"stream {self.stream_id} is not Secure")
        if p.stream_id != self.stream_id:
            raise self._fail(f"TLP for stream {p.stream_id} on stream {self.stream_id}")
        if not self.rid_base <= p.requester_id <= self.rid_limit:
            raise self._fail(f"requester {p.requester_id:#06x} is outside the stream's RID association")
        slot = self._slots.get(KeySubStream(p.key_set, Direction.RX, sub))
        if slot is None or self._active.get((Direction.RX, sub)) is not p.key_set:
            raise self._fail(f"no active Rx key for key set {p.key_set.name}")
        if p.counter <= self._rx_last.get(sub, 0):
            raise self._fail(f"replayed or stale invocation counter {p.counter}")
        try:
            payload = slot.aead.decrypt(self._iv(slot, p.counter), p.ciphertext, p.header().header_bytes())
        except InvalidTag:
            raise self._fail("MAC check failed") from None
        self._rx_last[sub] = p.counter
        return Tlp(kind=p.kind, requester_id=p.requester_id, address=p.address, t_bit=p.t_bit, payload=payload,
                   stream_id=p.stream_id)

    def _fail(self, why: str) -> IdeIntegrityError:
        self.mark_insecure(f"integrity failure: {why}")
        return IdeIntegrityError(f"IDE stream {self.stream_id}: {why}")

    def snapshot(self) -> StreamSnapshot:
        return StreamSnapshot(
            stream_id=self.stream_id, state=self.state.name, enabled=self._enabled,
            programmed=tuple(sorted(str(s) for s in self._slots)),
            active=tuple(sorted((d.name, s.name, k.name) for (d, s), k in self._active.items())),
            insecure_reason=self._insecure_reason,
        )
