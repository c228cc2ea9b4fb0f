"""The import graph reads top-down: nothing below ``cli`` imports it, ``assembly`` imports
neither ``cli`` nor ``ops``, and no package imports another package's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import platpass

SRC = Path(platpass.__file__).parent


def _imports() -> list[tuple[str, str, str]]:
    """(importing module, imported module, imported name) for every platpass import."""
    found = []
    for path in SRC.rglob("*.py"):
        module = ".".join(("platpass", *path.relative_to(SRC).with_suffix("").parts))
        module = module.removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.startswith("platpass"):
                found.extend((module, node.module, a.name) for a in node.names)
            elif isinstance(node, ast.Import):
                found.extend((module, a.name, "") for a in node.names
                             if a.name.startswith("platpass"))
    return found


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_nothing_below_cli_imports_cli() -> None:
    assert [(m, i) for m, i, _ in _imports()
            if _package(i) == "cli" and _package(m) not in ("cli", "__main__")] == []


def test_assembly_imports_neither_cli_nor_ops() -> None:
    assert [(m, i) for m, i, _ in _imports()
            if _package(m) == "assembly" and _package(i) in ("cli", "ops")] == []


def test_no_package_imports_another_packages_private_names() -> None:
    assert [(m, i, n) for m, i, n in _imports()
            if n.startswith("_") and not n.startswith("__") and _package(m) != _package(i)] == []
