"""VM isolation as noninterference (issue 14, rule CONF-05).

CONF-04 asks whether the *host's* view depends on the guests' secrets. Isolation asks the same of another
VM: whatever VM B can observe -- its memory (shared bytes and a digest of its private pages), what its guest
reads, the results and errors of the calls it (or the host for it) makes, its guest's view of its devices --
must not depend on VM A's secrets. Checked differentially like CONF-04 (``conformance/noninterference.py``):
each example of the full-stack machine runs on a SUT whose *first* VM (VM A) has one secret assignment and is
replayed on a twin whose VM A has another, every other VM's secrets unchanged -- the optional SUT capability
``vm_secrets_seed=N`` (``docs/sut-contract.md``). The first step after which a VM other than A sees something
different fails CONF-05.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from teeio_conformance.conformance.harness import VERDICTS
from teeio_conformance.conformance.machines.full_stack import FullStack, MachineConfig
from teeio_conformance.conformance.rules import BY_ID, violation_type
from teeio_conformance.contract.trace import plain

__all__ = ["CAPABILITY", "RULE_ID", "SEEDS", "accepts_vm_secrets", "isolation_machine"]

RULE_ID = "CONF-05"
CAPABILITY = "vm_secrets_seed"
SEEDS = (303, 404)  # VM A's two secret assignments


def accepts_vm_secrets(factory: Callable[..., Any]) -> bool:
    """Does the SUT factory take ``vm_secrets_seed`` (the capability this check needs)? A factory that takes
    any keyword must name it: every SUT would otherwise seem to offer it."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return CAPABILITY in params


def _acting_vm(stack: Any, fn: Any, args: tuple[Any, ...], vms: set[str]) -> str | None:
    """The VM a step acts for: the owner of the guest or guest TSM method it calls, else a VM it names."""
    owner = getattr(fn, "__self__", None)
    if owner is not None:
        for table in (getattr(stack, "guests", {}), getattr(stack, "guest_tsms", {})):
            for vm, actor in table.items():
                if actor is owner:
                    return str(vm)
    return next((a for a in args if isinstance(a, str) and a in vms), None)


def _outcome(result: Any, error: BaseException | None) -> tuple[str, str, str]:
    if error is not None:
        return ("error", type(error).__name__, str(error))
    return ("ok", repr(plain(result)), "")


def _vm_views(stack: Any) -> dict[str, Any]:
    """What each VM holds after a step: its state, shared bytes, private digest, and its guest's view."""
    snap = stack.snapshot()
    guests = {g.vm: (repr(g.vdevs), tuple(bytes(r) for r in getattr(g, "private_reads", ()))) for g in snap.guests}
    return {v.name: (v.state.value, bytes(v.shared_memory), v.private_digest, guests.get(v.name)) for v in snap.kvm.vms}


def isolation_machine(factory: Callable[..., Any], profile: str, timeout: float) -> type:
    """A full-stack machine that, at the end of every example, replays it on a twin SUT whose first VM has other
    secrets, and fails CONF-05 where another VM's view differs."""

    def with_seed(seed: int) -> Callable[..., Any]:
        def make(**kw: Any) -> Any:
            return factory(vm_secrets_seed=seed, **kw)

        return make

    class Twin(FullStack):
        config = MachineConfig(factory=with_seed(SEEDS[1]), profile=profile, timeout=timeout, only=frozenset())

        def __init__(self) -> None:
            super().__init__()
            self.iso_views: list[tuple[str, str | None, Any, dict[str, Any]]] = []
            inner = self.run.step

            def recording(action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
                vms = {v.name for v in self.run._snap.kvm.vms}
                vm = _acting_vm(self.stack, fn, args, vms)
                out: Any = (None, None)
                try:
                    out = inner(action, fn, *args, **kwargs)
                    return out
                finally:
                    self.iso_views.append((action, vm, _outcome(*out), _vm_views(self.stack)))

            self.run.step = recording  # type: ignore[method-assign]

        def teardown(self) -> None:  # the twin's counts are not the run's
            pass

    class Isolation(Twin):
        # no step rule checked here: the full-stack test checks them all; this run only records the VMs' views
        config = MachineConfig(factory=with_seed(SEEDS[0]), profile=profile, timeout=timeout, only=frozenset())

        def teardown(self) -> None:
            from teeio_conformance.conformance.explore import _decode_kwargs

            FullStack.teardown(self)
            twin = Twin()
            for step in getattr(self, "replay_log", []):
                getattr(twin, step["method"])(**_decode_kwargs(Twin, dict(step.get("kwargs", {}))))
            problem = compare(self.iso_views, twin.iso_views)
            _count(profile, problem, exercised=_two_vms(self.iso_views))
            if problem is not None:
                action, detail = problem
                exc = violation_type(RULE_ID)(BY_ID[RULE_ID], detail, action)
                exc.teeio_steps = list(getattr(self, "replay_log", []))  # type: ignore[attr-defined]
                raise exc

    return Isolation


def _two_vms(views: list[tuple[str, str | None, Any, dict[str, Any]]]) -> bool:
    """Did the example have a VM besides the first (else it says nothing about isolation)?"""
    return any(len(vms) > 1 for *_, vms in views)


def compare(
    a: list[tuple[str, str | None, Any, dict[str, Any]]], b: list[tuple[str, str | None, Any, dict[str, Any]]]
) -> tuple[str, str] | None:
    """(step, why) of the first step after which a VM other than the first saw something else in the two runs."""
    first: str | None = None
    for (action, vm, out_a, vms_a), (_, _, out_b, vms_b) in zip(a, b, strict=False):
        first = first or next(iter(vms_a), None)
        if vm is not None and vm != first and out_a != out_b:
            return action, (
                f"what {vm} got from {action!r} ({out_a[0]}) depends on {first}'s secrets: two runs that differ "
                "only in them gave it different results or errors"
            )
        for name in sorted(set(vms_a) | set(vms_b)):
            if name == first or vms_a.get(name) == vms_b.get(name):
                continue
            x, y = vms_a.get(name), vms_b.get(name)
            parts = ("state", "shared memory", "private memory", "guest view")
            which = [p for p, i, j in zip(parts, x or (None,) * 4, y or (None,) * 4, strict=True) if i != j]
            return action, (
                f"{name}'s view after {action!r} depends on {first}'s secrets ({', '.join(which)} differ between two "
                "runs that differ only in them)"
            )
    if len(a) != len(b):
        return (a[-1][0] if a else "-"), "the two runs took different numbers of steps"
    return None


def _count(profile: str, problem: tuple[str, str] | None, *, exercised: bool) -> None:
    per = VERDICTS.by_profile.setdefault(profile, {"checked": {}, "exercised": {}, "failed": {}})
    pairs = [("checked", VERDICTS.checked)] + ([("exercised", VERDICTS.exercised)] if exercised or problem else [])
    for key, dst in pairs:
        dst[RULE_ID] = dst.get(RULE_ID, 0) + 1
        per[key][RULE_ID] = per[key].get(RULE_ID, 0) + 1
    if problem is not None:
        VERDICTS.failed[RULE_ID] = VERDICTS.failed.get(RULE_ID, 0) + 1
        per["failed"][RULE_ID] = per["failed"].get(RULE_ID, 0) + 1
