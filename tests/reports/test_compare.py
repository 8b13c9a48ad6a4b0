"""compare: which rules changed verdict between two report.json files, per profile."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

import pytest

from teeio_conformance.reports import compare, writer
from teeio_conformance.reports.model import load_report_dir

from . import MUTANT_SUT, REFERENCE_SUT, failure_record, verdicts, write_json


def _report(root, *, checked, exercised, failed=None, failures=(), sut=REFERENCE_SUT):
    by_profile = {p: {"checked": checked, "exercised": exercised, "failed": failed or {}} for p in ("tdx", "cca")}
    write_json(
        root / "verdicts-main.json",
        verdicts(checked, exercised, failed, profiles=("tdx", "cca"), sut=sut, by_profile=by_profile),
    )
    for i, record in enumerate(failures):
        write_json(root / "failures" / f"f{i}.json", record)
    writer.write_all(load_report_dir(root), root)
    return root / "report.json"


@pytest.fixture
def before_after(tmp_path):
    """Before: FLOW-05 broken under tdx, FLOW-01 passing. After the fix: FLOW-05 passes, FLOW-01 is no
    longer exercised, and ERR-01 newly fails under cca."""
    before = _report(
        tmp_path / "before",
        checked={"FLOW-05": 4, "FLOW-01": 3, "ERR-01": 9},
        exercised={"FLOW-05": 2, "FLOW-01": 3, "ERR-01": 1},
        failures=[failure_record()],
        sut=MUTANT_SUT,
    )
    after = _report(
        tmp_path / "after",
        checked={"FLOW-05": 4, "FLOW-01": 3, "ERR-01": 9},
        exercised={"FLOW-05": 2, "ERR-01": 1},
        failures=[failure_record(rule_id="ERR-01", profile="cca", message="a refused call changed kvm")],
    )
    return before, after


def test_changed_verdicts_are_found_per_profile(before_after):
    before, after = before_after
    cmp = compare.compare_files(str(before), str(after))
    got = {(c.rule_id, c.profile): (c.old, c.new, c.kind) for c in cmp.changes}
    assert got == {
        ("FLOW-05", "tdx"): ("FAIL", "PASS", "fixed"),
        ("ERR-01", "cca"): ("PASS", "FAIL", "regression"),
        ("FLOW-01", "tdx"): ("PASS", "NOT EXERCISED", "changed"),
        ("FLOW-01", "cca"): ("PASS", "NOT EXERCISED", "changed"),
    }
    assert [c.kind for c in cmp.changes] == ["regression", "fixed", "changed", "changed"]  # worst first
    assert cmp.old_sut == MUTANT_SUT and cmp.new_sut == REFERENCE_SUT
    assert cmp.unchanged > 50


def test_identical_reports_have_no_changes(before_after):
    before, _ = before_after
    cmp = compare.compare_files(str(before), str(before))
    assert cmp.changes == () and cmp.regressions == []


def test_a_rule_only_one_side_has_is_a_change():
    old: dict[str, Any] = {
        "run_info": {"sut": "a"},
        "results": [{"test": "/teeio/tdx", "subtests": [{"name": "FLOW-05", "status": "PASS"}]}],
    }
    new = {
        "run_info": {"sut": "b"},
        "results": [
            {
                "test": "/teeio/tdx",
                "subtests": [
                    {"name": "FLOW-05", "status": "PASS"},
                    {"name": "NEW-01", "status": "FAIL", "message": "m"},
                ],
            }
        ],
    }
    cmp = compare.compare_reports(old, new)
    assert [(c.rule_id, c.old, c.new, c.kind) for c in cmp.changes] == [("NEW-01", None, "FAIL", "regression")]
    back = compare.compare_reports(new, old)
    assert [(c.rule_id, c.old, c.new, c.kind, c.message) for c in back.changes] == [
        ("NEW-01", "FAIL", None, "changed", "m")
    ]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    compare.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_text_output_and_exit_status(before_after, capsys):
    before, after = before_after
    assert compare.run(_args(str(before), str(after))) == 1  # a regression
    out = capsys.readouterr().out
    assert "Regressions (FAIL now, not before) (1):" in out
    assert re.search(r"ERR-01\s+cca\s+PASS -> FAIL\s+a refused call changed kvm", out)
    assert re.search(r"FLOW-05\s+tdx\s+FAIL -> PASS", out)
    assert compare.run(_args(str(after), str(after))) == 0
    assert "0 regression(s)" in capsys.readouterr().out


def test_cli_json_output(before_after, capsys):
    before, after = before_after
    compare.run(_args(str(before), str(after), "--json"))
    data = json.loads(capsys.readouterr().out)
    assert data["counts"] == {"regression": 1, "fixed": 1, "changed": 2}
    assert {
        "rule_id": "FLOW-05",
        "profile": "tdx",
        "old": "FAIL",
        "new": "PASS",
        "kind": "fixed",
    }.items() <= data["changes"][1].items()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{}", "does not match the teeio-conformance report schema"),
        ("nope", "not valid JSON"),
        (None, "cannot read"),
    ],
)
def test_cli_bad_input_is_one_line_and_status_2(before_after, tmp_path, capsys, content, expected):
    before, _ = before_after
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    assert compare.run(_args(str(before), str(bad))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and str(bad) in err


def test_a_profile_only_one_side_ran_is_summarised_not_listed_rule_by_rule():
    sub = [{"name": f"FLOW-0{i}", "status": "PASS"} for i in range(1, 6)]
    old: dict[str, Any] = {
        "run_info": {"sut": "a"},
        "results": [{"test": "/teeio/tdx", "subtests": sub}, {"test": "/teeio/cca", "subtests": sub}],
    }
    new = {"run_info": {"sut": "a"}, "results": [{"test": "/teeio/tdx", "subtests": sub}]}
    cmp = compare.compare_reports(old, new)
    assert cmp.only_old == ("cca",) and len(cmp.changes) == 5
    out = compare.render_text(cmp)
    assert "profile cca was run only in OLD (5 verdicts" in out and "FLOW-01" not in out
    old["results"][1]["subtests"] = [*sub[:4], {"name": "FLOW-05", "status": "FAIL"}]
    out = compare.render_text(compare.compare_reports(old, new))
    assert "FLOW-05 cca FAIL -> (absent)" in out and "FLOW-01" not in out
