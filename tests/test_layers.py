"""The layer order docs/extending.md states, held by the imports themselves: a module imports
only its own package and the packages below it, and no library module imports a script."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

# Bottom first; a package may import those before it (models and losses share a layer).
LAYERS = [("utils",), ("dataset",), ("models", "losses"), ("evaluators",), ("training",), ("runconfig",), ("pipelines",)]
LEVEL = {package: level for level, packages in enumerate(LAYERS) for package in packages}
SCRIPTS = {path.stem for path in ROOT.glob("*.py")}


def imported_packages(path: Path) -> set[str]:
    """The top-level names a module imports (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_module_imports_a_layer_above_it_or_a_script():
    wrong = []
    for package, level in LEVEL.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in sorted(imported_packages(path)):
                if name in SCRIPTS:
                    wrong.append(f"{path.relative_to(ROOT)} imports the script {name}.py")
                elif LEVEL.get(name, -1) > level:
                    wrong.append(f"{path.relative_to(ROOT)} ({package}) imports {name}, a layer above it")
    assert not wrong, "\n".join(wrong)


def test_every_library_package_has_a_layer():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench", "conf", "docs"}
    assert packages <= set(LEVEL), packages - set(LEVEL)
