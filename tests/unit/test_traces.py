"""Recorded traces: the file schema, check-trace, export-trace's round trip, and the strace importer.

The round trip is the promise of issue 16: the reference's exported trace passes ``check-trace``; a mutant's
exported trace fails by the rule the live run caught it with; a syscall log with an ordering violation fails by
the same rule ID, naming the log line, and the rules that need snapshots are NOT APPLICABLE there, not PASS.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from teeio_conformance.conformance.cli import main
from teeio_conformance.conformance.mutation import catch
from teeio_conformance.conformance.rules import BY_ID, CATALOGUE, applicable
from teeio_conformance.conformance.traces import uapi
from teeio_conformance.conformance.traces.check import check_events, load_any, steps_of
from teeio_conformance.conformance.traces.export import export_flow, export_record
from teeio_conformance.conformance.traces.strace import STRACE_OFFERS, import_strace
from teeio_conformance.contract.guest_request import GuestRequest
from teeio_conformance.contract.ide_km import KeySet
from teeio_conformance.contract.tiers import TRACE_ONLY
from teeio_conformance.contract.trace import Event
from teeio_conformance.contract.trace_file import (
    Record,
    TraceFileError,
    decode_value,
    encode_event,
    encode_value,
    read_trace,
)
from teeio_conformance.reference_impl.mutants import by_name

HERE = Path(__file__).resolve().parents[1] / "traces"
CLEAN = HERE / "qemu-clean.strace"
LATE_VDEVICE = HERE / "qemu-vdevice-after-run.strace"
EARLY_DESTROY = HERE / "qemu-viommu-destroyed-running.strace"


# ------------------------------------------------------------------------------------------ the file schema


@pytest.mark.parametrize(
    "value",
    [
        None,
        3,
        "vm1",
        b"\x00\xffkey",
        (1, (2, b"x")),
        [1, {"a": b"b"}],
        frozenset({1, 2}),
        KeySet.K1,
        GuestRequest(kind="report", nonce=b"\x01" * 32),
    ],
)
def test_values_keep_their_type_through_the_file(value):
    text = json.dumps(encode_value(value))
    back = decode_value(json.loads(text))
    assert back == value and type(back) is type(value)


def test_objects_outside_the_contract_come_back_as_records_with_their_fields():
    back = decode_value({"$object": "somewhere.else:Thing", "fields": {"rid": 7, "blob": {"$bytes": "00ff"}}})
    assert isinstance(back, Record) and back.rid == 7 and back.blob == b"\x00\xff"
    with pytest.raises(AttributeError, match="no field 'nope'"):
        _ = back.nope


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("not json", "t.nd:2: not JSON"),
        ('{"seq": 1, "caller": "vmm"}', "t.nd:2: field 'callee' is missing"),
        ('{"seq": "1", "caller": "vmm", "callee": "kvm", "operation": "run"}', "field 'seq' must be"),
        ('{"seq": 1, "caller": "vmm", "callee": "kvm", "operation": "run", "outcome": "maybe"}', "'ok' or 'error'"),
        ('{"seq": 1, "caller": "v", "callee": "k", "operation": "r", "arguments": [{"x": 1}]}', "must be tagged"),
        ('{"seq": 0, "caller": "v", "callee": "k", "operation": "r"}', "seq 0 already used on line 1"),
    ],
)
def test_a_bad_line_is_a_typed_error_naming_it(line, expected):
    first = json.dumps(encode_event(Event(0, "vmm", "kvm", "run", ("vm1",))))
    with pytest.raises(TraceFileError, match=expected):
        read_trace([first, line], name="t.nd")


# ------------------------------------------------------------------------------------------ reference and mutants


@pytest.mark.parametrize("profile", ["tdx", "sev-tio", "cca"])
def test_the_reference_flow_trace_passes_check_trace(profile):
    buf = io.StringIO()
    n, problem = export_flow(buf, profile=profile)
    assert problem is None and n > 100
    header, events = read_trace(buf.getvalue().splitlines())
    result = check_events(events, profile=profile, offers=header.offers or TRACE_ONLY)
    assert result.ok, [f"{f.rule_id}: {f.message}" for f in result.failures]
    assert {"FLOW-01", "FLOW-03", "FLOW-04", "ERR-02"} <= {r for r, n in result.exercised.items() if n}
    # the rules that need snapshots are NOT APPLICABLE to a trace -- never checked, never a PASS
    snapshot_rules = {r.id for r in CATALOGUE if r.applies_to(profile) and not r.needs.trace_only}
    assert snapshot_rules and snapshot_rules <= result.not_applicable
    assert not snapshot_rules & set(result.checked)


def _record(tmp_path: Path, mutant, sequence) -> Path:
    record = {
        "format": "teeio-failure/1",
        "test": mutant.machine,
        "machine": mutant.machine,
        "profile": mutant.profile,
        "sut": "teeio_conformance.reference_impl.mutants:" + mutant.name.replace("-", "_"),
        "rule_id": mutant.rule_id,
        "steps": list(sequence),
    }
    path = tmp_path / f"{mutant.name}.json"
    path.write_text(json.dumps(record), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["vmm-lazy-vdevice", "vmm-binds-tsm-directly", "device-gostop-ack-wrong-echo"])
def test_a_mutants_exported_trace_fails_by_the_rule_the_live_run_caught(tmp_path, name):
    mutant = by_name(name)
    assert BY_ID[mutant.rule_id].needs.trace_only
    live = catch(mutant, max_examples=200)
    assert live.caught and live.caught_by == mutant.rule_id
    record = _record(tmp_path, mutant, live.sequence)
    sut = "teeio_conformance.reference_impl.mutants:" + name.replace("-", "_") if mutant.machine == "device" else None
    buf = io.StringIO()
    _, stopped = export_record(buf, record, sut=sut)
    assert stopped is not None and stopped.startswith(live.caught_by)
    trace_file = tmp_path / "mutant.ndjson"
    trace_file.write_text(buf.getvalue(), encoding="utf-8")
    _, events = load_any(trace_file)
    result = check_events(events, profile=mutant.profile, name=str(trace_file))
    assert [f.rule_id for f in result.failures][:1] == [live.caught_by]
    failure = result.failures[0]
    line = trace_file.read_text(encoding="utf-8").splitlines()[failure.line - 1]
    assert json.loads(line)["seq"] == failure.seq and failure.where == f"{trace_file}:{failure.line}"


def test_export_trace_and_check_trace_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "flow.ndjson"
    assert main(["export-trace", "--flow", "--profile", "cca", "-o", str(out)]) == 0
    assert main(["check-trace", str(out), "--report-dir", str(tmp_path / "rep")]) == 0
    said = capsys.readouterr().out
    assert "0 FAIL" in said and "NOT APPLICABLE" in said and "profile cca" in said
    report = json.loads((tmp_path / "rep" / "report.json").read_text(encoding="utf-8"))
    statuses = {r["id"]: r["profiles"]["cca"]["status"] for r in report["teeio"]["rules"] if "cca" in r["profiles"]}
    assert statuses["FLOW-01"] == "PASS" and statuses["LIFE-01"] == "NOT_APPLICABLE"
    assert "PRECONDITION_FAILED" in {s["status"] for r in report["results"] for s in r["subtests"]}
    junit = (tmp_path / "rep" / "junit.xml").read_text(encoding="utf-8")
    assert 'type="NOT_APPLICABLE"' in junit and 'failures="0"' in junit
    assert "[NOT APPLICABLE] LIFE-01" in (tmp_path / "rep" / "report.txt").read_text(encoding="utf-8")
    assert "NOT APPLICABLE" in (tmp_path / "rep" / "report.html").read_text(encoding="utf-8")


def test_a_check_trace_failure_in_the_reports_says_how_to_check_again(tmp_path):
    rep = tmp_path / "rep"
    assert main(["check-trace", str(LATE_VDEVICE), "--report-dir", str(rep)]) == 1
    record = json.loads(next((rep / "failures").glob("*.json")).read_text(encoding="utf-8"))
    assert record["rule_id"] == "FLOW-01" and f"{LATE_VDEVICE}:16" in record["message"]
    text = (rep / "report.txt").read_text(encoding="utf-8")
    assert f"replay: teeio-conformance check-trace {LATE_VDEVICE} --profile tdx" in text
    assert not list((rep / "failures").glob("*.test.py"))  # no replay test: a trace has no steps to re-run


def test_check_trace_refuses_what_is_not_a_trace(tmp_path, capsys):
    bad = tmp_path / "bad.ndjson"
    bad.write_text('{"seq": 0, "caller": "vmm"}\n', encoding="utf-8")
    assert main(["check-trace", str(bad)]) == 2
    assert "bad.ndjson:1: field 'callee' is missing" in capsys.readouterr().err
    assert main(["check-trace", str(tmp_path / "missing.ndjson")]) == 2
    empty = tmp_path / "empty.log"
    empty.write_text("hello\n", encoding="utf-8")
    assert main(["check-trace", str(empty)]) == 2
    assert "no system call" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ strace importer


def test_ioctl_numbers_are_the_uapi_headers():
    assert uapi.IOCTLS["IOMMU_DESTROY"] == 0x3B80
    assert uapi.IOCTLS["IOMMU_HWPT_ALLOC"] == 0x3B89
    assert uapi.IOCTLS["IOMMU_VIOMMU_ALLOC"] == 0x3B90
    assert uapi.IOCTLS["IOMMU_VDEVICE_ALLOC"] == 0x3B91
    assert uapi.IOCTLS["VFIO_DEVICE_BIND_IOMMUFD"] == 0x3B76
    assert uapi.IOCTLS["KVM_CREATE_VM"] == 0xAE01
    assert uapi.IOCTLS["KVM_RUN"] == 0xAE80
    assert uapi.IOCTLS["KVM_SET_USER_MEMORY_REGION"] == 0x4020AE46
    assert uapi.IOCTLS["KVM_SET_USER_MEMORY_REGION2"] == 0x40A0AE49
    assert len(uapi.BY_NUMBER) == len(uapi.IOCTLS)  # no two names share a number


def test_a_clean_qemu_log_passes_and_snapshot_rules_are_not_applicable():
    header, events = load_any(CLEAN)
    assert header.offers == STRACE_OFFERS
    ops = [(t.event.callee, t.event.operation) for t in events]
    assert ops.index(("iommufd", "vdevice_alloc")) < ops.index(("kvm", "run")) < ops.index(("kvm", "stop"))
    viommu = next(t.event for t in events if t.event.operation == "viommu_alloc")
    assert viommu.arguments == (3, "vm@fd10") and viommu.result == 4  # decoded from the _IOC(...) form
    failed = next(t.event for t in events if t.event.operation == "destroy" and not t.event.ok)
    assert failed.error == "ENOENT" and failed.arguments == (77,)
    result = check_events(events, profile="tdx", offers=header.offers or TRACE_ONLY, name=str(CLEAN))
    assert result.ok and result.exercised.get("FLOW-01") and result.exercised.get("FLOW-06")
    for rule in CATALOGUE:
        if not rule.applies_to("tdx"):
            continue
        if rule.needs.snapshots or rule.needs.errors:
            assert rule.id in result.not_applicable and rule.id not in result.checked, rule.id
    assert not applicable(BY_ID["LIFE-01"], STRACE_OFFERS) and applicable(BY_ID["FLOW-01"], STRACE_OFFERS)


def test_a_vdevice_allocated_after_kvm_run_fails_flow_01_naming_the_log_line(capsys):
    header, events = load_any(LATE_VDEVICE)
    result = check_events(events, profile="tdx", offers=header.offers or TRACE_ONLY, name=str(LATE_VDEVICE))
    assert [f.rule_id for f in result.failures] == ["FLOW-01"]
    line = LATE_VDEVICE.read_text(encoding="utf-8").splitlines()[result.failures[0].line - 1]
    assert "0x3b91" in line and "out_vdevice_id=5" in line
    assert main(["check-trace", str(LATE_VDEVICE)]) == 1
    said = capsys.readouterr().out
    assert "FAIL FLOW-01 vIOMMU and vdevice are allocated before KVM run" in said
    assert f"{LATE_VDEVICE}:{result.failures[0].line}" in said


def test_a_viommu_destroyed_while_the_vcpu_runs_fails_flow_06_naming_the_log_line():
    header, events = load_any(EARLY_DESTROY)
    result = check_events(events, profile="tdx", offers=header.offers or TRACE_ONLY, name=str(EARLY_DESTROY))
    assert [f.rule_id for f in result.failures] == ["FLOW-06"]
    line = EARLY_DESTROY.read_text(encoding="utf-8").splitlines()[result.failures[0].line - 1]
    assert "IOMMU_DESTROY, {size=8, id=4}" in line  # the vIOMMU (id 4), not the vdevice destroyed before it
    assert result.exercised.get("FLOW-01") and not result.failed.get("FLOW-01")


def test_the_imported_log_as_a_trace_file_keeps_the_log_lines(tmp_path, capsys):
    out = tmp_path / "qemu.ndjson"
    assert main(["import-strace", str(LATE_VDEVICE), "-o", str(out)]) == 0
    assert main(["check-trace", str(out)]) == 1
    said = capsys.readouterr().out
    assert f"(recorded at {LATE_VDEVICE}:16)" in said


def test_unfinished_and_resumed_calls_are_judged_where_they_started():
    log = [
        '7 openat(AT_FDCWD, "/dev/kvm", O_RDWR) = 3',
        "7 ioctl(3, KVM_CREATE_VM, 0) = 4",
        '7 openat(AT_FDCWD, "/dev/iommu", O_RDWR) = 5',
        "7 ioctl(4, KVM_CREATE_VCPU, 0) = 6",
        "8 ioctl(5, IOMMU_VIOMMU_ALLOC, {size=32, hwpt_id=2} <unfinished ...>",
        "9 ioctl(6, KVM_RUN, 0 <unfinished ...>",
        "8 <... ioctl resumed> => {out_viommu_id=9}) = 0",
    ]
    _, events = import_strace(log, name="mini")
    ops = [(t.event.operation, t.line, t.event.result) for t in events]
    assert ops == [("create_vm", 2, "vm@fd4"), ("viommu_alloc", 5, 9), ("run", 6, None)]
    assert len(steps_of(events)) == 3
    assert check_events(events, profile="tdx", offers=STRACE_OFFERS).ok


def test_a_hand_written_trace_in_the_documented_schema_is_judged_line_by_line(tmp_path, capsys):
    """What an adapter author writes from their own recorder: the header, then one event a line."""
    lines = [
        {"format": "teeio-trace/1", "profile": "tdx", "source": "my recorder"},
        {"seq": 0, "caller": "harness", "callee": "vmm", "operation": "ghci_bind", "arguments": ["vm1", 16]},
        {"seq": 1, "caller": "vmm", "callee": "tsm", "operation": "bind", "arguments": [14848, "vm1"], "depth": 1},
        {
            "seq": 2,
            "caller": "harness",
            "callee": "iommufd",
            "operation": "destroy",
            "arguments": [99],
            "outcome": "error",
            "error": "KeyError",
            "message": "99",
        },
        {
            "seq": 3,
            "caller": "harness",
            "callee": "iommufd",
            "operation": "destroy",
            "arguments": [98],
            "outcome": "error",
            "error": "NotFound",
            "message": "no object 98",
        },
    ]
    path = tmp_path / "mine.ndjson"
    path.write_text("".join(json.dumps(obj) + "\n" for obj in lines), encoding="utf-8")
    assert main(["check-trace", str(path)]) == 1
    said = capsys.readouterr().out
    assert "FAIL FLOW-03 the TSM binds a TDI only through the iommufd vdevice" in said and f"{path}:3" in said
    assert "FAIL ERR-02" in said and "raised KeyError" in said and f"{path}:4" in said
    _, events = load_any(path)
    result = check_events(events, profile="tdx")
    assert {f.rule_id for f in result.failures} == {"FLOW-03", "ERR-02"}  # NotFound is typed: ERR-02 holds there
