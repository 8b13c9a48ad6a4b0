"""The catalogue's own hygiene: IDs, sources, generated docs, and rules that see only trace + snapshot."""

from __future__ import annotations

import ast
from pathlib import Path

from teeio_conformance.conformance.rules import CATALOGUE
from teeio_conformance.conformance.rules.docs import render_markdown

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = {
    # the contract: trace events, typed errors, profiles as data, and the spec's wire formats and state table
    "teeio_conformance.contract.trace",
    "teeio_conformance.contract.errors",
    "teeio_conformance.contract.profiles",
    "teeio_conformance.contract.tdisp.codec",
    "teeio_conformance.contract.tdisp.state",
    "teeio_conformance.contract.ide_km",
}


def test_at_least_fifty_rules_with_unique_ids_and_sources():
    ids = [r.id for r in CATALOGUE]
    assert len(ids) >= 50
    assert len(set(ids)) == len(ids)
    for r in CATALOGUE:
        assert r.source.strip(), r.id
        assert r.profiles, r.id


def test_docs_rules_md_is_generated_from_the_catalogue():
    assert (ROOT / "docs" / "rules.md").read_text(encoding="utf-8") == render_markdown()


def test_rules_import_only_the_contract():
    """No rule reads the reference implementation's internals: only trace, errors, profiles and spec modules."""
    for path in (ROOT / "conformance" / "rules").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods = [node.module] if node.module in ALLOWED else [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            else:
                continue
            for m in mods:
                if m.startswith("reference_impl"):
                    assert m in ALLOWED, f"{path.name} imports {m}"
