"""Tiers: what a rule needs to be judged, what a system under test offers, and whether the two meet.

A real kernel does not hand out its KVM refcounts, a VMM sees no S-EPT, a device behind a socket shows its
TDISP answers but not its config space. So each rule of the catalogue declares what it reads (:class:`Needs`),
and each SUT may declare what it can show (:class:`Offers`, an optional ``offers`` attribute of the stack). A
rule whose needs are not offered is *not applicable* to that SUT: it gets the verdict NOT APPLICABLE, apart
from NOT EXERCISED (the SUT could have shown it, the run never got there) and never a PASS.

Three kinds of evidence, from cheapest to record to dearest:

* **crossings** -- trace events, named ``"callee.operation"`` (``"iommufd.vdevice_alloc"``): what a syscall
  log, a QEMU trace or a bus analyser can record;
* **errors** -- a refused call's typed error (the class of :mod:`teeio_conformance.contract.errors`), more than
  the errno a syscall log carries (``-EINVAL`` is two classes);
* **snapshots** -- the plain-data state of an actor (``devices``, ``iommu``, ``kvm``, ``vfio``, ``iommufd``,
  ``tsm``, ``vmm``, ``guests``), which only a model or an instrumented build can give.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from teeio_conformance.contract.errors import InvalidArgument

__all__ = [
    "EVERYTHING",
    "SNAPSHOT_PARTS",
    "TRACE_ONLY",
    "Needs",
    "Offers",
    "applicable",
    "missing",
    "offers_of",
]

SNAPSHOT_PARTS: frozenset[str] = frozenset({"devices", "iommu", "kvm", "vfio", "iommufd", "tsm", "vmm", "guests"})
"""The parts of a stack's ``snapshot()`` a rule can read (docs/sut-contract.md, "Snapshot fields")."""


def _names(value: Iterable[str] | None) -> frozenset[str] | None:
    return None if value is None else frozenset(value)


def _parts(value: Iterable[str]) -> frozenset[str]:
    parts = frozenset(value)
    unknown = parts - SNAPSHOT_PARTS
    if unknown:
        raise InvalidArgument(f"unknown snapshot part(s) {sorted(unknown)}; known: {sorted(SNAPSHOT_PARTS)}")
    return parts


def _crossings(value: Iterable[str] | None) -> frozenset[str] | None:
    names = _names(value)
    bad = sorted(n for n in names or () if not isinstance(n, str) or n.count(".") != 1)
    if bad:
        raise InvalidArgument(f"crossings are named 'callee.operation', got {bad}")
    return names


@attrs.frozen(kw_only=True)
class Needs:
    """What one rule reads. The default needs everything: a rule that says nothing is judged only on a SUT
    that offers a whole stack, so a new rule can never PASS on evidence it did not have."""

    crossings: frozenset[str] | None = attrs.field(default=None, converter=_crossings)
    """The ``callee.operation`` events it reads (in the step or in the history); None: any crossing at all
    (it searches every event, as the confidentiality rules do)."""
    errors: bool = True
    """It reads the typed error of a refused step (not just its errno)."""
    snapshots: frozenset[str] = attrs.field(default=SNAPSHOT_PARTS, converter=_parts)
    """The snapshot parts it compares before and after a step."""
    raw_device: bool = False
    """In a whole stack it is reached only through the raw device channel (:attr:`Offers.raw_device`): the suite
    playing a misbehaving host TSM -- a second SPDM session, a wrong nonce, raw TDISP/IDE_KM bytes."""

    @property
    def trace_only(self) -> bool:
        """Judged from trace events alone (what ``check-trace`` can check)."""
        return not self.snapshots


@attrs.frozen(kw_only=True)
class Offers:
    """What one SUT can show. The default offers everything (the reference stack, a full model)."""

    crossings: frozenset[str] | None = attrs.field(default=None, converter=_crossings)
    """The crossings it records; None: every crossing of the stack, as the contract lists them."""
    errors: bool = True
    """Refused calls raise the contract's typed errors (not just an errno)."""
    snapshots: frozenset[str] = attrs.field(default=SNAPSHOT_PARTS, converter=_parts)
    """The snapshot parts its ``snapshot()`` fills in."""
    raw_device: bool = True
    """The raw device channel: the suite may speak to a device of the stack itself, beside the host TSM -- open
    and end SPDM sessions (``spdm_connect``/``spdm_end``) and send TDISP/IDE_KM bytes over any live session
    (``handle_vendor_message``), as a second or misbehaving host TSM would (docs/sut-contract.md)."""


EVERYTHING = Offers()
"""A whole stack: the reference, or an adapter that models every actor's state."""

TRACE_ONLY = Offers(snapshots=())
"""A recorded trace in the event schema: every crossing, typed errors by class name, no state."""


def missing(needs: Needs, offers: Offers) -> list[str]:
    """What ``needs`` asks for and ``offers`` lacks, in words (empty: the rule applies)."""
    out: list[str] = []
    if needs.crossings is None:
        if offers.crossings is not None:
            out.append("every crossing of the stack")
    elif offers.crossings is not None:
        lacking = needs.crossings - offers.crossings
        if lacking:
            out.append("crossings " + ", ".join(sorted(lacking)))
    if needs.errors and not offers.errors:
        out.append("typed errors")
    if needs.raw_device and not offers.raw_device:
        out.append("a raw device channel")
    lacking_parts = needs.snapshots - offers.snapshots
    if lacking_parts:
        out.append("snapshots of " + ", ".join(sorted(lacking_parts)))
    return out


def applicable(needs: Needs, offers: Offers) -> bool:
    """Can a SUT offering ``offers`` be judged by a rule needing ``needs``?"""
    return not missing(needs, offers)


def offers_of(sut: Any) -> Offers:
    """The ``offers`` a SUT declares (an :class:`Offers`), or :data:`EVERYTHING` when it declares none.

    Raises InvalidArgument for an ``offers`` attribute of another type: a typo there would otherwise silently make
    every rule applicable."""
    offers = getattr(sut, "offers", None)
    if offers is None:
        return EVERYTHING
    if not isinstance(offers, Offers):
        raise InvalidArgument(f"the SUT's 'offers' must be a teeio_conformance.contract.tiers.Offers, got {offers!r}")
    return offers
