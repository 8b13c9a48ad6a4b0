"""Deliberately broken stacks: each breaks exactly one promise, named after the rule that should catch it.

A rule no mutant can break is a rule that cannot fail; ``tests/mutants/test_mutants_caught.py`` runs
the suite's machines against every mutant here and checks that each is caught, by its own rule ID,
with a shrunk sequence. Mutants are small subclasses of the reference actors, swapped in through
``build_stack``'s factory arguments -- the reference code itself is never patched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from teeio_conformance.reference_impl.mutants import (
    _aimed,
    _attest,
    _device,
    _gaps,
    _host,
    _isolation,
    _leaks,
    _liveness,
    _model,
    _p2p,
    _progress,
)

__all__ = ["MUTANTS", "Mutant", "by_name"]


@attrs.frozen(kw_only=True)
class Mutant:
    name: str
    rule_id: str
    machine: str  # "full_stack" | "host_lifetimes" | "device" | "noninterference" | "isolation"
    profile: str
    description: str
    overrides: dict[str, Callable[..., Any]] = attrs.field(factory=dict)  # build_stack factory overrides
    device: Callable[..., Any] | None = None  # device class (device machine and stacks alike)
    num_devices: int = 1
    timeout: float | None = None  # per-step time limit to run it under (hang mutants: short, to stay fast)
    stack_factory: Callable[..., Any] | None = None  # a whole-stack factory, for actors build_stack cannot swap

    def factory(
        self,
        *,
        profile: str | None = None,
        num_devices: int | None = None,
        num_vfs: int = 1,
        trace: bool = True,
        secrets_seed: int | None = None,
        vm_secrets_seed: int | None = None,
    ) -> Any:
        """A SUT factory with the same signature as ``teeio_conformance.reference_impl.stack.make_sut``."""
        from teeio_conformance.reference_impl.device.device import DeviceConfig
        from teeio_conformance.reference_impl.stack import StackConfig, build_stack

        n = num_devices or self.num_devices
        if self.stack_factory is not None:
            return self.stack_factory(profile=profile or self.profile, num_devices=n, num_vfs=num_vfs, trace=trace)
        devices = tuple(DeviceConfig(num_vfs=num_vfs, seed=1 + i) for i in range(n))
        overrides = dict(self.overrides)
        if self.device is not None:
            overrides["device_factory"] = self.device
        if secrets_seed is not None or vm_secrets_seed is not None:
            # the noninterference tests' capabilities: other guest secrets (all, or the first VM's), nothing else
            from teeio_conformance.reference_impl.kvm import Kvm

            kvm_cls = overrides.get("kvm_factory", Kvm)
            seeds = {"seed": 7 if secrets_seed is None else secrets_seed, "first_vm_seed": vm_secrets_seed}
            overrides["kvm_factory"] = lambda trace_, **kw: kvm_cls(trace_, **seeds, **kw)
        return build_stack(StackConfig(profile=profile or self.profile, devices=devices, trace=trace), **overrides)

    def device_factory(self, trace: Any, profile: str) -> Any:
        from teeio_conformance.reference_impl.device.device import Device, DeviceConfig

        cls = self.device or Device
        return cls(trace, DeviceConfig(num_vfs=1, stop_in_unlocked_idempotent=profile == "tdx"))


def _m(name: str, rule_id: str, machine: str, profile: str, description: str, **kw: Any) -> Mutant:
    return Mutant(name=name, rule_id=rule_id, machine=machine, profile=profile, description=description, **kw)


MUTANTS: tuple[Mutant, ...] = (
    *_host.mutants(_m),
    *_device.mutants(_m),
    *_model.mutants(_m),
    *_liveness.mutants(_m),
    *_progress.mutants(_m),
    *_progress.session_mutants(_m),
    *_aimed.mutants(_m),
)


def _stack_m(name: str, rule_id: str, machine: str, profile: str, description: str, factory: Any) -> Mutant:
    return Mutant(
        name=name, rule_id=rule_id, machine=machine, profile=profile, description=description, stack_factory=factory
    )


MUTANTS = (
    *MUTANTS,
    *_attest.mutants(_m, _stack_m),
    *_leaks.mutants(_m),
    *_gaps.mutants(_m),
    *_gaps.stack_mutants(_stack_m),
    *_isolation.mutants(_m),
    *_p2p.mutants(_m),
)


def by_name(name: str) -> Mutant:
    for m in MUTANTS:
        if m.name == name:
            return m
    raise KeyError(f"no mutant {name!r}; known: {', '.join(m.name for m in MUTANTS)}")


def __getattr__(attr: str) -> Callable[..., Any]:
    """Each mutant as a SUT factory by name, so any ``--sut`` option takes it:
    ``teeio_conformance.reference_impl.mutants:vmm_lazy_vdevice`` (dashes become underscores). A device mutant gives its
    device factory -- what the device machine and ``replay --sut`` of a device record expect."""
    for m in MUTANTS:
        if m.name.replace("-", "_") == attr:
            return _either(m) if m.machine == "device" else m.factory
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def _either(m: Mutant) -> Callable[..., Any]:
    """A device mutant by name: its device factory when called as one, ``(trace, profile)`` -- what the
    device machine and ``replay --sut`` of a device record call -- and otherwise a whole stack built
    around the broken device, so ``teeio-conformance run --sut`` takes it like any SUT (issue 14)."""

    def factory(*args: Any, **kwargs: Any) -> Any:
        if args or "trace" in kwargs:
            return m.device_factory(*args, **kwargs)
        return m.factory(**kwargs)

    factory.__name__ = m.name.replace("-", "_")
    return factory
