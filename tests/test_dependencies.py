"""Every third-party module the harness imports is declared in pyproject.toml (a fresh install must not depend on
what another package happened to pull in)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "defenses", "attacks", "tasks", "leaderboard")


def _imported_top_level_modules() -> dict[str, str]:
    """Top-level module name -> one file importing it, over the shipped packages."""
    found: dict[str, str] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def _declared_distributions() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    return {re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].lower().replace("_", "-") for req in requirements}


def test_every_imported_third_party_module_is_declared():
    first_party = set(PACKAGES)
    distributions = importlib.metadata.packages_distributions()
    declared = _declared_distributions()
    undeclared = []
    for module, where in _imported_top_level_modules().items():
        if module in sys.stdlib_module_names or module in first_party or module == "__future__":
            continue
        owners = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not owners & declared:
            undeclared.append(f"{module} (imported by {where}; distribution {', '.join(sorted(owners))})")
    assert not undeclared, "imported but not declared in pyproject.toml: " + "; ".join(undeclared)
