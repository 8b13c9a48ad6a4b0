"""Rule tiers: what a rule needs, what a SUT offers, and NOT APPLICABLE as its own verdict everywhere.

A rule whose needs a SUT cannot feed is never checked and never a PASS; the reports show it apart from NOT
EXERCISED, and it alone never fails a run (issue 14's "a MUST rule that applies and was never exercised fails
the run" can leave it out with ``applicable``).
"""

from __future__ import annotations

import json

import pytest

from teeio_conformance.conformance.harness import StepRunner
from teeio_conformance.conformance.rules import BY_ID, CATALOGUE, Checker, applicable
from teeio_conformance.contract.errors import InvalidArgument
from teeio_conformance.contract.tiers import EVERYTHING, TRACE_ONLY, Needs, Offers, missing, offers_of
from teeio_conformance.reference_impl.stack import make_sut
from teeio_conformance.reports import writer
from teeio_conformance.reports.model import Status, load_report_dir


def test_a_rule_that_says_nothing_needs_everything():
    needs = Needs()
    assert needs.crossings is None and needs.errors and not needs.trace_only
    assert not missing(needs, EVERYTHING)
    assert missing(needs, TRACE_ONLY) == ["snapshots of devices, guests, iommu, iommufd, kvm, tsm, vfio, vmm"]


def test_missing_names_each_lacking_tier():
    needs = Needs(crossings={"kvm.run", "tsm.bind"}, errors=True, snapshots={"kvm"})
    offers = Offers(crossings={"kvm.run"}, errors=False, snapshots=())
    assert missing(needs, offers) == ["crossings tsm.bind", "typed errors", "snapshots of kvm"]
    assert missing(Needs(snapshots=()), Offers(crossings={"kvm.run"})) == ["every crossing of the stack"]


@pytest.mark.parametrize(
    "bad",
    [
        lambda: Needs(snapshots={"kvmm"}),
        lambda: Offers(crossings={"run"}),
        lambda: offers_of(type("S", (), {"offers": 3})),
    ],
)
def test_a_malformed_tier_is_a_typed_error(bad):
    with pytest.raises(InvalidArgument):
        bad()


def test_every_rule_declares_its_needs_and_the_trace_only_ones_read_no_snapshot():
    trace_only = {r.id for r in CATALOGUE if r.needs.trace_only}
    assert {"FLOW-01", "FLOW-03", "FLOW-04", "ERR-02", "IDE-02"} <= trace_only
    assert "LIFE-01" not in trace_only and "TDISP-01" not in trace_only
    assert all(applicable(r, EVERYTHING) for r in CATALOGUE)  # the reference offers everything
    assert BY_ID["FLOW-01"].to_json()["needs"]["snapshots"] == []


def test_the_checker_skips_rules_a_sut_cannot_feed_and_says_which():
    full = Checker(CATALOGUE, "tdx")
    partial = Checker(CATALOGUE, "tdx", offers=TRACE_ONLY)
    assert not full.not_applicable
    assert partial.not_applicable == {r.id for r in full.rules} - {r.id for r in partial.rules}
    assert "LIFE-01" in partial.not_applicable and "FLOW-01" not in partial.not_applicable


class _SyscallOnlyStack:
    """The reference, saying it offers what a syscall log offers: its snapshot rules are NOT APPLICABLE."""

    def __init__(self) -> None:
        self._s = make_sut(profile="tdx")
        self.trace = self._s.trace
        self.offers = Offers(
            crossings={"kvm.run", "kvm.stop", "kvm.destroy_vm", "iommufd.viommu_alloc", "iommufd.vdevice_alloc"},
            errors=False,
            snapshots=(),
        )

    def snapshot(self):
        return self._s.snapshot()


def test_a_step_runner_reads_the_suts_offers_and_the_verdicts_count_not_applicable(tmp_path):
    from teeio_conformance.conformance.harness import VERDICTS, verdicts_untouched

    stack = _SyscallOnlyStack()
    with verdicts_untouched():
        VERDICTS.__init__()  # type: ignore[misc]  # this test's counts alone (restored on the way out)
        runner = StepRunner(stack, "tdx")
        assert {r.id for r in runner.checker.rules} == {"FLOW-01"}
        vm = stack._s.create_vm()
        runner.step("kvm_run", stack._s.kvm.run, vm)
        runner.finish()
        per = VERDICTS.by_profile["tdx"]
        assert per["not_applicable"]["LIFE-01"] == 1 and "FLOW-01" not in per["not_applicable"]
        data = {"sut": "probe", "profiles": ["tdx"], "by_profile": VERDICTS.by_profile, "steps": 1}
    (tmp_path / "verdicts-w.json").write_text(json.dumps(data), encoding="utf-8")
    report = load_report_dir(tmp_path)
    assert report.verdict("LIFE-01").by_profile["tdx"].status is Status.NOT_APPLICABLE
    assert report.verdict("FLOW-01").by_profile["tdx"].status is not Status.NOT_APPLICABLE
    assert report.verdict("LIFE-01").status is Status.NOT_APPLICABLE
    assert "not applicable" in report.summary_line()
    assert report.explain(report.verdict("LIFE-01"), "tdx").startswith("not applicable")
    written = writer.write_all(report, tmp_path)  # the schema accepts it in every format
    assert [p.name for p in written][:4] == ["report.json", "junit.xml", "report.txt", "report.html"]
    assert writer.run(type("A", (), {"report_dir": str(tmp_path)})()) == 0  # NOT APPLICABLE alone fails nothing


def test_a_rule_checked_somewhere_is_not_not_applicable(tmp_path):
    """Counts merged over workers: a rule one worker could not feed and another checked has a real verdict."""
    data = {
        "sut": "probe",
        "profiles": ["tdx"],
        "by_profile": {
            "tdx": {"checked": {"LIFE-01": 2}, "exercised": {}, "failed": {}, "not_applicable": {"LIFE-01": 1}}
        },
    }
    (tmp_path / "verdicts-a.json").write_text(json.dumps(data), encoding="utf-8")
    assert load_report_dir(tmp_path).verdict("LIFE-01").by_profile["tdx"].status is Status.NOT_EXERCISED
