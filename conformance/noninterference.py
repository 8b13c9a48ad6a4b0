"""Confidentiality as noninterference (issue 14, rule CONF-04).

The byte search of CONF-01..03 finds a secret only where it looks and only verbatim. Noninterference asks
the question directly: whatever the host can observe must not depend on the guests' secrets. Each
example of the full-stack machine is run on a SUT built with one secret assignment, its recorded step
sequence is replayed on a twin built with another (``factory(..., secrets_seed=N)``, an optional SUT
capability), and the host views are compared step by step: the host-visible crossings of the step
(arguments, results, error messages), and what the host holds afterwards -- every VM's shared memory
(destroyed VMs' included), the host's MMIO reads and the IOMMU's fault log. The first step whose views
differ fails CONF-04. VM isolation -- VM B's view independent of VM A's secrets alone -- is CONF-05, with its
own capability (``vm_secrets_seed``): ``conformance/isolation.py``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from teeio_conformance.conformance.harness import VERDICTS
from teeio_conformance.conformance.machines.full_stack import FullStack, MachineConfig
from teeio_conformance.conformance.rules import BY_ID, violation_type
from teeio_conformance.conformance.rules._view import HostView, host_visible_values
from teeio_conformance.contract.trace import plain

__all__ = ["SEEDS", "accepts_secrets", "differential_machine"]

SEEDS = (101, 202)  # the two secret assignments


def accepts_secrets(factory: Callable[..., Any]) -> bool:
    """Does the SUT factory take ``secrets_seed`` (the capability this check needs)?"""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return "secrets_seed" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _views(stack: Any, events: Any) -> tuple[Any, Any]:
    """(host view of the step, per-VM view of each VM) after one step."""
    seen = HostView(events)
    snap = stack.snapshot()
    host = (
        tuple(seen.blobs) + tuple(repr(plain(v)) for v in host_visible_values(events)),  # numbers too
        tuple(seen.texts),
        tuple((v.name, v.state.value, bytes(v.shared_memory)) for v in snap.kvm.vms),
        tuple(bytes(r) for r in snap.vfio.host_reads),
        tuple(repr(f) for f in snap.iommu.faults),
    )
    per_vm = {v.name: (bytes(v.shared_memory), v.private_digest) for v in snap.kvm.vms}
    return host, per_vm


def differential_machine(factory: Callable[..., Any], profile: str, timeout: float) -> type:
    """A full-stack machine that, at the end of every example, replays the example on a twin SUT with the
    other secret assignment and fails CONF-04 where a host view differs."""

    def with_seed(seed: int) -> Callable[..., Any]:
        def make(**kw: Any) -> Any:
            return factory(secrets_seed=seed, **kw)

        return make

    class Twin(FullStack):
        config = MachineConfig(factory=with_seed(SEEDS[1]), profile=profile, timeout=timeout, only=frozenset())

        def __init__(self) -> None:
            super().__init__()
            self.views: list[tuple[str, Any]] = []
            inner = self.run.step

            def recording(action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
                mark = len(self.stack.trace)
                try:
                    return inner(action, fn, *args, **kwargs)
                finally:
                    self.views.append((action, _views(self.stack, self.stack.trace.since(0)[mark:])))

            self.run.step = recording  # type: ignore[method-assign]

        def teardown(self) -> None:  # the twin's counts are not the run's
            pass

    class Differential(Twin):
        config = MachineConfig(factory=with_seed(SEEDS[0]), profile=profile, timeout=timeout)

        def teardown(self) -> None:
            from teeio_conformance.conformance.explore import _decode_kwargs

            FullStack.teardown(self)
            twin = Twin()
            for step in getattr(self, "replay_log", []):
                getattr(twin, step["method"])(**_decode_kwargs(Twin, dict(step.get("kwargs", {}))))
            problem = _compare(self.views, twin.views)
            _count(profile, problem)
            if problem is not None:
                rule_id, action, detail = problem
                exc = violation_type(rule_id)(BY_ID[rule_id], detail, action)
                exc.teeio_steps = list(getattr(self, "replay_log", []))  # type: ignore[attr-defined]
                raise exc

    return Differential


def _compare(a: list[tuple[str, Any]], b: list[tuple[str, Any]]) -> tuple[str, str, str] | None:
    for (action, (host_a, _)), (_, (host_b, _)) in zip(a, b, strict=False):
        if host_a != host_b:
            parts = ("crossings' bytes", "crossings' text", "VM shared memory", "host MMIO reads", "fault log")
            which = [n for n, x, y in zip(parts, host_a, host_b, strict=True) if x != y]
            return (
                "CONF-04",
                action,
                f"the host's view after {action!r} depends on the guests' secrets ({', '.join(which)} differ "
                "between two runs that differ only in the secrets)",
            )
    if len(a) != len(b):
        return ("CONF-04", a[-1][0] if a else "-", "the two runs took different numbers of steps")
    return None


def _count(profile: str, problem: tuple[str, str, str] | None) -> None:
    per = VERDICTS.by_profile.setdefault(profile, {"checked": {}, "exercised": {}, "failed": {}})
    for rule_id in ("CONF-04",):
        failed = problem is not None and problem[0] == rule_id
        for key, dst in (("checked", VERDICTS.checked), ("exercised", VERDICTS.exercised)):
            dst[rule_id] = dst.get(rule_id, 0) + 1
            per[key][rule_id] = per[key].get(rule_id, 0) + 1
        if failed:
            VERDICTS.failed[rule_id] = VERDICTS.failed.get(rule_id, 0) + 1
            per["failed"][rule_id] = per["failed"].get(rule_id, 0) + 1
