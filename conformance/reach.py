"""Reach (issue 14): for each operation, the states of its target that a run visited.

After every step the harness files each crossing of interest under a cell -- the operation and the state
of its target *before* the step: the TDI state of the function a TDISP request, a DMA or a bind names,
whether the function is private (VFIO's view) for host mmaps and revokes; and, where the answer depends on
them (:data:`OP_DIMENSIONS`), whether the device's IDE stream is Secure, whether the VM the function belongs
to is running, whether the TDI is bound to a VM. Those extra dimensions make rows (``DMA T=1 [Secure, VM
running]``), the TDI state (or private/shared) columns, so the matrix stays one table. The plugin prints the matrix
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

__all__ = ["DIMENSIONS", "OP_DIMENSIONS", "REACH", "UNREACHABLE", "cells", "record", "row", "rows", "unvisited"]

STATES = tuple(s.name for s in td.TdiState)
TDISP_OPS = tuple(f"TDISP {c.name}" for c in td.RequestCode)
OTHER_OPS = ("DMA T=0", "DMA T=1", "tsm.bind", "tsm.unbind", "device.flr")
HOST_OPS = ("vfio.mmap_bar", "vfio.revoke_mmio_dmabuf")

DIMENSIONS: dict[str, tuple[str, str]] = {
    "stream": ("Secure", "not Secure"),  # the device's IDE stream
    "vm": ("VM running", "VM not running"),  # the VM the target is assigned or bound to (or would be)
    "bound": ("bound", "unbound"),  # the TDI bound to a vdevice's VM (the TSM's record)
}
"""The target's states besides its TDI state (or, for host mmaps and revokes, private or shared)."""

OP_DIMENSIONS: dict[str, tuple[str, ...]] = {
    # chosen where the spec or the flow makes the answer depend on them; the rest stay one row per operation
    "TDISP LOCK_INTERFACE": ("stream",),  # LOCK needs the default stream Secure (TDISP-04)
    "TDISP START_INTERFACE": ("stream",),
    "DMA T=0": ("vm",),  # into a running VM's shared memory, or a stopped one's
    "DMA T=1": ("stream", "vm"),  # T=1 needs a Secure stream (IDE-06) and a RUN TDI of a live TVM
    "tsm.bind": ("vm",),
    "tsm.unbind": ("vm",),
    "device.flr": ("bound",),  # an FLR of a function bound to a TVM is a reset under the guest
    "vfio.mmap_bar": ("bound",),
    "vfio.revoke_mmio_dmabuf": ("bound",),
}

REACH: Counter[tuple[str, str]] = Counter()


def row(op: str, *values: str) -> str:
    """The matrix row of ``op`` with its extra dimensions' values: ``DMA T=1 [Secure, VM running]``."""
    return f"{op} [{', '.join(values)}]" if values else op


def rows(op: str) -> list[str]:
    """Every row of ``op``: one per combination of the values of its extra dimensions."""
    names: list[tuple[str, ...]] = [()]
    for dim in OP_DIMENSIONS.get(op, ()):
        names = [(*n, v) for n in names for v in DIMENSIONS[dim]]
    return [row(op, *n) for n in names]


_LOCKED_STATES = ("CONFIG_LOCKED", "RUN")
_NOT_SECURE = (
    "a stream that stops being Secure takes every CONFIG_LOCKED and RUN TDI of the device to ERROR (PCIe §11.4.5; "
    "IDE-03), and a LOCK needs a Secure stream (TDISP-04): no TDI is locked on a stream that is not Secure"
)
_BOUND_UNLOCKED = (
    "the TSM LOCKs in the bind that records the TDI bound and STOPs it only in the unbind that forgets it; a "
    "locked TDI leaves CONFIG_LOCKED/RUN without a STOP only for ERROR (PCIe §11.2), and a STOP from another "
    "session is refused (TDISP-17) -- only a STOP over the TSM's own session behind its back would do it"
)
_PRIVATE_IS_BOUND = (
    "VFIO holds a function private exactly while the TSM has it bound: the TSM sets it in the bind after LOCK and "
    "clears it in the unbind before it forgets the TDI (a failed bind rolls both back, DOWN-05); a VFIO close "
    "clears it with the only file a host mmap or revoke could use"
)

UNREACHABLE: dict[tuple[str, str], str] = {
    **{
        (row(op, "not Secure"), s): _NOT_SECURE
        for op in ("TDISP LOCK_INTERFACE", "TDISP START_INTERFACE")
        for s in _LOCKED_STATES
    },
    **{(row("DMA T=1", "not Secure", vm), s): _NOT_SECURE for vm in DIMENSIONS["vm"] for s in _LOCKED_STATES},
    (row("device.flr", "bound"), "CONFIG_UNLOCKED"): _BOUND_UNLOCKED,
    (row("vfio.mmap_bar", "bound"), "shared"): _PRIVATE_IS_BOUND,
    (row("vfio.mmap_bar", "unbound"), "private"): _PRIVATE_IS_BOUND,
    (row("vfio.revoke_mmio_dmabuf", "bound"), "shared"): _PRIVATE_IS_BOUND,
    (row("vfio.revoke_mmio_dmabuf", "unbound"), "private"): _PRIVATE_IS_BOUND,
}


def cells() -> list[tuple[str, str]]:
    return [
        *((r, s) for op in (*TDISP_OPS, *OTHER_OPS) for r in rows(op) for s in STATES),
        *((r, p) for op in HOST_OPS for r in rows(op) for p in ("private", "shared")),
    ]


def _states(snap: Any) -> dict[int, str]:
    return {f.rid: f.tdi_state.name for d in getattr(snap, "devices", ()) for f in d.functions}


class _Target:
    """The extra dimensions of a function's state in one snapshot (each lookup tolerant of a partial one)."""

    def __init__(self, snap: Any) -> None:
        self.secure = {f.rid: d.stream_state == "SECURE" for d in getattr(snap, "devices", ()) for f in d.functions}
        tsm = getattr(snap, "tsm", None)
        self.bound_to = {t.rid: t.vm for t in getattr(tsm, "tdis", ()) if getattr(t, "vm", None) is not None}
        vmm = getattr(snap, "vmm", None)
        self.assigned = {a.rid: a.vm for a in getattr(vmm, "assignments", ())}
        kvm = getattr(snap, "kvm", None)
        self.running = {v.name for v in getattr(kvm, "vms", ()) if getattr(v.state, "value", None) == "running"}

    def value(self, dim: str, rid: int, vm: str | None = None) -> str:
        yes, no = DIMENSIONS[dim]
        if dim == "stream":
            return yes if self.secure.get(rid) else no
        if dim == "bound":
            return yes if rid in self.bound_to else no
        vm = vm or self.bound_to.get(rid) or self.assigned.get(rid)
        return yes if vm in self.running else no

    def row(self, op: str, rid: int, vm: str | None = None) -> str:
        return row(op, *(self.value(d, rid, vm) for d in OP_DIMENSIONS.get(op, ())))


def record(before: Any, events: Iterable[Any]) -> None:
    """File this step's crossings of interest under (operation with its dimensions, target state before the step)."""
    states = _states(before)
    target = _Target(before)
    vfio = getattr(before, "vfio", None)
    private = set(getattr(vfio, "private_rids", ()) or ())
    bufs = {d.dmabuf: d.rid for d in getattr(vfio, "dmabufs", ())}
    for e in events:
        if e.callee == "vfio" and e.operation == "revoke_mmio_dmabuf" and e.arguments and e.arguments[0] in bufs:
            rid = bufs[e.arguments[0]]
            REACH[(target.row("vfio.revoke_mmio_dmabuf", rid), "private" if rid in private else "shared")] += 1
            continue
        cell = _cell(e, states, private, target)
        if cell is not None:
            REACH[cell] += 1


def _cell(e: Any, states: dict[int, str], private: set[int], target: _Target) -> tuple[str, str] | None:
    op = f"{e.callee}.{e.operation}"
    if op == "device.handle_vendor_message" and e.arguments and e.arguments[0] == 1:
        try:
            req = td.decode_request(bytes(e.arguments[1]))
        except (StackError, TypeError):
            return None
        rid = req.interface_id.function_id & 0xFFFF
        state = states.get(rid)
        name = f"TDISP {td.RequestCode(req.code).name}"
        return None if state is None else (target.row(name, rid), state)
    if op == "device.issue_dma" and e.arguments:  # what the suite asked of the device, refused or not
        t_bit = bool(dict(e.keywords).get("t_bit"))
        rid = e.arguments[0]
        return None if rid not in states else (target.row(f"DMA T={int(t_bit)}", rid), states[rid])
    if op in ("tsm.bind", "tsm.unbind", "device.flr") and e.arguments and e.arguments[0] in states:
        rid = e.arguments[0]
        vm = e.arguments[1] if op == "tsm.bind" and len(e.arguments) > 1 else None
        return (target.row(op, rid, vm), states[rid])
    if op == "vfio.mmap_bar" and len(e.arguments) > 1:
        rid = e.arguments[1]
        return (target.row(op, rid), "private" if rid in private else "shared")
    return None


def unvisited(seen: dict[tuple[str, str], int] | Counter[tuple[str, str]]) -> list[tuple[str, str]]:
    return [c for c in cells() if not seen.get(c) and c not in UNREACHABLE]


def render(seen: dict[tuple[str, str], int] | Counter[tuple[str, str]]) -> list[str]:
    """The matrix as text lines: one row per operation (and values of its extra dimensions), one column per
    target state; ``-`` marks a cell no machine can reach (:data:`UNREACHABLE` says why)."""
    width = max(len(r) for op in (*TDISP_OPS, *OTHER_OPS, *HOST_OPS) for r in rows(op)) + 1
    lines = [f"{'operation':<{width}} " + " ".join(f"{s[:15]:>15}" for s in STATES)]
    for op in (*TDISP_OPS, *OTHER_OPS):
        for r in rows(op):
            cells_ = [f"{'-' if (r, s) in UNREACHABLE else seen.get((r, s), 0):>15}" for s in STATES]
            lines.append(f"{r:<{width}} " + " ".join(cells_))
    for op in HOST_OPS:
        for r in rows(op):
            shown = ("-" if (r, p) in UNREACHABLE else seen.get((r, p), 0) for p in ("private", "shared"))
            lines.append(
                f"{r:<{width}} " + " ".join(f"{p}={n}" for p, n in zip(("private", "shared"), shown, strict=True))
            )
    return lines
