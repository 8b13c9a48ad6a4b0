"""The fail-nth walk: every multi-step operation with each nested step failing in turn (conformance.fail_nth)."""

from __future__ import annotations

import pytest

from teeio_conformance.conformance.fail_nth import OPERATIONS, table, walk
from teeio_conformance.reference_impl.iommufd import Iommufd
from teeio_conformance.reference_impl.stack import StackConfig, build_stack


@pytest.mark.parametrize("profile", ["tdx", "sev-tio", "cca"])
def test_reference_survives_every_single_failure(profile):
    """Each (operation, n): the failure is typed, every step keeps the host rules, and after a well-behaved
    teardown nothing is left. The walk covers every crossing of every operation (n runs to the count)."""
    outcomes = walk(profiles=(profile,))
    assert {o.operation for o in outcomes} == set(OPERATIONS)
    pairs = [o for o in outcomes if o.n]
    assert len(pairs) > 150  # 220 per profile today: every crossing inside the twelve operations
    bad = [o for o in outcomes if not o.ok]
    assert bad == [], table(bad)
    # each failing crossing was reached: the walk stops where the unfaulted operation stops
    assert all(o.failed_at != "-" for o in pairs)


class _HardwareLastIommufd(Iommufd):
    """The detach before the walk found it: IOMMUFD forgets the attachment, then asks the IOMMU -- a
    failing IOMMU leaves a shared translation nobody owns any more."""

    def _detach(self, dev):
        hw = self._objs[dev.hwpt]
        hw.users -= 1
        hw.attached.discard(dev.id)
        dev.hwpt = None
        self._iommu.detach_shared(dev.rid)


def test_the_walk_finds_a_leak():
    """The walk can fail: an IOMMUFD that updates its own state before the hardware's leaks a shared DMA
    translation when the IOMMU fails the detach (found by this walk in the reference, since fixed)."""

    def factory(profile):
        return build_stack(StackConfig(profile=profile), iommufd_factory=_HardwareLastIommufd)

    outcomes = walk(factory, profiles=("tdx",), operations=("stop_vm",))
    leaks = [o for o in outcomes if "leaked" in o.problem]
    assert leaks and all(o.failed_at == "iommu.detach_shared" for o in leaks), table(outcomes)
