"""Every rule's source can be looked up: each key it cites resolves in ``docs/flow.md`` (or names a
public specification), so an implementer can follow a rule to where it comes from without anything
that is not in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from teeio_conformance.conformance.rules import CATALOGUE

DOCS = Path(__file__).resolve().parents[2] / "docs"
FLOW = (DOCS / "flow.md").read_text(encoding="utf-8")
REFERENCES = FLOW[FLOW.index("## References") :]
STEPS = set(re.findall(r"^\| (\d+b?) \|", FLOW[FLOW.index("## The chart's steps") :], flags=re.M))
CORRECTIONS = set(re.findall(r"^(\d)\. ", FLOW[FLOW.index("## The maintainer's corrections") :], flags=re.M))
FACTS = set(re.findall(r"^- \*\*([A-F]\.\d+|Q\d+)\*\*", FLOW, flags=re.M))
SECTIONS = set(re.findall(r"^### (\([a-e]\))", FLOW, flags=re.M))


def unresolved(source: str) -> list[str]:
    """The citations in ``source`` that docs/flow.md (or docs/architecture.md) does not resolve."""
    missing = [f"[{key}]" for key in re.findall(r"\[([A-Z][A-Z0-9-]+)\]", source) if f"[{key}]" not in REFERENCES]
    for part in source.split(";"):
        part = part.strip()
        if part.startswith("flow step"):
            head = re.split(r"[,(]", part)[0]
            missing += [f"flow step {n}" for n in re.findall(r"\d+b?", head) if n not in STEPS]
        for n in re.findall(r"flow corr\. (\d+)", part):
            if n not in CORRECTIONS:
                missing.append(f"flow corr. {n}")
        found = re.search(r"rules-seed (\S+)", part)
        if found:
            for key in found.group(1).split("/"):
                if key not in FACTS and key not in SECTIONS:
                    missing.append(f"rules-seed {key}")
        if "h11" in part and "[h11]" not in REFERENCES:
            missing.append("h11")
        if "architecture 'Errors'" in part and "**Errors**" not in (DOCS / "architecture.md").read_text("utf-8"):
            missing.append("architecture 'Errors'")
    return missing


def test_the_resolver_finds_the_flow_and_the_facts():
    assert len(STEPS) == 51 and {str(n) for n in range(1, 8)} == CORRECTIONS
    assert {"A.13", "F.80", "Q1"} <= FACTS and {"(b)", "(c)", "(d)"} <= SECTIONS
    assert unresolved("flow step 51; rules-seed Z.1; [NOWHERE]") == ["[NOWHERE]", "flow step 51", "rules-seed Z.1"]


@pytest.mark.parametrize("rule", CATALOGUE, ids=lambda r: r.id)
def test_every_cited_key_resolves(rule):
    assert unresolved(rule.source) == [], f"{rule.id}: {rule.source}"


def test_no_internal_documents():
    assert not (DOCS / "internal").exists()
