"""Every kind of corrupt record is a typed error naming the field, exit 2 -- never "STILL FAILS" blamed
on the SUT, never a traceback -- with limits on size, depth and steps (issue 17, item 4)."""

from __future__ import annotations

import argparse
import json

import pytest

from teeio_conformance.conformance import replay as rp
from teeio_conformance.reports import model
from teeio_conformance.reports.model import ReportInputError, load_failure

from . import REFERENCE_SUT, SLOT, failure_record, write_json


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    rp.add_arguments(parser)
    return parser.parse_args(list(argv))


WRONG = [
    ({"method": "assign", "kwargs": {"vm": "vm1", "fn": "x"}}, "steps[1].kwargs.fn: the full_stack machine's step"),
    ({"method": "assign", "kwargs": {"vm": 5, "fn": 0}}, "steps[1].kwargs.vm: the full_stack machine's step"),
    ({"method": "assign", "kwargs": {"vm": "vm1", "fn": True}}, "steps[1].kwargs.fn"),
    ({"method": "guest", "kwargs": {"s": SLOT, "verb": "rm -rf"}}, "steps[1].kwargs.verb: the full_stack machine's"),
    ({"method": "guest", "kwargs": {"s": "vm1", "verb": "bind"}}, "steps[1].kwargs.s"),
]


@pytest.mark.parametrize(("step", "expected"), WRONG, ids=[e for _, e in WRONG])
def test_a_wrong_typed_argument_is_the_records_problem_not_the_suts(tmp_path, capsys, step, expected):
    """Old code replayed these, the machine crashed on the value, and replay said STILL FAILS (SUT-ERROR)."""
    steps = [{"method": "first_vm", "kwargs": {}}, step]
    path = write_json(tmp_path / "failures" / "rec.json", failure_record(steps=steps))
    assert rp.run(_args(str(path), "--sut", REFERENCE_SUT)) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and expected in captured.err and captured.err.count("\n") == 1


def test_deeply_nested_json_is_a_typed_error_not_a_traceback(tmp_path, capsys):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    with pytest.raises(ReportInputError, match="nested too deeply"):
        load_failure(path)
    assert rp.run(_args(str(path))) == 2
    assert "nested too deeply" in capsys.readouterr().err


def test_nesting_over_the_depth_limit_is_refused_even_when_python_could_read_it(tmp_path):
    record = failure_record()
    deep: object = 0
    for _ in range(model.MAX_DEPTH + 5):
        deep = [deep]
    record["program"] = [deep]
    path = write_json(tmp_path / "rec.json", record)
    with pytest.raises(ReportInputError, match=f"deeper than {model.MAX_DEPTH} levels"):
        load_failure(path)


def test_too_many_steps_is_refused(tmp_path):
    record = failure_record(steps=[{"method": "advance", "kwargs": {}}] * (model.MAX_STEPS + 1))
    path = tmp_path / "many.json"
    path.write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(ReportInputError, match=f"over the limit of {model.MAX_STEPS}"):
        load_failure(path)


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(model, "MAX_INPUT_BYTES", 1000)
    path = write_json(tmp_path / "big.json", failure_record(message="x" * 2000))
    with pytest.raises(ReportInputError, match="over the 1000-byte limit"):
        load_failure(path)


def test_an_unknown_profile_is_the_records_problem(tmp_path, capsys):
    """Checked before anything is built: building the SUT for profile 'quantum' fails, and a factory's
    failure is now the SUT's (SUT-BUILD). Old code said only "building the machine failed: KeyError"."""
    path = write_json(tmp_path / "failures" / "rec.json", failure_record(profile="quantum"))
    assert rp.run(_args(str(path), "--sut", REFERENCE_SUT)) == 2
    assert "field 'profile' must be one of cca, sev-tio, tdx, got 'quantum'" in capsys.readouterr().err
