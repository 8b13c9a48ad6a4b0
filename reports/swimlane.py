"""Swimlane charts of a trace, in the columns of the source thread's chart.

    Guest | Guest TSM | QEMU | VFIO | IOMMUFD | host TSM | KVM   (+ Device, IOMMU)

One numbered row per crossing: ``●`` marks the caller, ``▶ operation`` the callee, and ``─`` the
lanes between. The leftmost number is the event's sequence number, the next the flow.md step the
crossing implements (blank where none), so the chart reads against the thread's chart step by step.
A refused call is marked ``✗ ErrorName``; a row can be flagged (the violating step of a failure).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from teeio_conformance.contract.trace import HARNESS, Event

__all__ = ["LANES", "LANE_TITLES", "render_text", "rows"]

LANES: tuple[str, ...] = ("guest", "guest_tsm", "vmm", "vfio", "iommufd", "tsm", "kvm", "device", "iommu")
LANE_TITLES: dict[str, str] = {
    "guest": "Guest",
    "guest_tsm": "Guest TSM",
    "vmm": "QEMU",
    "vfio": "VFIO",
    "iommufd": "IOMMUFD",
    "tsm": "host TSM",
    "kvm": "KVM",
    "device": "Device",
    "iommu": "IOMMU",
}
WIDTH = 17


def _lane(name: str) -> int:
    try:
        return LANES.index(name)
    except ValueError:
        return -1  # the harness, or an actor of a SUT outside the thread's columns


_TDISP_NAMES = {
    0x81: "GET_VERSION",
    0x82: "GET_CAPS",
    0x83: "LOCK",
    0x84: "GET_REPORT",
    0x85: "GET_STATE",
    0x86: "START",
    0x87: "STOP",
    0x88: "BIND_P2P",
    0x89: "UNBIND_P2P",
    0x8A: "SET_MMIO_ATTR",
    0x8B: "VDM",
}
_IDE_KM_NAMES = {0: "QUERY", 2: "KEY_PROG", 4: "K_SET_GO", 5: "K_SET_STOP"}


def _label(d: dict[str, Any]) -> str:
    """The operation as a reader of the thread's chart names it (TDISP/IDE_KM messages by type)."""
    op = str(d.get("operation"))
    args = d.get("arguments") or []
    if op == "handle_vendor_message" and len(args) >= 2 and isinstance(args[1], str) and len(args[1]) >= 4:
        raw = bytes.fromhex(args[1]) if all(c in "0123456789abcdef" for c in args[1]) else b""
        if args[0] == 1 and len(raw) > 1:
            return "TDISP " + _TDISP_NAMES.get(raw[1], hex(raw[1]))
        if args[0] == 0 and raw:
            return "IDE_KM " + _IDE_KM_NAMES.get(raw[0], hex(raw[0]))
    if op in ("ghci_guest_request", "vdevice_guest_request", "guest_request"):
        for a in args:
            if isinstance(a, dict) and "kind" in a:
                return f"{op}({a['kind']})"
    return op


def rows(events: Iterable[Event | dict[str, Any]], *, max_depth: int | None = None) -> list[dict[str, Any]]:
    """Plain rows (seq, step, caller, callee, operation, outcome, error) for any renderer."""
    out = []
    for e in events:
        d = e.to_json() if isinstance(e, Event) else e
        if max_depth is not None and d.get("depth", 0) > max_depth:
            continue
        row = {k: d.get(k) for k in ("seq", "step", "caller", "callee", "outcome", "error")}
        row["operation"] = _label(d)
        out.append(row)
    return out


def _cell_row(r: dict[str, Any]) -> list[str]:
    cells = [" " * WIDTH for _ in LANES]
    src, dst = _lane(r["caller"]), _lane(r["callee"])
    label = r["operation"] if r["outcome"] == "ok" else f"{r['operation']} ✗ {r['error']}"
    if dst < 0:
        return cells
    if src < 0:  # from the harness: an arrow in from the left margin
        src = -1
    lo, hi = sorted((src, dst))
    for i in range(max(lo, 0), hi + 1):
        cells[i] = "─" * WIDTH
    if src >= 0:
        cells[src] = ("●" + "─" * (WIDTH - 1)) if src < dst else ("─" * (WIDTH - 1) + "●")
    if src <= dst:
        cells[dst] = ("▶ " + label)[:WIDTH].ljust(WIDTH)
    else:
        cells[dst] = (label + " ◀")[-WIDTH:].rjust(WIDTH)
        if len(label) + 2 > WIDTH:
            cells[dst] = ("◀ " + label)[:WIDTH].ljust(WIDTH)
    return cells


def render_text(
    events: Sequence[Event | dict[str, Any]],
    *,
    title: str = "",
    mark_seq: int | None = None,
    max_depth: int | None = None,
) -> str:
    """The chart as monospace text (the golden file's format)."""
    header = f"{'#':>4} {'step':>4} │" + "│".join(LANE_TITLES[n].center(WIDTH) for n in LANES) + "│"
    lines = []
    if title:
        lines.append(title)
    lines.append(header)
    lines.append("─" * len(header))
    for r in rows(events, max_depth=max_depth):
        flag = "!" if mark_seq is not None and r["seq"] == mark_seq else " "
        origin = "" if r["caller"] != HARNESS else "»"
        body = "│".join(_cell_row(r))
        lines.append(f"{r['seq']:>4}{flag}{(r['step'] or ''):>4} │{body}│{origin}")
    return "\n".join(line.rstrip() for line in lines) + "\n"
