"""Reach (issue 14): for each operation, the states of its target that a run visited.

After every step the harness files each crossing of interest under a cell -- the operation and the state
of its target *before* the step: the TDI state of the function a TDISP request, a DMA or a bind names,
whether the function is private (VFIO's view) for host mmaps and revokes. The plugin prints the matrix
at the end of the run and writes ``reach.json`` next to the verdicts. Cells no machine can reach are
listed in :data:`UNREACHABLE` with the reason; every other cell of :func:`cells` should be visited at the
``ci`` budget (``unvisited`` says which were not).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from teeio_conformance.contract.errors import StackError
from teeio_conformance.contract.tdisp import codec as td

__all__ = ["REACH", "UNREACHABLE", "cells", "record", "unvisited"]

STATES = tuple(s.name for s in td.TdiState)
TDISP_OPS = tuple(f"TDISP {c.name}" for c in td.RequestCode)
OTHER_OPS = ("DMA T=0", "DMA T=1", "tsm.bind", "tsm.unbind", "device.flr")
HOST_OPS = ("vfio.mmap_bar", "vfio.revoke_mmio_dmabuf")

REACH: Counter[tuple[str, str]] = Counter()

UNREACHABLE: dict[tuple[str, str], str] = {}
"""None at present: the optional requests (P2P streams, SET_MMIO_ATTRIBUTE, VDM) are served by the reference
device since issue 19, and the device machine sends each in every state."""


def cells() -> list[tuple[str, str]]:
    return [
        *((op, s) for op in (*TDISP_OPS, *OTHER_OPS) for s in STATES),
        *((op, p) for op in HOST_OPS for p in ("private", "shared")),
    ]


def _states(snap: Any) -> dict[int, str]:
    return {f.rid: f.tdi_state.name for d in getattr(snap, "devices", ()) for f in d.functions}


def record(before: Any, events: Iterable[Any]) -> None:
    """File this step's crossings of interest under (operation, target state before the step)."""
    states = _states(before)
    vfio = getattr(before, "vfio", None)
    private = set(getattr(vfio, "private_rids", ()) or ())
    bufs = {d.dmabuf: d.rid for d in getattr(vfio, "dmabufs", ())}
    for e in events:
        if e.callee == "vfio" and e.operation == "revoke_mmio_dmabuf" and e.arguments and e.arguments[0] in bufs:
            REACH[("vfio.revoke_mmio_dmabuf", "private" if bufs[e.arguments[0]] in private else "shared")] += 1
            continue
        cell = _cell(e, states, private)
        if cell is not None:
            REACH[cell] += 1


def _cell(e: Any, states: dict[int, str], private: set[int]) -> tuple[str, str] | None:
    op = f"{e.callee}.{e.operation}"
    if op == "device.handle_vendor_message" and e.arguments and e.arguments[0] == 1:
        try:
            req = td.decode_request(bytes(e.arguments[1]))
        except (StackError, TypeError):
            return None
        state = states.get(req.interface_id.function_id & 0xFFFF)
        return None if state is None else (f"TDISP {td.RequestCode(req.code).name}", state)
    if op == "device.issue_dma" and e.arguments:  # what the suite asked of the device, refused or not
        t_bit = bool(dict(e.keywords).get("t_bit"))
        rid = e.arguments[0]
        return None if rid not in states else (f"DMA T={int(t_bit)}", states[rid])
    if op in ("tsm.bind", "tsm.unbind", "device.flr") and e.arguments and e.arguments[0] in states:
        return (op, states[e.arguments[0]])
    if op == "vfio.mmap_bar" and len(e.arguments) > 1:
        return (op, "private" if e.arguments[1] in private else "shared")
    return None


def unvisited(seen: dict[tuple[str, str], int] | Counter[tuple[str, str]]) -> list[tuple[str, str]]:
    return [c for c in cells() if not seen.get(c) and c not in UNREACHABLE]


def render(seen: dict[tuple[str, str], int] | Counter[tuple[str, str]]) -> list[str]:
    """The matrix as text lines: one row per operation, one column per target state."""
    lines = [f"{'operation':<34} " + " ".join(f"{s[:15]:>15}" for s in STATES)]
    for op in (*TDISP_OPS, *OTHER_OPS):
        row = []
        for s in STATES:
            n = seen.get((op, s), 0)
            row.append(f"{'-' if (op, s) in UNREACHABLE else n:>15}")
        lines.append(f"{op:<34} " + " ".join(row))
    for op in HOST_OPS:
        lines.append(f"{op:<34} " + " ".join(f"{p}={seen.get((op, p), 0)}" for p in ("private", "shared")))
    return lines
