"""The packages' imports point one way, as ../shared/DESIGN.md draws the layers:

    services  ->  training, evaluation  ->  data sources (shapesworld)  ->  router  ->  decoders, mllm

The graph is read from the source with `ast`: every `import` / `from ... import`, at module level and inside
functions, so a lazy import cannot hide an edge.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mllm", "decoders", "router", "shapesworld", "evaluation", "training", "services")
# package -> the project packages it may import (DESIGN.md: "Layout" and its layer drawing)
ALLOWED: dict[str, set[str]] = {
    "mllm": set(),
    "decoders": {"mllm"},
    "router": {"decoders", "mllm"},
    "shapesworld": {"router", "decoders", "mllm"},
    "evaluation": {"shapesworld", "router", "decoders", "mllm"},
    "training": {"evaluation", "shapesworld", "router", "decoders", "mllm"},
    "services": {"training", "evaluation", "shapesworld", "router", "decoders", "mllm"},
}
SERVING_ONLY = ("ray", "langchain", "langchain_core", "fastapi", "starlette")  # imported only in services/


def imported_modules(source: str) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in `source`, wherever it stands; relative ones are skipped."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module, node.lineno))
    return out


def import_graph(root: Path, packages: Iterable[str]) -> dict[str, dict[str, list[str]]]:
    """package -> top-level module it imports -> ["file:line", ...] (imports of itself left out)."""
    graph: dict[str, dict[str, list[str]]] = {}
    for pkg in packages:
        edges: dict[str, list[str]] = {}
        for path in sorted((root / pkg).rglob("*.py")):
            for module, line in imported_modules(path.read_text()):
                top = module.split(".")[0]
                if top != pkg:
                    edges.setdefault(top, []).append(f"{path.relative_to(root)}:{line}")
        graph[pkg] = edges
    return graph


def find_cycle(edges: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A cycle among the nodes of `edges` as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, str] = {}  # node -> "open" while on the current path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in edges.get(node, ()):
            if nxt not in edges:
                continue
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = "done"
        return None

    for node in edges:
        if node not in state and (found := visit(node)):
            return found
    return None


def package_edges(graph: Mapping[str, Mapping[str, list[str]]]) -> dict[str, set[str]]:
    return {pkg: {m for m in mods if m in graph} for pkg, mods in graph.items()}


# ---- the checks can fail ------------------------------------------------------------------------------------
def _write(root: Path, files: Mapping[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    _write(tmp_path, {
        "low/__init__.py": "",
        "low/a.py": "import numpy\n\ndef f():\n    from high.b import g  # lazy, still an edge\n    return g\n",
        "high/__init__.py": "",
        "high/b.py": "from low import a\n",
        "side/c.py": "import low.a\n",
    })
    graph = import_graph(tmp_path, ["low", "high", "side"])
    assert graph["low"] == {"numpy": ["low/a.py:1"], "high": ["low/a.py:4"]}
    assert find_cycle(package_edges(graph)) in (["low", "high", "low"], ["high", "low", "high"])
    _write(tmp_path, {"low/a.py": "import numpy\n"})
    assert find_cycle(package_edges(import_graph(tmp_path, ["low", "high", "side"]))) is None


def test_find_cycle_on_longer_loops():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None
    assert find_cycle({"a": ["a"]}) == ["a", "a"]


# ---- the project --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def graph():
    return import_graph(ROOT, PACKAGES)


def test_no_import_cycle_between_packages(graph):
    assert find_cycle(package_edges(graph)) is None


def test_imports_point_the_way_the_design_draws(graph):
    wrong = {f"{pkg} -> {dep}": sites for pkg, mods in graph.items() for dep, sites in mods.items()
             if dep in PACKAGES and dep not in ALLOWED[pkg]}
    assert not wrong, f"imports against DESIGN.md's layers: {wrong}"


def test_serving_libraries_only_in_services(graph):
    wrong = {f"{pkg} -> {dep}": sites for pkg, mods in graph.items() if pkg != "services"
             for dep, sites in mods.items() if dep in SERVING_ONLY}
    assert not wrong, f"ray / langchain / fastapi / starlette imported outside services/: {wrong}"


def test_every_package_is_checked():
    found = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench", "examples", "docs"}
    assert found <= set(PACKAGES), f"packages without a layer in this test: {sorted(found - set(PACKAGES))}"
