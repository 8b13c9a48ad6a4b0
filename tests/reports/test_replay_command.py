"""The replay command every report prints is shell-quoted and absolute: pasted into a shell from any
directory it runs the record it names, with the SUT or responder as recorded (issue 17, item 4)."""

from __future__ import annotations

import html as html_mod
import re
import shlex
import xml.etree.ElementTree as ET

from teeio_conformance.reports import writer
from teeio_conformance.reports.model import load_report_dir

from . import failure_record, verdicts, write_json

NAME = "odd name; rm -rf ~"
SPAWN = "serve-device --port 0 --config 'my device.json' | tee $HOME/x"


def test_every_format_prints_a_quoted_absolute_command(tmp_path):
    root = tmp_path / "report dir with spaces"
    write_json(root / "verdicts-main.json", verdicts({"FLOW-05": 1}, {"FLOW-05": 1}, {"FLOW-05": 1}))
    write_json(root / "failures" / f"{NAME}.json", failure_record(sut="pkg.mod:make stack"))
    write_json(
        root / "failures" / "device.json",
        failure_record(
            machine="device",
            test="conformance/test_device.py::test_device_tdisp_and_ide_km[tdx]",
            rule_id="TDISP-03",
            device={"spawn": SPAWN},
        ),
    )
    report = load_report_dir(root)
    writer.write_all(report, root)
    by_name = {f.name: report.replay_command(f) for f in report.failures}
    sut_cmd = shlex.split(by_name[NAME])
    assert sut_cmd == [
        "teeio-conformance",
        "replay",
        str(root / "failures" / f"{NAME}.json"),
        "--sut",
        "pkg.mod:make stack",
    ]
    dev_cmd = shlex.split(by_name["device"])
    assert dev_cmd == ["teeio-conformance", "replay", str(root / "failures" / "device.json"), "--device-spawn", SPAWN]
    text = (root / "report.txt").read_text(encoding="utf-8")
    html = (root / "report.html").read_text(encoding="utf-8")
    junit = "\n".join(el.text or "" for el in ET.parse(root / "junit.xml").iter() if el.tag in ("failure", "error"))
    in_html = {html_mod.unescape(m) for m in re.findall(r'<pre class="replay">([^<]*)</pre>', html)}
    assert in_html == set(by_name.values())
    for command in by_name.values():
        assert f"replay: {command}" in text
        assert f"replay: {command}" in junit
