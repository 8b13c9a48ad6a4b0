"""Platform profiles as data: where Intel TDX Connect, AMD SEV-TIO and ARM CCA differ.

Both the reference implementation and the rules read this one table, so a platform difference is
stated once (architecture: "Profiles are data"). Sources are in ``docs/rules.md`` and
``docs/flow.md``, facts (d) and the platform table.
"""

from __future__ import annotations

import enum

import attrs

__all__ = ["CCA", "PROFILES", "SEV_TIO", "TDX", "Profile", "StartSender", "StopInUnlocked", "UnmapOrder", "get_profile"]


class StartSender(enum.Enum):
    """Who sends TDISP START_INTERFACE."""

    GUEST = "guest"  # TDX: the TD itself, after accepting MMIO and DMA (TDG.DEVIF.REQUEST)
    AT_ATTEST = "at_attest"  # SEV-TIO: the PSP starts the TDI when the guest attests
    HOST = "host"  # CCA: the host (RMI_VDEV_START) on the realm's request


class UnmapOrder(enum.Enum):
    """Private MMIO unmap versus TDI stop."""

    STOP_FIRST = "stop_first"  # TDX: S-EPT unmap refused while the TDI is LOCKED or RUN
    UNMAP_FIRST = "unmap_first"  # CCA: VDEV_UNLOCK refused while device granules are mapped
    ANY = "any"  # SEV-TIO: any time; an access after revoke fences the guest


class StopInUnlocked(enum.Enum):
    """STOP_INTERFACE_REQUEST to a CONFIG_UNLOCKED TDI (rules-seed Q1)."""

    STRICT = "strict"  # PCIe r6.2 state table: not legal -> INVALID_INTERFACE_STATE
    IDEMPOTENT = "idempotent"  # tee-io-validator StopInterface.3: success, stays CONFIG_UNLOCKED


@attrs.frozen(kw_only=True)
class Profile:
    name: str
    title: str
    start_sender: StartSender
    unmap_order: UnmapOrder
    stop_in_unlocked: StopInUnlocked
    host_tdisp_requests: frozenset[str]
    """TDISP requests the host (VMM via the TSM) may originate while the TDI is not in ERROR."""
    guest_tdisp_requests: frozenset[str]
    """TDISP requests the guest may originate through the guest-request RPC."""
    max_outstanding_per_tdi: int
    dma_blocked_until_guest_enables: bool
    """SEV-TIO: the TDI is in RUN from attest, but the IOMMU blocks T=1 DMA until the guest enables it."""
    fence_on_fault: bool
    """SEV-TIO: an IOMMU fault on a bound TDI fences the guest (writes dropped, reads all-ones)."""


_ALL = frozenset(
    {
        "GET_TDISP_VERSION",
        "GET_TDISP_CAPABILITIES",
        "LOCK_INTERFACE",
        "GET_DEVICE_INTERFACE_REPORT",
        "GET_DEVICE_INTERFACE_STATE",
        "START_INTERFACE",
        "STOP_INTERFACE",
    }
)

TDX = Profile(
    name="tdx",
    title="Intel TDX Connect",
    start_sender=StartSender.GUEST,
    unmap_order=UnmapOrder.STOP_FIRST,
    stop_in_unlocked=StopInUnlocked.IDEMPOTENT,
    host_tdisp_requests=frozenset(
        {
            "GET_TDISP_VERSION",
            "GET_TDISP_CAPABILITIES",
            "LOCK_INTERFACE",
            "GET_DEVICE_INTERFACE_STATE",
            "STOP_INTERFACE",
        }
    ),
    guest_tdisp_requests=frozenset({"GET_DEVICE_INTERFACE_REPORT", "GET_DEVICE_INTERFACE_STATE", "START_INTERFACE"}),
    max_outstanding_per_tdi=1,
    dma_blocked_until_guest_enables=False,
    fence_on_fault=False,
)

SEV_TIO = Profile(
    name="sev-tio",
    title="AMD SEV-TIO",
    start_sender=StartSender.AT_ATTEST,
    unmap_order=UnmapOrder.ANY,
    stop_in_unlocked=StopInUnlocked.STRICT,
    host_tdisp_requests=_ALL,
    guest_tdisp_requests=frozenset({"GET_DEVICE_INTERFACE_REPORT", "GET_DEVICE_INTERFACE_STATE"}),
    max_outstanding_per_tdi=1,
    dma_blocked_until_guest_enables=True,
    fence_on_fault=True,
)

CCA = Profile(
    name="cca",
    title="Arm CCA RME-DA",
    start_sender=StartSender.HOST,
    unmap_order=UnmapOrder.UNMAP_FIRST,
    stop_in_unlocked=StopInUnlocked.STRICT,
    host_tdisp_requests=_ALL,
    guest_tdisp_requests=frozenset({"GET_DEVICE_INTERFACE_REPORT", "GET_DEVICE_INTERFACE_STATE"}),
    max_outstanding_per_tdi=1,
    dma_blocked_until_guest_enables=False,
    fence_on_fault=False,
)

PROFILES: dict[str, Profile] = {p.name: p for p in (TDX, SEV_TIO, CCA)}


def get_profile(name: str) -> Profile:
    """Look a profile up by name; a clear error names the ones there are."""
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown platform profile {name!r}; known: {', '.join(PROFILES)}") from None
