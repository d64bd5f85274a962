"""The package's imports: arrows run one way (flows -> storage -> tasks, benchmarks -> flows) and no
module imports itself back through others, counting imports inside functions too (a lazy import
is how a loop hides)."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tasks", "storage", "flows", "benchmarks")
# what each package may import from the others: lower layers only
ALLOWED = {
    "tasks": set(),
    "storage": {"tasks"},
    "flows": {"storage", "tasks"},
    "benchmarks": {"flows", "storage", "tasks"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports (``from a.b import c`` counts ``a.b.c`` when that is a
    module, else ``a.b``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    files = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    modules = {_module_name(p) for p in files}
    # a package's __init__ is not an edge worth following: importing a.b.c runs a/__init__ first
    return {_module_name(p): _imports(p, modules) - {_module_name(p)} for p in files}


GRAPH = _graph()


def test_the_graph_sees_the_package():
    assert {"flows.retrain", "tasks.models.registry", "storage.publish", "tasks.data.parse"} <= set(GRAPH)
    assert "tasks.models.base" in GRAPH["tasks.models.blend"]  # the blend fits its parts through base.fit
    assert "storage.publish" in GRAPH["flows.retrain"]


@pytest.mark.parametrize("package", PACKAGES)
def test_arrows_run_one_way(package):
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if module.split(".")[0] == package
        for target in targets
        if target.split(".")[0] != package and target.split(".")[0] not in ALLOWED[package]
    )
    assert upward == []


def test_no_import_cycle():
    graphlib.TopologicalSorter(GRAPH).prepare()  # raises CycleError naming the loop
