"""The breadth-first explorer: passes the reference at a small depth, finds planted mutants by their own rule
in no more steps than Hypothesis shrinks to, and its CLI exits 0 / 1 / 2."""

from __future__ import annotations

import json

import pytest

from teeio_conformance.conformance.cli import main
from teeio_conformance.conformance.explore import ExploreError, explore, machine_class, mutant_machine_class, run_steps
from teeio_conformance.conformance.mutation import catch
from teeio_conformance.conformance.replay import replay
from teeio_conformance.reference_impl.mutants import by_name


def relock_device(trace, profile):
    """The device-relock-from-locked mutant's device, as a ``--sut`` device factory for replay."""
    return by_name("device-relock-from-locked").device_factory(trace, profile)


def test_reference_full_stack_passes_at_depth_1():
    result = explore(machine_class("full_stack", num_vfs=0), depth=1)
    assert result.passed, [f.to_json() for f in result.findings]
    assert result.complete and result.deterministic
    assert result.sequences == sum(result.levels) and result.states >= 2


def test_reference_device_keyed_sessions_pass_at_depth_1():
    result = explore(machine_class("device"), depth=1)
    assert result.complete and result.passed, [f.to_json() for f in result.findings]


@pytest.mark.parametrize("name", ["vmm-binds-tsm-directly", "iommufd-destroy-hwpt-in-use", "device-relock-from-locked"])
def test_planted_mutant_is_found_no_longer_than_shrunk(name):
    mutant = by_name(name)
    only = frozenset({mutant.rule_id})
    result = explore(mutant_machine_class(mutant, only=only), depth=2, stop_on={mutant.rule_id})
    found = result.finding(mutant.rule_id)
    assert found is not None, result.to_json()
    shrunk = catch(mutant)
    assert shrunk.caught and shrunk.steps is not None
    assert found.length <= shrunk.steps
    # The recorded step list re-runs outside the explorer to the same rule.
    again = run_steps(mutant_machine_class(mutant, only=only), found.steps)
    assert again is not None and again[0] == mutant.rule_id


def test_finding_replays_through_teeio_replay(tmp_path):
    mutant = by_name("device-relock-from-locked")
    result = explore(mutant_machine_class(mutant), depth=2, stop_on={mutant.rule_id})
    found = result.finding(mutant.rule_id)
    assert found is not None
    path = tmp_path / "f.json"
    path.write_text(json.dumps(found.failure_record(machine="device", profile="tdx", sut="mutant")))
    again = replay(path, sut=f"{__name__}:relock_device")
    assert again.still_fails and again.rule_id == mutant.rule_id


def test_negative_depth_is_refused():
    with pytest.raises(ExploreError):
        explore(machine_class("device"), depth=-1)


def test_cli_exit_codes(capsys):
    assert main(["explore", "--machine", "full_stack", "--num-vfs", "0", "--depth", "1"]) == 0
    assert "PASS" in capsys.readouterr().out
    assert (
        main(["explore", "--mutant", "device-lock-without-keys", "--depth", "2", "--rule", "TDISP-04", "--json"]) == 1
    )
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "FAIL" and out["findings"][0]["rule_id"] == "TDISP-04"
    with pytest.raises(SystemExit) as exc:
        main(["explore", "--depth", "lots"])
    assert exc.value.code == 2
    assert main(["explore", "--mutant", "no-such-mutant"]) == 2
    assert "no mutant 'no-such-mutant'" in capsys.readouterr().err
    assert main(["explore", "--rule", "NOPE-1"]) == 2


def test_written_finding_records_the_stack_size_and_replays(tmp_path, capsys):
    argv = ["explore", "--mutant", "vmm-binds-tsm-directly", "--num-vfs", "0", "--depth", "2"]
    assert main([*argv, "--write-failures", str(tmp_path)]) == 1
    capsys.readouterr()
    (path,) = (tmp_path / "failures").iterdir()
    record = json.loads(path.read_text())
    assert record["num_vfs"] == 0 and record["machine"] == "full_stack"
    again = replay(path)
    assert again.still_fails and again.rule_id == record["rule_id"]
