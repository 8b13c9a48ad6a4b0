"""Merging a report directory into one Report: verdict rules, xdist workers, corrupt and foreign inputs."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teeio_conformance.conformance.rules import BY_ID, CATALOGUE
from teeio_conformance.contract.errors import StackError
from teeio_conformance.reports.model import (
    AGGREGATE,
    Failure,
    ReportInputError,
    Status,
    load_failure,
    load_report_dir,
)

from . import MUTANT_SUT, REFERENCE_SUT, failure_record, sample_report_dir, verdicts, write_json


def test_workers_counts_are_summed_per_profile(tmp_path):
    """Counts of every xdist worker are summed, per profile (report-formats.md item 1)."""
    report = load_report_dir(sample_report_dir(tmp_path))
    flow05 = report.verdict("FLOW-05")
    assert flow05 is not None
    assert flow05.by_profile["tdx"].checked == 4 and flow05.by_profile["tdx"].exercised == 2
    assert flow05.by_profile["tdx"].status is Status.FAIL
    assert flow05.by_profile["cca"].status is Status.PASS
    flow01 = report.verdict("FLOW-01")
    assert flow01 is not None and flow01.by_profile["cca"].checked == 2
    assert report.run.workers == ("gw0", "gw1") and report.run.steps == 200
    assert report.run.settings_profile == "ci" and report.run.hypothesis == "6.170.17"
    assert report.columns == ("tdx", "cca")


def test_profile_specific_rules_have_no_verdict_elsewhere(tmp_path):
    """FLOW-07 is a TDX rule: a verdict under tdx, none (n/a) under cca; FLOW-08 the other way round."""
    report = load_report_dir(sample_report_dir(tmp_path))
    flow07, flow08 = report.verdict("FLOW-07"), report.verdict("FLOW-08")
    assert flow07 is not None and set(flow07.by_profile) == {"tdx"}
    assert flow07.by_profile["tdx"].status is Status.PASS
    assert flow08 is not None and set(flow08.by_profile) == {"cca"}
    assert flow08.by_profile["cca"].status is Status.NOT_EXERCISED and flow08.by_profile["cca"].checked == 1


def test_every_catalogue_rule_gets_a_verdict(tmp_path):
    """Rules the run never looked at are NOT_EXERCISED, not missing."""
    report = load_report_dir(sample_report_dir(tmp_path))
    applicable = {r.id for r in CATALOGUE if r.profiles & {"tdx", "cca"}}
    assert {v.rule_id for v in report.verdicts} == applicable
    assert report.verdict("DMA-06") is None  # SEV-TIO only, and the sample run had no sev-tio
    flow02 = report.verdict("FLOW-02")
    assert flow02 is not None and {pv.status for pv in flow02.by_profile.values()} == {Status.NOT_EXERCISED}


def test_a_failure_record_alone_makes_a_rule_fail(tmp_path):
    """A failure record names its rule: FAIL even if the counts (e.g. of a crashed worker) do not show it."""
    write_json(tmp_path / "verdicts-main.json", verdicts({"FLOW-05": 3}, {"FLOW-05": 3}))
    write_json(tmp_path / "failures" / "x.json", failure_record())
    report = load_report_dir(tmp_path)
    v = report.verdict("FLOW-05")
    assert v is not None and v.by_profile["tdx"].status is Status.FAIL
    assert "guest unbind destroyed vdevice 5" in report.explain(v, "tdx")


def test_without_by_profile_a_multi_profile_run_has_one_aggregate_column(tmp_path):
    write_json(
        tmp_path / "verdicts-main.json",
        verdicts({"FLOW-05": 3}, {"FLOW-05": 1}, profiles=("tdx", "sev-tio", "cca")),
    )
    report = load_report_dir(tmp_path)
    assert report.columns == (AGGREGATE,)
    v = report.verdict("FLOW-05")
    assert v is not None and v.by_profile[AGGREGATE].status is Status.PASS


def test_harness_failures_and_unknown_rules_are_reported(tmp_path):
    """SUT-HANG is a harness pseudo-rule; a rule ID from a newer catalogue is kept, marked unknown."""
    write_json(tmp_path / "verdicts-main.json", verdicts({"NEW-01": 2}, {"NEW-01": 2}))
    write_json(
        tmp_path / "failures" / "hang.json",
        failure_record(rule_id="SUT-HANG", rule_title="SutHang", rule_source="harness", message="5 s"),
    )
    report = load_report_dir(tmp_path)
    hang, new = report.verdict("SUT-HANG"), report.verdict("NEW-01")
    assert hang is not None and hang.area == "HARNESS" and hang.status is Status.FAIL
    assert new is not None and new.area == "UNKNOWN" and new.status is Status.PASS


def test_summary_counts_rule_profile_cells(tmp_path):
    report = load_report_dir(sample_report_dir(tmp_path))
    counts = report.counts()
    assert sum(counts.values()) == sum(len(v.by_profile) for v in report.verdicts)
    assert counts[Status.FAIL] == 1
    assert report.summary_line().startswith(f"{counts[Status.PASS]} passed, 1 failed,")


def test_failure_program_is_rebuilt_from_steps_when_hypothesis_printed_none():
    f = Failure.from_json(failure_record(program=[]), name="x", origin="x.json")
    assert f.program_lines() == [
        "state = Machine()",
        "state.first_vm()",
        "state.assign(vm='vm1', fn=0)",
        "state.guest(s=Slot(vm='vm1', rid=14848, virt_id=16), verb='unbind')",
        "state.teardown()",
    ]
    g = Failure.from_json(failure_record(), name="x", origin="x.json")
    assert g.program_lines()[0] == "state = Machine()"  # the "Failing test case" header is dropped


# ---------------------------------------------------------------------------- bad inputs

BAD_RECORDS = [
    ("[1, 2]", "must be a JSON object"),
    ('{"format": "wptreport"}', "not a teeio-conformance failure record"),
    ("{not json", "not valid JSON"),
    (json.dumps(failure_record(steps="first_vm")), "field 'steps' must be list"),
    (json.dumps(failure_record(steps=[{"kwargs": {}}])), "steps[0] must be an object"),
    (json.dumps(failure_record(rule_id="flow 5")), "field 'rule_id' must look like"),
    (json.dumps(failure_record(violating_seq="3")), "field 'violating_seq' must be int"),
    (json.dumps(failure_record(trace=[{"seq": "a"}])), "trace[0].seq must be int"),
    (json.dumps({k: v for k, v in failure_record().items() if k != "sut"}), "field 'sut' is missing"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_RECORDS, ids=[e for _, e in BAD_RECORDS])
def test_a_corrupt_or_foreign_failure_record_is_a_typed_error_naming_the_file(tmp_path, text, expected):
    path = tmp_path / "failures" / "broken.json"
    path.parent.mkdir()
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ReportInputError) as info:
        load_failure(path)
    assert str(path) in str(info.value) and expected in str(info.value)
    assert isinstance(info.value, StackError)


def test_binary_garbage_is_a_typed_error(tmp_path):
    path = tmp_path / "x.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ReportInputError, match="not UTF-8"):
        load_failure(path)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"results": []}, "not a teeio-conformance verdicts file"),
        (verdicts({"FLOW-05": -1}, {}), "must be a non-negative integer"),
        (verdicts({}, {}, sut=""), "field 'sut' must be a non-empty str"),
        ({**verdicts({}, {}), "by_profile": ["tdx"]}, "'by_profile' must be an object"),
        ({**verdicts({}, {}), "profiles": "tdx"}, "'profiles' must be a list"),
    ],
)
def test_a_bad_verdicts_file_is_a_typed_error(tmp_path, data, expected):
    write_json(tmp_path / "verdicts-gw3.json", data)
    with pytest.raises(ReportInputError, match=r"verdicts-gw3\.json") as info:
        load_report_dir(tmp_path)
    assert expected in str(info.value)


def test_missing_and_empty_report_directories(tmp_path):
    with pytest.raises(ReportInputError, match="no such report directory"):
        load_report_dir(tmp_path / "nope")
    with pytest.raises(ReportInputError, match="was the suite run with --report-dir"):
        load_report_dir(tmp_path)


def test_workers_of_different_suts_do_not_merge(tmp_path):
    write_json(tmp_path / "verdicts-gw0.json", verdicts({}, {}, sut=REFERENCE_SUT))
    write_json(tmp_path / "verdicts-gw1.json", verdicts({}, {}, sut=MUTANT_SUT))
    with pytest.raises(ReportInputError, match="different SUTs"):
        load_report_dir(tmp_path)


# ---------------------------------------------------------------------------- merging is summing

RULE_IDS = [r.id for r in CATALOGUE if "tdx" in r.profiles][:12]
counts_st = st.dictionaries(st.sampled_from(RULE_IDS), st.integers(0, 50), max_size=8)


@settings(max_examples=60, deadline=None)
@given(parts=st.lists(st.tuples(counts_st, counts_st, counts_st), min_size=1, max_size=4), data=st.data())
def test_splitting_counts_over_workers_does_not_change_verdicts(tmp_path_factory, parts, data):
    """Any split of the same counts over N worker files gives the verdicts of one file with the sums."""
    total: dict[str, dict[str, int]] = {"checked": {}, "exercised": {}, "failed": {}}
    split = tmp_path_factory.mktemp("split")
    for i, (c, e, f) in enumerate(parts):
        write_json(split / f"verdicts-gw{i}.json", verdicts(c, e, f))
        for key, part in zip(("checked", "exercised", "failed"), (c, e, f), strict=True):
            for rule_id, n in part.items():
                total[key][rule_id] = total[key].get(rule_id, 0) + n
    whole = tmp_path_factory.mktemp("whole")
    write_json(
        whole / "verdicts-main.json",
        verdicts(total["checked"], total["exercised"], total["failed"], steps=100 * len(parts)),
    )
    a, b = load_report_dir(split), load_report_dir(whole)
    assert [(v.rule_id, dict(v.by_profile)) for v in a.verdicts] == [
        (v.rule_id, dict(v.by_profile)) for v in b.verdicts
    ]
    rule_id = data.draw(st.sampled_from(RULE_IDS))
    v = a.verdict(rule_id)
    assert v is not None and rule_id in BY_ID
    pv = v.by_profile["tdx"]
    expected = (
        Status.FAIL
        if total["failed"].get(rule_id)
        else Status.PASS
        if total["exercised"].get(rule_id)
        else Status.NOT_EXERCISED
    )
    assert pv.status is expected


def test_the_run_spans_its_workers_earliest_start_latest_finish(tmp_path):
    def run(started, finished):
        return {"settings_profile": "ci", "started": started, "finished": finished}

    write_json(
        tmp_path / "verdicts-gw0.json",
        verdicts({"FLOW-01": 1}, {}, run=run("2026-11-25T10:00:03+00:00", "2026-11-25T10:01:00+00:00")),
    )
    write_json(
        tmp_path / "verdicts-gw1.json",
        verdicts({"FLOW-01": 1}, {}, run=run("2026-11-25T10:00:01+00:00", "2026-11-25T10:01:30+00:00")),
    )
    info = load_report_dir(tmp_path).run
    assert (info.started, info.finished) == ("2026-11-25T10:00:01+00:00", "2026-11-25T10:01:30+00:00")
