"""The installed plugin leaves other projects' Hypothesis settings alone.

Each test runs a foreign project's pytest session in a child process (as a user's project would run in
the same environment): the plugin is loaded through its entry point and imported explicitly, and the
foreign tests check that the default settings are Hypothesis' own, that none of the suite's profile
names were registered behind their back, and that ``--hypothesis-profile`` still picks the foreign
project's profile. The suite's own machine tests get the suite's settings through ``conformance_settings``,
and an explicit ``--hypothesis-profile`` wins there too.
"""

from __future__ import annotations

import datetime

from tests.child import run_pytest

try:  # the variables by which Hypothesis decides it runs under CI (and loads its built-in "ci")
    from hypothesis._settings import _CI_VARS

    CI_VARS = ("CI", *_CI_VARS)
except ImportError:  # pragma: no cover - older Hypothesis: no built-in ci
    CI_VARS = ("CI",)

FOREIGN = """
import datetime

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.errors import InvalidArgument

import teeio_conformance.conformance.plugin  # imported explicitly too: still no settings change


def test_plugin_is_loaded(pytestconfig):
    import sys

    assert pytestconfig.pluginmanager.hasplugin("teeio_conformance")
    assert "teeio_conformance.reference_impl.stack" not in sys.modules  # nor the reference stack imported


def test_the_default_settings_are_hypothesis_own():
    s = settings.default
    assert settings.get_current_profile_name() == "default"
    assert s.deadline == datetime.timedelta(milliseconds=200)
    assert s.derandomize is False and s.database is not None
    assert not s.suppress_health_check
    assert s.max_examples == 100


@pytest.mark.parametrize("name", ["dev", "thorough"])
def test_no_profile_of_the_suite_is_registered(name):
    with pytest.raises(InvalidArgument):
        settings.get_profile(name)


def test_ci_is_hypothesis_own_if_any():
    try:
        ci = settings.get_profile("ci")  # recent Hypothesis versions have a built-in "ci"
    except InvalidArgument:
        return
    assert ci.max_examples == 100 and ci.stateful_step_count == 50  # not the suite's (300, 25)


@given(st.integers())
def test_a_given_test_runs_under_the_defaults(x):
    assert settings().deadline == datetime.timedelta(milliseconds=200)
"""


def test_a_foreign_session_keeps_hypothesis_defaults(tmp_path):
    (tmp_path / "test_foreign.py").write_text(FOREIGN, encoding="utf-8")
    proc = run_pytest(tmp_path, "test_foreign.py", "--rootdir", str(tmp_path), unset=CI_VARS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "6 passed" in proc.stdout


CONFTEST_CI = """
from hypothesis import settings

settings.register_profile("ci", max_examples=7)  # the foreign project's own "ci"
settings.register_profile("mine", max_examples=3)
"""

CHOSEN = """
from hypothesis import settings


def test_the_foreign_profile_is_loaded():
    assert settings.get_current_profile_name() == "{name}"
    assert settings.default.max_examples == {n}


def test_the_suite_settings_follow_the_explicit_profile(conformance_settings):
    assert conformance_settings.max_examples == {n}
"""


def test_an_explicit_profile_is_the_foreign_projects_own(tmp_path):
    """``--hypothesis-profile=ci`` in a project with its own ``ci``: theirs, not the suite's (300 examples)."""
    (tmp_path / "conftest.py").write_text(CONFTEST_CI, encoding="utf-8")
    for name, n in (("ci", 7), ("mine", 3)):
        (tmp_path / "test_chosen.py").write_text(CHOSEN.format(name=name, n=n), encoding="utf-8")
        proc = run_pytest(tmp_path, "test_chosen.py", "--rootdir", str(tmp_path), f"--hypothesis-profile={name}")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


SUITE_DEFAULT = """
from hypothesis import settings


def test_suite_settings(conformance_settings):
    assert conformance_settings.max_examples == {n} and conformance_settings.deadline is None


def test_what_is_loaded():
    assert settings.get_current_profile_name() == "{loaded}"
"""


def test_the_suite_profiles_apply_to_the_suite_and_on_demand(tmp_path):
    """No option: the suite's ``dev`` (``ci`` under CI) for its tests alone, Hypothesis' default for the
    rest; ``--hypothesis-profile=thorough``: registered on demand and loaded; ``ci``: the suite's for its
    tests even where Hypothesis has a built-in ``ci``."""
    path = tmp_path / "test_suite_settings.py"
    for argv, env, n, loaded in (
        ((), {}, 100, "default"),
        ((), {"CI": "1"}, 300, "ci" if _hypothesis_has_ci() else "default"),
        (("--hypothesis-profile=thorough",), {}, 2000, "thorough"),
        (("--hypothesis-profile=ci",), {}, 300, "ci"),
    ):
        path.write_text(SUITE_DEFAULT.format(n=n, loaded=loaded), encoding="utf-8")
        proc = run_pytest(tmp_path, path.name, "--rootdir", str(tmp_path), *argv, env=env, unset=CI_VARS)
        assert proc.returncode == 0, f"{argv} {env}:\n" + proc.stdout[-3000:] + proc.stderr[-2000:]


def _hypothesis_has_ci() -> bool:
    from teeio_conformance.conformance.settings import _BUILTIN

    return _BUILTIN["ci"] is not None


def test_this_projects_tests_run_under_the_suite_profiles():
    """tests/conftest.py registers and loads them for this project's own tests (CI passes ci explicitly)."""
    from hypothesis import settings

    assert settings.get_profile("ci").derandomize and settings.get_profile("ci").deadline is None
    assert settings.get_profile("dev").deadline is None
    assert settings.default.deadline != datetime.timedelta(milliseconds=200)
