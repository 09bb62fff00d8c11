"""The package's layout: no import loop inside ``pit_sampler``, and the core does not import the models.

The graph is read from the source (every import statement, also inside functions): an edge ``a -> b``
for each module ``b`` that ``a`` imports, and for ``b``'s parent packages (which run first).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"pit_sampler": ROOT / "pit_sampler", "pit_sampler.triton_kernels": ROOT / "triton_kernels"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _imports(tree: ast.Module):
    """Every import statement, also those inside functions (a lazy import is still a dependency, and
    one called at import time closes a loop as surely as a module-level one)."""
    return (node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)))


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        here = name if is_package else name.rpartition(".")[0]
        targets = set()
        for node in _imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
                continue
            base = here
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            base = (base + "." + node.module if node.module else base) if node.level else node.module
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.add(full if full in modules else base)
        edges = set()
        for target in targets:
            parts = target.split(".")
            for k in range(1, len(parts) + 1):  # the target and the packages above it
                step = ".".join(parts[:k])
                if step in modules and not (name == step or name.startswith(step + ".")):
                    edges.add(step)
        graph[name] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first search (each as the path that closes it)."""
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_the_cycle_finder_finds_a_loop():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert import_cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_sees_the_ops_registry_and_backends():
    graph = import_graph()
    assert "pit_sampler.backends.registry" in graph["pit_sampler.ops"]
    assert "pit_sampler.backends" in graph["pit_sampler.ops"]  # the parent package runs first
    assert "pit_sampler.backends.registry" in graph["pit_sampler.backends.native"]
    assert "pit_sampler.triton_kernels.sweep" in graph["pit_sampler.backends.triton"]


def test_no_import_loop_inside_the_package():
    assert import_cycles(import_graph()) == []


def test_the_sampler_library_does_not_import_the_shipped_models():
    graph = import_graph()
    core = [m for m in graph if not m.startswith("pit_sampler.models") and m != "pit_sampler.__main__"]
    assert not [(m, t) for m in core for t in graph[m] if t.startswith("pit_sampler.models")]
