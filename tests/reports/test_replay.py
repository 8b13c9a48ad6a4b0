"""Replaying a failure record: deterministic re-run, the rule it fails with, clear errors for bad files."""

from __future__ import annotations

import argparse
import copy
import json

import pytest

from teeio_conformance.conformance import replay as rp
from teeio_conformance.conformance.harness import VERDICTS
from teeio_conformance.reports.model import ReportInputError

from . import MUTANT_SUT, REFERENCE_SUT, SLOT, STACK_REASON, failure_record, stack_works, write_json

needs_stack = pytest.mark.skipif(not stack_works(), reason=STACK_REASON)


def _record(tmp_path, **overrides):
    return write_json(tmp_path / "failures" / "rec.json", failure_record(**overrides))


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    rp.add_arguments(parser)
    return parser.parse_args(list(argv))


@needs_stack
def test_the_recorded_sut_still_fails_with_the_recorded_rule(tmp_path):
    """Same steps, fresh machine, every rule checked: the mutant breaks FLOW-05 at the unbind."""
    result = rp.replay(_record(tmp_path), trust_record=True)
    assert result.still_fails and result.rule_id == "FLOW-05" and result.steps_run == 3
    assert result.recorded_rule_id == "FLOW-05" and result.sut == MUTANT_SUT
    assert "step 3 of 3 (guest)" in result.message


@needs_stack
def test_the_reference_passes_the_same_steps(tmp_path):
    result = rp.replay(_record(tmp_path), sut=REFERENCE_SUT)
    assert not result.still_fails and result.rule_id is None and result.steps_run == 3
    assert "passes now" in result.message


@needs_stack
def test_replay_is_deterministic_and_leaves_run_verdicts_alone(tmp_path):
    before = copy.deepcopy(vars(VERDICTS))  # the per-profile counts too: the report's grid reads them
    path = _record(tmp_path)
    results = {rp.replay(path, MUTANT_SUT) for _ in range(3)}
    assert len(results) == 1
    assert vars(VERDICTS) == before


@needs_stack
def test_the_machine_is_recognised_from_the_test_name(tmp_path):
    """The plugin may record the pytest item's name instead of the machine's."""
    result = rp.replay(_record(tmp_path, machine="test_full_stack_lifecycle[tdx]"), MUTANT_SUT)
    assert result.rule_id == "FLOW-05"


@needs_stack
def test_a_different_rule_is_reported_as_such(tmp_path):
    """Replaying on a SUT that fails differently says so: still fails, with the new rule."""
    result = rp.replay(_record(tmp_path, rule_id="FLOW-06"), MUTANT_SUT)
    assert result.still_fails and result.rule_id == "FLOW-05" and "not the recorded FLOW-06" in result.message


@needs_stack
def test_cli_exit_status_1_while_failing_0_once_fixed(tmp_path, capsys):
    path = str(_record(tmp_path))
    assert rp.run(_args(path, "--sut", MUTANT_SUT)) == 1
    out = capsys.readouterr().out
    assert out.startswith("STILL FAILS: still fails with FLOW-05")
    assert rp.run(_args(path, "--sut", REFERENCE_SUT)) == 0
    assert capsys.readouterr().out.startswith("PASSES: passes now")


@needs_stack
def test_host_lifetimes_records_replay_too(tmp_path):
    result = rp.replay(_record(tmp_path, machine="host_lifetimes", steps=[]), sut=REFERENCE_SUT)
    assert not result.still_fails and result.steps_run == 0


# ---------------------------------------------------------------------------- bad files and bad SUTs

BAD = [
    ({"format": "wptreport"}, "not a teeio-conformance failure record"),
    ({"machine": "quantum", "test": "t"}, "machine 'quantum' (test 't') is not one of full_stack, device"),
    ({"profile": None}, "field 'profile' is missing"),
    ({"steps": [{"method": "rm_rf", "kwargs": {}}]}, "steps[0] (rm_rf): the full_stack machine has no step"),
    ({"steps": [{"method": "teardown", "kwargs": {}}]}, "has no step 'teardown'"),
    ({"steps": [{"method": "check_invariants", "kwargs": {}}]}, "has no step 'check_invariants'"),
    ({"steps": [{"method": "assign", "kwargs": {"vm": "vm1", "fun": 0}}]}, "arguments do not fit"),
    (
        {"steps": [{"method": "guest", "kwargs": {"s": {"__gpu__": {}}, "verb": "bind"}}]},
        "'__gpu__' is not a handle type this machine knows (slot",
    ),
    (
        {"steps": [{"method": "guest", "kwargs": {"s": {"__slot__": {"vm": "vm1"}}, "verb": "bind"}}]},
        "cannot rebuild Slot",
    ),
    ({"steps": [{"method": "guest", "kwargs": {"s": SLOT, "verb": "data(...)"}}]}, "drawn interactively"),
    ({"sut": "no_such_module_xyz:factory"}, "recorded SUT unusable here"),
    ({"num_vfs": -1}, "field 'num_vfs' must be 0..255"),
    ({"num_vfs": "2"}, "field 'num_vfs' must be int"),
    ({"num_vfs": True}, "field 'num_vfs' must be int"),
]


@pytest.mark.parametrize(("overrides", "expected"), BAD, ids=[e for _, e in BAD])
def test_a_bad_record_is_a_typed_error_and_nothing_runs(tmp_path, overrides, expected):
    path = _record(tmp_path, **overrides)
    before = (dict(VERDICTS.checked), VERDICTS.steps)
    with pytest.raises(ReportInputError) as info:
        rp.replay(path, trust_record=True)
    assert expected in str(info.value) and "rec.json" in str(info.value)
    assert (dict(VERDICTS.checked), VERDICTS.steps) == before


@needs_stack
def test_the_recorded_number_of_vfs_sizes_the_replayed_stack(tmp_path):
    """``fn`` picks a routing ID modulo the functions there are: the same steps on another size of device
    touch another function, so a replay builds the stack the record was made on."""
    assert rp.prepare(_record(tmp_path), MUTANT_SUT).machine.config.num_vfs == 1  # older records: the default
    sized = rp.prepare(_record(tmp_path, num_vfs=3), MUTANT_SUT)
    assert sized.machine.config.num_vfs == 3
    machine = sized.machine()
    try:
        assert len(machine.rids) == 4
    finally:
        machine.teardown()
    result = rp.execute(rp.prepare(_record(tmp_path, num_vfs=0), MUTANT_SUT))
    assert result.still_fails and result.rule_id == "FLOW-05"


@pytest.mark.parametrize(
    ("sut", "expected"),
    [
        ("nocolon", "--sut must look like 'package.module:factory'"),
        ("json:no_such_factory", "has no attribute 'no_such_factory'"),
        ("json:__version__", "is not callable"),
    ],
)
def test_a_bad_sut_is_a_typed_error(tmp_path, sut, expected):
    with pytest.raises(rp.ReplayError, match=expected):
        rp.replay(_record(tmp_path), sut=sut)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"\x89PNG\r\n\x1a\n",
        json.dumps([1]).encode(),
        json.dumps(failure_record(format="teeio-failure/9")).encode(),
    ],
)
def test_cli_bad_file_is_one_line_on_stderr_and_status_2(tmp_path, capsys, content):
    path = tmp_path / "x.json"
    path.write_bytes(content)
    assert rp.run(_args(str(path))) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and str(path) in captured.err
    assert captured.err.startswith("teeio-conformance replay: ") and "Traceback" not in captured.err


def test_cli_missing_file_and_bad_sut_are_status_2(tmp_path, capsys):
    assert rp.run(_args(str(tmp_path / "none.json"))) == 2
    assert "cannot read" in capsys.readouterr().err
    assert rp.run(_args(str(_record(tmp_path)), "--sut", "nocolon")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--sut must look like" in err


@needs_stack
def test_device_records_replay_on_the_reference_device_or_a_given_device_factory(tmp_path):
    """The device machine drives a device alone: by default the reference device, else --sut's device."""
    path = _record(
        tmp_path,
        machine="device",
        test="conformance/test_device.py::test_device_tdisp_and_ide_km[tdx]",
        sut="vendor.not_installed:stack",
        rule_id="TDISP-03",
        steps=[
            {"method": "bring_up", "kwargs": {"fn": 0, "stage": "locked"}},
            {"method": "poll", "kwargs": {}},
        ],
    )
    ok = rp.replay(path)
    assert not ok.still_fails and ok.sut == rp.REFERENCE_DEVICE and ok.steps_run == 2
    bad = rp.replay(path, sut="tests.reports:lock_leaves_unlocked_device")
    assert bad.still_fails and bad.rule_id == "TDISP-03" and bad.steps_run == 1
