"""Liveness: the corrected lifecycle completes on the SUT, step by step, with the effect each step promises.

A safety rule holds on a stack that does nothing; these do not. The full-stack machine's ``lifecycle``
step (``conformance/test_liveness.py`` runs it once per profile, before any random search) drives the
SUT through flow.md's corrected lifecycle -- the one ``teeio-conformance flow`` draws
(``reference_impl/lifecycle.py``) -- as a well-behaved host and guest, one machine step per lifecycle
step, each named ``lifecycle_<step>``. The rule of the step's phase judges it: the call must not be
refused, and the snapshot afterwards must show what the step is for (the TDI locked after bind, in RUN
after start, private MMIO returning the TDI's data, ...). The first step that does not succeed fails,
and the message names it and why; the driver stops there.

Phases: LIVE-01 bring-up (flow steps 1-11), LIVE-02 attest/accept/start (12-34), LIVE-03 the
workload (35), LIVE-04 teardown (36-49, VM stop, disconnect), LIVE-05 a workable shared device again
(step 50: guest T=0 access, host access and shared DMA work, the dmabuf recovered).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from teeio_conformance.contract.tdisp import codec as td

from ._model import HELD, Area, Level, Observation, Rule, make_rule
from ._view import LOCKED, device_of, functions, tsm_tdi, vm_state

__all__ = ["LIFECYCLE", "PREFIX", "RULES", "LifeStep"]

PREFIX = "lifecycle_"
FLOW = "flow.md corrected lifecycle (reference_impl/lifecycle.py, `teeio-conformance flow`)"


@attrs.frozen
class LifeStep:
    """One step of the driven lifecycle: the machine action's name, the rule that judges it, the flow steps
    it stands for, and what must hold after it (``post`` returns why not, or None)."""

    action: str
    rule: str
    flow: str
    what: str
    post: Callable[[Observation, dict[str, Any]], str | None] = attrs.field(eq=False, repr=False)


def _result(o: Observation, callee: str, operation: str) -> Any:
    for e in o.events:
        if e.callee == callee and e.operation == operation and e.ok:
            return e.result
    return None


def _first(o: Observation, callee: str, operation: str) -> Any:
    return next((e for e in o.events if e.callee == callee and e.operation == operation), None)


def _vdev(snap: Any, vm: str, virt_id: int) -> Any:
    for g in snap.guests:
        if g.vm == vm:
            return next((v for v in g.vdevs if v.virt_id == virt_id), None)
    return None


def _vm_snap(snap: Any, vm: str) -> Any:
    return next((v for v in snap.kvm.vms if v.name == vm), None)


def _slots(snap: Any, vm: str, rid: int) -> list[Any]:
    return [m for m in snap.kvm.memslots if m.vm == vm and m.rid == rid]


def _tdi_state(snap: Any, rid: int) -> td.TdiState | None:
    f = functions(snap).get(rid)
    return None if f is None else f.tdi_state


# ---------------------------------------------------------------------------- post-conditions per step


def _connect_ide(o: Observation, ctx: dict[str, Any]) -> str | None:
    ev = _first(o, "vmm", "connect_ide")
    if ev is None:
        return "the VMM made no connect_ide crossing"
    ctx["device"] = ev.arguments[0]
    session = next((s for d, s in o.after.tsm.connected if d == ctx["device"]), None)
    if session is None:
        return f"the TSM holds no SPDM session with {ctx['device']}"
    dev = next((d for d in o.after.devices if d.name == ctx["device"]), None)
    if dev is None or session not in dev.sessions:
        return f"the device does not know the TSM's session {session}"
    if dev.stream_state != "SECURE":
        return f"the IDE stream is {dev.stream_state}, not SECURE, after connect (step 1: keys programmed, K_SET_GO)"
    return None


def _create_vm(o: Observation, ctx: dict[str, Any]) -> str | None:
    vm = _result(o, "kvm", "create_vm")
    if not isinstance(vm, str) or vm_state(o.after, vm) is None:
        return "KVM reports no new VM"
    ctx["vm"] = vm
    return None


def _assign(o: Observation, ctx: dict[str, Any]) -> str | None:
    ev = _first(o, "vmm", "assign")
    if ev is None:
        return "the VMM made no assign crossing"
    vm, _, rid, virt_id = ev.arguments[:4]
    ctx.update(rid=rid, virt_id=virt_id)
    snap = o.after
    if not any(a.vm == vm and a.rid == rid for a in snap.vmm.assignments):
        return f"the VMM holds no assignment of {rid:#x} to {vm}"
    if not any(f[2] == rid for f in snap.vfio.open_fds):
        return f"VFIO has no open device for {rid:#x} (step 2)"
    if not any(m.mapping.value == "shared" for m in _slots(snap, vm, rid)):
        return f"KVM has no shared memslot of {rid:#x}'s MMIO dmabuf for {vm} (steps 3-6)"
    if _vdev(snap, vm, virt_id) is None:
        return f"the guest of {vm} shows no vPCI function {virt_id:#x}"
    return None


def _run(o: Observation, ctx: dict[str, Any]) -> str | None:
    state = vm_state(o.after, ctx["vm"])
    return None if state == "running" else f"{ctx['vm']} is {state}, not running"


def _enumerate(o: Observation, ctx: dict[str, Any]) -> str | None:
    data = _result(o, "guest", "enumerate")
    if not isinstance(data, bytes | bytearray) or not data:
        return "the guest's T=0 read of the shared device returned nothing"
    ctx["shared_view"] = bytes(data)
    return None


def _bind(o: Observation, ctx: dict[str, Any]) -> str | None:
    rid, vm, snap = ctx["rid"], ctx["vm"], o.after
    rec = tsm_tdi(snap, rid)
    if rec is None or rec.vm != vm:
        return f"the TSM does not hold {rid:#x} bound to {vm} (it holds {getattr(rec, 'vm', None)})"
    state = _tdi_state(snap, rid)
    if state not in LOCKED:
        return f"the TDI is {getattr(state, 'name', state)} after bind; LOCK_INTERFACE must leave it CONFIG_LOCKED"
    v = _vdev(snap, vm, ctx["virt_id"])
    if v is None or not v.bound:
        return "the guest does not see its function bound"
    return None


def _attest(o: Observation, ctx: dict[str, Any]) -> str | None:
    rid, snap = ctx["rid"], o.after
    v = _vdev(snap, ctx["vm"], ctx["virt_id"])
    if v is None or not v.attested:
        return "the guest does not record the function as attested"
    reports = [
        e
        for e in o.events
        if e.callee == "tsm" and e.operation == "guest_request" and getattr(e.arguments[2], "kind", "") == "report"
    ]
    if not any(e.ok for e in reports):
        return "no report request reached the TSM and succeeded (steps 20-24)"
    state = _tdi_state(snap, rid)
    want = {td.TdiState.RUN} if o.profile == "sev-tio" else LOCKED
    if state not in want:
        return f"the TDI is {getattr(state, 'name', state)} after attest"
    return None


def _accept(o: Observation, ctx: dict[str, Any]) -> str | None:
    v = _vdev(o.after, ctx["vm"], ctx["virt_id"])
    if v is None or not v.accepted:
        return "the guest does not record the function as accepted"
    return None


def _start(o: Observation, ctx: dict[str, Any]) -> str | None:
    rid, snap = ctx["rid"], o.after
    v = _vdev(snap, ctx["vm"], ctx["virt_id"])
    if v is None or not v.running:
        return "the guest does not record the function as started"
    state = _tdi_state(snap, rid)
    if state is not td.TdiState.RUN:
        return f"the TDI is {getattr(state, 'name', state)} after START; it must be RUN"
    if not any(m.mapping.value == "private" for m in _slots(snap, ctx["vm"], rid)):
        return "no private mapping of the TDI's MMIO in the VM after accept and START"
    return None


def _private_mmio(o: Observation, ctx: dict[str, Any]) -> str | None:
    data = _result(o, "guest", "read_private_mmio")
    if not isinstance(data, bytes | bytearray) or not data:
        return "the guest's private MMIO read returned nothing"
    dev = device_of(o.after, ctx["rid"])
    secrets = tuple(getattr(dev, "secrets", ()) or ())
    if secrets and not any(bytes(data) in s or s in bytes(data) for s in secrets):
        return f"the guest's private MMIO read returned {bytes(data)[:8].hex()}..., not the TDI's TEE data"
    return None


def _private_dma(o: Observation, ctx: dict[str, Any]) -> str | None:
    writes = [
        e for e in o.events if e.callee == "kvm" and e.operation == "dma_write" and dict(e.keywords).get("private")
    ]
    if not any(e.ok for e in writes):
        return "no T=1 DMA write reached the guest's private memory"
    before, after = _vm_snap(o.before, ctx["vm"]), _vm_snap(o.after, ctx["vm"])
    if before is not None and after is not None and before.private_digest == after.private_digest:
        return "the guest's private memory did not change"
    return None


def _unbind(o: Observation, ctx: dict[str, Any]) -> str | None:
    rid, vm, snap = ctx["rid"], ctx["vm"], o.after
    state = _tdi_state(snap, rid)
    if state is not td.TdiState.CONFIG_UNLOCKED:
        return f"the TDI is {getattr(state, 'name', state)} after unbind, not CONFIG_UNLOCKED (steps 44-45)"
    rec = tsm_tdi(snap, rid)
    if rec is not None and rec.vm is not None:
        return f"the TSM still holds {rid:#x} bound to {rec.vm}"
    if any(m.mapping.value == "private" for m in _slots(snap, vm, rid)):
        return "the TDI's MMIO is still mapped private (step 41)"
    if any(r == rid for r, _ in snap.iommu.trusted):
        return "the IOMMU still translates T=1 DMA for the function (step 47)"
    if rid in snap.vfio.private_rids:
        return "VFIO still treats the function as private"
    v = _vdev(snap, vm, ctx["virt_id"])
    if v is not None and v.bound:
        return "the guest still sees the function bound"
    return None


def _enumerate_again(o: Observation, ctx: dict[str, Any]) -> str | None:
    rid, vm, snap = ctx["rid"], ctx["vm"], o.after
    bufs = [d for d in snap.vfio.dmabufs if d.rid == rid]
    if not bufs or all(d.revoked for d in bufs):
        return "the function's MMIO dmabuf is still revoked: VFIO did not recover it (steps 48-49)"
    if not any(m.mapping.value == "shared" for m in _slots(snap, vm, rid)):
        return "the VM has no shared mapping of the function's MMIO again (step 49)"
    data = _result(o, "guest", "enumerate")
    if not isinstance(data, bytes | bytearray) or not data:
        return "the guest's T=0 read of the device returned nothing"
    if ctx.get("shared_view") is not None and bytes(data) != ctx["shared_view"]:
        return f"the guest's T=0 read gives {bytes(data).hex()}, not {ctx['shared_view'].hex()} as before bind"
    return None


def _host_mmap(o: Observation, ctx: dict[str, Any]) -> str | None:
    if not any(r == ctx["rid"] for _, r in o.after.vfio.host_mmaps):
        return "VFIO records no host mmap of the function"
    return None


def _host_read(o: Observation, ctx: dict[str, Any]) -> str | None:
    data = _result(o, "vfio", "host_mmio_read")
    if not isinstance(data, bytes | bytearray) or not data:
        return "the host's MMIO read returned nothing"
    if ctx.get("shared_view") is not None and bytes(data)[: len(ctx["shared_view"])] != ctx["shared_view"]:
        return f"the host reads {bytes(data).hex()}, not the device's register page {ctx['shared_view'].hex()}"
    return None


SHARED_PAYLOAD = b"step 50: shared DMA again"


def _shared_dma(o: Observation, ctx: dict[str, Any]) -> str | None:
    writes = [
        e for e in o.events if e.callee == "kvm" and e.operation == "dma_write" and not dict(e.keywords).get("private")
    ]
    if not any(e.ok for e in writes):
        return "no T=0 DMA write reached the guest's shared memory"
    vm = _vm_snap(o.after, ctx["vm"])
    if vm is None or SHARED_PAYLOAD not in vm.shared_memory:
        return "the DMA payload is not in the guest's shared memory"
    return None


def _vm_stop(o: Observation, ctx: dict[str, Any]) -> str | None:
    state = vm_state(o.after, ctx["vm"])
    if state in ("created", "running"):
        return f"{ctx['vm']} is still {state} after stop"
    if any(a.vm == ctx["vm"] for a in o.after.vmm.assignments):
        return "the VMM still holds an assignment for the stopped VM"
    return None


def _disconnect(o: Observation, ctx: dict[str, Any]) -> str | None:
    if any(d == ctx.get("device") for d, _ in o.after.tsm.connected):
        return "the TSM still holds a session with the device"
    dev = next((d for d in o.after.devices if d.name == ctx.get("device")), None)
    if dev is not None and any(f.tdi_state is not td.TdiState.CONFIG_UNLOCKED for f in dev.functions):
        return "a TDI of the device is still locked after disconnect"
    return None


def _s(action: str, rule: str, flow: str, what: str, post: Any) -> LifeStep:
    return LifeStep(PREFIX + action, rule, flow, what, post)


LIFECYCLE: tuple[LifeStep, ...] = (
    _s("connect_ide", "LIVE-01", "1", "SPDM session, IDE keys, stream Secure", _connect_ide),
    _s("create_vm", "LIVE-01", "-", "a VM with its guest", _create_vm),
    _s("assign", "LIVE-01", "2-9, 15-16", "VFIO device, dmabuf memslot and vPCI function", _assign),
    _s("run", "LIVE-01", "10", "KVM run", _run),
    _s("enumerate", "LIVE-01", "11", "the guest sees the shared device (T=0)", _enumerate),
    _s("bind", "LIVE-02", "12-19", "guest bind: LOCK_INTERFACE, TDI CONFIG_LOCKED", _bind),
    _s("attest", "LIVE-02", "20-24", "guest attestation: a report over the guest's nonce", _attest),
    _s("accept", "LIVE-02", "25-30", "guest accept of MMIO and DMA", _accept),
    _s("start", "LIVE-02", "31-34", "START_INTERFACE: TDI in RUN, private MMIO mapped", _start),
    _s("private_mmio", "LIVE-03", "35", "private MMIO read (T=1 over IDE)", _private_mmio),
    _s("private_dma", "LIVE-03", "35", "T=1 DMA into private memory", _private_dma),
    _s("unbind", "LIVE-04", "36-47", "guest unbind: STOP, unmap, TDI CONFIG_UNLOCKED, trusted DMA off", _unbind),
    _s("enumerate_again", "LIVE-05", "48-50", "dmabuf recovered; the guest's T=0 access works again", _enumerate_again),
    _s("host_mmap", "LIVE-05", "50", "the host may mmap the function again", _host_mmap),
    _s("host_read", "LIVE-05", "50", "host MMIO reads work again", _host_read),
    _s("shared_dma", "LIVE-05", "50", "shared (T=0) DMA works again", _shared_dma),
    _s("vm_stop", "LIVE-04", "VM stop", "VM stop releases the vdevice, vIOMMU, VFIO device", _vm_stop),
    _s("disconnect", "LIVE-04", "pci_tsm_disconnect", "the TSM ends the session; every TDI unlocked", _disconnect),
)
BY_ACTION = {s.action: s for s in LIFECYCLE}
CTX = "liveness"  # the key of the driven lifecycle's facts in the checker's carry


def _phase(rule_id: str) -> Callable[[Observation], str | None]:
    def check(o: Observation) -> str | None:
        step = BY_ACTION.get(o.action)
        if step is None or step.rule != rule_id:
            return None
        ctx: dict[str, Any] = o.carry.setdefault(CTX, {})
        head = f"lifecycle step {step.action[len(PREFIX) :]!r} (flow {step.flow}: {step.what})"
        if o.error is not None:
            return f"{head} was refused: {type(o.error).__name__}: {o.error}"
        try:
            why = step.post(o, ctx)
        except KeyError as exc:  # an earlier step did not record what this one needs
            why = f"an earlier step left no {exc.args[0]!r} to act on"
        return HELD if why is None else f"{head} did not take effect: {why}"

    check.__doc__ = f"The driven lifecycle's {rule_id} steps succeed and take effect."
    return check


M = Level.MUST
_r = make_rule
RULES: list[Rule] = [
    _r(
        "LIVE-01",
        "bring-up completes: IDE connected, function assigned with vIOMMU/vdevice, VM running, device enumerated",
        Area.LIVE,
        M,
        f"flow steps 1-11; {FLOW}",
        _phase("LIVE-01"),
        doc="Connect IDE, assign (VFIO, dmabuf, memslot, vIOMMU, vdevice before run), KVM run and the guest's "
        "T=0 enumerate each succeed and take effect on a fresh stack.",
    ),
    _r(
        "LIVE-02",
        "bind, attest, accept and start complete: the TDI is locked, attested, accepted and in RUN",
        Area.LIVE,
        M,
        f"flow steps 12-34; {FLOW}; PCIe r6.2 §11.3 (LOCK_INTERFACE, START_INTERFACE must succeed in state)",
        _phase("LIVE-02"),
        doc="A valid LOCK_INTERFACE in CONFIG_UNLOCKED with the keys programmed, a report fetch while "
        "CONFIG_LOCKED, and START with the lock's nonce must all succeed; a SUT that refuses them fails here.",
    ),
    _r(
        "LIVE-03",
        "the workload runs: private MMIO returns the TDI's data, T=1 DMA reaches private memory",
        Area.LIVE,
        M,
        f"flow step 35; {FLOW}",
        _phase("LIVE-03"),
    ),
    _r(
        "LIVE-04",
        "teardown completes: unbind leaves the TDI unlocked and unmapped, VM stop and disconnect release all",
        Area.LIVE,
        M,
        f"flow steps 36-47, VM stop, pci_tsm_disconnect; {FLOW}",
        _phase("LIVE-04"),
    ),
    _r(
        "LIVE-05",
        "after teardown the device is a workable shared device again (guest, host and DMA access)",
        Area.LIVE,
        M,
        f"flow steps 48-50; {FLOW}",
        _phase("LIVE-05"),
        doc="Step 50: the dmabuf is recovered and mapped shared, the guest's T=0 read gives the register page "
        "it gave before bind, the host can mmap and read the function, and shared DMA lands in shared memory.",
    ),
]
