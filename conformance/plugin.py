"""The pytest plugin (entry point ``teeio_conformance``): options, settings profiles, SUT, verdicts.

Options:
  --sut MODULE:FACTORY     the system under test (default: the reference implementation)
  --tdisp-profile P        tdx | sev-tio | cca | all (default all)
  --report-dir DIR         write verdicts and failures there (JSON, JUnit XML, text, HTML)
  --step-timeout SECONDS   per-step time limit for the SUT (default 5)
  --device-spawn CMD       the device machine drives a responder CMD starts, fresh for every example
  --device-at HOST:PORT    ... or one already listening there (with --device-functions ID,...)
"""

from __future__ import annotations

import datetime
import glob
import json
import os
from typing import TYPE_CHECKING, Any

import hypothesis
import pytest

from teeio_conformance.conformance import settings as _settings
from teeio_conformance.conformance.sut import DEFAULT_SUT, SutLoadError, load_factory

if TYPE_CHECKING:
    from teeio_conformance.conformance.remote import DeviceTarget

_settings.register()

PROFILE_NAMES = ("tdx", "sev-tio", "cca")


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("teeio-conformance")
    g.addoption("--sut", default=DEFAULT_SUT, help="module:factory of the system under test")
    g.addoption("--tdisp-profile", default="all", choices=[*PROFILE_NAMES, "all"], help="platform profile(s) to test")
    g.addoption("--report-dir", default=None, help="directory for verdict reports")
    g.addoption("--step-timeout", type=float, default=5.0, help="per-step time limit for the SUT, seconds")
    g.addoption(
        "--device-spawn",
        default=None,
        metavar="CMD",
        help="run the device machine against a TDISP/IDE_KM responder over the spdm-emu socket, started "
        "by CMD for every example (it prints a JSON ready line with host, port, function_ids, as "
        "'teeio-conformance serve-device --port 0' does)",
    )
    g.addoption(
        "--device-at",
        default=None,
        metavar="HOST:PORT",
        help="run the device machine against a responder already listening at HOST:PORT (spdm-emu "
        "socket); it must be at power-on state for every example",
    )
    g.addoption(
        "--device-functions",
        default=None,
        metavar="ID,...",
        help="with --device-at: the INTERFACE_ID FUNCTION_IDs of its TDIs, PF first "
        "(default: 0x3a00,0x3a01, those serve-device serves)",
    )
    g.addoption(
        "--watchdog-grace",
        type=float,
        default=None,
        metavar="SECONDS",
        help="end the run (writing the report and the record, marked hung) when a SUT call has not returned "
        "this long after its step limit (default: the step limit, at least 5 s)",
    )
    g.addoption(
        "--device-plaintext",
        action="store_true",
        default=False,
        help="with --device-spawn / --device-at: the responder has no SPDM secure sessions; TDISP and IDE_KM "
        "go in the clear, a connection per session (the session rules then prove nothing about sessions)",
    )
    g.addoption(
        "--minimize-seconds",
        type=float,
        default=20.0,
        help="after Hypothesis shrinks a failure, search this long for a shorter one breadth-first "
        "(teeio_conformance.conformance.explore) before writing its record; 0 turns it off",
    )


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def pytest_configure(config: pytest.Config) -> None:
    config._teeio_started = _now()  # type: ignore[attr-defined]
    config._teeio_outcome = {"status": "complete", "events": [], "durations": {}}  # type: ignore[attr-defined]
    config.addinivalue_line("markers", "requires(capability): the test needs an optional SUT capability")
    try:
        config._teeio_factory = load_factory(config.getoption("--sut"))  # type: ignore[attr-defined]
    except SutLoadError as exc:
        _not_started(config, str(exc))
        raise pytest.UsageError(str(exc)) from exc
    try:
        config._teeio_device = _device_target(config)  # type: ignore[attr-defined]
    except pytest.UsageError as exc:
        _not_started(config, str(exc))
        raise
    _arm_watchdog(config)


def _device_target(config: pytest.Config) -> DeviceTarget | None:
    """The responder named by the --device-* options; None (the in-process device) without them.

    Imported only when asked for: what a run imports of the project feeds Hypothesis' pool of constants,
    so the plain run's derandomized search stays what it was."""
    given = [config.getoption(o) for o in ("--device-spawn", "--device-at", "--device-functions")]
    plaintext = bool(config.getoption("--device-plaintext"))
    if all(v is None for v in given) and not plaintext:
        return None
    from teeio_conformance.conformance.remote import DeviceTarget
    from teeio_conformance.contract.errors import InvalidArgument

    try:
        return DeviceTarget.from_options(*given, plaintext=plaintext)
    except InvalidArgument as exc:
        raise pytest.UsageError(str(exc)) from exc


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """One report directory per run: the controller (or a run without xdist) removes an earlier run's
    verdict and failure files first. They would otherwise be merged into this run's report -- e.g. a
    serial run's ``verdicts-main.json`` next to a later ``-n 2`` run's ``verdicts-gw*.json`` double counts."""
    report_dir = session.config.getoption("--report-dir")
    if not report_dir or hasattr(session.config, "workerinput"):  # xdist workers start after the controller
        return
    stale = [
        *glob.glob(os.path.join(report_dir, "verdicts-*.json")),
        *glob.glob(os.path.join(report_dir, "failures", "*.json")),
        *glob.glob(os.path.join(report_dir, "coverage.json")),
        *glob.glob(os.path.join(report_dir, "reach.json")),
    ]
    for path in stale:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = [
        f"teeio-conformance: SUT {config.getoption('--sut')}, TDISP profile(s) "
        f"{config.getoption('--tdisp-profile')}, hypothesis {hypothesis.__version__} "
        f"(settings profile {hypothesis.settings._current_profile})"
    ]
    target: DeviceTarget | None = getattr(config, "_teeio_device", None)
    if target is not None:
        lines.append(f"teeio-conformance: device machine against a {target.name}")
    return lines


def selected_profiles(config: pytest.Config) -> list[str]:
    p = config.getoption("--tdisp-profile")
    return list(PROFILE_NAMES) if p == "all" else [p]


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Liveness first (issue 14): the corrected lifecycle on the SUT runs before any random search, so a SUT
    that cannot do the lifecycle is told so at once (and ``-x`` stops there)."""
    items.sort(key=lambda item: getattr(item, "originalname", "") != "test_lifecycle_completes")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "tdisp_profile" in metafunc.fixturenames:
        metafunc.parametrize("tdisp_profile", selected_profiles(metafunc.config))


@pytest.fixture
def sut_factory(request: pytest.FixtureRequest) -> Any:
    return request.config._teeio_factory  # type: ignore[attr-defined]


@pytest.fixture
def step_timeout(request: pytest.FixtureRequest) -> float:
    return float(request.config.getoption("--step-timeout"))


@pytest.fixture
def device_target(request: pytest.FixtureRequest) -> DeviceTarget | None:
    """The responder the device machine drives over the socket; None: the in-process device."""
    return request.config._teeio_device  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write this process's verdict counts; the report writer merges workers' files."""
    outcome = _outcome(session.config)
    if int(exitstatus) == int(pytest.ExitCode.INTERRUPTED) and outcome["status"] == "complete":
        _run_event(session.config, "interrupted", "the run was interrupted before it finished")
    _judge_coverage(session)
    _write_verdicts(session.config)


def _write_verdicts(config: pytest.Config) -> None:
    """This process's ``verdicts-<worker>.json``: counts, run info, and how the run ended (``outcome``)."""
    from teeio_conformance.conformance.harness import VERDICTS

    report_dir = config.getoption("--report-dir")
    outcome = _outcome(config)
    if not report_dir or not (VERDICTS.checked or outcome["durations"] or outcome["events"]):
        return
    os.makedirs(report_dir, exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    data = {
        "checked": VERDICTS.checked,
        "exercised": VERDICTS.exercised,
        "failed": VERDICTS.failed,
        "steps": VERDICTS.steps,
        "sut": _sut_name(config),
        "profiles": selected_profiles(config),
        "by_profile": VERDICTS.by_profile,
        "run": {
            "settings_profile": hypothesis.settings._current_profile,
            "hypothesis": hypothesis.__version__,
            "seed": _seed(config),
            "started": getattr(config, "_teeio_started", None),
            "finished": _now(),
        },
        "outcome": {"status": outcome["status"], "events": outcome["events"]},
        "durations": outcome["durations"],
    }
    with open(os.path.join(report_dir, f"verdicts-{worker}.json"), "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)


def _sut_name(config: pytest.Config) -> str:
    """The SUT as the report names it; a device machine driven over the socket names its responder too."""
    sut = str(config.getoption("--sut"))
    target: DeviceTarget | None = getattr(config, "_teeio_device", None)
    return sut if target is None else f"{sut}; device machine: {target.name}"


def _seed(config: pytest.Config) -> str | None:
    """What makes this run repeatable: "derandomized" (e.g. profile ``ci``; Hypothesis then ignores any
    seed), else ``--hypothesis-seed``, else nothing (a random run)."""
    if getattr(hypothesis.settings.default, "derandomize", False):
        return "derandomized"
    seed = config.getoption("hypothesis_seed", None)
    return None if seed is None else str(seed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    _count_duration(item, report)
    if call.when == "call" and call.excinfo is not None and item.config.getoption("--report-dir"):
        try:
            exc_value = call.excinfo.value
            found = exc_value.exceptions if isinstance(exc_value, BaseExceptionGroup) else (exc_value,)
            for n, sub in enumerate(found):
                _write_failure(item, sub, n)
        except OSError as exc:  # a full disk must not hide the test's own failure
            report.sections.append(("teeio-conformance", f"could not write the failure record: {exc}"))
    if report.failed and call.excinfo is not None:
        _unrecorded_failure(item, call)
    return report


# ---------------------------------------------------------------------------- how the run ended (reports/outcome.py)


def _outcome(config: pytest.Config) -> dict[str, Any]:
    found: dict[str, Any] | None = getattr(config, "_teeio_outcome", None)
    if found is None:
        found = {"status": "complete", "events": [], "durations": {}}
        config._teeio_outcome = found  # type: ignore[attr-defined]
    return found


_GRAVITY = ("complete", "hung", "interrupted", "internal-error", "not-started")  # as reports.outcome.RunStatus


def _run_event(config: pytest.Config, kind: str, message: str, test: str | None = None) -> None:
    """Note what happened to the run; ``kind`` (a RunStatus value) raises its status if graver."""
    outcome = _outcome(config)
    outcome["events"].append({"kind": kind, "test": test, "message": message[:2000]})
    if kind in _GRAVITY and _GRAVITY.index(kind) > _GRAVITY.index(outcome["status"]):
        outcome["status"] = kind


def _count_duration(item: pytest.Item, report: pytest.TestReport) -> None:
    """Seconds per profile, for JUnit's suite times."""
    callspec = getattr(item, "callspec", None)
    column = str(callspec.params.get("tdisp_profile", "all")) if callspec else "all"
    durations = _outcome(item.config)["durations"]
    durations[column] = durations.get(column, 0.0) + float(getattr(report, "duration", 0.0) or 0.0)


def _unrecorded_failure(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    """A test that failed without a SUT failure record -- the suite's own error, not the SUT's -- is an
    internal error of the run (a failing SUT leaves a record; a KeyboardInterrupt is the interrupt)."""
    exc = call.excinfo.value if call.excinfo is not None else None
    if exc is None or isinstance(exc, KeyboardInterrupt):
        return
    found = exc.exceptions if isinstance(exc, BaseExceptionGroup) else (exc,)
    if all(hasattr(e, "teeio_steps") for e in found):
        return
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    _run_event(item.config, "internal-error", f"{call.when}: {text[0] if text else type(exc).__name__}", item.nodeid)


def pytest_keyboard_interrupt(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    """Ctrl-C: the run is marked interrupted (sessionfinish then writes what it has)."""
    if _CONFIG:
        item = getattr(_CONFIG[0], "_teeio_item", None)
        where = f" while {item.nodeid} ran" if item is not None else ""
        _run_event(_CONFIG[0], "interrupted", f"interrupted ({excinfo.typename}){where}")


def pytest_internalerror(excrepr: Any, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    if _CONFIG:
        _run_event(_CONFIG[0], "internal-error", f"pytest internal error: {excinfo.typename}: {excinfo.value}")
        _write_verdicts(_CONFIG[0])


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed and _CONFIG:
        text = str(report.longrepr).strip().splitlines()
        _run_event(_CONFIG[0], "internal-error", f"could not collect: {text[-1] if text else ''}", report.nodeid)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.config._teeio_item = item  # type: ignore[attr-defined]


_CONFIG: list[pytest.Config] = []  # hooks without a config argument (keyboard interrupt, internal error) use it


def _not_started(config: pytest.Config, why: str) -> None:
    """The run could not start: a report directory still gets a verdicts file saying why (and nothing of
    an earlier run's files, which sessionstart would have removed)."""
    report_dir = config.getoption("--report-dir", None)
    if not report_dir or hasattr(config, "workerinput"):
        return
    for path in glob.glob(os.path.join(report_dir, "verdicts-*.json")):
        os.remove(path)
    for path in glob.glob(os.path.join(report_dir, "failures", "*.json")):
        os.remove(path)
    _run_event(config, "not-started", f"the run could not start: {why}")
    try:
        _write_verdicts(config)
    except OSError:
        pass


def _arm_watchdog(config: pytest.Config) -> None:
    """The harness' hard watchdog writes this run's record and report before it ends a hung run."""
    import functools

    from teeio_conformance.conformance.harness import WATCHDOG

    _CONFIG[:] = [config]
    WATCHDOG.grace = config.getoption("--watchdog-grace")
    WATCHDOG.on_hung = functools.partial(_on_hung, config)


def _on_hung(config: pytest.Config, info: dict[str, Any]) -> None:
    """Called from the watchdog thread while the SUT still runs: write the SUT-HANG record of the steps so
    far, this process's verdicts marked hung, and (outside xdist workers) the whole report."""
    from teeio_conformance.conformance.harness import SutHang

    item: pytest.Item | None = getattr(config, "_teeio_item", None)
    _run_event(config, "hung", info["message"], item.nodeid if item is not None else None)
    report_dir = config.getoption("--report-dir")
    if not report_dir:
        return
    machine = info.get("machine")
    exc = SutHang(info["message"])
    exc.teeio_steps = list(getattr(machine, "replay_log", None) or [])  # type: ignore[attr-defined]
    exc.teeio_mark = None  # type: ignore[attr-defined]
    exc.teeio_num_vfs = getattr(getattr(machine, "config", None), "num_vfs", None)  # type: ignore[attr-defined]
    try:
        exc.teeio_trace = machine.stack.trace.to_json()  # type: ignore[attr-defined, union-attr]
    except Exception:
        exc.teeio_trace = []  # type: ignore[attr-defined]
    if item is not None:
        _write_failure(item, exc, minimize=False)
    _write_verdicts(config)
    if not hasattr(config, "workerinput"):
        from teeio_conformance.reports import writer
        from teeio_conformance.reports.model import load_report_dir

        writer.write_all(load_report_dir(report_dir), report_dir)


def _write_failure(item: pytest.Item, exc: BaseException, n: int = 0, *, minimize: bool = True) -> None:
    from teeio_conformance.conformance.rules import RuleViolation

    steps = getattr(exc, "teeio_steps", None)
    if steps is None:
        return
    report_dir = item.config.getoption("--report-dir")
    kind = {
        "test_full_stack_lifecycle": "full_stack",
        "test_host_object_lifetimes": "host_lifetimes",
        "test_device_tdisp_and_ide_km": "device",
        "test_lifecycle_completes": "full_stack",
    }.get(getattr(item, "originalname", ""))
    callspec = getattr(item, "callspec", None)
    profile = callspec.params.get("tdisp_profile") if callspec else None
    shrunk_steps = len(steps)
    shorter = _minimize(item, exc, kind, profile) if minimize else None
    if shorter is not None:
        exc = shorter
        steps = exc.teeio_steps  # type: ignore[attr-defined]
    if isinstance(exc, RuleViolation):
        rule_id, title, source, message, action = (exc.rule.id, exc.rule.title, exc.rule.source, exc.detail, exc.action)
    else:
        from teeio_conformance.conformance.harness import harness_rule_id

        rule_id = harness_rule_id(exc)
        title, source, message, action = type(exc).__name__, "harness", str(exc), steps[-1]["method"] if steps else ""
    notes = [n for n in getattr(exc, "__notes__", []) if "invariant" not in n]
    if shorter is not None:  # Hypothesis' program is of the longer sequence: show the one recorded
        notes = [f"state.{st['method']}({', '.join(f'{k}={v!r}' for k, v in st['kwargs'].items())})" for st in steps]
    record = {
        "format": "teeio-failure/1",
        "test": item.nodeid,
        "machine": getattr(item, "teeio_machine", item.name),
        "profile": profile,
        "sut": item.config.getoption("--sut"),
        "rule_id": rule_id,
        "rule_title": title,
        "machine_kind": kind,
        "shrunk_by": "hypothesis+explore" if shorter is not None else "hypothesis",
        "hypothesis_steps": shrunk_steps,
        "rule_source": source,
        "message": message,
        "action": action,
        "steps": steps,
        "program": notes,
        "trace": getattr(exc, "teeio_trace", []),
        "violating_seq": getattr(exc, "teeio_mark", None),
        "hypothesis": hypothesis.__version__,
        "seed": None,
        "num_vfs": getattr(exc, "teeio_num_vfs", None),
        "device": _device_spec(item) if kind == "device" else None,
    }
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in item.nodeid)[-110:] + (f"-{n}" if n else "")
    os.makedirs(os.path.join(report_dir, "failures"), exist_ok=True)
    with open(os.path.join(report_dir, "failures", f"{safe}.json"), "w", encoding="utf-8") as fh:
        json.dump(record, fh, indent=1, default=repr)
    _write_also_broken(report_dir, safe, record, exc)


def _write_also_broken(report_dir: str, safe: str, record: dict[str, Any], exc: BaseException) -> None:
    """One more record, on the same steps, for every other rule the failing step broke: each failing rule
    gets a reproducer (replay accepts a step that breaks the recorded rule among others)."""
    from teeio_conformance.conformance.rules import CATALOGUE

    titles = {r.id: r for r in CATALOGUE}
    for rule_id, message in list(getattr(exc, "teeio_broken", ()))[1:]:
        rule = titles.get(rule_id)
        extra = dict(
            record,
            rule_id=rule_id,
            rule_title=rule.title if rule else rule_id,
            rule_source=rule.source if rule else "",
            message=message,
        )
        name = f"{safe}-also-{rule_id}.json"
        with open(os.path.join(report_dir, "failures", name), "w", encoding="utf-8") as fh:
            json.dump(extra, fh, indent=1, default=repr)


def _device_spec(item: pytest.Item) -> Any:
    """The responder the device machine drove, as a failure record keeps it (None: in process)."""
    target: DeviceTarget | None = getattr(item.config, "_teeio_device", None)
    return None if target is None or target.spec is None else dict(target.spec)


def _minimize(item: pytest.Item, exc: BaseException, kind: str | None, profile: str | None) -> Exception | None:
    """A shorter failure by the same rule than Hypothesis shrank to, re-run so it carries its own steps and
    trace; None when none is found within ``--minimize-seconds`` (or the machine is not the suite's own).

    Hypothesis shrinks by local moves and can stop at a local minimum (a shallow bring-up plus ``advance``
    steps where one deeper bring-up would do); the breadth-first explorer tries every shorter sequence,
    shortest first, so the record an implementer gets is as short as the search could make it."""
    from teeio_conformance.conformance.explore import machine_class, rerun
    from teeio_conformance.conformance.mutation import minimize
    from teeio_conformance.conformance.replay import _classify
    from teeio_conformance.conformance.sut import load_factory

    budget = item.config.getoption("--minimize-seconds")
    steps = getattr(exc, "teeio_steps", None)
    if not budget or budget <= 0 or kind is None or profile is None or not steps:
        return None
    if kind == "device" and _device_spec(item) is not None:
        return None  # the explorer drives the in-process device; a responder elsewhere keeps Hypothesis' result
    try:
        rule_id = _classify(exc)[0]
        factory = None if kind == "device" else load_factory(item.config.getoption("--sut"))
        machine = machine_class(kind, factory=factory, profile=profile, timeout=item.config.getoption("--step-timeout"))
        found = minimize(machine, rule_id, list(steps), max_seconds=budget)
        if len(found) >= len(steps):
            return None
        again = rerun(machine, found)
    except Exception:  # the search is a nicety: the record of Hypothesis' shrunk failure is written anyway
        return None
    if again is None or _classify(again)[0] != rule_id or not hasattr(again, "teeio_steps"):
        return None
    return again


# ---------------------------------------------------------------------------- coverage is a verdict (issue 14)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember each catalogue test's outcome per profile (the controller sees its workers' reports too)."""
    if report.when != "call" and not (report.when == "setup" and report.outcome != "passed"):
        return
    name = report.nodeid.rsplit("::", 1)[-1]
    base, _, param = name.partition("[")
    outcomes = _COVERAGE.setdefault("outcomes", {})
    outcomes[(base, param.rstrip("]"))] = report.outcome


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist controller: add a worker's per-profile counts to the run's, for the coverage verdict."""
    counts = getattr(node, "workeroutput", {}).get("teeio_counts")
    if isinstance(counts, dict):
        _merge_counts(_COVERAGE.setdefault("counts", {}), counts)
    seen = _COVERAGE.setdefault("reach", {})
    for a, b, n in getattr(node, "workeroutput", {}).get("teeio_reach", []):
        seen[(a, b)] = seen.get((a, b), 0) + n


_COVERAGE: dict[str, Any] = {}


def _merge_counts(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for profile, keys in src.items():
        per = dst.setdefault(profile, {})
        for key, counts in keys.items():
            d = per.setdefault(key, {})
            for rule_id, n in counts.items():
                d[rule_id] = d.get(rule_id, 0) + n


def _judge_coverage(session: pytest.Session) -> None:
    """A MUST rule that applies and was never exercised fails the run (conformance/coverage.py): the exit
    status becomes 1, the terminal says which, and ``coverage.json`` lets the report show it."""
    from teeio_conformance.conformance.coverage import (
        COVERAGE_FILE,
        applicable_rules,
        coverage_failures,
        judged_profiles,
    )
    from teeio_conformance.conformance.harness import VERDICTS

    config = session.config
    from teeio_conformance.conformance import reach

    if hasattr(config, "workerinput"):  # an xdist worker hands its counts to the controller
        config.workeroutput["teeio_counts"] = VERDICTS.by_profile  # type: ignore[attr-defined]
        config.workeroutput["teeio_reach"] = [[a, b, n] for (a, b), n in reach.REACH.items()]  # type: ignore[attr-defined]
        return
    seen = _COVERAGE.setdefault("reach", {})
    for cell, n in reach.REACH.items():
        seen[cell] = seen.get(cell, 0) + n
    counts = _COVERAGE.setdefault("counts", {})
    _merge_counts(counts, VERDICTS.by_profile)
    profiles = selected_profiles(config)
    judged = judged_profiles(_COVERAGE.get("outcomes", {}), profiles)
    remote = getattr(config, "_teeio_device", None) is not None
    outcomes = _COVERAGE.get("outcomes", {})
    applicable = {
        p: applicable_rules(
            p, remote_device=remote, differential=outcomes.get(("test_noninterference", p)) in ("passed", "failed")
        )
        for p in judged
    }
    failures = coverage_failures(counts, applicable)
    config._teeio_coverage = (judged, failures)  # type: ignore[attr-defined]
    if failures and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    report_dir = config.getoption("--report-dir")
    if report_dir:
        os.makedirs(report_dir, exist_ok=True)
        data = {"judged": judged, "not_judged": [p for p in profiles if p not in judged], "uncovered": failures}
        with open(os.path.join(report_dir, COVERAGE_FILE), "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        if seen:
            matrix = {
                "visited": [[a, b, n] for (a, b), n in sorted(seen.items())],
                "unvisited": [list(c) for c in reach.unvisited(seen)],
                "unreachable": [[a, b, why] for (a, b), why in sorted(reach.UNREACHABLE.items())],
            }
            with open(os.path.join(report_dir, "reach.json"), "w", encoding="utf-8") as fh:
                json.dump(matrix, fh, indent=1)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    from teeio_conformance.conformance import reach
    from teeio_conformance.conformance.coverage import MACHINE_TESTS

    seen = _COVERAGE.get("reach")
    ran = {name for name, _ in _COVERAGE.get("outcomes", {})}
    if seen and ran & set(MACHINE_TESTS[1:]):  # a run of the catalogue's machines, not a unit test
        terminalreporter.section("teeio-conformance reach (operation x target state before the step)", sep="-")
        for line in reach.render(seen):
            terminalreporter.write_line(line)
        missing = reach.unvisited(seen)
        terminalreporter.write_line(
            f"{len(missing)} reachable cell(s) not visited"
            + (": " + ", ".join(f"{a}/{b}" for a, b in missing) if missing else "")
            + f"; {len(reach.UNREACHABLE)} listed as unreachable (reach.json says why)"
        )
    found = getattr(config, "_teeio_coverage", None)
    if found is None:
        return
    judged, failures = found
    if not failures:
        if judged:
            terminalreporter.write_line(f"teeio-conformance: every MUST rule exercised ({', '.join(judged)})")
        return
    n = sum(len(v) for v in failures.values())
    terminalreporter.section("teeio-conformance coverage", sep="=", red=True)
    terminalreporter.write_line(f"{n} MUST rule(s) applicable to the SUT were never exercised; the run fails:")
    for profile, rules in failures.items():
        terminalreporter.write_line(f"  {profile}: {', '.join(sorted(rules))}")
