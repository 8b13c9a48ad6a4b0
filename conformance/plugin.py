"""The pytest plugin (entry point ``teeio_conformance``): options, SUT, verdicts, reports, failure cards.

Options:
  --sut MODULE:FACTORY     the system under test (default: the reference implementation)
  --tdisp-profile P        tdx | sev-tio | cca | all (default all)
  --report-dir DIR         write the report set there at session end (report.json, junit.xml, report.txt,
                           report.html, failures/)
  --step-timeout SECONDS   per-step time limit for the SUT (default 5)
  --device-spawn CMD       the device machine drives a responder CMD starts, fresh for every example
  --device-at HOST:PORT    ... or one already listening there (with --device-functions ID,...)

Inert until asked: importing it registers and loads no Hypothesis profile, so other projects' tests in
the same environment keep their settings; the suite's own machine tests get theirs through the
``conformance_settings`` fixture (:mod:`teeio_conformance.conformance.settings`).

``pytest --sut mypkg:factory`` (or ``--device-spawn`` / ``--device-at``) with no test paths collects the
installed suite, from any directory.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import json
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import hypothesis
import pytest

from teeio_conformance.conformance import settings as _settings
from teeio_conformance.conformance.sut import DEFAULT_SUT, SutLoadError, load_factory

if TYPE_CHECKING:
    from teeio_conformance.conformance.remote import DeviceTarget

PROFILE_NAMES = ("tdx", "sev-tio", "cca")


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("teeio-conformance")
    g.addoption(
        "--sut",
        default=None,
        metavar="MODULE:FACTORY",
        help=f"the system under test (default: the reference implementation, {DEFAULT_SUT}); given without "
        "test paths, pytest collects the installed conformance suite",
    )
    g.addoption(
        "--tdisp-profile",
        default="all",
        choices=[*PROFILE_NAMES, "all"],
        help="platform profile(s) to test (default: %(default)s)",
    )
    g.addoption(
        "--report-dir",
        default=None,
        metavar="DIR",
        help="write the report set there at the end of the session: report.json, junit.xml, report.txt, "
        "report.html and failures/ (default: none)",
    )
    g.addoption(
        "--step-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="per-step time limit for the SUT (default: %(default)s)",
    )
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
        "--example-db",
        default=None,
        metavar="DIR|redis://HOST:PORT",
        help="Hypothesis example database of the suite's machine tests, shared between runs and machines: a "
        "directory, or a Redis server (needs the redis package) (default: the settings profile's)",
    )
    g.addoption(
        "--progress-seconds",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="while a machine test runs, say every SECONDS how long and how many steps; 0 turns it off "
        "(default: %(default)s)",
    )
    g.addoption(
        "--minimize-seconds",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="after Hypothesis shrinks a failure, search this long for a shorter one breadth-first "
        "(teeio_conformance.conformance.explore) before writing its record; 0 turns it off (default: %(default)s)",
    )


def suite_path() -> str:
    """The installed suite: the conformance package's directory, wherever it is installed (its test
    files are ``test_*.py``, pytest's default pattern; nodeids then read ``test_full_stack.py::...``)."""
    import teeio_conformance.conformance as package

    return os.path.dirname(os.path.abspath(package.__file__))


def sut_spec(config: pytest.Config) -> str:
    """``--sut`` as given, else the reference implementation."""
    return str(config.getoption("--sut") or DEFAULT_SUT)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


@pytest.hookimpl(tryfirst=True)  # before Hypothesis' own plugin loads --hypothesis-profile
def pytest_configure(config: pytest.Config) -> None:
    config._teeio_started = _now()  # type: ignore[attr-defined]
    config._teeio_outcome = {"status": "complete", "events": [], "durations": {}}  # type: ignore[attr-defined]
    config.addinivalue_line("markers", "requires(capability): the test needs an optional SUT capability")
    asked = config.getoption("hypothesis_profile", None)
    if asked:  # one of the suite's names, asked for on the command line: register it (only it) now
        _settings.register_missing((asked,))
    try:
        if config.getoption("--sut") is not None:  # named: a bad one is a usage error now, not at the first test
            _factory(config)
        config._teeio_device = _device_target(config)  # type: ignore[attr-defined]
        _check_report_dir(config)
    except pytest.UsageError as exc:
        _not_started(config, str(exc))
        raise
    spec = config.getoption("--example-db")
    if spec:
        try:
            config._teeio_database = _settings.example_database(spec)  # type: ignore[attr-defined]
        except ValueError as exc:
            _not_started(config, str(exc))
            raise pytest.UsageError(str(exc)) from None
    _collect_the_suite(config)
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistController(config), "teeio-conformance-xdist")
    _arm_watchdog(config)


def _check_report_dir(config: pytest.Config) -> None:
    """A --report-dir that cannot be a directory (a file, under a file, unwritable) is a one-line usage
    error now, not a traceback after the run."""
    report_dir = config.getoption("--report-dir")
    if not report_dir:
        return
    try:
        os.makedirs(report_dir, exist_ok=True)
        if not os.access(report_dir, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        reason = "a file is in the way" if isinstance(exc, (FileExistsError, NotADirectoryError)) else exc.strerror
        raise pytest.UsageError(f"--report-dir {report_dir}: cannot use it as a directory ({reason})") from None


def _collect_the_suite(config: pytest.Config) -> None:
    """``pytest --sut mypkg:factory`` from any directory runs the installed suite: when a SUT or a device
    is named and no test path is given (pytest would otherwise collect the current directory or the
    project's ``testpaths``), collection is pointed at the suite's own test files."""
    named = any(config.getoption(o) is not None for o in ("--sut", "--device-spawn", "--device-at"))
    if not named or config.args_source is pytest.Config.ArgsSource.ARGS:
        return
    config.args[:] = [suite_path()]
    config._teeio_collected_suite = True  # type: ignore[attr-defined]


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
        *glob.glob(os.path.join(report_dir, "failures", "test_*.py")),  # replay tests of the earlier run
    ]
    for path in stale:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def pytest_report_header(config: pytest.Config) -> list[str]:
    name, _ = suite_settings(config)
    lines = [
        f"teeio-conformance: SUT {sut_spec(config)}, TDISP profile(s) "
        f"{config.getoption('--tdisp-profile')}, hypothesis {hypothesis.__version__} "
        f"(the suite's settings profile: {name})"
    ]
    if getattr(config, "_teeio_collected_suite", False):
        lines.append(f"teeio-conformance: collecting the installed suite in {suite_path()}")
    target: DeviceTarget | None = getattr(config, "_teeio_device", None)
    if target is not None:
        lines.append(f"teeio-conformance: device machine against a {target.name}")
    return lines


def suite_settings(config: pytest.Config) -> tuple[str, hypothesis.settings]:
    """(profile name, settings) of the suite's machine tests: ``--hypothesis-profile`` if given, else the
    suite's default (``ci`` under CI, else ``dev``) -- never the process-wide default settings."""
    name, chosen = _settings.for_suite(
        config.getoption("hypothesis_profile", None),
        verbosity_given=config.getoption("hypothesis_verbosity", None) is not None,
    )
    database = getattr(config, "_teeio_database", None)
    return name, (chosen if database is None else hypothesis.settings(chosen, database=database))


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


def _factory(config: pytest.Config) -> Any:
    """The SUT factory, imported when first needed: a session that runs none of the suite's tests (another
    project's, in the same environment) never imports the reference stack."""
    factory = getattr(config, "_teeio_factory", None)
    if factory is None:
        try:
            factory = config._teeio_factory = load_factory(sut_spec(config))  # type: ignore[attr-defined]
        except SutLoadError as exc:
            raise pytest.UsageError(str(exc)) from exc
    return factory


@pytest.fixture
def sut_factory(request: pytest.FixtureRequest) -> Any:
    return _factory(request.config)


@pytest.fixture
def step_timeout(request: pytest.FixtureRequest) -> float:
    return float(request.config.getoption("--step-timeout"))


@pytest.fixture
def conformance_settings(request: pytest.FixtureRequest) -> hypothesis.settings:
    """The Hypothesis settings the suite's machine tests run under (pass to ``run_state_machine_as_test``)."""
    return suite_settings(request.config)[1]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """``--hypothesis-show-statistics`` for the machine tests: Hypothesis' plugin collects statistics only
    for ``@given`` functions, and ours call ``run_state_machine_as_test`` inside a plain test."""
    if not item.config.getoption("hypothesis_show_statistics", False) or "conformance_settings" not in getattr(
        item, "fixturenames", ()
    ):
        return (yield)
    from hypothesis.statistics import collector, describe_statistics

    def note(stats: Any) -> None:
        stats["nodeid"] = item.nodeid
        item.hypothesis_statistics = describe_statistics(stats)  # type: ignore[attr-defined]

    with collector.with_value(note):  # type: ignore[arg-type]  # typed as None-only in hypothesis
        return (yield)


@pytest.fixture
def conformance_progress(request: pytest.FixtureRequest) -> Callable[[], None]:
    """A callable for the end of each example of a machine test: every ``--progress-seconds`` it prints one
    line on the terminal (how long the test has run, how many machine steps it took). It writes from the
    test's own thread with output capture suspended, as pytest's live logging does; xdist workers' output
    is not shown, so there it does nothing."""
    from teeio_conformance.conformance.harness import VERDICTS

    config = request.config
    every = float(config.getoption("--progress-seconds") or 0)
    terminal = config.pluginmanager.getplugin("terminalreporter")
    capture = config.pluginmanager.getplugin("capturemanager")
    nodeid = request.node.nodeid
    started, steps_before = time.monotonic(), VERDICTS.steps
    said = [started]

    def tick() -> None:
        now = time.monotonic()
        if every <= 0 or terminal is None or hasattr(config, "workerinput") or now - said[0] < every:
            return
        said[0] = now
        line = f"teeio-conformance: {nodeid} running for {now - started:.0f} s, {VERDICTS.steps - steps_before} steps"
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            terminal.ensure_newline()
            terminal.write_line(line)

    return tick


def ticking(machine: type, tick: Callable[[], None]) -> type:
    """``machine`` (a test's own local class) with ``tick`` called after each example's teardown: the
    machine tests' progress. The class itself is changed, not subclassed, so Hypothesis' digest of it --
    the derandomized seed and the example database key -- stays what it was."""
    original = machine.teardown  # type: ignore[attr-defined]

    def teardown(self: Any) -> None:
        try:
            original(self)
        finally:
            tick()

    machine.teardown = teardown  # type: ignore[attr-defined]
    return machine


@pytest.fixture
def device_target(request: pytest.FixtureRequest) -> DeviceTarget | None:
    """The responder the device machine drives over the socket; None: the in-process device."""
    return request.config._teeio_device  # type: ignore[attr-defined]


def _has_content(config: pytest.Config) -> bool:
    """Anything for a verdicts file: checks counted, or how the run ended (durations, events)."""
    from teeio_conformance.conformance.harness import VERDICTS

    outcome = _outcome(config)
    return bool(VERDICTS.checked or outcome["durations"] or outcome["events"])


def _write_verdicts(config: pytest.Config) -> None:
    """This process's ``verdicts-<worker>.json`` straight to disk: for the ends that skip sessionfinish's
    hand-over (a run that could not start, a hung run the watchdog ends, pytest's internal error)."""
    report_dir = config.getoption("--report-dir", None)
    if not report_dir or not _has_content(config):
        return
    os.makedirs(report_dir, exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(os.path.join(report_dir, f"verdicts-{worker}.json"), "w", encoding="utf-8") as fh:
        json.dump(verdict_data(config), fh, indent=1, sort_keys=True)


def verdict_data(config: pytest.Config) -> dict[str, Any]:
    """This process's verdict counts, run info and how the run ended, as a ``verdicts-<worker>.json``
    holds them."""
    from teeio_conformance.conformance.harness import VERDICTS

    outcome = _outcome(config)
    return {
        "checked": VERDICTS.checked,
        "exercised": VERDICTS.exercised,
        "failed": VERDICTS.failed,
        "steps": VERDICTS.steps,
        "sut": _sut_name(config),
        "profiles": selected_profiles(config),
        "by_profile": VERDICTS.by_profile,
        "run": {
            "settings_profile": suite_settings(config)[0],
            "hypothesis": hypothesis.__version__,
            "seed": _seed(config),
            "started": getattr(config, "_teeio_started", None),
            "finished": _now(),
        },
        "outcome": {"status": outcome["status"], "events": outcome["events"]},
        "durations": outcome["durations"],
    }


class _XdistController:
    """On the xdist controller: collect each worker's verdicts from xdist's own channel (``workeroutput``)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.workers: dict[str, dict[str, Any]] = {}
        config._teeio_workers = self.workers  # type: ignore[attr-defined]

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        data = getattr(node, "workeroutput", {}).get("teeio_verdicts")
        if data is not None:
            self.workers[str(node.gateway.id)] = data


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Judge coverage; workers hand their counts to the controller through xdist's channel; the controller
    (or a run without xdist) writes the whole report set into ``--report-dir``, saying how the run ended."""
    config = session.config
    outcome = _outcome(config)
    if int(exitstatus) == int(pytest.ExitCode.INTERRUPTED) and outcome["status"] == "complete":
        _run_event(config, "interrupted", "the run was interrupted before it finished")
    _judge_coverage(session)
    report_dir = config.getoption("--report-dir")
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: through xdist's channel, no file
        if _has_content(config):
            workeroutput["teeio_verdicts"] = verdict_data(config)
        return
    if not report_dir:
        return
    found: dict[str, dict[str, Any]] = dict(getattr(config, "_teeio_workers", {}))
    if _has_content(config) and (not found or outcome["events"]):
        found["main"] = verdict_data(config)  # a serial run, or the controller's own events (an interrupt)
    failures = glob.glob(os.path.join(report_dir, "failures", "*.json"))
    if not found and not failures:
        return  # no conformance test ran: nothing to report
    from teeio_conformance.reports.model import ReportInputError, load_report_dir
    from teeio_conformance.reports.writer import write_all

    try:
        for worker, data in sorted(found.items()):
            with open(os.path.join(report_dir, f"verdicts-{worker}.json"), "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
        report = load_report_dir(report_dir)
        write_all(report, report_dir)
    except (OSError, ReportInputError) as exc:
        config._teeio_report_error = f"could not write the report into {report_dir}: {exc}"  # type: ignore[attr-defined]
        if session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
        return
    config._teeio_report_written = report  # type: ignore[attr-defined]


def _sut_name(config: pytest.Config) -> str:
    """The SUT as the report names it; a device machine driven over the socket names its responder too."""
    sut = sut_spec(config)
    target: DeviceTarget | None = getattr(config, "_teeio_device", None)
    return sut if target is None else f"{sut}; device machine: {target.name}"


def _seed(config: pytest.Config) -> str | None:
    """What makes this run repeatable: "derandomized" (e.g. profile ``ci``; Hypothesis then ignores any
    seed), else ``--hypothesis-seed``, else nothing (a random run)."""
    if getattr(suite_settings(config)[1], "derandomize", False):
        return "derandomized"
    seed = config.getoption("hypothesis_seed", None)
    return None if seed is None else str(seed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failure of a machine test becomes a record (with ``--report-dir``) and a compact card: the rule,
    its source, the shrunk steps, the record's path and a replay command. The card replaces pytest's
    traceback (hundreds of lines through the suite's own code) unless ``-v`` asks for it."""
    report = yield
    _count_duration(item, report)
    if report.failed and call.excinfo is not None:
        _unrecorded_failure(item, call)
    if call.when != "call" or call.excinfo is None:
        return report
    exc_value = call.excinfo.value
    found = exc_value.exceptions if isinstance(exc_value, BaseExceptionGroup) else (exc_value,)
    if not all(hasattr(sub, "teeio_steps") for sub in found):
        return report  # not (only) a machine's failure: pytest's own report says it best
    config = item.config
    cards: list[str] = []
    summary: list[dict[str, Any]] = []
    for n, sub in enumerate(found):
        record = _failure_record(item, sub)
        path = None
        if config.getoption("--report-dir"):
            try:
                path = _write_record(item, record, n, exc=sub)
            except OSError as exc:  # a full disk must not hide the test's own failure
                report.sections.append(("teeio-conformance", f"could not write the failure record: {exc}"))
        from teeio_conformance.conformance import cards as _cards

        seen: dict[str, str] = config.__dict__.setdefault("_teeio_seen", {})
        key = _cards.signature(record)
        cards.append(_cards.card(record, path, same_as=seen.get(key)))
        seen.setdefault(key, item.nodeid)
        summary.append(_cards.summary_entry(record, path, key))
    text = "\n\n".join(cards)
    report.__dict__["teeio_failures"] = json.dumps(summary)
    if config.getoption("verbose") >= 1:
        report.sections.append(("teeio-conformance failure", text))
    else:
        report.longrepr = text + "\n\n(the full traceback: run with -v)"
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
    from teeio_conformance.reports.model import ReportInputError, load_report_dir
    from teeio_conformance.reports.writer import write_all

    try:
        _write_verdicts(config)
        write_all(load_report_dir(report_dir), report_dir)
    except (OSError, ReportInputError):
        pass  # a report directory that cannot be written: the usage error says why the run did not start


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
        _write_record(item, _failure_record(item, exc, minimize=False), exc=exc)
    _write_verdicts(config)
    if not hasattr(config, "workerinput"):
        from teeio_conformance.reports import writer
        from teeio_conformance.reports.model import load_report_dir

        writer.write_all(load_report_dir(report_dir), report_dir)


def _failure_record(item: pytest.Item, exc: BaseException, *, minimize: bool = True) -> dict[str, Any]:
    """The failure record (``teeio-failure/1``) of one machine failure; with ``--report-dir`` after a search
    for a shorter sequence by the same rule (``--minimize-seconds``)."""
    from teeio_conformance.conformance.rules import RuleViolation

    steps = exc.teeio_steps  # type: ignore[attr-defined]
    kind = {
        "test_full_stack_lifecycle": "full_stack",
        "test_host_object_lifetimes": "host_lifetimes",
        "test_device_tdisp_and_ide_km": "device",
        "test_lifecycle_completes": "full_stack",
    }.get(getattr(item, "originalname", ""))
    callspec = getattr(item, "callspec", None)
    profile = callspec.params.get("tdisp_profile") if callspec else None
    shrunk_steps = len(steps)
    shorter = _minimize(item, exc, kind, profile) if minimize and item.config.getoption("--report-dir") else None
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
    return {
        "format": "teeio-failure/1",
        "test": item.nodeid,
        "machine": getattr(item, "teeio_machine", item.name),
        "profile": profile,
        "sut": sut_spec(item.config),
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


def _write_record(item: pytest.Item, record: dict[str, Any], n: int = 0, *, exc: BaseException | None = None) -> str:
    """Write ``record`` into ``--report-dir``/failures; return its absolute path."""
    report_dir = item.config.getoption("--report-dir")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in item.nodeid)[-110:] + (f"-{n}" if n else "")
    os.makedirs(os.path.join(report_dir, "failures"), exist_ok=True)
    path = os.path.abspath(os.path.join(report_dir, "failures", f"{safe}.json"))
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(record, fh, indent=1, default=repr)
    if exc is not None:
        _write_also_broken(report_dir, safe, record, exc)
    return path


def _write_also_broken(report_dir: str, safe: str, record: dict[str, Any], exc: BaseException) -> None:
    """One more record, on the same steps, for every other rule the failing step broke: each failing rule
    gets a reproducer (replay accepts a step that breaks the recorded rule among others)."""
    from teeio_conformance.conformance.rules import CATALOGUE

    titles = {r.id: r for r in CATALOGUE}
    for rule_id, message in getattr(exc, "teeio_broken", ()):
        if rule_id == record["rule_id"]:
            continue  # the reported rule has its record already
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


def _summary_of_failures(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Identical failures once, with the tests they came from; where the report went."""
    from teeio_conformance.conformance import cards as _cards

    entries = [
        entry
        for report in terminalreporter.stats.get("failed", [])
        for entry in json.loads(report.__dict__.get("teeio_failures", "[]"))
    ]
    if entries:
        terminalreporter.section("teeio-conformance failures")
        for line in _cards.grouped(entries):
            terminalreporter.write_line(line)
    error = getattr(config, "_teeio_report_error", None)
    if error:
        terminalreporter.write_line(f"teeio-conformance: {error}", red=True)
    written = getattr(config, "_teeio_report_written", None)
    if written is not None:
        report_dir = os.path.abspath(config.getoption("--report-dir"))
        from teeio_conformance.reports.model import Status

        counts = written.counts()
        verdicts = ", ".join(f"{counts[s]} {s.label}" for s in Status)
        terminalreporter.write_line(
            f"teeio-conformance: rule verdicts {verdicts}; report in {os.path.join(report_dir, 'report.html')} "
            f"(and report.json, junit.xml, report.txt; {len(written.failures)} failure record(s))"
        )


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
        factory = None if kind == "device" else load_factory(sut_spec(item.config))
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
            p,
            remote_device=remote,
            differential=outcomes.get(("test_noninterference", p)) in ("passed", "failed"),
            isolation=outcomes.get(("test_isolation", p)) in ("passed", "failed"),
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
    """The failures (grouped), where the report went, the reach matrix and the coverage verdict."""
    from teeio_conformance.conformance import reach

    _summary_of_failures(terminalreporter, exitstatus, config)
    from teeio_conformance.conformance.coverage import MACHINE_TESTS

    seen = _COVERAGE.get("reach")
    ran = {name for name, _ in _COVERAGE.get("outcomes", {})}
    if seen and ran & set(MACHINE_TESTS[1:]):  # a run of the catalogue's machines, not a unit test
        missing = reach.unvisited(seen)
        # the whole matrix when asked (-v), or when a run that passed left a reachable cell unvisited
        if config.getoption("verbose") >= 1 or (missing and exitstatus == 0):
            terminalreporter.section("teeio-conformance reach (operation x target state before the step)", sep="-")
            for line in reach.render(seen):
                terminalreporter.write_line(line)
            if missing:
                terminalreporter.write_line("not visited: " + ", ".join(f"{a}/{b}" for a, b in missing))
        terminalreporter.write_line(
            f"teeio-conformance reach: {len(seen)} cell(s) visited, {len(missing)} reachable cell(s) not visited, "
            f"{len(reach.UNREACHABLE)} unreachable (reach.json says why)"
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
