"""A snapshot with the parts but a wrong type inside is the SUT's failure, named by field (issue 14).

Issue 17 made the harness refuse a snapshot that is not one at all (None, a string). A snapshot whose TDI state is
a string, or whose TSM part is a number, still reached the rules, which crashed with an untyped error reported as
the suite's. Now the harness reports SUT-BROKEN with the field's path; a rule failing on a well-formed snapshot
stays the suite's own error.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from teeio_conformance.conformance.harness import StepRunner, SutBroken
from teeio_conformance.conformance.rules import CATALOGUE, Area, Level, Rule
from teeio_conformance.conformance.rules._shape import snapshot_problem
from teeio_conformance.reference_impl.lifecycle import run_lifecycle
from teeio_conformance.reference_impl.stack import make_sut


def _bad_state(snap: Any) -> Any:
    d = snap.devices[0]
    f = attrs.evolve(d.functions[0], tdi_state="RUN")
    return attrs.evolve(snap, devices=(attrs.evolve(d, functions=(f, *d.functions[1:])), *snap.devices[1:]))


def _bad_tsm(snap: Any) -> Any:
    return attrs.evolve(snap, tsm=42)


def _bad_vms(snap: Any) -> Any:
    return attrs.evolve(snap, kvm=attrs.evolve(snap.kvm, vms=7))


class _Warped:
    """The reference stack whose snapshots, once ``warp`` is set, go through it."""

    def __init__(self, warp: Any) -> None:
        self.inner = make_sut(profile="tdx")
        self.trace = self.inner.trace
        self.warp = None
        self._later = warp

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def snapshot(self) -> Any:
        snap = self.inner.snapshot()
        return snap if self.warp is None else self.warp(snap)


@pytest.mark.parametrize(
    ("warp", "field"),
    [
        (_bad_state, "devices[0].functions[0].tdi_state is str 'RUN'"),
        (_bad_tsm, "tsm.tdis is missing"),
        (_bad_vms, "kvm.vms is int"),
    ],
    ids=["tdi-state-str", "tsm-int", "vms-int"],
)
def test_a_misshapen_snapshot_is_the_sut_broken_naming_the_field(warp: Any, field: str) -> None:
    stack = _Warped(warp)
    runner = StepRunner(stack, "tdx")
    stack.warp = stack._later
    with pytest.raises(SutBroken, match="not of the contract's shape") as info:
        runner.step("create_vm", stack.inner.create_vm)
    assert field in str(info.value)


def test_reference_snapshots_are_well_formed_through_the_lifecycle() -> None:
    """Every snapshot of a whole lifecycle passes the shape check (the check refuses nothing the contract allows)."""
    stack = make_sut(profile="tdx")
    seen = []
    real = stack.snapshot

    def spy() -> Any:
        snap = real()
        seen.append(snapshot_problem(snap))
        return snap

    stack.snapshot = spy  # type: ignore[method-assign]
    run_lifecycle(stack)
    stack.snapshot()
    assert seen and seen == [None] * len(seen)


def test_a_rule_bug_on_a_good_snapshot_stays_the_suites_error() -> None:
    """A rule that raises on a well-formed snapshot is not blamed on the SUT."""

    def broken_rule(o: Any) -> str | None:
        return o.after.no_such_part  # type: ignore[no-any-return]

    rule = Rule(id="BUG-01", title="a buggy rule", area=Area.ERR, level=Level.MUST, source="test", check=broken_rule)
    stack = make_sut(profile="tdx")
    runner = StepRunner(stack, "tdx", rules=(rule, *CATALOGUE[:0]))
    with pytest.raises(AttributeError, match="no_such_part"):
        runner.step("create_vm", stack.create_vm)
