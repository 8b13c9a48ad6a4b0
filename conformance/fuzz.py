"""The suite's machines as Hypothesis stateful test cases, for long runs under HypoFuzz.

The conformance tests (``test_*.py``) call ``run_state_machine_as_test`` inside a pytest function so they
can take fixtures; a fuzzer drives Hypothesis tests directly, without fixtures. This module offers the
same machines as ``RuleBasedStateMachine.TestCase`` classes, one per machine and platform profile,
configured from the environment instead:

* ``TEEIO_SUT=module:factory`` -- the system under test (default: the reference implementation);
* ``TEEIO_STEP_TIMEOUT=SECONDS`` -- the per-step time limit (default 5).

Run them for a long time with HypoFuzz (``pip install hypofuzz``)::

    TEEIO_SUT=mypkg:factory hypothesis fuzz -- "$(python -m teeio_conformance.conformance.fuzz)"

(``python -m teeio_conformance.conformance.fuzz`` prints this file's path), or run them as ordinary
tests with ``pytest <that path>``. The file's name does not start with ``test_``, so
``pytest --sut ...`` does not collect it with the suite.
"""

from __future__ import annotations

import os

from hypothesis import settings

from teeio_conformance.conformance.machines.device import DeviceMachine, DeviceMachineConfig
from teeio_conformance.conformance.machines.full_stack import FullStack, MachineConfig
from teeio_conformance.conformance.machines.host_lifetimes import HostLifetimes
from teeio_conformance.conformance.settings import PROFILES
from teeio_conformance.conformance.sut import DEFAULT_SUT, load_factory

__all__ = ["machines"]

_FACTORY = load_factory(os.environ.get("TEEIO_SUT") or DEFAULT_SUT)
_TIMEOUT = float(os.environ.get("TEEIO_STEP_TIMEOUT") or 5.0)
_SETTINGS = settings(PROFILES["dev"], database=settings.default.database if settings.default else None)


def machines() -> dict[str, type]:
    """``{name: machine class}``: each machine under each platform profile, configured as above."""
    out: dict[str, type] = {}
    for profile in ("tdx", "sev-tio", "cca"):
        tag = profile.replace("-", "_").upper()
        out[f"FullStack{tag}"] = type(
            f"FullStack{tag}",
            (FullStack,),
            {"config": MachineConfig(factory=_FACTORY, profile=profile, timeout=_TIMEOUT)},
        )
        out[f"HostLifetimes{tag}"] = type(
            f"HostLifetimes{tag}",
            (HostLifetimes,),
            {"config": MachineConfig(factory=_FACTORY, profile=profile, timeout=_TIMEOUT)},
        )
        out[f"Device{tag}"] = type(
            f"Device{tag}", (DeviceMachine,), {"config": DeviceMachineConfig(profile=profile, timeout=_TIMEOUT)}
        )
    return out


def _test_cases() -> dict[str, type]:
    cases = {}
    for name, machine in machines().items():
        case: type = machine.TestCase  # type: ignore[attr-defined]  # a RuleBasedStateMachine subclass
        case.settings = _SETTINGS  # type: ignore[attr-defined]
        cases[f"Test{name}"] = case
    return cases


globals().update(_test_cases())


if __name__ == "__main__":  # pragma: no cover - prints where this module is, for the fuzzer's command line
    print(os.path.abspath(__file__))
