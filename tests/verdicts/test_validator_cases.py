"""Every tee-io-validator case a device can break is caught by the rule that cites it (docs/validator-cases.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from teeio_conformance.conformance.validator_cases import CASES, probe, render_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "validator-cases.md"


def test_all_43_cases_are_listed_once():
    ids = [c.id for c in CASES]
    assert len(ids) == 43 and len(set(ids)) == 43


@pytest.mark.parametrize("case", [c for c in CASES if c.lie is not None], ids=lambda c: c.id)
def test_probe_is_clean_truthful_and_caught_lying(case):
    """The probe's own steps break nothing on the reference; with the lie, a citing rule fails."""
    assert probe(case, lie=False).broken == ()
    result = probe(case)
    assert result.caught, f"{case.id}: {result.broken} ({result.detail}); citing {result.citing}"


def test_generated_table_is_checked_in():
    assert DOC.read_text(encoding="utf-8") == render_markdown()
