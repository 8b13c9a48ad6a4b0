"""Check that one complete lifecycle trace follows flow.md's corrected order.

Used on the golden flow (and available to any SUT author with a trace of one full lifecycle):
each check names the maintainer's correction or the platform fact it enforces. Unlike the rules,
which judge one step at a time, this reads the whole trace of a single, complete run.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from teeio_conformance.contract.errors import StackError
from teeio_conformance.contract.tdisp import codec as td
from teeio_conformance.contract.trace import Event

__all__ = ["check_corrected_flow"]


def _first(events: Sequence[Event], callee: str, op: str) -> Event | None:
    return next((e for e in events if e.callee == callee and e.operation == op and e.ok), None)


def _all(events: Sequence[Event], callee: str, op: str) -> list[Event]:
    return [e for e in events if e.callee == callee and e.operation == op and e.ok]


def _tdisp(events: Sequence[Event], kind: type) -> list[Event]:
    out = []
    for e in events:
        if e.callee == "device" and e.operation == "handle_vendor_message" and e.arguments[0] == 1:
            try:
                if isinstance(td.decode_request(bytes(e.arguments[1])), kind):
                    out.append(e)
            except StackError:
                pass
    return out


def _within(events: Sequence[Event], inner: Event, outer: Event) -> bool:
    """Is ``inner`` nested inside ``outer`` (started after it, deeper, before the next sibling)?"""
    if inner.seq <= outer.seq or inner.depth <= outer.depth:
        return False
    for e in events:
        if outer.seq < e.seq < inner.seq and e.depth <= outer.depth:
            return False
    return True


def check_corrected_flow(events: Sequence[Event], profile: str) -> list[str]:
    """Every way ``events`` departs from the corrected flow; empty means it follows it."""
    problems: list[str] = []
    run = _first(events, "kvm", "run")
    if run is None:
        return ["the VM never ran (no kvm.run)"]
    for op in ("viommu_alloc", "vdevice_alloc"):
        allocs = _all(events, "iommufd", op)
        if not allocs:
            problems.append(f"no {op} at all")
        elif any(a.seq > run.seq for a in allocs):
            problems.append(f"{op} after KVM run (correction 1: before step 10)")
    bind = _first(events, "iommufd", "vdevice_tsm_bind")
    if bind is None:
        problems.append("bind never went through the vdevice (iommufd.vdevice_tsm_bind)")
    else:
        if any(_within(events, a, bind) for a in _all(events, "iommufd", "vdevice_alloc")):
            problems.append("bind created a vdevice (correction 3: bind acts on the existing one)")
    for e in _all(events, "tsm", "guest_request"):
        if e.caller != "iommufd":
            problems.append(f"guest request reached the TSM from {e.caller} (correction 4: through the vdevice)")
    unbind = _first(events, "iommufd", "vdevice_tsm_unbind")
    stop_vm = _first(events, "vmm", "stop_vm")
    destroys = [e for e in _all(events, "iommufd", "destroy")]
    if unbind is None or stop_vm is None:
        problems.append("the lifecycle has no guest unbind or no VM stop")
    else:
        vdev_destroys = [e for e in destroys if e.seq < stop_vm.seq]
        if vdev_destroys:
            problems.append("iommufd objects destroyed before VM stop (correction 5: the vdevice stays)")
        kvm_stop = _first(events, "kvm", "stop")
        viommu_ids = {e.result for e in _all(events, "iommufd", "viommu_alloc")}
        for e in destroys:
            if e.arguments and e.arguments[0] in viommu_ids and (kvm_stop is None or e.seq < kvm_stop.seq):
                problems.append("viommu destroyed while the VM ran (correction 6: no step 46)")
    if stop_vm is not None:
        problems += _teardown_order(events, stop_vm)
    stops = _tdisp(events, td.StopInterface)
    unmaps = [e for e in events if e.callee == "tsm" and e.operation == "sept_remove" and e.ok]
    if profile == "tdx":
        if not stops or not unmaps:
            problems.append("TDX flow lacks the TDI stop or the private MMIO unmap")
        elif unmaps[0].seq < stops[0].seq:
            problems.append("TDX: private MMIO unmapped before the TDI was stopped (steps 41 before 44)")
    if profile == "cca" and stops and unmaps and stops[0].seq < unmaps[0].seq:
        problems.append("CCA: TDI unlocked before its private MMIO was unmapped")
    starts = _tdisp(events, td.StartInterface)
    if not starts:
        problems.append("the TDI was never started")
    else:
        start = starts[0]
        if profile == "tdx":
            accept = _all(events, "kvm", "map_private_mmio")
            if not accept or accept[0].seq > start.seq:
                problems.append("TDX: START before the guest accepted MMIO (accept precedes start)")
        if profile == "sev-tio":
            attest = [
                e for e in _all(events, "tsm", "guest_request") if getattr(e.arguments[2], "kind", "") == "report"
            ]
            if not attest or not _within(events, start, attest[0]):
                problems.append("SEV-TIO: START was not sent at attest")
        if profile == "cca":
            host = _first(events, "tsm", "host_start")
            if host is None or not _within(events, start, host):
                problems.append("CCA: START was not sent by the host")
    return problems


def _teardown_order(events: Sequence[Event], stop_vm: Event) -> list[str]:
    """flow.md's corrected teardown at VM stop: vdevice destroyed, then the vIOMMU, then hwpt/idev, then
    VFIO close."""
    inside = [e for e in events if e.ok and _within(events, e, stop_vm)]
    kinds = {e.result: k for k in ("vdevice_alloc", "viommu_alloc", "hwpt_alloc") for e in _all(events, "iommufd", k)}
    order: list[tuple[str, int]] = []
    for e in inside:
        if e.callee == "iommufd" and e.operation == "destroy" and e.arguments:
            kind = kinds.get(e.arguments[0])
            if kind is not None:
                order.append((kind.removesuffix("_alloc"), e.seq))
        elif e.callee == "iommufd" and e.operation == "detach":
            order.append(("hwpt", e.seq))
        elif e.callee == "vfio" and e.operation == "close_device":
            order.append(("vfio_close", e.seq))
    want = ["vdevice", "viommu", "hwpt", "vfio_close"]
    seen = [k for k, _ in order]
    missing = [k for k in want if k not in seen]
    if missing:
        return [f"VM stop tears down no {', '.join(missing)} (corrected teardown: {', '.join(want)})"]
    last = {k: max(s for kk, s in order if kk == k) for k in want}
    first = {k: min(s for kk, s in order if kk == k) for k in want}
    for a, b in itertools.pairwise(want):
        if last[a] > first[b]:
            return [f"VM stop: {b} (seq {first[b]}) before {a} was done (seq {last[a]}); corrected: {', '.join(want)}"]
    return []
