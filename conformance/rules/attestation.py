"""Attestation as rules (issue 14), and the host TSM's own "the device broke a promise" error.

Evidence is what the guest decides on; safety rules never looked inside it. These rules read the
evidence a report request returns (``tsm.guest_request(rid, vm, request)`` with ``request.kind ==
"report"``; its result carries ``signed`` with ``report``, ``nonce`` and ``signature``, per the SUT
contract) and what the guest did with it:

- ATT-01: the evidence answers *this* request's nonce (a TSM or device signing over another nonce makes
  evidence replayable);
- ATT-02: the evidence is fresh: its report is the one the device served in this request's own exchange,
  and no evidence is handed out twice;
- ATT-03: the report's MMIO ranges, less the LOCK's MMIO_REPORTING_OFFSET, lie inside the function's BAR;
- ATT-04: a guest that attests successfully got evidence for its own nonce whose ranges lie inside its
  vBAR -- it refuses stale or mismatched evidence;
- ERR-04: no component raises ConformanceViolation (the host TSM's "the device broke a promise").
"""

from __future__ import annotations

from typing import Any

from teeio_conformance.contract.errors import ConformanceViolation, StackError
from teeio_conformance.contract.tdisp import codec as td

from ._model import HELD, Area, Level, Observation, Rule, fold_history, make_rule
from ._view import functions, tdisp_exchanges

__all__ = ["RULES"]

PAGE = 4096
SRC = "flow steps 20-24; [TDXC-ARCH] §3.4 (TDI report, nonce); PCIe r6.2 §11.3.10-11; SPDM DSP0274 (freshness)"


def _reports(o: Observation) -> list[Any]:
    """This step's successful report requests to the TSM (events)."""
    return [
        e
        for e in o.events
        if e.callee == "tsm"
        and e.operation == "guest_request"
        and e.ok
        and len(e.arguments) > 2
        and getattr(e.arguments[2], "kind", "") == "report"
    ]


def _signed(e: Any) -> Any:
    return getattr(e.result, "signed", None)


def _ranges(report: bytes) -> list[tuple[int, int]] | None:
    try:
        rep = td.InterfaceReport.decode(bytes(report))
    except (StackError, TypeError, ValueError):
        return None
    return [(r.first_page, r.first_page + r.number_of_pages * PAGE) for r in rep.mmio_ranges]


def att_nonce(o: Observation) -> str | None:
    """Evidence for a report request is signed over that request's nonce, never another."""
    found = _reports(o)
    if not found:
        return None
    for e in found:
        signed = _signed(e)
        asked = getattr(e.arguments[2], "nonce", None)
        got = getattr(signed, "nonce", None)
        if signed is None or got is None:
            return f"report request for {e.arguments[0]:#06x} returned no signed evidence with a nonce"
        if bytes(got) != bytes(asked or b""):
            return (
                f"evidence for {e.arguments[0]:#06x} answers nonce {bytes(got)[:8].hex()}..., not the request's "
                f"{bytes(asked or b'')[:8].hex()}...: it can be replayed"
            )
    return HELD


def _note_evidence(seen: set[bytes], e: Any) -> set[bytes]:
    if e.callee == "tsm" and e.operation == "guest_request" and e.ok and len(e.arguments) > 2:
        if getattr(e.arguments[2], "kind", "") == "report":
            sig = getattr(_signed(e), "signature", None)
            if isinstance(sig, bytes | bytearray):
                seen.add(bytes(sig))
    return seen


def att_fresh(o: Observation) -> str | None:
    """Each report request gets evidence made for it: its report is the one the device served in this
    request's own exchange (not one kept from an earlier fetch or LOCK), and no evidence is handed out twice."""
    found = _reports(o)
    if not found:
        return None
    seen = set(fold_history(o, "att.signatures", set, _note_evidence))
    for e in found:
        signed = _signed(e)
        sig = getattr(signed, "signature", None)
        if isinstance(sig, bytes | bytearray):
            if bytes(sig) in seen:
                return f"evidence for {e.arguments[0]:#06x} was handed out before (the same signature)"
            seen.add(bytes(sig))
        served = _served_report(o, e)
        report = getattr(signed, "report", None)
        if served is None:
            return f"no report was fetched from the device for the request on {e.arguments[0]:#06x}"
        if report is not None and bytes(report) != served:
            return f"the evidence for {e.arguments[0]:#06x} carries a report other than the one the device served"
    return HELD


def _served_report(o: Observation, request: Any) -> bytes | None:
    """The report assembled from the device's DEVICE_INTERFACE_REPORT answers inside ``request``'s crossing."""
    rid = request.arguments[0]
    inside = [e for e in o.events if e.seq > request.seq and request in o.ancestors(e)]
    parts: dict[int, bytes] = {}
    for _, req, resp in tdisp_exchanges(inside):
        if isinstance(resp, td.DeviceInterfaceReport) and req is not None:
            if req.interface_id.function_id & 0xFFFF == rid:
                parts[req.offset] = bytes(resp.portion)
    if not parts:
        return None
    return b"".join(parts[k] for k in sorted(parts))


def _note_lock_offset(acc: dict[int, int], e: Any) -> dict[int, int]:
    for _, req, resp in tdisp_exchanges((e,)):
        if isinstance(req, td.LockInterface) and isinstance(resp, td.LockInterfaceResponse):
            acc[req.interface_id.function_id & 0xFFFF] = req.mmio_reporting_offset
    return acc


def att_ranges_match_bar(o: Observation) -> str | None:
    """The report's MMIO ranges, less the LOCK's MMIO_REPORTING_OFFSET, lie inside the function's BAR: the
    device describes the interface the host locked, at the addresses it decodes."""
    found = _reports(o)
    if not found:
        return None
    offsets = dict(fold_history(o, "att.lock_offsets", dict, _note_lock_offset))
    for e in o.events:
        offsets = _note_lock_offset(offsets, e)
    fns = functions(o.before)
    for e in found:
        rid = e.arguments[0]
        f = fns.get(rid)
        report = getattr(_signed(e), "report", None)
        if f is None or report is None or rid not in offsets:
            continue
        ranges = _ranges(report)
        if ranges is None:
            return f"the report in the evidence for {rid:#06x} does not decode"
        lo, hi = f.bar_base, f.bar_base + f.bar_pages * PAGE
        for first, end in ranges:
            a, b = (first - offsets[rid]) % 2**64, (end - offsets[rid]) % 2**64
            if a < lo or b > hi or b < a:
                return f"report range {a:#x}..{b:#x} of {rid:#06x} is outside its BAR {lo:#x}..{hi:#x}"
    return HELD


def att_guest_refuses_mismatch(o: Observation) -> str | None:
    """A guest's attest succeeds only on evidence for its own nonce whose ranges lie inside its vBAR."""
    attests = [e for e in o.events if e.callee == "guest" and e.operation == "attest"]
    if not attests:
        return None
    for g in attests:
        if not g.ok:
            continue
        inner = [e for e in _reports(o) if g in o.ancestors(e)]
        tsm_calls = [e for e in o.events if e.callee == "guest_tsm" and e.operation == "attest" and g in o.ancestors(e)]
        if not inner or not tsm_calls:
            continue
        ev = inner[-1]
        signed = _signed(ev)
        asked = getattr(ev.arguments[2], "nonce", b"")
        if signed is None or bytes(getattr(signed, "nonce", b"")) != bytes(asked):
            return "the guest accepted evidence signed over another nonce (stale or replayed)"
        _, bar_gpa, bar_size = tsm_calls[-1].arguments[:3]
        ranges = _ranges(getattr(signed, "report", b"")) or []
        for first, end in ranges:
            if first < bar_gpa or end > bar_gpa + bar_size:
                return f"the guest accepted a report range {first:#x}..{end:#x} outside its vBAR {bar_gpa:#x}"
    return HELD


def _violation_names() -> set[str]:
    out, todo = set(), [ConformanceViolation]
    while todo:
        c = todo.pop()
        out.add(c.__name__)
        todo.extend(c.__subclasses__())
    return out | {"EvidenceError"}


def err_no_broken_promise(o: Observation) -> str | None:
    """The host TSM raises ConformanceViolation when a device breaks a promise (drops an answer, answers
    with garbage or the wrong message): that is a failure of the SUT, never a refusal to pass over."""
    names = _violation_names()
    sessions = {d.name: set(d.sessions) for d in o.before.devices}
    tsm = getattr(o.before, "tsm", None)  # a device alone has no TSM
    if tsm is not None and any(sid not in sessions.get(dev, {sid}) for dev, sid in tsm.connected):
        return None  # the TSM talks over a session the device has ended: a drop is the device's right (IDE-01)
    for e in o.events:
        if not e.ok and e.error in names and e.callee != "guest_tsm":
            return f"{e.callee}.{e.operation} raised {e.error}: {e.message}"
    if isinstance(o.error, ConformanceViolation):
        return f"the step raised {type(o.error).__name__}: {o.error}"
    return HELD if any(e.callee == "tsm" for e in o.events) else None


M = Level.MUST
_r = make_rule
RULES: list[Rule] = [
    _r(
        "ATT-01",
        "evidence is signed over this request's nonce",
        Area.ATT,
        M,
        SRC,
        att_nonce,
        on={"tsm.guest_request"},
    ),
    _r(
        "ATT-02",
        "evidence is fresh: the report served in this request, never handed out twice",
        Area.ATT,
        M,
        SRC,
        att_fresh,
        on={"tsm.guest_request"},
    ),
    _r(
        "ATT-03",
        "the report's MMIO ranges lie inside the function's BAR (less the LOCK's reporting offset)",
        Area.ATT,
        M,
        "PCIe r6.2 §11.3.11 (MMIO_RANGE, MMIO_REPORTING_OFFSET); flow steps 20-24",
        att_ranges_match_bar,
        on={"tsm.guest_request"},
    ),
    _r(
        "ATT-04",
        "the guest accepts only evidence for its own nonce with ranges inside its vBAR",
        Area.ATT,
        M,
        "flow steps 24-25 (verify before accept); [TDXC-ARCH] §3.4.4",
        att_guest_refuses_mismatch,
        on={"guest.attest"},
    ),
    _r(
        "ERR-04",
        "no component reports a broken promise (ConformanceViolation)",
        Area.ERR,
        M,
        "architecture 'Errors' (ConformanceViolation is a broken promise); issue 14",
        err_no_broken_promise,
    ),
]
