"""Mutants that only an aimed machine step reaches: each breaks a rule in a state a drawn sequence of steps
seldom builds, and each came from a broken stack written outside the catalogue that a whole ``ci`` run
let pass before the step was added (see the step's docstring in ``conformance/machines/full_stack.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from teeio_conformance.contract.errors import NotFound
from teeio_conformance.reference_impl.kvm import Kvm, SlotMapping


class KvmMapsRevokedPrivate(Kvm):
    """At accept, KVM maps every memslot of the function private, also those whose dmabuf the exporter has
    revoked: the slot maps pages the exporter has taken back (the reference refuses with -EINVAL)."""

    def map_private_mmio(self, vm: str, rid: int) -> int:
        self._live_vm(vm)
        slots = [s for s in self._slots.values() if s.vm == vm and s.rid == rid]
        if not slots:
            raise NotFound(f"{vm} has no memslot backed by function {rid:#06x}")
        self._tsm.sept_add(vm, rid)
        for s in slots:
            s.mapping = SlotMapping.PRIVATE
        return len(slots)


def mutants(m: Callable[..., Any]) -> list[Any]:
    return [
        m(
            "kvm-maps-revoked-private",
            "MMIO-01",
            "full_stack",
            "sev-tio",
            KvmMapsRevokedPrivate.__doc__,
            overrides={"kvm_factory": KvmMapsRevokedPrivate},
        ),
    ]
