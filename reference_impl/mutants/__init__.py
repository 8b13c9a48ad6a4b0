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

from teeio_conformance.reference_impl.mutants import _device, _host, _model

__all__ = ["MUTANTS", "Mutant", "by_name"]


@attrs.frozen(kw_only=True)
class Mutant:
    name: str
    rule_id: str
    machine: str  # "full_stack" | "host_lifetimes" | "device"
    profile: str
    description: str
    overrides: dict[str, Callable[..., Any]] = attrs.field(factory=dict)  # build_stack factory overrides
    device: Callable[..., Any] | None = None  # device class (device machine and stacks alike)
    num_devices: int = 1
    timeout: float | None = None  # per-step time limit to run it under (hang mutants: short, to stay fast)

    def factory(
        self, *, profile: str | None = None, num_devices: int | None = None, num_vfs: int = 1, trace: bool = True
    ) -> Any:
        """A SUT factory with the same signature as ``teeio_conformance.reference_impl.stack.make_sut``."""
        from teeio_conformance.reference_impl.device.device import DeviceConfig
        from teeio_conformance.reference_impl.stack import StackConfig, build_stack

        n = num_devices or self.num_devices
        devices = tuple(DeviceConfig(num_vfs=num_vfs, seed=1 + i) for i in range(n))
        overrides = dict(self.overrides)
        if self.device is not None:
            overrides["device_factory"] = self.device
        return build_stack(StackConfig(profile=profile or self.profile, devices=devices, trace=trace), **overrides)

    def device_factory(self, trace: Any, profile: str) -> Any:
        from teeio_conformance.reference_impl.device.device import Device, DeviceConfig

        cls = self.device or Device
        return cls(trace, DeviceConfig(num_vfs=1, stop_in_unlocked_idempotent=profile == "tdx"))


def _m(name: str, rule_id: str, machine: str, profile: str, description: str, **kw: Any) -> Mutant:
    return Mutant(name=name, rule_id=rule_id, machine=machine, profile=profile, description=description, **kw)


MUTANTS: tuple[Mutant, ...] = (*_host.mutants(_m), *_device.mutants(_m), *_model.mutants(_m))


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
            return m.device_factory if m.machine == "device" else m.factory
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
