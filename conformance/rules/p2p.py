"""Rules of the optional TDISP requests: P2P stream binding, SET_MMIO_ATTRIBUTE and vendor-defined messages.

PCIe r6.2 §11.3 makes BIND_P2P_STREAM, UNBIND_P2P_STREAM and SET_MMIO_ATTRIBUTE legal in RUN only (the state
table of TDISP-01 judges them in any other state) and VDM_REQUEST legal in every state. A device says which
of them it serves in REQ_MSGS_SUPPORTED of its capabilities; one it does not serve is answered
UNSUPPORTED_REQUEST. What these rules add is what each request means once it is served: which stream may be
bound, that an unbound stream cannot be unbound, that leaving RUN drops every binding, which MMIO range may
change its attributes and that the report shows the change, how a vendor error is laid out -- and, on the
host, that the TSM joins only TDIs of one VM and carries a guest's vendor message and its answer unchanged.

The device rules read the TDISP and IDE_KM messages of the step (and the history, folded) and, where a device
shows them, the snapshot's ``p2p_streams`` of each function; a device that shows none is judged on its
messages alone.
"""

from __future__ import annotations

from typing import Any

from teeio_conformance.contract import ide_km as km
from teeio_conformance.contract.errors import StackError
from teeio_conformance.contract.tdisp import codec as td

from ._model import HELD, Area, Level, Needs, Observation, Rule, fold_history, make_rule
from ._view import functions, session_of, subtree, tdisp_exchanges

__all__ = ["DEVICE_RULES", "RULES"]

M = Level.MUST
PCIE = "PCIe Base r6.2 §11"
E = td.ErrorCode
Rq = td.RequestCode
_NOT_JUDGED = (E.BUSY, E.INVALID_INTERFACE_STATE, E.INVALID_INTERFACE)  # TDISP-01 and TDISP-12 judge these
_TRACKED = ("flr", "config_write", "poison", "spdm_end", "ide_failure", "surprise_remove", "replug")


_OPTIONAL = frozenset({Rq.BIND_P2P_STREAM, Rq.UNBIND_P2P_STREAM, Rq.SET_MMIO_ATTRIBUTE, Rq.VDM})


def _has_optional(o: Observation) -> bool:
    """Did a device get one of the optional requests this step? (Its MessageType byte; nothing decoded.)"""
    hit = o.memo.get("p2p.optional")
    if hit is None:
        hit = o.memo["p2p.optional"] = any(
            e.callee == "device"
            and e.operation == "handle_vendor_message"
            and len(e.arguments) > 1
            and e.arguments[0] == 1
            and isinstance(e.arguments[1], bytes | bytearray)
            and len(e.arguments[1]) > 1
            and e.arguments[1][1] in _OPTIONAL
            for e in o.events
        )
    return bool(hit)


def _err(resp: Any) -> int | None:
    return resp.error_code if isinstance(resp, td.TdispError) else None


# ------------------------------------------------------------------ what the history says
def _note(acc: dict[str, Any], e: Any) -> dict[str, Any]:
    """From the device's answers: which requests each TDI's capabilities advertise, which (stream, session)
    pairs a KEY_PROG keyed, each TDI's locking session and default stream (its last successful LOCK)."""
    if e.callee != "device" or not e.ok:
        return acc
    if e.operation == "spdm_end" and e.arguments:
        acc["keyed"] = {k for k in acc["keyed"] if k[1] != e.arguments[0]}
        return acc
    if e.operation != "handle_vendor_message" or not e.arguments or e.result is None:
        return acc
    if e.arguments[0] == 0:
        try:
            req, resp = km.decode(bytes(e.arguments[1])), km.decode(bytes(e.result))
        except (StackError, TypeError):
            return acc
        if isinstance(req, km.KeyProg) and isinstance(resp, km.KpAck) and resp.status == km.KpAckStatus.SUCCESS:
            acc["keyed"].add((req.stream_id, session_of(e)))
        return acc
    for _, req, resp in tdisp_exchanges((e,)):
        if req is None:
            continue
        rid = req.interface_id.function_id & 0xFFFF
        if isinstance(resp, td.TdispCapabilities):
            acc["caps"][rid] = int.from_bytes(resp.req_msgs_supported[:2], "little")
        elif isinstance(resp, td.LockInterfaceResponse) and isinstance(req, td.LockInterface):
            acc["locks"][rid] = (session_of(e), req.default_stream_id)
    return acc


def _new() -> dict[str, Any]:
    return {"caps": {}, "keyed": set(), "locks": {}}


def _facts(o: Observation) -> dict[str, Any]:
    """:func:`_note` over the history (kept across steps) -- a copy this step may extend."""
    base = fold_history(o, "p2p.facts", _new, _note)
    return {"caps": dict(base["caps"]), "keyed": set(base["keyed"]), "locks": dict(base["locks"])}


def _advertised(facts: dict[str, Any], rid: int, code: int) -> bool | None:
    """Does the TDI's (or, not asked for it, any TDI's) REQ_MSGS_SUPPORTED name ``code``? None: never asked."""
    caps = facts["caps"].get(rid)
    if caps is None and facts["caps"]:
        caps = next(reversed(facts["caps"].values()))
    return None if caps is None else bool(caps >> (code - 0x80) & 1)


def _bindings(snap: Any) -> dict[int, set[int]] | None:
    """rid -> P2P streams bound, from a snapshot that shows them (None: the device does not say)."""
    fns = functions(snap)
    if not fns or not all(hasattr(f, "p2p_streams") for f in fns.values()):
        return None
    return {rid: set(f.p2p_streams) for rid, f in fns.items()}


# ------------------------------------------------------------------ one pass over the step, shared
class _Judge:
    """The step's optional requests judged in order; ``findings`` maps rule ID -> first violation."""

    def __init__(self, o: Observation) -> None:
        self.o = o
        self.findings: dict[str, str] = {}
        self.exercised: set[str] = set()
        self.facts = _facts(o)
        before = _bindings(o.before) if o.before is not None else None
        self.bound = before
        self.states = {rid: f.tdi_state for rid, f in functions(o.before).items()} if o.before is not None else {}
        self.disturbed: set[int] = set()  # TDIs a tracked event, LOCK or STOP touched earlier in the step
        self.keyed_now: set[tuple[int, int | None]] = set()  # keyed earlier in this step
        self.report_parts: dict[int, tuple[bytearray, int]] = {}
        self.ranges: dict[int, tuple[td.MmioRange, ...]] = {}
        self.pending: dict[int, td.MmioRange] = {}  # a SET_MMIO_ATTRIBUTE that succeeded, not yet seen in a report
        self.bound_in_step: set[int] = set()
        self.owner = False  # the exchange being judged came over its TDI's locking session
        if _has_optional(o):  # most steps send none: the history's fold catches up when one does
            self._run()

    def flag(self, rule: str, msg: str) -> None:
        self.exercised.add(rule)
        self.findings.setdefault(rule, msg)

    def ok(self, rule: str) -> None:
        self.exercised.add(rule)

    def _run(self) -> None:
        for e in self.o.events:
            if e.callee != "device":
                continue
            if e.operation in _TRACKED and e.ok:
                self.disturbed |= set(self.states)  # whatever it reset, no progress is owed after it
                if e.operation == "spdm_end":
                    self.keyed_now = {k for k in self.keyed_now if k[1] != e.arguments[0]}
            self.facts = _note(self.facts, e)
            if e.operation != "handle_vendor_message" or not e.arguments:
                continue
            if e.arguments[0] == 0:
                self._idekm(e)
                continue
            for _, req, resp in tdisp_exchanges((e,)):
                if req is not None and resp is not None:
                    self._exchange(e, req, resp)

    def _idekm(self, e: Any) -> None:
        try:
            req, resp = km.decode(bytes(e.arguments[1])), km.decode(bytes(e.result or b""))
        except (StackError, TypeError):
            return
        if isinstance(req, km.KeyProg) and isinstance(resp, km.KpAck) and resp.status == km.KpAckStatus.SUCCESS:
            self.keyed_now.add((req.stream_id, session_of(e)))

    def _exchange(self, e: Any, req: Any, resp: Any) -> None:
        rid = req.interface_id.function_id & 0xFFFF
        if req.interface_id.function_id >> 16 or rid not in self.states:
            return  # an unknown INTERFACE_ID: TDISP-12's
        lock = self.facts["locks"].get(rid)
        self.owner = session_of(e) is not None and lock is not None and session_of(e) == lock[0]
        if isinstance(req, td.StopInterface | td.LockInterface):
            self.disturbed.add(rid)
            if isinstance(resp, td.StopInterfaceResponse) and self.bound is not None:
                self.bound[rid] = set()
            return
        if isinstance(req, td.GetDeviceInterfaceReport) and isinstance(resp, td.DeviceInterfaceReport):
            self._report(rid, req, resp)
            return
        if _err(resp) in _NOT_JUDGED:
            return
        if isinstance(req, td.BindP2PStream):
            self._bind(e, rid, req, resp)
        elif isinstance(req, td.UnbindP2PStream):
            self._unbind(rid, req, resp)
        elif isinstance(req, td.SetMmioAttribute):
            self._set_attr(rid, req, resp)
        elif isinstance(req, td.VdmRequest):
            self._vdm(rid, req, resp)

    def _running(self, rid: int) -> bool:
        """In RUN since the step began, and the request came over its locking session: what a request that
        must succeed needs (the spec's other refusals -- outside a session, another requester -- aside)."""
        return self.states.get(rid) is td.TdiState.RUN and rid not in self.disturbed and self.owner

    # -------------------------------------------------------------- BIND / UNBIND (P2P-01, P2P-02)
    def _unsupported(self, rule: str, rid: int, code: int, resp: Any) -> bool:
        """True when the device does not advertise ``code`` and so must answer UNSUPPORTED_REQUEST (judged)."""
        if _advertised(self.facts, rid, code) is not False:
            return False
        if _err(resp) == E.UNSUPPORTED_REQUEST:
            self.ok(rule)
        else:
            self.flag(rule, f"{Rq(code).name}, not advertised in REQ_MSGS_SUPPORTED, answered {type(resp).__name__}")
        return True

    def _bind(self, e: Any, rid: int, req: td.BindP2PStream, resp: Any) -> None:
        if self._unsupported("P2P-01", rid, Rq.BIND_P2P_STREAM, resp):
            return
        lock = self.facts["locks"].get(rid)
        session = lock[0] if lock else None
        stream = req.p2p_stream_id
        keyed = (stream, session) in self.facts["keyed"] or (stream, session) in self.keyed_now
        default = lock is not None and stream == lock[1]
        if isinstance(resp, td.BindP2PStreamResponse):
            if lock is None or not keyed or default:
                why = (
                    "the TDI's default stream"
                    if default
                    else f"a stream no KEY_PROG keyed over the locking session {session}"
                )
                self.flag("P2P-01", f"BIND_P2P_STREAM of {rid:#06x} to stream {stream} succeeded: {why}")
                return
            self.ok("P2P-01")
            self.bound_in_step.add(rid)
            if self.bound is not None:
                self.bound.setdefault(rid, set()).add(stream)
            return
        if not isinstance(resp, td.TdispError) or resp.error_code not in (E.INVALID_REQUEST, E.UNSUPPORTED_REQUEST):
            self.flag("P2P-01", f"BIND_P2P_STREAM of {rid:#06x} answered {type(resp).__name__} {_err(resp)}")
            return
        after = next((d for d in self.o.after.devices if any(f.rid == rid for f in d.functions)), None)
        ready = (
            (stream, session) in self.keyed_now
            and getattr(after, "p2p_stream_state", None) == "SECURE"
            and not default
            and self._running(rid)
            and self.bound is not None
            and stream not in self.bound.get(rid, set())
            and _advertised(self.facts, rid, Rq.BIND_P2P_STREAM)
        )
        if ready:
            self.flag(
                "P2P-01",
                f"BIND_P2P_STREAM of {rid:#06x} in RUN to stream {stream}, just keyed over its locking session and "
                f"Secure, was refused {resp.error_code:#x}: it must succeed (progress)",
            )
        else:
            self.ok("P2P-01")

    def _unbind(self, rid: int, req: td.UnbindP2PStream, resp: Any) -> None:
        if self._unsupported("P2P-02", rid, Rq.UNBIND_P2P_STREAM, resp):
            return
        stream = req.p2p_stream_id
        if self.bound is None:  # the device does not show its bindings: only the answer's form is judged
            if isinstance(resp, td.UnbindP2PStreamResponse) or _err(resp) == E.INVALID_REQUEST:
                self.ok("P2P-02")
            else:
                self.flag("P2P-02", f"UNBIND_P2P_STREAM answered {type(resp).__name__} {_err(resp)}")
            return
        was = stream in self.bound.get(rid, set())
        if isinstance(resp, td.UnbindP2PStreamResponse):
            if not was:
                self.flag("P2P-02", f"UNBIND_P2P_STREAM of stream {stream}, not bound to {rid:#06x}, succeeded")
                return
            self.bound[rid].discard(stream)
            self.ok("P2P-02")
        elif _err(resp) == E.INVALID_REQUEST and not (was and self._running(rid)):
            self.ok("P2P-02")
        elif was and self._running(rid):
            self.flag("P2P-02", f"UNBIND_P2P_STREAM of stream {stream}, bound to {rid:#06x} in RUN, was refused")
        else:
            self.flag("P2P-02", f"UNBIND_P2P_STREAM of an unbound stream answered {type(resp).__name__} {_err(resp)}")

    # -------------------------------------------------------------- reports and SET_MMIO_ATTRIBUTE
    def _report(self, rid: int, req: td.GetDeviceInterfaceReport, resp: td.DeviceInterfaceReport) -> None:
        if req.offset == 0:
            self.report_parts[rid] = (bytearray(), len(resp.portion) + resp.remainder_length)
        got = self.report_parts.get(rid)
        if got is None or req.offset != len(got[0]):
            self.report_parts.pop(rid, None)
            return
        got[0].extend(resp.portion)
        if resp.remainder_length:
            return
        self.report_parts.pop(rid, None)
        try:
            ranges = td.InterfaceReport.decode(bytes(got[0])).mmio_ranges
        except StackError:
            return  # TDISP-16 judges a report that does not decode
        self.ranges[rid] = ranges
        want = self.pending.pop(rid, None)
        if want is None:
            return
        start, end = want.first_page, want.first_page + want.number_of_pages * 4096
        non_tee = bool(want.attributes & td.RangeAttr.IS_NON_TEE_MEM)
        covered = [r for r in ranges if r.first_page < end and start < r.first_page + r.number_of_pages * 4096]
        if not covered or any(bool(r.attributes & td.RangeAttr.IS_NON_TEE_MEM) != non_tee for r in covered):
            self.flag(
                "MMIOATTR-01",
                f"after SET_MMIO_ATTRIBUTE of {start:#x}..{end:#x} (IS_NON_TEE_MEM={int(non_tee)}) the report of "
                f"{rid:#06x} shows {[(hex(r.first_page), r.number_of_pages, hex(r.attributes)) for r in covered]}",
            )
        else:
            self.ok("MMIOATTR-01")

    def _set_attr(self, rid: int, req: td.SetMmioAttribute, resp: Any) -> None:
        if self._unsupported("MMIOATTR-01", rid, Rq.SET_MMIO_ATTRIBUTE, resp):
            return
        ranges = self.ranges.get(rid)
        want = req.mmio_range
        if ranges is None:  # no report read in this step to judge the range against: the answer's form only
            if not isinstance(resp, td.SetMmioAttributeResponse) and _err(resp) != E.INVALID_REQUEST:
                self.flag("MMIOATTR-01", f"SET_MMIO_ATTRIBUTE answered {type(resp).__name__} {_err(resp)}")
            return
        start, end = want.first_page, want.first_page + want.number_of_pages * 4096
        inside = next(
            (r for r in ranges if r.first_page <= start and end <= r.first_page + r.number_of_pages * 4096), None
        )
        valid = (
            inside is not None
            and want.number_of_pages > 0
            and bool(inside.attributes & td.RangeAttr.IS_MEM_ATTR_UPDATABLE)
            and inside.range_id == want.range_id
            and want.attributes & ~int(td.RangeAttr.IS_NON_TEE_MEM)
            == inside.attributes & ~int(td.RangeAttr.IS_NON_TEE_MEM)
        )
        if isinstance(resp, td.SetMmioAttributeResponse):
            if not valid:
                self.flag(
                    "MMIOATTR-01",
                    f"SET_MMIO_ATTRIBUTE of {start:#x}..{end:#x} (attributes {want.attributes:#x}) succeeded, but it "
                    f"is not inside an updatable range of {rid:#06x}'s report or changes more than IS_NON_TEE_MEM",
                )
                return
            self.pending[rid] = want
            self.ok("MMIOATTR-01")
        elif _err(resp) == E.INVALID_REQUEST and (not valid or not self._running(rid)):
            self.ok("MMIOATTR-01")
        elif valid and self._running(rid):
            self.flag(
                "MMIOATTR-01",
                f"SET_MMIO_ATTRIBUTE of {start:#x}..{end:#x} inside an updatable reported range of {rid:#06x} in "
                f"RUN was refused ({type(resp).__name__} {_err(resp)}): it must succeed (progress)",
            )
        else:
            self.flag("MMIOATTR-01", f"SET_MMIO_ATTRIBUTE of a bad range answered {type(resp).__name__} {_err(resp)}")

    # -------------------------------------------------------------- VDM (VDM-01)
    def _vdm(self, rid: int, req: td.VdmRequest, resp: Any) -> None:
        if self._unsupported("VDM-01", rid, Rq.VDM, resp):
            return
        if isinstance(resp, td.VdmResponse):
            if (resp.registry_id, resp.vendor_id) != (req.registry_id, req.vendor_id):
                self.flag(
                    "VDM-01",
                    f"VDM_RESPONSE names registry {resp.registry_id} vendor {resp.vendor_id.hex()}, the request "
                    f"registry {req.registry_id} vendor {req.vendor_id.hex()}",
                )
            else:
                self.ok("VDM-01")
            return
        if _err(resp) == E.VENDOR_SPECIFIC_ERROR:
            problem = vendor_error_problem(resp)
            if problem:
                self.flag("VDM-01", f"VENDOR_SPECIFIC_ERROR for a vendor request: {problem}")
            else:
                self.ok("VDM-01")
        elif _err(resp) in (E.INVALID_REQUEST, E.UNSUPPORTED_REQUEST):
            self.ok("VDM-01")
        else:
            self.flag("VDM-01", f"VDM_REQUEST answered {type(resp).__name__} {_err(resp)}")


def vendor_error_problem(resp: td.TdispError) -> str | None:
    """What is wrong with a VENDOR_SPECIFIC_ERROR's layout, or None: ERROR_DATA reserved (0), then
    EXTENDED_ERROR_DATA = REGISTRY_ID (0 PCI-SIG, 1 CXL), VENDOR_ID_LEN, VENDOR_ID, vendor data."""
    ext = resp.extended_error_data
    if resp.error_data != 0:
        return f"ERROR_DATA {resp.error_data:#x} is reserved and must be 0"
    if len(ext) < 2:
        return f"EXTENDED_ERROR_DATA of {len(ext)} bytes has no REGISTRY_ID and VENDOR_ID_LEN"
    if ext[0] not in (0, 1):
        return f"REGISTRY_ID {ext[0]} is neither PCI-SIG (0) nor CXL (1)"
    if ext[1] == 0 or len(ext) < 2 + ext[1]:
        return f"VENDOR_ID_LEN {ext[1]} does not fit the {len(ext) - 2} bytes that follow"
    return None


def _judge(o: Observation) -> _Judge:
    j = o.memo.get("p2p.judge")
    if j is None:
        j = o.memo["p2p.judge"] = _Judge(o)
    return j


def _judged(rule_id: str):  # type: ignore[no-untyped-def]
    def check(o: Observation) -> str | None:
        j = _judge(o)
        if rule_id in j.findings:
            return j.findings[rule_id]
        return HELD if rule_id in j.exercised else None

    check.__name__ = f"check_{rule_id.replace('-', '_')}"
    return check


def p2p_dropped_outside_run(o: Observation) -> str | None:
    """A TDI out of RUN has no P2P stream bound: STOP, and every event that moves it to ERROR, unbinds them."""
    after = _bindings(o.after)
    if after is None:
        return None
    before = _bindings(o.before) or {}
    if not any(after.values()) and not any(before.values()) and not _has_optional(o):
        return None  # nothing was bound, nor bound in this step
    j = _judge(o)
    states = {rid: f.tdi_state for rid, f in functions(o.after).items()}
    touched = False
    for rid, streams in after.items():
        had = before.get(rid) or rid in j.bound_in_step
        if states.get(rid) is td.TdiState.RUN:
            continue
        if streams:
            return f"TDI {rid:#06x} is {states[rid].name} with P2P stream(s) {sorted(streams)} still bound"
        touched = touched or bool(had)
    return HELD if touched else None


# ------------------------------------------------------------------ host: the TSM's part
def vdm_passed_through(o: Observation) -> str | None:
    """A guest's vendor-defined request reaches its TDI with the body the guest gave, and the device's answer
    -- VDM_RESPONSE or TDISP_ERROR, extended error data and all -- reaches the guest byte for byte."""
    reqs = [
        e
        for e in o.ops("tsm", "guest_request")
        if len(e.arguments) > 2 and getattr(e.arguments[2], "kind", "") == "vdm"
    ]
    if not reqs:
        return None
    for e in reqs:
        body = bytes(getattr(e.arguments[2], "payload", b""))
        sent = [x for x in subtree(o, e) if x.callee == "device" and x.operation == "handle_vendor_message"]
        if not sent:
            continue  # refused before the device (not bound, malformed): nothing was carried
        for x in sent:
            raw = bytes(x.arguments[1])
            if raw[1:2] != bytes([Rq.VDM]) or raw[td.HEADER_LEN :] != body:
                return f"the guest's vendor request {body.hex()} reached the device as {raw.hex()}"
            if int.from_bytes(raw[4:8], "little") & 0xFFFF != e.arguments[0]:
                return f"the guest's vendor request for {e.arguments[0]:#06x} went to another TDI"
        last = sent[-1]
        if e.ok and last.ok and last.result is not None and bytes(e.result or b"") != bytes(last.result):
            return (
                f"the device answered the guest's vendor request with {bytes(last.result).hex()} but the guest got "
                f"{bytes(e.result or b'').hex()}"
            )
        outer = [
            v
            for v in o.ops("vmm", "ghci_guest_request", ok=True)
            if v.seq < e.seq and len(v.arguments) > 2 and v.arguments[2] is e.arguments[2]
        ]
        if e.ok and outer and bytes(outer[-1].result or b"") != bytes(e.result or b""):
            return "the host changed the TSM's answer to the guest's vendor request on its way back"
    return HELD


def p2p_same_vm(o: Observation) -> str | None:
    """The TSM binds a P2P stream only between two TDIs of two devices that are both bound to the VM that asks
    and started (RUN); anything else is refused and binds nothing."""
    evs = o.ops("tsm", "bind_p2p")
    if not evs:
        return None
    records = {t.rid: t for t in o.before.tsm.tdis}
    dev_of = {f.rid: d.name for d in o.before.devices for f in d.functions}
    for e in evs:
        if len(e.arguments) < 3:
            continue
        vm, rid, peer = e.arguments[:3]
        a, b = records.get(rid), records.get(peer)
        fit = (
            a is not None
            and b is not None
            and a.vm == vm
            and b.vm == vm
            and a.started
            and b.started
            and dev_of.get(rid) != dev_of.get(peer)
        )
        sent = [
            (req.interface_id.function_id & 0xFFFF, resp)
            for _, req, resp in tdisp_exchanges(subtree(o, e))
            if isinstance(req, td.BindP2PStream) and isinstance(resp, td.BindP2PStreamResponse)
        ]
        if not fit and (e.ok or sent):
            return (
                f"the TSM bound a P2P stream between {rid:#06x} and {peer:#06x} for {vm}: they are not two started "
                "TDIs of two devices both bound to that VM"
            )
        after = _bindings(o.after)
        if e.ok and after is not None and not (after.get(rid) and after.get(peer)):
            return f"bind_p2p of {rid:#06x} and {peer:#06x} succeeded but the devices show no stream bound to both"
    return HELD


_r = make_rule
_DEV = {"device.handle_vendor_message", "device.flr", "device.config_write", "device.poison", "device.spdm_end"}
DEVICE_SNAPSHOT = Needs(snapshots={"devices"})

DEVICE_RULES: list[Rule] = [
    _r(
        "P2P-01",
        "BIND_P2P_STREAM binds only a P2P stream keyed over the TDI's locking session (never its default stream); "
        "not advertised, it is UNSUPPORTED_REQUEST",
        Area.TDISP,
        M,
        f"{PCIE}.3.18 (keys from the lock session); {PCIE}.3.7 REQ_MSGS_SUPPORTED; rules-seed C.53",
        _judged("P2P-01"),
        on=_DEV,
        needs=DEVICE_SNAPSHOT,
    ),
    _r(
        "P2P-02",
        "UNBIND_P2P_STREAM unbinds a stream bound to the TDI; a stream not bound gets INVALID_REQUEST",
        Area.TDISP,
        M,
        f"{PCIE}.3.20; {PCIE}.3 Table 11-27 (INVALID_REQUEST); rules-seed C.53",
        _judged("P2P-02"),
        on=_DEV,
        needs=DEVICE_SNAPSHOT,
    ),
    _r(
        "P2P-03",
        "a TDI out of RUN (stopped or in ERROR) has no P2P stream bound",
        Area.TDISP,
        M,
        f"{PCIE}.2 (P2P only in RUN); {PCIE}.3.16 (STOP); rules-seed C.52/C.53",
        p2p_dropped_outside_run,
        on=_DEV | {"device.ide_failure", "device.receive", "device.ide_p2p_enable", "device.surprise_remove"},
        needs=DEVICE_SNAPSHOT,
    ),
    _r(
        "MMIOATTR-01",
        "SET_MMIO_ATTRIBUTE changes IS_NON_TEE_MEM inside an updatable reported range and the report shows it; "
        "any other range gets INVALID_REQUEST",
        Area.TDISP,
        M,
        f"{PCIE}.3.22; {PCIE}.3.11 (RANGE_ATTRIBUTES IS_MEM_ATTR_UPDATABLE); rules-seed C.53",
        _judged("MMIOATTR-01"),
        on=_DEV,
        needs=DEVICE_SNAPSHOT,
    ),
    _r(
        "VDM-01",
        "a vendor-defined request gets a VDM_RESPONSE naming its registry and vendor, or a TDISP_ERROR; a "
        "VENDOR_SPECIFIC_ERROR carries REGISTRY_ID, VENDOR_ID_LEN and VENDOR_ID",
        Area.TDISP,
        M,
        f"{PCIE}.3.24-§11.3.26; {PCIE}.3 Table 11-27 (VENDOR_SPECIFIC_ERROR 0xFF); [LIBSPDM-TDISP]",
        _judged("VDM-01"),
        on=_DEV,
        needs=DEVICE_SNAPSHOT,
    ),
]

RULES: list[Rule] = [
    *DEVICE_RULES,
    _r(
        "P2P-04",
        "the TSM binds a P2P stream only between started TDIs of two devices bound to the one VM that asks",
        Area.CONF,
        M,
        f"{PCIE}.3.18; {PCIE}.2 (P2P in RUN only); rules-seed C.53",
        p2p_same_vm,
        on={"tsm.bind_p2p"},
    ),
    _r(
        "VDM-02",
        "the TSM carries a guest's vendor-defined request to its TDI and the device's answer back unchanged",
        Area.FLOW,
        M,
        f"{PCIE}.3.24-§11.3.25; flow corr. 4 (guest requests are opaque to the host)",
        vdm_passed_through,
        on={"tsm.guest_request"},
    ),
]
