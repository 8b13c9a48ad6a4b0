"""Small read-only helpers over trace events and snapshots, shared by the rule modules."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from teeio_conformance.contract import ide_km as km
from teeio_conformance.contract.errors import StackError
from teeio_conformance.contract.tdisp import codec as td
from teeio_conformance.contract.trace import Event

HOST_ACTORS = frozenset({"vmm", "vfio", "iommufd"})
"""Host software outside the TCB: what it sends, receives or stores, the host can read.

KVM is host software too, but in this model its guest-access and DMA operations stand for the CPU's
and the IOMMU's hardware paths (a guest load through the S-EPT never passes host code), so KVM's
crossings count as host-visible only when host software is on the other side."""

LOCKED = frozenset({td.TdiState.CONFIG_LOCKED, td.TdiState.RUN})


def tdi_states(snap: Any) -> dict[int, td.TdiState]:
    return {f.rid: f.tdi_state for d in snap.devices for f in d.functions}


def functions(snap: Any) -> dict[int, Any]:
    return {f.rid: f for d in snap.devices for f in d.functions}


def device_of(snap: Any, rid: int) -> Any:
    for d in snap.devices:
        if any(f.rid == rid for f in d.functions):
            return d
    return None


def bound_vm(snap: Any) -> dict[int, str | None]:
    return {t.rid: t.vm for t in snap.tsm.tdis}


def tsm_tdi(snap: Any, rid: int) -> Any:
    for t in snap.tsm.tdis:
        if t.rid == rid:
            return t
    return None


def vm_state(snap: Any, vm: str) -> str | None:
    for v in snap.kvm.vms:
        if v.name == vm:
            return str(v.state.value)
    return None


def objects(snap: Any, kind: str) -> list[Any]:
    return [o for o in snap.iommufd.objects if o.kind.value == kind]


def private_slots(snap: Any) -> list[Any]:
    return [s for s in snap.kvm.memslots if s.mapping.value == "private"]


# The contract's decoders keep what they decoded, per byte string (decoding is pure and every message is a
# frozen value), so one decode serves every rule that reads the same bytes; a failure is raised afresh.
decode_td_request = td.decode_request
decode_td_response = td.decode_response
decode_km = km.decode


def tdisp_exchanges(events: list[Event] | Any) -> Iterator[tuple[Event, Any, Any]]:
    """(event, decoded request or None, decoded response or None) for each TDISP message to a device."""
    for e in events:
        if e.callee != "device" or e.operation != "handle_vendor_message" or not e.arguments:
            continue
        if e.arguments[0] != 1:
            continue
        try:
            req = decode_td_request(bytes(e.arguments[1]))
        except StackError:
            req = None
        resp = None
        if e.ok and isinstance(e.result, bytes | bytearray):
            try:
                resp = decode_td_response(bytes(e.result))
            except StackError:
                resp = None
        yield e, req, resp


def session_of(ev: Event) -> int | None:
    for k, v in ev.keywords:
        if k == "session_id":
            return v if isinstance(v, int) else None
    return None


def host_visible_values(events: list[Event] | Any) -> Iterator[Any]:
    """Arguments and results of crossings the host can observe (a host actor on either side)."""
    for e in events:
        if e.caller in HOST_ACTORS or e.callee in HOST_ACTORS:
            yield from e.arguments
            yield from (v for _, v in e.keywords)
            yield e.result
            yield e.message


def _flatten(value: Any, blobs: list[bytes], texts: list[str], depth: int = 0) -> None:
    if depth > 6 or value is None or isinstance(value, int | float | bool):
        return
    if isinstance(value, bytes | bytearray | memoryview):
        blobs.append(bytes(value))
    elif isinstance(value, str):
        texts.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            _flatten(v, blobs, texts, depth + 1)
    elif isinstance(value, list | tuple | set | frozenset):
        for v in value:
            _flatten(v, blobs, texts, depth + 1)
    else:
        fields = getattr(type(value), "__attrs_attrs__", None)
        for f in fields or ():
            if f.repr is not False:
                _flatten(getattr(value, f.name), blobs, texts, depth + 1)


class HostView:
    """Every byte string and text the host could observe in one step's crossings, flattened once per
    step (a step is searched for several secrets and keys; the walk over the events is done once)."""

    def __init__(self, events: Any) -> None:
        self.blobs: list[bytes] = []
        self.texts: list[str] = []
        for value in host_visible_values(events):
            _flatten(value, self.blobs, self.texts)

    def sees(self, needle: bytes) -> bool:
        if any(needle in b for b in self.blobs):
            return True
        hexed = needle.hex()
        return any(hexed in t for t in self.texts)


def host_view(o: Any) -> HostView:
    """The step's :class:`HostView`, shared by the rules checking the same observation."""
    view = o.memo.get("host_view")
    if view is None:
        view = o.memo["host_view"] = HostView(o.events)
    return view


def subtree(o: Any, ev: Event) -> list[Event]:
    """The events of ``o``'s step nested inside ``ev`` (they follow it in sequence order, deeper than it)."""
    out = []
    for e in o.events:
        if e.seq <= ev.seq:
            continue
        if e.depth <= ev.depth:
            break
        out.append(e)
    return out
