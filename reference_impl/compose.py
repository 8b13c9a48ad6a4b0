"""The composition entry point: one actor of your own as the SUT, the reference playing every other.

::

    from teeio_conformance.reference_impl.compose import compose
    make_sut = compose(vmm=MyVmm)        # MyVmm(trace, profile) -> an Actor named "vmm"
    # pytest --sut mymodule:make_sut     (make_sut has the signature of the default SUT factory)

Each adapter factory is called as ``factory(trace, profile)`` (the stack's shared
:class:`~teeio_conformance.contract.trace.Trace` and its :class:`~teeio_conformance.contract.profiles.Profile`)
and must return a :class:`~teeio_conformance.contract.trace.Actor` whose ``actor_name`` is the role it plays.
Once the stack is wired it receives the other actors in one call, ``adapter._attach(peers)``
(:class:`~teeio_conformance.contract.peers.Peers`), so an adapter needs no knowledge of how the reference wires
itself. What each role must offer (operations, snapshot) is docs/sut-contract.md; an adapter module imports
:mod:`teeio_conformance.contract` and this module only (tests/unit/test_layering.py checks the worked examples).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from teeio_conformance.contract.errors import InvalidArgument
from teeio_conformance.contract.peers import ACTORS, Peers
from teeio_conformance.contract.profiles import get_profile
from teeio_conformance.reference_impl.device.device import DeviceConfig
from teeio_conformance.reference_impl.stack import Stack, StackConfig, build_stack

__all__ = ["compose", "stand_in_device"]

AdapterFactory = Callable[[Any, Any], Any]


def _ignore_wiring(*args: Any, **kwargs: Any) -> None:
    """The reference wires its own actors positionally; an adapter gets :class:`Peers` instead."""


def compose(**adapters: AdapterFactory) -> Callable[..., Stack]:
    """A SUT factory (``make_sut``'s signature) with the given roles played by ``adapters``.

    Raises InvalidArgument for a role that is not one of :data:`~teeio_conformance.contract.peers.ACTORS`."""
    unknown = sorted(set(adapters) - set(ACTORS))
    if unknown:
        raise InvalidArgument(f"compose() cannot take {unknown}; the roles are {', '.join(ACTORS)}")

    def make_sut(*, profile: str = "tdx", num_devices: int = 1, num_vfs: int = 1, trace: bool = True) -> Stack:
        built: list[Any] = []

        def wrap(role: str, factory: AdapterFactory) -> Callable[..., Any]:
            def make(stack_trace: Any, *args: Any, **kwargs: Any) -> Any:
                actor = factory(stack_trace, get_profile(profile))
                if getattr(actor, "actor_name", None) != role:
                    raise InvalidArgument(f"the {role} adapter's actor_name is {getattr(actor, 'actor_name', None)!r}")
                actor._wire = _ignore_wiring
                built.append(actor)
                return actor

            return make

        overrides = {f"{role}_factory": wrap(role, factory) for role, factory in adapters.items()}
        devices = tuple(DeviceConfig(num_vfs=num_vfs, seed=1 + i) for i in range(num_devices))
        stack = build_stack(StackConfig(profile=profile, devices=devices, trace=trace), **overrides)
        peers = Peers(
            profile=stack.profile,
            vmm=stack.vmm,
            vfio=stack.vfio,
            iommufd=stack.iommufd,
            kvm=stack.kvm,
            tsm=stack.tsm,
            iommu=stack.iommu,
            devices=stack.devices,
            guests=stack.guests,
        )
        for actor in built:
            actor._attach(peers)
        return stack

    return make_sut


def stand_in_device(trace: Any, profile: str) -> Any:
    """A reference device to stand behind a device adapter in tests and examples (in your adapter, your
    device's firmware, emulator or driver takes its place). It records on ``trace``; give it a trace of its
    own to keep its crossings out of the suite's."""
    from teeio_conformance.reference_impl.stack import make_device

    return make_device(trace, profile)
