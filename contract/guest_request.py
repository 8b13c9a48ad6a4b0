"""The guest's requests to its TSM (attest, accept, start, state), as host software forwards them.

A guest request is an opaque RPC tunnelled through the iommufd vdevice (flow correction 4): the VMM, VFIO and
IOMMUFD carry it without reading it. Its shape is contract because the suite's machines send one as a raw host
would, and an adapter has to carry what the guest gave it.
"""

from __future__ import annotations

import attrs

__all__ = ["GUEST_REQUEST_KINDS", "GuestRequest"]

GUEST_REQUEST_KINDS = frozenset({"report", "accept_mmio", "accept_dma", "start", "state"})
"""The kinds the reference guest sends (attest = ``report``); a TSM refuses others as it sees fit."""


@attrs.frozen(kw_only=True)
class GuestRequest:
    """An opaque guest->TSM request (attest, accept, start...); host code only forwards it."""

    kind: str
    nonce: bytes = b""
    payload: bytes = b""
