"""Hypothesis settings profiles, registered in one place: ``ci``, ``dev``, ``thorough``.

* ``ci``: derandomized, no example database, no deadline, and no ``explain`` phase (it made
  shrinking about 2.8x slower for the same result in our benchmark). Fast and repeatable.
* ``dev``: random, database on, explain on -- what a developer iterating on a SUT wants.
* ``thorough``: many more examples and longer runs, for nightly jobs.

Select with ``--hypothesis-profile NAME`` (pytest) or ``teeio-conformance run --hypothesis-profile``.
Without one, ``ci`` is used when the ``CI`` environment variable is set, ``dev`` otherwise.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, Verbosity, settings

__all__ = ["PROFILES", "register"]

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

_registered = False


def register() -> None:
    """Register the profiles once and load the default (``ci`` under CI, else ``dev``)."""
    global _registered
    if _registered:
        return
    for name, s in PROFILES.items():
        settings.register_profile(name, s)
    settings.load_profile("ci" if os.environ.get("CI") else "dev")
    _registered = True
