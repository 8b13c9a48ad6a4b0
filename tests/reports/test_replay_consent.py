"""Replay runs nothing a record names without consent (issue 17, item 1).

A failure record is what implementers receive from others; opening one must not import and call the
``module:callable`` in its ``sut`` field, nor start the command in its ``device.spawn`` field, unless
the user names them on the command line or passes ``--trust-record`` (which prints what will run first).
"""

from __future__ import annotations

import argparse
import sys

import pytest

from teeio_conformance.conformance import replay as rp
from teeio_conformance.reports.model import load_failure
from teeio_conformance.reports.writer import replay_test_source

from . import REFERENCE_SUT, STACK_REASON, failure_record, stack_works, write_json

needs_stack = pytest.mark.skipif(not stack_works(), reason=STACK_REASON)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    rp.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def booby_trapped(tmp_path, monkeypatch):
    """A module whose import (and factory) leave a marker file: proof that something ran."""
    marker = tmp_path / "ran"
    (tmp_path / "trap_sut_mod.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\n\n"
        "def factory(**kw):\n    raise RuntimeError('called')\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "trap_sut_mod", raising=False)
    return marker


def test_a_records_sut_is_not_imported_without_consent(tmp_path, booby_trapped, capsys):
    path = write_json(tmp_path / "failures" / "rec.json", failure_record(sut="trap_sut_mod:factory"))
    assert rp.run(_args(str(path))) == 2
    err = capsys.readouterr().err
    assert not booby_trapped.exists()  # old code imported it (and called the factory)
    assert "trap_sut_mod:factory" in err and "--trust-record" in err and err.count("\n") == 1
    with pytest.raises(rp.ConsentNeeded):
        rp.replay(path)
    assert not booby_trapped.exists()


def test_a_records_spawn_command_is_not_run_without_consent(tmp_path, capsys):
    marker = tmp_path / "spawned"
    record = failure_record(
        machine="device",
        test="conformance/test_device.py::test_device_tdisp_and_ide_km[tdx]",
        rule_id="TDISP-03",
        steps=[{"method": "poll", "kwargs": {}}],
        device={"spawn": f"touch {marker}"},
    )
    path = write_json(tmp_path / "failures" / "dev.json", record)
    assert rp.run(_args(str(path))) == 2
    err = capsys.readouterr().err
    assert not marker.exists()  # old code started the record's command
    assert f"touch {marker}" in err and "--device-spawn" in err


def test_trust_record_prints_what_will_run_before_running_it(tmp_path, booby_trapped, capsys):
    path = write_json(tmp_path / "failures" / "rec.json", failure_record(sut="trap_sut_mod:factory"))
    status = rp.run(_args(str(path), "--trust-record"))
    err = capsys.readouterr().err
    assert booby_trapped.exists()  # consent given: it ran
    assert "--trust-record: about to import and call the SUT factory the record names: trap_sut_mod:factory" in err
    assert status in (1, 2)


@needs_stack
def test_the_suites_own_suts_need_no_consent(tmp_path):
    """The reference stack, the reference device and the named reference mutants are the suite's code."""
    assert rp.own_sut(REFERENCE_SUT) and rp.own_sut("teeio_conformance.reference_impl.mutants:vmm_lazy_vdevice")
    assert not rp.own_sut("teeio_conformance.reference_impl.mutants:no_such_mutant")
    assert not rp.own_sut("os:system")
    path = write_json(tmp_path / "failures" / "rec.json", failure_record(sut=REFERENCE_SUT))
    assert not rp.replay(path).still_fails


def test_the_generated_replay_file_spells_out_what_it_runs(tmp_path):
    """The pytest file next to a record names the SUT in its own text: a record swapped in later cannot
    make it run something else."""
    path = write_json(tmp_path / "failures" / "rec.json", failure_record(sut="vendor.build:make_stack"))
    source = replay_test_source(load_failure(path))
    assert "RECORDED_SUT = 'vendor.build:make_stack'" in source
    compile(source, "rec.test.py", "exec")
