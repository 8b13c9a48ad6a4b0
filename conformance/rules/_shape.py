"""Is a snapshot of the contract's shape? The fields docs/sut-contract.md lists, with the types rules read them as.

The harness already refuses a snapshot that is not an object with ``devices`` (issue 17). A snapshot that has the
parts but a wrong type inside -- a TDI state as a string, a VM list that is a number -- used to reach the rules,
which crashed on it with an untyped AttributeError or TypeError that was reported as a suite error. The harness
now asks :func:`snapshot_problem` when a rule fails that way, and reports the SUT's snapshot, naming the field,
as SUT-BROKEN (issue 14); a rule failing on a well-formed snapshot is still the suite's own error.

Only parts the snapshot has are checked: a SUT may leave out what it does not offer (contract/tiers.py).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from teeio_conformance.contract.tdisp import codec as td

__all__ = ["snapshot_problem"]

_SEQ = (list, tuple, set, frozenset)
_ABSENT = object()


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _opt_int(v: Any) -> bool:
    return v is None or _int(v)


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _opt_str(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _enumish(v: Any) -> bool:
    """An enum member (a state or kind rules read through ``.value`` / ``.name``)."""
    return isinstance(v, enum.Enum)


def _tdi_state(v: Any) -> bool:
    return isinstance(v, td.TdiState)


def _ints(v: Any) -> bool:
    return isinstance(v, _SEQ) and all(_int(x) for x in v)


def _seq(v: Any) -> bool:
    return isinstance(v, _SEQ)


Fields = dict[str, Callable[[Any], bool]]

_FUNCTION: Fields = {
    "rid": _int,
    "is_pf": _bool,
    "tdi_state": _tdi_state,
    "locked_session": _opt_int,
    "mse": _bool,
    "bme": _bool,
    "bar_base": _int,
}
_DEVICE: Fields = {"name": _str, "sessions": _ints, "stream_state": _str, "secrets": _seq, "functions": _seq}
_VM: Fields = {"name": _str, "state": _enumish}
_MEMSLOT: Fields = {"slot": _int, "vm": _str, "gpa": _int, "dmabuf": _opt_int, "rid": _opt_int, "mapping": _enumish}
_DMABUF: Fields = {"dmabuf": _int, "fd": _int, "rid": _int, "revoked": _bool, "attachments": _seq}
_OBJECT: Fields = {"id": _int, "kind": _enumish, "users": _int, "vm": _opt_str, "rid": _opt_int, "bound": _bool}
_TDI: Fields = {"rid": _int, "vm": _opt_str}
_GUEST: Fields = {"vm": _str, "vdevs": _seq}
_VDEV: Fields = {"virt_id": _int, "bound": _bool, "attested": _bool, "accepted": _bool}

# part -> (its own fields, {sequence field: the fields of each item})
_PARTS: dict[str, tuple[Fields, dict[str, Fields]]] = {
    "iommu": ({"fenced_vms": _seq, "rp_stream_state": _str, "faults": _seq, "shared": _seq, "trusted": _seq}, {}),
    "kvm": ({"vms": _seq, "memslots": _seq}, {"vms": _VM, "memslots": _MEMSLOT}),
    "vfio": (
        {"open_fds": _seq, "dmabufs": _seq, "private_rids": _seq, "host_mmaps": _seq, "host_reads": _seq},
        {"dmabufs": _DMABUF},
    ),
    "iommufd": ({"objects": _seq, "tombstones": _ints, "closed": _bool}, {"objects": _OBJECT}),
    "tsm": ({"tdis": _seq, "connected": _seq}, {"tdis": _TDI}),
}


def _fields(obj: Any, fields: Fields, path: str) -> str | None:
    for name, ok in fields.items():
        value = getattr(obj, name, _ABSENT)
        if value is _ABSENT:
            return f"{path}.{name} is missing"
        if not ok(value):
            return f"{path}.{name} is {type(value).__name__} {str(value)[:40]!r}"
    return None


def _items(seq: Any, fields: Fields, path: str) -> str | None:
    for i, item in enumerate(seq):
        problem = _fields(item, fields, f"{path}[{i}]")
        if problem:
            return problem
    return None


def snapshot_problem(snap: Any) -> str | None:
    """The first field of ``snapshot`` that is not of the contract's shape, as a path (``devices[0].functions[1]
    .tdi_state is str 'RUN'``), or None when every part it has is well formed."""
    devices: Any = getattr(snap, "devices", _ABSENT)
    if devices is _ABSENT or not _seq(devices):
        return f"devices is {type(devices).__name__}" if devices is not _ABSENT else "devices is missing"
    for i, d in enumerate(devices):
        problem = _fields(d, _DEVICE, f"devices[{i}]") or _items(d.functions, _FUNCTION, f"devices[{i}].functions")
        if problem:
            return problem
    for part, (own, nested) in _PARTS.items():
        value = getattr(snap, part, _ABSENT)
        if value is _ABSENT:
            continue
        problem = _fields(value, own, part)
        for name, fields in nested.items():
            problem = problem or _items(getattr(value, name), fields, f"{part}.{name}")
        if problem:
            return problem
    guests: Any = getattr(snap, "guests", _ABSENT)
    if guests is not _ABSENT:
        if not _seq(guests):
            return f"guests is {type(guests).__name__}"
        for i, g in enumerate(guests):
            problem = _fields(g, _GUEST, f"guests[{i}]") or _items(g.vdevs, _VDEV, f"guests[{i}].vdevs")
            if problem:
                return problem
    return None
