"""The isolation mutants (VM A's secret reaching VM B transformed) are caught by CONF-05, and the reference is not.

The users' path (``catch_as_user``: liveness, then the isolation test at ``ci``) and the isolation test itself --
its explicit example, then 20 drawn examples -- on three more seeds, each example replayed on the twin.
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis.stateful import get_state_machine_test

from teeio_conformance.conformance import settings as profiles
from teeio_conformance.conformance.isolation import accepts_vm_secrets, isolation_machine
from teeio_conformance.conformance.mutation import catch_as_user
from teeio_conformance.conformance.rules import RuleViolation
from teeio_conformance.conformance.test_isolation import EXAMPLES, explicit_example
from teeio_conformance.reference_impl.mutants import MUTANTS
from teeio_conformance.reference_impl.stack import make_sut

ISOLATION = [m for m in MUTANTS if m.machine == "isolation"]


def test_there_are_isolation_mutants_and_the_capability_is_named():
    assert len(ISOLATION) >= 2 and all(m.rule_id == "CONF-05" for m in ISOLATION)
    assert accepts_vm_secrets(make_sut) and all(accepts_vm_secrets(m.factory) for m in ISOLATION)
    assert not accepts_vm_secrets(lambda **kw: None)  # a catch-all signature does not claim the capability


@pytest.mark.parametrize("mutant", ISOLATION, ids=[m.name for m in ISOLATION])
def test_isolation_mutant_caught_as_users_run_it(mutant):
    result = catch_as_user(mutant)
    assert result.caught, f"{mutant.name}: {result.caught_by} {result.message}"


def _run(factory, profile, seed):
    """The isolation test on ``seed``: its explicit example, then the drawn ones. The violation, or None."""
    machine = isolation_machine(factory, profile, 5.0)
    try:
        first = machine()
        explicit_example(first)
        first.teardown()
        profiles.register_missing()
        s = settings(
            settings.get_profile("ci"),
            max_examples=EXAMPLES,
            derandomize=False,
            phases=[p for p in settings.get_profile("ci").phases if p.name != "shrink"],
        )
        test = get_state_machine_test(machine, settings=s)
        test._hypothesis_internal_use_seed = seed
        test()
    except RuleViolation as exc:
        return exc
    return None


@pytest.mark.parametrize("seed", (1, 2, 3))
@pytest.mark.parametrize("mutant", ISOLATION, ids=[m.name for m in ISOLATION])
def test_isolation_mutant_caught_on_each_seed(mutant, seed):
    found = _run(mutant.factory, mutant.profile, seed)
    assert found is not None and found.rule.id == "CONF-05", f"{mutant.name} on seed {seed}: {found}"


@pytest.mark.parametrize("profile", ("tdx", "sev-tio", "cca"))
def test_the_reference_keeps_vms_apart(profile):
    assert _run(make_sut, profile, 1) is None
