"""``junit.xml``: one testsuite per profile, one testcase per rule, for CI dashboards.

Testcases are named by rule ID first (classname ``teeio.<profile>``, name ``<RULE-ID> <title>``), so a
CI page lists "FLOW-05 guest unbind leaves the vdevice until the VM stops" rather than a pytest node.
A broken rule is a ``<failure>`` carrying the message, the rule's source, the shrunk program and the
replay command; a harness verdict (SUT-HANG, SUT-BROKEN, SUT-ERROR) is an ``<error>``; a rule the run
never exercised is ``<skipped>`` -- the closest JUnit has to "not exercised".

Built with :mod:`xml.etree.ElementTree` (it escapes); characters XML 1.0 cannot carry at all (NUL and
most C0 controls, which a SUT's error message may contain) are replaced first.
"""

from __future__ import annotations

import re
import socket
import xml.etree.ElementTree as ET

from teeio_conformance.reports.model import Failure, Report, RuleVerdict, Status

__all__ = ["render", "testcase_name"]

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _x(text: object) -> str:
    """Text XML 1.0 can hold: forbidden characters become U+FFFD."""
    return _NOT_XML.sub("\ufffd", str(text))


def testcase_name(verdict: RuleVerdict) -> str:
    return _x(f"{verdict.rule_id} {verdict.title}")


def failure_text(failure: Failure, *, source: str, replay: str | None = None) -> str:
    """The body of a ``<failure>``: what broke, where the promise comes from, and how to reproduce it."""
    lines = [
        f"[{failure.rule_id}] {failure.rule_title}",
        f"broken by step {failure.action!r}: {failure.message}",
        f"source: {source or failure.rule_source}",
        f"test: {failure.test} (machine {failure.machine}, profile {failure.profile})",
        "",
        "shrunk program:",
    ]
    lines += [f"    {line}" for line in failure.program_lines()]
    lines += ["", f"replay: {replay or failure.replay_command()}", f"record: {failure.file}"]
    return "\n".join(lines)


def render(report: Report) -> str:
    """The whole ``junit.xml`` document as text."""
    c = report.counts()
    root = ET.Element(
        "testsuites",
        {
            "name": "teeio-conformance",
            "tests": str(sum(c.values())),
            "failures": "0",
            "errors": "0",
            "skipped": str(c[Status.NOT_EXERCISED] + c[Status.NOT_APPLICABLE]),
            "time": _seconds(sum(report.durations.get(c, 0.0) for c in report.columns) or _wall(report)),
        },
    )
    n_fail = n_err = 0
    hostname = socket.gethostname()
    for column in report.columns:
        suite = ET.SubElement(
            root,
            "testsuite",
            {"name": f"teeio.{column}", "hostname": _x(hostname), "time": _seconds(report.durations.get(column))},
        )
        if report.run.finished:
            suite.set("timestamp", report.run.finished)
        props = ET.SubElement(suite, "properties")
        for key, value in (
            ("sut", report.run.sut),
            ("profile", column),
            ("hypothesis", report.run.hypothesis),
            ("settings_profile", report.run.settings_profile),
            ("seed", report.run.seed),
            ("steps", str(report.run.steps)),
        ):
            if value:
                ET.SubElement(props, "property", {"name": key, "value": _x(value)})
        tests = fails = errors = skipped = 0
        for v in report.verdicts:
            pv = v.by_profile.get(column)
            if pv is None:
                continue
            tests += 1
            # no "time": every rule is checked at every step, so no rule has a time of its own
            case = ET.SubElement(suite, "testcase", {"classname": f"teeio.{column}", "name": testcase_name(v)})
            message = _x(report.explain(v, column))
            if pv.status is Status.FAIL:
                harness = v.area == "HARNESS"
                errors += harness
                fails += not harness
                records = report.failures_for(v.rule_id, column)
                body = "\n\n".join(
                    failure_text(f, source=v.source, replay=report.replay_command(f)) for f in records
                ) or (f"[{v.rule_id}] {v.title}\nsource: {v.source}\n{message}")
                el = ET.SubElement(case, "error" if harness else "failure", {"message": message, "type": v.rule_id})
                el.text = _x(body)
            elif pv.status in (Status.NOT_EXERCISED, Status.NOT_APPLICABLE):
                skipped += 1  # JUnit has one "did not run"; the message says which (type: the verdict)
                ET.SubElement(case, "skipped", {"message": message, "type": pv.status.value})
            else:
                out = ET.SubElement(case, "system-out")
                out.text = _x(f"{message}\nsource: {v.source}")
        suite.attrib.update(
            {"tests": str(tests), "failures": str(fails), "errors": str(errors), "skipped": str(skipped)}
        )
        n_fail += fails
        n_err += errors
    n_err += _outcome_suite(root, report, hostname)
    root.set("tests", str(sum(c.values()) + (0 if report.outcome.clean else max(1, len(report.outcome.events)))))
    root.set("failures", str(n_fail))
    root.set("errors", str(n_err))
    ET.indent(root, space=" ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _wall(report: Report) -> float | None:
    """The run's wall-clock seconds, from its start and finish stamps."""
    import datetime as dt

    try:
        start = dt.datetime.fromisoformat(report.run.started or "")
        end = dt.datetime.fromisoformat(report.run.finished or "")
    except ValueError:
        return None
    return max((end - start).total_seconds(), 0.0)


def _seconds(value: float | None) -> str:
    return "0" if value is None else f"{value:.3f}"


def _outcome_suite(root: ET.Element, report: Report, hostname: str) -> int:
    """A run that did not end cleanly is a ``teeio.run`` suite of errors, one per event; the count."""
    outcome = report.outcome
    if outcome.clean:
        return 0
    suite = ET.SubElement(root, "testsuite", {"name": "teeio.run", "hostname": _x(hostname), "time": "0"})
    events = outcome.events or ()
    cases = [(e.kind, e.test, e.message) for e in events] or [(outcome.status.value, None, outcome.headline())]
    for kind, test, message in cases:
        case = ET.SubElement(suite, "testcase", {"classname": "teeio.run", "name": _x(f"{kind} {test or ''}".strip())})
        el = ET.SubElement(case, "error", {"message": _x(message), "type": _x(kind)})
        el.text = _x(f"{outcome.headline()}\n{message}")
    suite.attrib.update({"tests": str(len(cases)), "failures": "0", "errors": str(len(cases)), "skipped": "0"})
    return len(cases)
