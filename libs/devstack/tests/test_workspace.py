"""Each workspace package declares the sibling packages its code imports (issue 8: the pytest
plugin imported the API undeclared), and no service imports another service (DESIGN)."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
MEMBERS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["uv"]["workspace"]["members"]


def _project(member: str) -> dict:
    return tomllib.loads((ROOT / member / "pyproject.toml").read_text())


def _packages() -> dict[str, str]:
    """Import package -> distribution name, for every member."""
    out = {}
    for member in MEMBERS:
        data = _project(member)
        for pkg in data["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]:
            out[pkg] = data["project"]["name"]
    return out


def _imported(member: str, own: str) -> set[str]:
    """Sibling packages the member's product code imports (its tests excluded)."""
    found: set[str] = set()
    for path in (ROOT / member / own).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            else:
                continue
            found |= {n.split(".")[0] for n in names if n.startswith("celery_stack_")}
    return found - {own}


@pytest.mark.parametrize("member", MEMBERS)
def test_a_member_declares_every_sibling_it_imports(member):
    packages = _packages()
    data = _project(member)
    own = data["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"][0]
    declared = {re.split(r"[<>=!~ \[;]", d)[0] for d in data["project"].get("dependencies", [])}
    missing = {packages[p] for p in _imported(member, own) if packages[p] not in declared}
    assert not missing, f"{member} imports {sorted(missing)} without declaring them"
    if member.startswith("services/"):
        services = {packages[p] for p in _imported(member, own)} - {"celery-stack-core"}
        assert not services, f"{member} imports another service: {sorted(services)}"


def _product_files() -> list[Path]:
    out = []
    for member in MEMBERS:
        own = _project(member)["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"][0]
        out += sorted((ROOT / member / own).rglob("*.py"))
    return out


def test_no_attribute_is_looked_up_by_a_built_name():
    """Issue 8: settings such as COUNTERS_PREFETCH were reached only through
    getattr(settings, f"{queue.upper()}_..."), which grep never finds. A name built at run time
    (an f-string, a concatenation, a .format) as getattr's name is refused in product code."""
    built = (ast.JoinedStr, ast.BinOp, ast.Call)
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in _product_files()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in {"getattr", "setattr", "hasattr"}
        and len(node.args) >= 2
        and isinstance(node.args[1], built)
    ]
    assert not found, found
