"""Hypothesis settings profiles of the suite: ``ci``, ``dev``, ``thorough``.

* ``ci``: derandomized, no example database, no deadline, and no ``explain`` phase (it made
  shrinking about 2.8x slower for the same result in our benchmark). Fast and repeatable.
* ``dev``: random, database on, explain on -- what a developer iterating on a SUT wants.
* ``thorough``: many more examples and longer runs, for nightly jobs.

Importing this module (or the pytest plugin) changes nothing: no profile is registered or loaded, so
other test suites in the same environment keep their own Hypothesis settings. The suite's three machine
tests get theirs from :func:`for_suite`, passed to ``run_state_machine_as_test``. Without
``--hypothesis-profile``, ``ci`` is used when the ``CI`` environment variable is set, ``dev`` otherwise.
``--hypothesis-profile NAME`` picks the suite's profile of that name, unless the project registered its
own under the name (then theirs); any other name is the project's profile. A name of the suite that
Hypothesis does not know is registered on demand, just before Hypothesis' plugin loads it.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, Verbosity, settings
from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase
from hypothesis.errors import InvalidArgument

__all__ = ["PROFILES", "example_database", "for_suite", "register", "register_missing"]

_QUIET = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]

PROFILES = {
    "ci": settings(
        derandomize=True,
        database=None,
        deadline=None,
        max_examples=300,
        stateful_step_count=25,
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
        suppress_health_check=_QUIET,
        print_blob=False,
    ),
    "dev": settings(deadline=None, max_examples=100, stateful_step_count=30, suppress_health_check=_QUIET),
    "thorough": settings(
        deadline=None,
        max_examples=2000,
        stateful_step_count=60,
        suppress_health_check=_QUIET,
        verbosity=Verbosity.normal,
    ),
}


def _profile(name: str) -> settings | None:
    try:
        return settings.get_profile(name)
    except InvalidArgument:
        return None


def _registered(name: str) -> bool:
    return _profile(name) is not None


# What Hypothesis itself registers under the suite's names (recent versions have a built-in ``ci``, loaded
# when the CI variable is set), seen when the plugin is imported -- before any project's conftest can
# register its own. ``--hypothesis-profile ci`` then means the suite's ``ci`` for the suite's tests.
_BUILTIN = {name: _profile(name) for name in PROFILES}


def register_missing(names: tuple[str, ...] = tuple(PROFILES)) -> None:
    """Register those of the suite's profiles that no one else has registered under the same name
    (a project's own ``ci`` profile stays as it is). Loads nothing."""
    for name in names:
        if name in PROFILES and not _registered(name):
            settings.register_profile(name, PROFILES[name])


def register() -> None:
    """Register the suite's profiles and load the default (``ci`` under CI, else ``dev``): for this
    project's own ``tests/conftest.py``, never called on import."""
    for name, s in PROFILES.items():
        settings.register_profile(name, s)
    settings.load_profile(default_name())


def default_name() -> str:
    return "ci" if os.environ.get("CI") else "dev"


def for_suite(explicit_profile: str | None, verbosity_given: bool = False) -> tuple[str, settings]:
    """(name, settings) the suite's machine tests run under.

    ``explicit_profile`` is pytest's ``--hypothesis-profile`` (None when not given): Hypothesis' plugin
    has loaded it as the default settings, and those win. Otherwise the suite's own default profile,
    with ``--hypothesis-verbosity`` (which Hypothesis applies to its default settings) carried over."""
    loaded = settings.default or settings()  # typed Optional; set once Hypothesis is imported
    if explicit_profile:
        builtin = _BUILTIN.get(explicit_profile)
        if explicit_profile in PROFILES and (builtin is None or _profile(explicit_profile) is builtin):
            # the suite's name, not re-registered by the project: the suite's profile (with the verbosity
            # Hypothesis' plugin may have applied on top)
            chosen = PROFILES[explicit_profile]
            if verbosity_given:
                chosen = settings(chosen, verbosity=loaded.verbosity)
            return explicit_profile, chosen
        return explicit_profile, loaded
    name = default_name()
    chosen = PROFILES[name]
    if verbosity_given:
        chosen = settings(chosen, verbosity=loaded.verbosity)
    return name, chosen


def example_database(spec: str) -> ExampleDatabase:
    """The example database ``--example-db`` names: ``redis://HOST:PORT[/DB]`` (Hypothesis'
    ``RedisExampleDatabase``; needs the ``redis`` package) or a directory (shared over NFS or synced);
    a ``ValueError`` with a one-line reason when it cannot be had."""
    if spec.startswith(("redis://", "rediss://", "unix://")):
        try:
            import redis
            from hypothesis.extra.redis import RedisExampleDatabase
        except ImportError as exc:
            raise ValueError(f"--example-db {spec}: needs the redis package (pip install redis): {exc}") from None
        client = redis.Redis.from_url(spec, socket_connect_timeout=5)
        try:
            client.ping()
        except redis.exceptions.RedisError as exc:
            raise ValueError(f"--example-db {spec}: no Redis server answers there: {exc}") from None
        return RedisExampleDatabase(client)
    if os.path.exists(spec) and not os.path.isdir(spec):
        raise ValueError(f"--example-db {spec}: not a directory")
    return DirectoryBasedExampleDatabase(spec)
