"""Golden tests for the flow: the TDX chart is checked in, and every profile follows the corrected order.

Regenerate the golden file after an intended change with ``TEEIO_REGENERATE_GOLDEN=1 pytest tests/golden``
and review the diff against flow.md step by step.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from teeio_conformance.conformance.flow_order import check_corrected_flow
from teeio_conformance.reference_impl.lifecycle import merge_note, run_lifecycle
from teeio_conformance.reference_impl.stack import StackConfig, build_stack
from teeio_conformance.reference_impl.vmm import Vmm
from teeio_conformance.reports.swimlane import render_text

GOLDEN = Path(__file__).with_name("tdx_flow.txt")


def _chart(profile: str) -> tuple[str, list]:
    stack = build_stack(StackConfig(profile=profile))
    run_lifecycle(stack)
    events = list(stack.trace)
    title = f"TEE-IO lifecycle, {stack.profile.title} profile (flow.md, corrected)"
    return render_text(events, title=title) + merge_note(profile), events


def test_tdx_chart_matches_golden_file():
    """The TDX lifecycle, as a chart with its footnote of merged steps, is byte-for-byte the reviewed golden
    file (what ``teeio-conformance flow`` prints)."""
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

    def _shared_dma(self, vm, idev, *rest):
        if self._kvm.vm_state(vm).value == "created":
            self._kvm.run(vm)
        return super()._shared_dma(vm, idev, *rest)


def test_broken_order_is_caught():
    """Breaking one order (run before vdevice) changes the chart and fails the order check."""
    stack = build_stack(StackConfig(profile="tdx"), vmm_factory=_RunFirstVmm)
    with pytest.raises(Exception):  # noqa: B017 - the VM is already running when the VMM asks again
        run_lifecycle(stack)
    problems = check_corrected_flow(list(stack.trace), "tdx")
    assert any("after KVM run" in p for p in problems)
    assert render_text(list(stack.trace)) != GOLDEN.read_text(encoding="utf-8")


@pytest.mark.parametrize("profile", ["tdx", "sev-tio", "cca"])
def test_every_flow_step_is_charted_or_a_documented_merge(profile):
    """Each numbered step of flow.md (1-50 and 16b) has a row with its number, or is one of the profile's
    documented merges -- and a documented merge really has no row of its own."""
    from teeio_conformance.reference_impl.lifecycle import FLOW_STEPS, merged_steps

    _, events = _chart(profile)
    shown = {e.step for e in events if e.step}
    merged = merged_steps(profile)
    assert [s for s in FLOW_STEPS if s not in shown and s not in merged] == []
    assert [s for s in merged if s in shown] == []
    assert {"17", "45", "46", "47", "50"} <= shown  # the CC vIOMMU's steps, tdi free and the shared device again


class _CloseFirstVmm(Vmm):
    """The teardown before issue 19: the VFIO device file closed before the hwpt and IOAS are destroyed."""

    def stop_vm(self, vm):
        mine = [a for a in self._assignments.values() if a.vm == vm]
        self._kvm.stop(vm)
        for a in mine:
            self._iommufd.destroy(a.vdevice)
        viommu, hwpt, ioas = self._viommus.pop(vm)
        self._iommufd.destroy(viommu)
        for a in mine:
            self._vfio.close_device(self._fds.pop((a.device, a.rid)))
            self._kvm.destroy_memslot(a.memslot)
            del self._assignments[(a.vm, a.virt_id)]
        self._iommufd.destroy(hwpt)
        self._iommufd.destroy(ioas)
        self._kvm.destroy_vm(vm)


def test_teardown_order_is_checked():
    """The corrected teardown (vdevice, vIOMMU, hwpt/idev, VFIO close) holds for the reference, and a VMM
    that closes the device file before the hwpt goes is reported."""
    stack = build_stack(StackConfig(profile="tdx"), vmm_factory=_CloseFirstVmm)
    run_lifecycle(stack)
    problems = check_corrected_flow(list(stack.trace), "tdx")
    assert any("vfio_close" in p and "before hwpt" in p for p in problems), problems
