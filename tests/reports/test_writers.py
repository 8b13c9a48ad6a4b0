"""The writers: report.json (schema), junit.xml, report.txt, report.html and the regression test files."""

from __future__ import annotations

import argparse
import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teeio_conformance.reports import html, junit, text, writer
from teeio_conformance.reports.model import Report, ReportInputError, Status, load_report_dir

from . import failure_record, sample_report_dir, verdicts, write_json

SUMMARY = re.compile(r"^\d+ passed, \d+ failed, \d+ not exercised$")
FAILURE_NAME = "conformance_test_full_stack.py__test_full_stack_lifecycle_tdx_"


@pytest.fixture
def written(tmp_path):
    report = load_report_dir(sample_report_dir(tmp_path))
    paths = writer.write_all(report, tmp_path)
    return tmp_path, report, paths


def test_all_files_are_written(written):
    root, _, paths = written
    names = {p.relative_to(root).as_posix() for p in paths}
    assert names == {
        "report.json",
        "junit.xml",
        "report.txt",
        "report.html",
        f"failures/{writer.replay_test_filename(FAILURE_NAME)}",
    }
    assert all(p.stat().st_size > 0 for p in paths)


# ---------------------------------------------------------------------------- report.json


def test_report_json_validates_against_the_shipped_schema(written):
    root, report, _ = written
    data = writer.read_report_json(root / "report.json")  # raises if it does not validate
    assert next(iter(data)) == "run_info"  # wptreport order: run_info first
    assert data["run_info"]["sut"] == report.run.sut
    tests = [r["test"] for r in data["results"]]
    assert tests == ["/teeio/tdx", "/teeio/cca"]
    tdx = data["results"][0]
    assert tdx["status"] == "OK"
    by_name = {s["name"]: s for s in tdx["subtests"]}
    assert by_name["FLOW-05"]["status"] == "FAIL" and by_name["FLOW-05"]["expected"] == "PASS"
    assert "guest unbind destroyed vdevice 5" in by_name["FLOW-05"]["message"]
    assert by_name["FLOW-01"]["status"] == "PASS"
    assert by_name["FLOW-02"]["status"] == "NOTRUN"
    assert "FLOW-08" not in by_name  # a CCA rule: no subtest under tdx
    assert data["teeio"]["failures"][0]["name"] == FAILURE_NAME


def test_report_json_round_trips_to_the_same_report(written):
    root, report, _ = written
    data = writer.read_report_json(root / "report.json")
    again = Report.from_json(data["run_info"], data["teeio"])
    assert again.run == report.run
    assert [v.to_json() for v in again.verdicts] == [v.to_json() for v in report.verdicts]
    assert [f.to_json() for f in again.failures] == [f.to_json() for f in report.failures]


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda d: d["results"][0]["subtests"][0].update(status="MAYBE"), "/results/0/subtests/0/status"),
        (lambda d: d.pop("teeio"), "/"),
        (
            lambda d: d["teeio"]["rules"][0]["profiles"]["tdx"].update(checked=-1),
            "/teeio/rules/0/profiles/tdx/checked",
        ),
        (lambda d: d["run_info"].update(product="wpt"), "/run_info/product"),
    ],
)
def test_the_schema_rejects_a_tampered_report(written, mutate, where):
    root, _, _ = written
    data = json.loads((root / "report.json").read_text())
    mutate(data)
    (root / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ReportInputError, match="does not match the teeio-conformance report schema") as info:
        writer.read_report_json(root / "bad.json")
    assert f"at {where}:" in str(info.value)


def test_a_hang_makes_the_profile_result_a_timeout(tmp_path):
    write_json(tmp_path / "verdicts-main.json", verdicts({"FLOW-05": 1}, {"FLOW-05": 1}))
    write_json(tmp_path / "failures" / "hang.json", failure_record(rule_id="SUT-HANG", message="no return in 5 s"))
    data = writer.report_json(load_report_dir(tmp_path))
    writer.validate_report_json(data)
    assert data["results"][0]["status"] == "TIMEOUT" and "no return in 5 s" in data["results"][0]["message"]


# ---------------------------------------------------------------------------- junit.xml


def test_junit_parses_and_names_testcases_by_rule_id(written):
    root, report, _ = written
    tree = ET.parse(root / "junit.xml")
    suites = tree.getroot().findall("testsuite")
    assert [s.get("name") for s in suites] == ["teeio.tdx", "teeio.cca"]
    tdx = suites[0]
    cases = {c.attrib["name"].split(" ")[0]: c for c in tdx.findall("testcase")}
    flow05 = cases["FLOW-05"]
    assert flow05.get("classname") == "teeio.tdx"
    assert flow05.get("name") == "FLOW-05 guest unbind leaves the vdevice until the VM stops"
    failure = flow05.find("failure")
    assert failure is not None and failure.get("type") == "FLOW-05"
    assert "guest unbind destroyed vdevice 5" in failure.attrib["message"]
    body = failure.text or ""
    assert "state.guest(s=slots_0, verb='unbind')" in body  # the shrunk program
    assert f"teeio-conformance replay {root}/failures/{FAILURE_NAME}.json --sut" in body
    assert cases["FLOW-02"].find("skipped") is not None
    counts = report.counts()
    root_el = tree.getroot()
    assert int(root_el.attrib["tests"]) == sum(counts.values())
    assert int(root_el.attrib["failures"]) == counts[Status.FAIL]
    assert int(root_el.attrib["skipped"]) == counts[Status.NOT_EXERCISED]
    assert int(tdx.attrib["tests"]) == len(cases)


def test_junit_survives_control_characters_in_a_sut_message(tmp_path):
    write_json(tmp_path / "verdicts-main.json", verdicts({"FLOW-05": 1}, {"FLOW-05": 1}))
    write_json(tmp_path / "failures" / "x.json", failure_record(message="bad \x00\x07 bytes ]]> <&>"))
    doc = junit.render(load_report_dir(tmp_path))
    failure = ET.fromstring(doc).find(".//failure")
    assert failure is not None and "bad \ufffd\ufffd bytes ]]> <&>" in failure.attrib["message"]


# ---------------------------------------------------------------------------- report.txt


def test_text_log_has_a_line_per_rule_and_a_summary(written):
    root, report, _ = written
    lines = (root / "report.txt").read_text(encoding="utf-8").splitlines()
    assert any(line.startswith("[FAIL]") and " FLOW-05 " in f" {line[16:]}" for line in lines)
    assert any(re.match(r"\[PASS\]\s+FLOW-01 ", line) for line in lines)
    assert any(re.match(r"\[NOT EXERCISED\]\s*FLOW-02 ", line) for line in lines)
    assert SUMMARY.match(lines[-1]) and lines[-1] == report.summary_line()
    assert f"replay: teeio-conformance replay {root}/failures/{FAILURE_NAME}.json" in "\n".join(lines)
    assert "== profile tdx ==" in lines and "== profile cca ==" in lines


# ---------------------------------------------------------------------------- report.html


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_html_is_self_contained_with_grid_and_swimlane(written):
    root, report, _ = written
    page = (root / "report.html").read_text(encoding="utf-8")
    parser = _Tags()
    parser.feed(page)
    tags = parser.tags
    assert not [t for t, _ in tags if t in ("script", "link", "img", "iframe")]
    external = [a for _, a in tags for k in ("src", "href") if (a.get(k) or "").startswith(("http:", "https:", "//"))]
    assert external == []
    assert ("table", {"class": "grid", "id": "summary-grid"}) in tags
    cells = [a for t, a in tags if t == "td" and "cell" in (a.get("class") or "")]
    assert {a["data-status"] for a in cells} >= {"pass", "fail", "notex", "na"}
    assert sum(1 for a in cells if a["data-status"] == "fail") == report.counts()[Status.FAIL]
    assert any(t == "section" and a.get("id") == f"failure-{FAILURE_NAME}" for t, a in tags)
    rows = [a for t, a in tags if t == "tr" and "data-seq" in a]
    assert [r["data-seq"] for r in rows] == [str(e["seq"]) for e in failure_record()["trace"]]
    marked = [r for r in rows if "violating " in (r.get("class") or "") + " "]
    assert [r["data-seq"] for r in marked] == ["3"]
    assert '<pre class="chart">' in page and "disconnect" in page
    assert f"teeio-conformance replay {root}/failures/{FAILURE_NAME}.json --sut" in page
    assert "flow step 39, flow corr. 5" in page  # the rule's source


def test_html_escapes_what_the_sut_says(tmp_path):
    write_json(tmp_path / "verdicts-main.json", verdicts({"FLOW-05": 1}, {"FLOW-05": 1}))
    write_json(tmp_path / "failures" / "x.json", failure_record(message="<script>alert(1)</script>"))
    page = html.render(load_report_dir(tmp_path))
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


# ---------------------------------------------------------------------------- replay test files


def test_each_failure_gets_a_pytest_replay_file(written):
    root, _, _ = written
    name = writer.replay_test_filename(FAILURE_NAME)
    assert name.startswith("test_") and name[:-3].isidentifier()  # pytest imports it as it is
    source = (root / "failures" / name).read_text(encoding="utf-8")
    compile(source, name, "exec")
    assert "assert not result.still_fails" in source  # a regression test: fails while the bug is there
    assert "from teeio_conformance.conformance.replay import replay" in source and "RULE_ID = 'FLOW-05'" in source
    assert f"with_name('{FAILURE_NAME}.json')" in source


def test_replay_file_source_is_valid_for_hostile_names():
    record = failure_record(test='a"""b\\', message='x"""\\y', rule_title='t\n"""')
    from teeio_conformance.reports.model import Failure

    f = Failure.from_json(record, name="we ird-name.1", origin="x")
    compile(writer.replay_test_source(f), "test_x.py", "exec")


# ---------------------------------------------------------------------------- the CLI entry point


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    writer.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_report_command_writes_and_summarises(tmp_path, capsys):
    sample_report_dir(tmp_path)
    assert writer.run(_args("--report-dir", str(tmp_path))) == 0
    out = capsys.readouterr().out
    assert "wrote 5 files" in out and not re.search(r"\d+ passed, \d+ failed", out)
    assert (tmp_path / "report.html").exists()


def test_report_command_on_a_bad_directory_is_one_line(tmp_path, capsys):
    write_json(tmp_path / "verdicts-main.json", {"foo": 1})
    assert writer.run(_args("--report-dir", str(tmp_path))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "verdicts-main.json" in err and "Traceback" not in err


# ---------------------------------------------------------------------------- any input, valid output

messages = st.text(st.characters(codec="utf-8"), max_size=40)
counts = st.dictionaries(
    st.sampled_from(["FLOW-05", "FLOW-07", "DMA-06", "ERR-01", "XTRA-9"]), st.integers(0, 5), max_size=5
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    checked=counts,
    exercised=counts,
    failed=counts,
    message=messages,
    title=messages,
    profile=st.sampled_from(["tdx", "sev-tio", "cca", None]),
    rule_id=st.sampled_from(["FLOW-05", "SUT-HANG", "SUT-BROKEN", "NEW-77"]),
)
def test_any_valid_input_gives_valid_outputs(
    tmp_path_factory, checked, exercised, failed, message, title, profile, rule_id
):
    """Whatever counts and SUT messages arrive: the JSON validates, the XML parses, HTML and text render."""
    root = tmp_path_factory.mktemp("any")
    write_json(
        root / "verdicts-main.json",
        verdicts(
            checked,
            exercised,
            failed,
            profiles=("tdx", "sev-tio", "cca"),
            by_profile={"tdx": {"checked": checked, "exercised": exercised, "failed": failed}},
        ),
    )
    write_json(
        root / "failures" / "f.json",
        failure_record(message=message, rule_title=title, profile=profile, rule_id=rule_id),
    )
    report = load_report_dir(root)
    writer.write_all(report, root)
    writer.read_report_json(root / "report.json")
    ET.parse(root / "junit.xml")
    assert SUMMARY.match(text.render(report).splitlines()[-1])
    assert "summary-grid" in (root / "report.html").read_text(encoding="utf-8")


def test_the_replay_file_as_a_script_reports_a_bad_record_in_one_line(tmp_path):
    """``python failures/test_<name>.py`` on a broken record: status 2 and one line, like the CLI."""
    import subprocess
    import sys

    from teeio_conformance.reports.model import Failure

    f = Failure.from_json(failure_record(), name="broken", origin="x")
    (tmp_path / "test_broken.py").write_text(writer.replay_test_source(f), encoding="utf-8")
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    from tests.child import budget

    argv = [sys.executable, "test_broken.py"]
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=budget("small"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "not valid JSON" in proc.stderr


def test_the_same_failure_under_several_profiles_is_shown_in_full_once(tmp_path):
    write_json(tmp_path / "verdicts-main.json", verdicts({}, {}, profiles=("tdx", "cca")))
    for profile in ("tdx", "cca"):
        test = f"test_full_stack.py::test_full_stack_lifecycle[{profile}]"
        record = failure_record(profile=profile, test=test, machine=test.split("::")[1])
        write_json(tmp_path / "failures" / f"{profile}.json", record)
    write_json(tmp_path / "failures" / "other.json", failure_record(profile="tdx", steps=[{"method": "first_vm"}]))
    report = load_report_dir(tmp_path)
    log = text.render(report)
    assert log.count("the same failure (rule and shrunk steps) as") == 1 and log.count("shrunk program:") == 2
    page = html.render(report)
    assert page.count('class="same"') == 1 and page.count('class="message"') == 2
