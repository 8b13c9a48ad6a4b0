"""What an adapter for one layer is handed: the other actors of the stack, by their flow.md column names.

An adapter that plays one actor (a VMM, a TSM, a KVM...) while the reference plays the rest is built by the
composition entry point (``teeio_conformance.reference_impl.compose``, docs/sut-contract.md "One layer as the
SUT") as ``factory(trace, profile)`` and then given its peers through ``_attach(peers)`` -- a private hook, so
the trace's rule that every public method of an actor is a traced crossing still holds. An adapter touches a
peer only through the peer's public (traced) operations and ``snapshot()``, as the reference's actors do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from teeio_conformance.contract.profiles import Profile

__all__ = ["ACTORS", "Peers"]

ACTORS = ("vmm", "vfio", "iommufd", "kvm", "tsm", "iommu")
"""The host-side actors the composition entry point lets an adapter play (the device has its own route:
docs/sut-contract.md "One layer as the SUT")."""


@attrs.frozen(kw_only=True)
class Peers:
    """The stack around an adapter. ``devices`` and ``guests`` are live maps (a VM's guest appears when it is
    created), the others the actors themselves."""

    profile: Profile
    vmm: Any
    vfio: Any
    iommufd: Any
    kvm: Any
    tsm: Any
    iommu: Any
    devices: Mapping[str, Any]
    guests: Mapping[str, Any]
