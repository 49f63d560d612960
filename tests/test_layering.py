"""The package layout is the architecture: each wing imports only the wings below it.

grids < models < (recipe, strategies, zoo) < training < analysis < c2f < cli, with ``errors`` under
all of them.  Read from the source with ``ast`` (lazy imports inside functions count too)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mres"

# rank of each room; a module may import rooms of its own rank or lower
RANKS = {"errors": 0, "grids": 1, "models": 2, "strategies": 3, "recipe": 3, "zoo": 3,
         "training": 4, "analysis": 5, "c2f": 6, "cli": 7, "__main__": 7,
         "__init__": 0}  # the root holds only __version__ and imports nothing
TOP_LEVEL = {"__init__", "__main__", "recipe", "strategies", "zoo", "errors"}


def room(module: str) -> str:
    """'mres.grids.operators' -> 'grids'; 'mres' itself -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute mres module) for every import of mres in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "mres"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "mres":
                continue
            if target == "mres":  # `from mres import grids`: the names are rooms; __version__ is the root's
                found += [(node.lineno, "mres" if a.name.startswith("__") else f"mres.{a.name}")
                          for a in node.names]
            else:
                found.append((node.lineno, target))
    return found


def upward_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    here = room(module)
    bad = []
    for line, target in imported_modules(source, module, is_package):
        there = room(target)
        if there not in RANKS:
            bad.append(f"{module}:{line} imports {target}: unknown room {there!r}")
        elif RANKS[there] > RANKS[here]:
            bad.append(f"{module}:{line} imports {target} ({there} is above {here})")
    return bad


def package_modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        yield path, ".".join(parts[:-1] if is_package else parts), is_package


def test_no_wing_imports_a_wing_above_it():
    bad = []
    for path, module, is_package in package_modules():
        assert room(module) in RANKS, f"{path}: new room {room(module)!r} has no rank in this test"
        bad += upward_imports(path.read_text(), module, is_package)
    assert not bad, "upward imports:\n" + "\n".join(bad)


@pytest.mark.parametrize("source, module", [
    ("from ..training.fit import fit\n", "mres.grids.transfer"),           # grids -> training
    ("def f():\n    from ..c2f import job\n", "mres.analysis.runner"),   # lazy, analysis -> c2f
    ("from mres.cli import app\n", "mres.c2f.report"),                    # absolute, c2f -> cli
    ("from .. import recipe\n", "mres.models.cnn"),                       # models -> recipe
    ("from mres import zoo\n", "mres", ),                                 # the root imports nothing
])
def test_the_check_catches_an_upward_import(source, module):
    assert upward_imports(source, module, is_package=module == "mres"), "an upward import went unnoticed"


def test_downward_and_sideways_imports_pass():
    assert not upward_imports("from ..grids.operators import FAMILIES\nfrom .fit import fit\n",
                              "mres.training.data")
    assert not upward_imports("from . import landscape\n", "mres.analysis.runner")


def test_top_level_holds_only_the_shared_modules():
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top <= TOP_LEVEL, f"modules outside a wing: {sorted(top - TOP_LEVEL)}"
