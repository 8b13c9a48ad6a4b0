"""Coverage is a verdict (issue 14): a MUST rule that applies to the SUT and was never exercised fails the run.

A rule that never met a situation it judges said nothing about the SUT; a stack that does nothing would
otherwise pass every safety rule. The plugin judges coverage per profile once the four tests that exercise
the catalogue (liveness, full stack, host lifetimes, device) have all run for that profile and passed --
a run cut short by ``-k`` or by a failure is not judged (a failure already fails it). Rules whose needs
the SUT does not offer are not applicable and are left out (:func:`applicable_rules`): over a device
socket, the device rules a socket cannot serve.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from teeio_conformance.conformance.rules import CATALOGUE, Level, Rule

__all__ = ["COVERAGE_FILE", "MACHINE_TESTS", "applicable_rules", "coverage_failures", "judged_profiles"]

COVERAGE_FILE = "coverage.json"
MACHINE_TESTS = (
    "test_lifecycle_completes",
    "test_full_stack_lifecycle",
    "test_host_object_lifetimes",
    "test_device_tdisp_and_ide_km",
)
_DUTY = (Level.MUST, Level.PROFILE)  # PROFILE: a platform's own MUST


DIFFERENTIAL = frozenset({"CONF-04"})  # judged by test_noninterference, which needs the secrets_seed capability
ISOLATION = frozenset({"CONF-05"})  # judged by test_isolation, which needs the vm_secrets_seed capability


def applicable_rules(
    profile: str,
    *,
    remote_device: bool = False,
    differential: bool = True,
    isolation: bool = True,
    rules: Iterable[Rule] = CATALOGUE,
) -> list[str]:
    """The MUST (and platform MUST) rules that apply to ``profile`` and that this SUT can carry (without
    ``differential`` -- the SUT cannot vary its secrets -- the noninterference rule is not applicable)."""
    out = []
    remote: frozenset[str] = frozenset()
    device_ids: set[str] = set()
    if remote_device:
        from teeio_conformance.conformance.remote import REMOTE_RULES
        from teeio_conformance.conformance.rules import device, ide, p2p

        device_rules = (*device.RULES, *p2p.DEVICE_RULES)
        remote, device_ids = REMOTE_RULES, {r.id for r in device_rules} | ide.DEVICE_SIDE
    for r in rules:
        if r.level not in _DUTY or not r.applies_to(profile):
            continue
        if r.id in DIFFERENTIAL and not differential:
            continue
        if r.id in ISOLATION and not isolation:  # the SUT cannot vary one VM's secrets alone
            continue
        if r.id in device_ids and r.id not in remote:
            continue  # the socket cannot carry what it needs (config writes, resets, TLPs): not applicable
        out.append(r.id)
    return out


def judged_profiles(outcomes: Mapping[tuple[str, str], str], profiles: Iterable[str]) -> list[str]:
    """Profiles whose four catalogue tests all ran and passed (``outcomes``: (test name, profile) -> outcome)."""
    return [p for p in profiles if all(outcomes.get((t, p)) == "passed" for t in MACHINE_TESTS)]


def coverage_failures(
    counts: Mapping[str, Mapping[str, Mapping[str, int]]], applicable: Mapping[str, Iterable[str]]
) -> dict[str, dict[str, str]]:
    """profile -> {rule ID: why it fails} for every applicable rule with no exercised check.

    ``counts`` is the run's per-profile verdict counts (``Verdicts.by_profile``: profile -> "checked" /
    "exercised" -> rule -> n)."""
    out: dict[str, dict[str, str]] = {}
    for profile, ids in applicable.items():
        per = counts.get(profile, {})
        exercised, checked = per.get("exercised", {}), per.get("checked", {})
        for rule_id in ids:
            if exercised.get(rule_id, 0):
                continue
            n = checked.get(rule_id, 0)
            seen = f"checked {n} times, never in a situation it judges" if n else "no step touched what it is about"
            out.setdefault(profile, {})[rule_id] = (
                f"MUST rule never exercised ({seen}): the run cannot say the SUT keeps it, so it fails "
                "(coverage is a verdict: a stack that never reaches the rule's situation cannot pass)"
            )
    return out
