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
