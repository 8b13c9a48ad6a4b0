"""Golden tests for the flow: the TDX chart is checked in, and every profile follows the corrected order.

Regenerate the golden file after an intended change with ``TEEIO_REGENERATE_GOLDEN=1 pytest tests/golden``
and review the diff against flow.md step by step.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from teeio_conformance.conformance.flow_order import check_corrected_flow
from teeio_conformance.reference_impl.lifecycle import run_lifecycle
from teeio_conformance.reference_impl.stack import StackConfig, build_stack
from teeio_conformance.reference_impl.vmm import Vmm
from teeio_conformance.reports.swimlane import render_text

GOLDEN = Path(__file__).with_name("tdx_flow.txt")


def _chart(profile: str) -> tuple[str, list]:
    stack = build_stack(StackConfig(profile=profile))
    run_lifecycle(stack)
    events = list(stack.trace)
    return render_text(events, title=f"TEE-IO lifecycle, {stack.profile.title} profile (flow.md, corrected)"), events


def test_tdx_chart_matches_golden_file():
    """The TDX lifecycle, as a chart, is byte-for-byte the reviewed golden file."""
    chart, _ = _chart("tdx")
    if os.environ.get("TEEIO_REGENERATE_GOLDEN"):
        GOLDEN.write_text(chart, encoding="utf-8")
    assert chart == GOLDEN.read_text(encoding="utf-8")


@pytest.mark.parametrize("profile", ["tdx", "sev-tio", "cca"])
def test_flow_follows_corrected_order(profile):
    """viommu/vdevice before run, bind on the vdevice, requests through it, vdevice kept, platform orders."""
    _, events = _chart(profile)
    assert check_corrected_flow(events, profile) == []


def test_profiles_differ_where_flow_md_says():
    """Who sends START and unmap-vs-stop order differ per platform; the rest of the flow is the same."""

    def sig(events):
        return [(e.caller, e.callee, e.operation) for e in events if e.depth <= 1]

    tdx, sev, cca = (_chart(p)[1] for p in ("tdx", "sev-tio", "cca"))
    start_parent = {}
    for name, evs in (("tdx", tdx), ("sev-tio", sev), ("cca", cca)):
        ops = [(e.callee, e.operation) for e in evs]
        start_parent[name] = ("tsm", "host_start") in ops
    assert start_parent == {"tdx": False, "sev-tio": False, "cca": True}
    # the guest-visible verbs (depth <= 1) are the same for every platform
    assert sig(tdx) == sig(sev) == sig(cca)


class _RunFirstVmm(Vmm):
    """A VMM that follows the pre-correction chart: KVM run before the vIOMMU and vdevice exist."""

    def _shared_dma(self, vm, idev):
        if self._kvm.vm_state(vm).value == "created":
            self._kvm.run(vm)
        return super()._shared_dma(vm, idev)


def test_broken_order_is_caught():
    """Breaking one order (run before vdevice) changes the chart and fails the order check."""
    stack = build_stack(StackConfig(profile="tdx"), vmm_factory=_RunFirstVmm)
    with pytest.raises(Exception):  # noqa: B017 - the VM is already running when the VMM asks again
        run_lifecycle(stack)
    problems = check_corrected_flow(list(stack.trace), "tdx")
    assert any("after KVM run" in p for p in problems)
    assert render_text(list(stack.trace)) != GOLDEN.read_text(encoding="utf-8")
