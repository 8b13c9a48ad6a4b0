"""The fail-nth walk: every multi-step operation of the lifecycle, with each of its nested steps failing in turn.

Like the kernel's ``iommufd_fail_nth`` selftest, which makes the n-th allocation inside one ioctl fail for
n = 1, 2, ... until the ioctl completes untouched: here the n-th crossing *inside* an operation (a call
from one actor into another, at any depth) fails instead of running -- with :class:`FirmwareError`
(-EIO: a firmware, I/O or allocation failure of the callee), or, where the callee is the device answering
a TDISP request, with the device's own failure answer, TDISP_ERROR UNSPECIFIED.
For each (operation, n) the walk checks, on a fresh stack brought to the operation's starting stage:

* the failure is **typed**: the operation either completes (the failing step was one it may do without)
  or raises a :class:`StackError`, never anything else;
* every step is judged by the host side's rules (:class:`StepRunner`; the device's own rules are left out,
  since the walk makes the device fail on purpose), so a refused operation that changed something breaks
  ERR-01 and a half-done teardown breaks the DOWN rules;
* **nothing leaks**: a well-behaved host then tears everything down (guest unbind, VM stop, disconnect),
  each step checked again, and the stack must be left as empty as after an unfaulted run.

``python -m teeio_conformance.conformance.fail_nth [--profile P]`` prints the table (operation x failing
step -> outcome) and the number of (operation, step) pairs walked.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs

from teeio_conformance.conformance.harness import StepRunner, verdicts_untouched
from teeio_conformance.conformance.rules import RuleViolation
from teeio_conformance.contract.errors import FirmwareError, StackError
from teeio_conformance.contract.tdisp import codec as td

__all__ = ["OPERATIONS", "Outcome", "main", "walk"]

VIRT_ID = 0x10
MAY_NOT_FAIL = frozenset({"tsm.unbind"})
"""Crossings whose contract says they cannot fail (pci_tsm_unbind is void; rule LIFE-09): not failed by
the walk -- a failure there would break the contract by fiat, not find a defect. They are counted and
listed as skipped."""
STAGES = ("fresh", "connected", "assigned", "running", "bound", "attested", "accepted", "started")


@attrs.frozen
class Outcome:
    operation: str
    profile: str
    n: int  # the failing crossing, 1-based, counted in call order inside the operation
    failed_at: str  # callee.operation of that crossing
    result: str  # "completed" or the operation's error type
    problem: str  # "" when the failure was typed, rules held and nothing leaked; else what went wrong

    @property
    def ok(self) -> bool:
        return not self.problem


@attrs.define
class _Injector:
    """Counts the crossings nested inside the armed operation; the n-th runs a failure instead."""

    n: int = 0  # 0: count only
    host_only: bool = False  # count (and fail) only crossings into host components, never the device
    target: str = ""  # fail the first crossing into this actor instead of the n-th (the full-stack machine)
    seen: int = 0
    hit: str = ""
    armed: bool = False
    skipped: bool = False


@contextmanager
def _inject(stack: Any, inj: _Injector) -> Iterator[None]:
    trace = stack.trace
    real = trace.call

    def call(actor: Any, op: str, step: Any, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        nested = inj.armed and trace._stack and not (trace._ops and trace._ops[-1] == (id(actor), op))
        if nested and inj.host_only and actor.actor_name == "device":
            nested = False
        if nested and inj.target:
            nested = actor.actor_name == inj.target and not inj.hit
            if nested:
                inj.n = inj.seen + 1  # this one
        if nested:
            inj.seen += 1
            if inj.seen == inj.n:
                inj.hit = f"{actor.actor_name}.{op}"
                name = inj.hit
                if name in MAY_NOT_FAIL:
                    inj.skipped = True
                    return real(actor, op, step, fn, args, kwargs)

                def fail(_self: Any, *a: Any, **_k: Any) -> Any:
                    if name == "device.handle_vendor_message" and a and a[0] == 1:
                        try:
                            iid = td.decode_request(bytes(a[1])).interface_id
                        except StackError:
                            iid = td.InterfaceId(function_id=0)
                        return td.encode(td.TdispError(interface_id=iid, error_code=td.ErrorCode.UNSPECIFIED))
                    raise FirmwareError(f"fail_nth: crossing {inj.n} ({name}) failed")

                return real(actor, op, step, fail, args, kwargs)
        return real(actor, op, step, fn, args, kwargs)

    trace.call = call
    try:
        yield
    finally:
        del trace.call


def _host_rules() -> tuple[Any, ...]:
    """The catalogue without the device's own rules: the walk makes the device fail on purpose (a TDISP
    request answered UNSPECIFIED, an IDE_KM message lost), which those rules rightly call a device defect;
    what is judged here is how the host side copes."""
    from teeio_conformance.conformance.rules import host

    return tuple(host.RULES)


def _typed_names() -> set[str]:
    """Names of the typed error classes (the trace keeps an error's class name)."""
    out, todo = set(), [StackError]
    while todo:
        cls = todo.pop()
        out.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return out


def _rid(stack: Any) -> int:
    return int(next(iter(stack.devices.values())).pf_rid)


def _dev(stack: Any) -> str:
    return str(next(iter(stack.devices)))


def _fd(stack: Any) -> int:
    return next(int(f) for f, _, r, _ in stack.vfio.snapshot().open_fds if r == _rid(stack))


OPERATIONS: dict[str, tuple[str, Callable[[Any, str], Any]]] = {
    "connect": ("fresh", lambda s, vm: s.vmm.connect_ide(_dev(s))),
    "assign": ("connected", lambda s, vm: s.vmm.assign(vm, _dev(s), _rid(s), VIRT_ID)),
    "bind": ("running", lambda s, vm: s.guests[vm].connect(VIRT_ID)),
    "attest": ("bound", lambda s, vm: s.guests[vm].attest(VIRT_ID)),
    "accept": ("attested", lambda s, vm: s.guests[vm].accept(VIRT_ID)),
    "start": ("accepted", lambda s, vm: s.guests[vm].start(VIRT_ID)),
    "unbind": ("started", lambda s, vm: s.guests[vm].disconnect(VIRT_ID)),
    "refresh_keys": ("started", lambda s, vm: s.tsm.refresh_keys(_dev(s))),
    "vfio_close": ("started", lambda s, vm: s.vfio.close_device(_fd(s))),
    "disconnect": ("started", lambda s, vm: s.tsm.disconnect(_dev(s))),
    "stop_vm": ("started", lambda s, vm: s.vmm.stop_vm(vm)),
    "surprise_removal": ("started", lambda s, vm: s.vfio.pci_remove(_dev(s))),
}
"""Operation -> (the stage it starts from, the call). Each is a multi-step operation of the flow."""

PREP: dict[str, Callable[[Any, str], Any]] = {
    "surprise_removal": lambda s, vm: s.devices[_dev(s)].surprise_remove(),
}
"""A step of its own, unfaulted, between the stage and the operation (the device is pulled first; what is
walked is the PCI core's remove)."""


def _bring(stack: Any, stage: str) -> str:
    """A fresh VM and the device taken, unfaulted, to ``stage``."""
    vm: str = stack.create_vm()
    up = STAGES.index(stage)
    steps: list[Callable[[], Any]] = [
        lambda: stack.vmm.connect_ide(_dev(stack)),
        lambda: stack.vmm.assign(vm, _dev(stack), _rid(stack), VIRT_ID),
        lambda: stack.vmm.run(vm),
        lambda: stack.guests[vm].connect(VIRT_ID),
        lambda: stack.guests[vm].attest(VIRT_ID),
        lambda: stack.guests[vm].accept(VIRT_ID),
        lambda: stack.guests[vm].start(VIRT_ID),
    ]
    for step in steps[:up]:
        step()
    return vm


def residue(snap: Any) -> dict[str, Any]:
    """What is left alive in a stack: after a complete teardown, every entry is empty or zero."""
    return {
        "iommufd objects": len(snap.iommufd.objects),
        "memslots": len(snap.kvm.memslots),
        "live VMs": [v.name for v in snap.kvm.vms if v.state.value != "destroyed"],
        "VM references": sum(v.refs for v in snap.kvm.vms),
        "bound TDIs": [t.rid for t in snap.tsm.tdis if t.vm is not None],
        "queued host requests": sum(len(getattr(t, "outstanding", ())) for t in snap.tsm.tdis),
        "locked TDIs": [
            f.rid for d in snap.devices for f in d.functions if f.tdi_state.name in ("CONFIG_LOCKED", "RUN")
        ],
        "TSM sessions": len(snap.tsm.connected),
        "device sessions": sum(len(d.sessions) for d in snap.devices),
        "trusted DMA": len(snap.iommu.trusted),
        "CC contexts": len(getattr(snap.iommu, "cc", ())),
        "shared DMA": len(snap.iommu.shared),
        "open VFIO fds": len(snap.vfio.open_fds),
        "private functions": len(snap.vfio.private_rids),
    }


def _teardown(run: StepRunner, stack: Any, vm: str) -> None:
    """A well-behaved host cleans up after whatever state the failure left: the guest lets go of its
    device, the VMM stops the VM, the TSM disconnects."""
    guest = stack.guests.get(vm)
    snap = run._snap
    if guest is not None and any(v.bound for g in snap.guests if g.vm == vm for v in g.vdevs):
        run.step("guest_unbind", guest.disconnect, VIRT_ID)
    if any(v.name == vm and v.state.value != "destroyed" for v in run._snap.kvm.vms):
        run.step("vm_stop", stack.vmm.stop_vm, vm)
    if run._snap.tsm.connected:
        run.step("tsm_disconnect", stack.tsm.disconnect, _dev(stack))


def _one(factory: Callable[..., Any], profile: str, op: str, n: int) -> tuple[Outcome, int]:
    """Run ``op`` with its ``n``-th nested crossing failing (n = 0: none); the outcome, and how many
    crossings the operation made."""
    stage, call = OPERATIONS[op]
    stack = factory(profile=profile)
    vm = _bring(stack, stage)
    run = StepRunner(stack, profile, rules=_host_rules())
    inj = _Injector(n=n)
    problem = ""
    try:
        if op in PREP:
            run.step(f"{op}_prep", PREP[op], stack, vm)
    except RuleViolation as exc:
        return Outcome(op, profile, n, "-", "prep failed", f"{exc.rule.id} broken by {exc.action}: {exc.detail}"), 0
    mark = len(stack.trace)
    try:
        with _inject(stack, inj):
            inj.armed = True
            try:
                run.step(f"{op}_fail_{n}", call, stack, vm)
            finally:
                inj.armed = False
        _teardown(run, stack, vm)
    except RuleViolation as exc:
        problem = f"{exc.rule.id} broken by {exc.action}: {exc.detail}"
    top = stack.trace[mark]
    result = "completed" if top.ok else str(top.error)
    if not top.ok and not problem and top.error not in _typed_names():
        problem = f"untyped {top.error}: {top.message}"
    if not problem:
        left = {k: v for k, v in residue(run._snap).items() if v}
        if left:
            problem = f"leaked after teardown: {left}"
    if inj.skipped:
        result = "skipped (may not fail)"
    return Outcome(op, profile, n, inj.hit or "-", result, problem), inj.seen


def walk(
    factory: Callable[..., Any] | None = None,
    *,
    profiles: tuple[str, ...] = ("tdx", "sev-tio", "cca"),
    operations: tuple[str, ...] | None = None,
) -> list[Outcome]:
    """Every (operation, n) for n = 1 .. the number of crossings the operation makes unfaulted, per profile.
    The unfaulted run (n = 0) comes first in each group, as the baseline that must hold too."""
    if factory is None:
        from teeio_conformance.reference_impl.stack import make_sut

        factory = make_sut
    out: list[Outcome] = []
    with verdicts_untouched():
        for profile in profiles:
            for op in operations or tuple(OPERATIONS):
                base, total = _one(factory, profile, op, 0)
                out.append(base)
                for n in range(1, total + 1):
                    out.append(_one(factory, profile, op, n)[0])
    return out


def table(outcomes: list[Outcome]) -> str:
    """operation x failing step -> outcome, one line per (operation, n), then the count of pairs walked."""
    lines = [f"{'profile':<8} {'operation':<13} {'n':>3}  {'failing step':<36} {'result':<20} verdict"]
    for o in outcomes:
        verdict = "ok" if o.ok else o.problem
        lines.append(f"{o.profile:<8} {o.operation:<13} {o.n:>3}  {o.failed_at:<36} {o.result:<20} {verdict}")
    pairs = [o for o in outcomes if o.n]
    bad = [o for o in outcomes if not o.ok]
    lines.append(
        f"{len(pairs)} (operation, step) pairs walked over {len({o.profile for o in outcomes})} profile(s), "
        f"{len({o.operation for o in outcomes})} operations; {len(bad)} with a problem"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", action="append", choices=["tdx", "sev-tio", "cca"])
    p.add_argument("--operation", action="append", choices=sorted(OPERATIONS))
    args = p.parse_args(argv)
    outcomes = walk(
        profiles=tuple(args.profile or ("tdx", "sev-tio", "cca")),
        operations=tuple(args.operation) if args.operation else None,
    )
    print(table(outcomes), end="")
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
