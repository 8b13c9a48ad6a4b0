"""Noninterference: the same steps with two different secret assignments give identical host views (CONF-04)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from teeio_conformance.conformance.noninterference import accepts_secrets, differential_machine

EXAMPLES = 20  # each example runs twice (the twin replays it): kept small to fit the ci budget


def test_noninterference(
    sut_factory: Any, tdisp_profile: str, step_timeout: float, conformance_settings: settings
) -> None:
    """Random full-stack examples replayed on a twin SUT with other guest secrets: every step's host view
    (host-visible crossings, shared memory, host reads, fault log) must be the same."""
    if not accepts_secrets(sut_factory):
        pytest.skip("the SUT factory takes no secrets_seed: CONF-04 is not applicable")
    machine = differential_machine(sut_factory, tdisp_profile, step_timeout)
    first = machine()  # an explicit first example: the whole lifecycle, VM stop and disconnect included
    first.lifecycle()
    first.teardown()
    limited = settings(conformance_settings, max_examples=min(EXAMPLES, conformance_settings.max_examples))
    run_state_machine_as_test(machine, settings=limited)
