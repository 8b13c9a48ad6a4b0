"""The package arrows of docs/architecture.md ("Layout"): who may import whom.

The contract stands alone, so an adapter for a real kernel, VMM, TSM or device can import it without the
reference implementation; strategies build on the contract only. Every import is read from the source
(``ast``), including imports inside functions, so a lazy import cannot hide an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("contract", "reference_impl", "conformance", "reports", "strategies")


def _imports(path: Path) -> set[str]:
    """The project's packages a module imports (``teeio_conformance.X`` -> ``X``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] in PACKAGES:
                raise AssertionError(f"{path.relative_to(ROOT)} imports {name!r} outside the import root")
            if parts[0] == "teeio_conformance" and len(parts) > 1:
                found.add(parts[1])
    return found


def _arrows(package: str) -> dict[str, set[str]]:
    return {
        str(p.relative_to(ROOT)): _imports(p) - {package}
        for p in sorted((ROOT / package).rglob("*.py"))
        if "__pycache__" not in p.parts
    }


@pytest.mark.parametrize(
    ("package", "allowed"),
    [
        ("contract", set()),
        ("strategies", {"contract"}),
        ("reference_impl", {"contract"}),
    ],
)
def test_package_imports_only_what_it_builds_on(package: str, allowed: set[str]) -> None:
    bad = {module: sorted(deps - allowed) for module, deps in _arrows(package).items() if deps - allowed}
    assert not bad, f"{package}/ may import only {sorted(allowed) or 'nothing of the project'}: {bad}"


def test_every_module_imports_through_the_one_root() -> None:
    """No module of the tree imports a top-level ``conformance``/``reports``/... of its own: an installed
    copy must never pick up a user's package of the same name."""
    for directory in (*PACKAGES, "tests", "benchmarks"):
        for path in (ROOT / directory).rglob("*.py"):
            _imports(path)  # raises on a bare top-level import


def test_root_package_links_every_directory() -> None:
    for package in PACKAGES:
        link = ROOT / "teeio_conformance" / package
        assert link.is_dir() and link.resolve() == (ROOT / package).resolve(), link


# ---------------------------------------------------------------------------------------------------------------
# conformance/ judges a SUT through the contract: it names the reference (the default SUT, device and scenario are
# strings in conformance/sut.py) but imports it only where a command serves or demonstrates the reference itself.

CONFORMANCE_MAY_IMPORT_REFERENCE = {
    "conformance/cli.py": "`flow` prints the reference lifecycle; `serve-device` serves the reference device",
    "conformance/explore.py": "`explore --mutant NAME` names the reference's mutants",
    "conformance/remote.py": "the spdm-emu socket client still lives in reference_impl/transport (issue 15)",
    "conformance/replay.py": "a record naming one of the reference's own mutants replays without --trust-record",
    "conformance/mutation.py": "the suite's meta-test: runs the reference's mutants the way users run a SUT",
    "conformance/validator_cases.py": "probes each validator case on the reference device made to answer wrongly",
    "conformance/fail_nth.py": "the fail-nth walk injects faults into the reference's own actors, one call at a time",
}
"""Every conformance module outside this list must not import ``reference_impl``; keep it short."""

REFERENCE_NAMED_IN = {"conformance/sut.py", *CONFORMANCE_MAY_IMPORT_REFERENCE}
"""Where ``teeio_conformance.reference_impl`` may appear as a string (the defaults, loaded by name)."""

ADAPTER_EXAMPLES = ("docs/examples/vmm_adapter.py", "docs/examples/device_adapter.py")
COMPOSITION_ENTRY_POINT = "teeio_conformance.reference_impl.compose"


def _modules(path: Path) -> set[str]:
    """Full dotted names a module imports (``from a.b import c`` -> ``a.b``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_conformance_imports_the_reference_only_where_listed() -> None:
    bad = {
        module: sorted(m for m in _modules(ROOT / module) if m.startswith("teeio_conformance.reference_impl"))
        for module in (str(p.relative_to(ROOT)) for p in sorted((ROOT / "conformance").rglob("*.py")))
        if module not in CONFORMANCE_MAY_IMPORT_REFERENCE
    }
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"conformance/ must reach the reference through the contract (or by name in sut.py): {bad}"


def test_the_reference_is_named_by_string_only_in_sut_py_and_the_listed_modules() -> None:
    """A string naming the reference (``importlib.import_module("teeio_conformance.reference_impl...")``) is an
    import too; only the defaults in sut.py and the listed command modules may hold one."""
    bad = []
    for p in sorted((ROOT / "conformance").rglob("*.py")):
        module = str(p.relative_to(ROOT))
        if module in REFERENCE_NAMED_IN:
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            text = node.value if isinstance(node, ast.Constant) else None
            # docstrings may mention the reference; a module name in code is a one-line string
            if isinstance(text, str) and "teeio_conformance.reference_impl" in text and "\n" not in text:
                bad.append(f"{module}: {text[:80]!r}")
    assert not bad, bad


@pytest.mark.parametrize("example", ADAPTER_EXAMPLES)
def test_adapter_examples_import_the_contract_and_the_composition_entry_point_only(example: str) -> None:
    imported = {m for m in _modules(ROOT / example) if m.startswith("teeio_conformance")}
    assert imported, f"{example} imports nothing of the project?"
    bad = sorted(m for m in imported if not m.startswith("teeio_conformance.contract") and m != COMPOSITION_ENTRY_POINT)
    assert not bad, f"{example} may import teeio_conformance.contract and {COMPOSITION_ENTRY_POINT} only: {bad}"


def test_the_layering_checks_can_fail(tmp_path: Path) -> None:
    """The checks above see an import of the reference, however it is spelled."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from teeio_conformance.reference_impl.stack import make_sut\n"
        "import teeio_conformance.reference_impl.kvm\n"
        "def f():\n    from teeio_conformance.contract import errors\n",
        encoding="utf-8",
    )
    found = _modules(probe)
    assert {"teeio_conformance.reference_impl.stack", "teeio_conformance.reference_impl.kvm"} <= found
    assert "teeio_conformance.contract" in found


def test_reports_reach_the_suite_only_for_rule_metadata() -> None:
    """reports/ renders what a run produced; it reads the rule catalogue's titles and areas (model.py, html.py)
    and nothing else of conformance/ (passing the catalogue as data would remove even that: not done yet)."""
    allowed = {"teeio_conformance.conformance.rules"}
    bad = {
        str(p.relative_to(ROOT)): sorted(
            m for m in _modules(p) if m.startswith("teeio_conformance.conformance") and m not in allowed
        )
        for p in sorted((ROOT / "reports").rglob("*.py"))
    }
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, bad
