"""The package's import graph: data flows one way, so no module imports its way back to itself.

Edges are read from the source with `ast`: imports at module level and under ``TYPE_CHECKING`` must form
no cycle at all; counting the imports deferred into functions too, no cycle may run through more than 6
modules (a deferred import is how a convenience such as ``Effects.heatmap`` reaches a higher layer).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vlmlens"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def resolve(name: str) -> str | None:
    """The vlmlens module an imported name belongs to (``vlmlens.models.vlm.VLM`` -> ``vlmlens.models.vlm``)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def edges(deferred: bool) -> dict[str, set[str]]:
    """Module -> the vlmlens modules it imports (at module level and under TYPE_CHECKING; with
    ``deferred``, also inside functions)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node, in_function in walk(tree, False):
            if in_function and not deferred:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            else:
                continue
            for target in targets:
                found = resolve(target)
                if found and found != module and not module.startswith(found + "."):
                    graph[module].add(found)
    return graph


def walk(node: ast.AST, in_function: bool):
    for child in ast.iter_child_nodes(node):
        inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield child, inside
        yield from walk(child, inside)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_module_level_and_type_checking_imports_form_no_cycle():
    assert cycles(edges(deferred=False)) == []


def test_deferred_imports_close_no_cycle_of_more_than_six_modules():
    big = [c for c in cycles(edges(deferred=True)) if len(c) > 6]
    assert big == [], big


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


@pytest.mark.parametrize("low, high", [("vlmlens.batch", "vlmlens.evaluate"), ("vlmlens.metrics", "vlmlens.engine"),
                                       ("vlmlens.interventions", "vlmlens.engine"),
                                       ("vlmlens.layout", "vlmlens.models.vlm")])
def test_low_layers_never_import_high_ones(low, high):
    graph = edges(deferred=True)
    assert high not in graph[low]
