"""Pointing the device machine at a responder in another process: options, verdicts, records, replay.

A device vendor runs ``pytest --device-spawn CMD`` (a fresh responder per example) or ``--device-at
HOST:PORT``; the verdicts must be those of the in-process run for every rule a socket can serve, and
NOT EXERCISED for the rest; a failure's record names the responder, and ``replay`` drives it again.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from teeio_conformance.conformance.harness import VERDICTS, Verdicts, verdicts_untouched
from teeio_conformance.conformance.machines.device import DEVICE_RULES, DeviceMachine, DeviceMachineConfig
from teeio_conformance.conformance.remote import (
    REMOTE_RULES,
    DeviceTarget,
    RemoteDeviceMachine,
    config_for,
    parse_address,
    parse_function_ids,
    spawned_device_factory,
)
from teeio_conformance.conformance.replay import ReplayError, replay
from teeio_conformance.contract.errors import InvalidArgument
from teeio_conformance.reference_impl.device.device import DeviceConfig
from teeio_conformance.reference_impl.transport.served import served_device_factory
from teeio_conformance.reports.model import Failure
from tests.child import run_pytest

SERVE = f"{sys.executable} -m teeio_conformance.conformance.cli serve-device --port 0 --profile tdx"


# ------------------------------------------------------------------ options
@pytest.mark.parametrize(
    ("text", "match"),
    [("nowhere", "HOST:PORT"), (":2323", "HOST:PORT"), ("host:0", "1..65535"), ("host:99999", "1..65535"),
     ("host:x", "HOST:PORT")],
)  # fmt: skip
def test_a_bad_address_is_a_typed_error_naming_it(text, match):
    with pytest.raises(InvalidArgument, match=match):
        parse_address(text)


def test_addresses_and_function_ids_parse():
    assert parse_address("127.0.0.1:2323") == ("127.0.0.1", 2323)
    assert parse_address("[::1]:2323") == ("::1", 2323)
    assert parse_function_ids("0x3a00, 14849") == (0x3A00, 0x3A01)


@pytest.mark.parametrize(
    ("text", "match"), [("0x3a00,zz", "'zz'"), ("0x1_0000_0000", "32-bit"), ("1,1", "repeat"), ("", "''")]
)
def test_bad_function_ids_are_typed_errors(text, match):
    with pytest.raises(InvalidArgument, match=match):
        parse_function_ids(text)


@pytest.mark.parametrize(
    ("spawn", "at", "functions", "match"),
    [
        ("serve", "127.0.0.1:1", None, "give one"),
        (None, None, "0x3a00", "goes with --device-at"),
        ("   ", None, None, "needs a command"),
        ('serve --name "unclosed', None, None, "No closing quotation"),
    ],
)
def test_options_that_do_not_fit_together_are_refused(spawn, at, functions, match):
    with pytest.raises(InvalidArgument, match=match):
        DeviceTarget.from_options(spawn, at, functions)


@pytest.mark.parametrize(
    "spec",
    [{"spawn": 3}, {"at": "h:1"}, {"at": "h:1", "functions": []}, {"at": "h:1", "functions": [True]}, ["spawn"],
     {"spawn": "x", "extra": 1}, {"at": "nowhere", "functions": [1]}],
)  # fmt: skip
def test_a_corrupt_recorded_device_is_a_typed_error(spec):
    with pytest.raises(InvalidArgument, match="device"):
        DeviceTarget.from_spec(spec)


def test_a_target_round_trips_through_its_record_spec_and_options():
    at = DeviceTarget.from_options(None, "127.0.0.1:2323", "0x3a00,0x3a01")
    assert DeviceTarget.from_spec(json.loads(json.dumps(at.spec))) == at
    spawn = DeviceTarget.from_options("serve --port 0", None, None)
    assert DeviceTarget.from_spec(dict(spawn.spec or {})) == spawn and spawn.remote
    assert not DeviceTarget.from_options(None, None, None).remote


def test_pytest_refuses_a_bad_device_option_in_one_line(tmp_path):
    (tmp_path / "test_nothing.py").write_text("def test_nothing():\n    pass\n", encoding="utf-8")
    proc = run_pytest(tmp_path, "test_nothing.py", "--device-at", "nowhere", "--rootdir", str(tmp_path))
    assert proc.returncode == 4, proc.stdout + proc.stderr  # pytest's usage error
    assert "a device address is HOST:PORT" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------ verdicts: over the socket == in process
RUN = settings(  # the ci profile's budget: every rule a socket serves is exercised both ways
    max_examples=300,
    stateful_step_count=25,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


def _verdicts(machine: type) -> dict[str, str]:
    """Each device rule's verdict over one derandomized run of ``machine`` (the run's counts alone)."""
    with verdicts_untouched():
        vars(VERDICTS).clear()
        vars(VERDICTS).update(copy.deepcopy(vars(Verdicts())))
        run_state_machine_as_test(machine, settings=RUN)
        failed, exercised = dict(VERDICTS.failed), dict(VERDICTS.exercised)
    return {
        r: "FAIL" if failed.get(r) else "PASS" if exercised.get(r) else "NOT EXERCISED" for r in sorted(DEVICE_RULES)
    }


def test_the_served_reference_gets_the_in_process_verdicts():
    """Over the socket, every rule the socket can serve gets the verdict it gets in process (PASS, each
    rule exercised in both runs); every other rule is NOT EXERCISED, never FAIL."""

    class Local(DeviceMachine):
        config = DeviceMachineConfig(profile="tdx")

    class Served(RemoteDeviceMachine):
        config = config_for(
            spawned_device_factory(
                served_device_factory(DeviceConfig(stop_in_unlocked_idempotent=True)), (0x3A00, 0x3A01)
            )
        )

    local, served = _verdicts(Local), _verdicts(Served)
    assert {r: local[r] for r in REMOTE_RULES} == {r: "PASS" for r in REMOTE_RULES}
    assert {r: served[r] for r in REMOTE_RULES} == {r: local[r] for r in REMOTE_RULES}
    assert {r: served[r] for r in DEVICE_RULES - REMOTE_RULES} == dict.fromkeys(
        DEVICE_RULES - REMOTE_RULES, "NOT EXERCISED"
    )


# ------------------------------------------------------------------ end to end: plugin, record, replay
SUITE = """
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from teeio_conformance.conformance.remote import RemoteDeviceMachine, config_for


def test_device_tdisp_and_ide_km(tdisp_profile, step_timeout, device_target):
    class Remote(RemoteDeviceMachine):
        config = config_for(device_target.factory(), profile=tdisp_profile, timeout=step_timeout)

    run_state_machine_as_test(Remote, settings=settings(
        max_examples=60, stateful_step_count=8, derandomize=True, database=None, deadline=None,
        phases=[Phase.explicit, Phase.generate],  # a responder process per example: no shrinking here
        suppress_health_check=list(HealthCheck)))
"""


def test_a_spawned_mutant_responder_is_recorded_and_replayed_on_the_same_command(tmp_path):
    """--device-spawn against a served mutant: the run fails by the mutant's rule, the record names the
    command, ``replay`` re-runs it on that command (still fails) and on the fixed responder (passes)."""
    (tmp_path / "test_served_suite.py").write_text(SUITE, encoding="utf-8")
    report = tmp_path / "report"
    command = f"{SERVE} --mutant device-lock-leaves-unlocked"
    proc = run_pytest(
        tmp_path,
        "test_served_suite.py",
        "--tdisp-profile=tdx",
        f"--report-dir={report}",
        f"--device-spawn={command}",
        "--rootdir",
        str(tmp_path),
        kind="device-spawn",
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (record,) = (report / "failures").glob("*.json")
    failure = Failure.from_json(json.loads(record.read_text()), name=record.stem, origin=str(record))
    assert failure.rule_id == "TDISP-03" and failure.device == {"spawn": command}
    assert failure.replay_command().endswith(f"--device-spawn '{command}'")
    with pytest.raises(ReplayError, match="without consent"):
        replay(record)  # the record names a command: it runs only with consent
    again = replay(record, trust_record=True)
    assert again.still_fails and again.rule_id == "TDISP-03" and command in again.sut
    assert not replay(record, device=DeviceTarget.from_options(SERVE, None, None)).still_fails
    with pytest.raises(ReplayError, match="apply to device records"):
        replay(_as_full_stack(record, tmp_path), device=DeviceTarget.from_options(SERVE, None, None))


def _as_full_stack(record: Path, tmp_path: Path) -> Path:
    data = json.loads(record.read_text())
    data.update(machine="full_stack", test="conformance/test_full_stack.py::test_full_stack_lifecycle[tdx]")
    out = tmp_path / "full_stack.json"
    out.write_text(json.dumps(data), encoding="utf-8")
    return out


def test_every_rule_a_failing_step_broke_gets_a_record_that_replays(tmp_path):
    """A report served in CONFIG_UNLOCKED breaks TDISP-11 (no report outside LOCKED/RUN) and TDISP-01 (a request
    the state table forbids must be refused) in one step: one record per broken rule, each replaying to its own
    rule (served over secure sessions)."""
    (tmp_path / "test_served_suite.py").write_text(SUITE, encoding="utf-8")
    report = tmp_path / "report"
    command = f"{SERVE} --mutant device-report-in-unlocked"
    proc = run_pytest(
        tmp_path,
        "test_served_suite.py",
        "--tdisp-profile=tdx",
        f"--report-dir={report}",
        f"--device-spawn={command}",
        "--rootdir",
        str(tmp_path),
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    records = sorted((report / "failures").glob("*.json"))
    rules = {json.loads(r.read_text())["rule_id"]: r for r in records}
    assert {"TDISP-11", "TDISP-01"} <= set(rules) and len(rules) == len(records), sorted(rules)
    for rule_id, record in rules.items():
        again = replay(record, trust_record=True)  # the test spawned this responder itself
        assert again.still_fails and again.rule_id == rule_id, (rule_id, again.message)
