"""The pytest plugin (entry point ``teeio_conformance``): options, settings profiles, SUT, verdicts.

Options:
  --sut MODULE:FACTORY     the system under test (default: the reference implementation)
  --tdisp-profile P        tdx | sev-tio | cca | all (default all)
  --report-dir DIR         write verdicts and failures there (JSON, JUnit XML, text, HTML)
  --step-timeout SECONDS   per-step time limit for the SUT (default 5)
"""

from __future__ import annotations

import json
import os
from typing import Any

import hypothesis
import pytest

from conformance import settings as _settings
from conformance.sut import DEFAULT_SUT, SutLoadError, load_factory

_settings.register()

PROFILE_NAMES = ("tdx", "sev-tio", "cca")


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("teeio-conformance")
    g.addoption("--sut", default=DEFAULT_SUT, help="module:factory of the system under test")
    g.addoption("--tdisp-profile", default="all", choices=[*PROFILE_NAMES, "all"],
                help="platform profile(s) to test")
    g.addoption("--report-dir", default=None, help="directory for verdict reports")
    g.addoption("--step-timeout", type=float, default=5.0, help="per-step time limit for the SUT, seconds")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires(capability): the test needs an optional SUT capability")
    try:
        config._teeio_factory = load_factory(config.getoption("--sut"))  # type: ignore[attr-defined]
    except SutLoadError as exc:
        raise pytest.UsageError(str(exc)) from exc


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"teeio-conformance: SUT {config.getoption('--sut')}, TDISP profile(s) "
            f"{config.getoption('--tdisp-profile')}, hypothesis {hypothesis.__version__} "
            f"(settings profile {hypothesis.settings._current_profile})"]


def selected_profiles(config: pytest.Config) -> list[str]:
    p = config.getoption("--tdisp-profile")
    return list(PROFILE_NAMES) if p == "all" else [p]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "tdisp_profile" in metafunc.fixturenames:
        metafunc.parametrize("tdisp_profile", selected_profiles(metafunc.config))


@pytest.fixture
def sut_factory(request: pytest.FixtureRequest) -> Any:
    return request.config._teeio_factory  # type: ignore[attr-defined]


@pytest.fixture
def step_timeout(request: pytest.FixtureRequest) -> float:
    return float(request.config.getoption("--step-timeout"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write this process's verdict counts; the report writer merges workers' files."""
    from conformance.harness import VERDICTS

    report_dir = session.config.getoption("--report-dir")
    if not report_dir or not VERDICTS.checked:
        return
    os.makedirs(report_dir, exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    data = {"checked": VERDICTS.checked, "exercised": VERDICTS.exercised, "failed": VERDICTS.failed,
            "steps": VERDICTS.steps, "sut": session.config.getoption("--sut"),
            "profiles": selected_profiles(session.config)}
    with open(os.path.join(report_dir, f"verdicts-{worker}.json"), "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
