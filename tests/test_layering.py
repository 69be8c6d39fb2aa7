"""Top-level folders import each other in one direction only; a class name means one thing.

Allowed direction (a folder may import only folders listed before it)::

    pbkv (core: trace format, registry, CLI)  <-  v1 (generated protobuf)  <-  predictor
      <-  training  <-  cache_manager  <-  dashboard  <-  service  <-  engine_adapter  <-  bench

Every ``import``/``from`` line counts, including function-local and ``TYPE_CHECKING`` ones:
a lazy import still ties the two folders together.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# import name (after ``pbkv.``) -> folder; ``pbkv.<anything else>`` is the core folder pbkv/
FOLDERS = {
    "predictor": "predictor",
    "cache_manager": "cache_manager",
    "engine_adapter": "engine_adapter",
    "training": "training",
    "service": "service",
    "dashboard": "dashboard",
    "bench": "bench",
    "v1": "v1",
}
LAYERS = (
    "pbkv",
    "v1",
    "predictor",
    "training",
    "cache_manager",
    "dashboard",
    "service",
    "engine_adapter",
    "bench",
)
SOURCES = {
    "pbkv": "pbkv",
    "predictor": "predictor",
    "training": "training",
    "cache_manager": "cache_manager",
    "dashboard": "dashboard",
    "service": "service",
    "engine_adapter": "engine_adapter",
    "bench": "bench",
}  # v1 is generated


def imported_folder(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "pbkv":
        return None
    return FOLDERS.get(parts[1], "pbkv") if len(parts) > 1 else "pbkv"


def folder_edges(root: Path = ROOT) -> dict[tuple[str, str], list[str]]:
    """(importing folder, imported folder) -> the ``file:line`` of every such import."""
    edges: dict[tuple[str, str], list[str]] = {}
    for folder, path in SOURCES.items():
        for file in sorted((root / path).rglob("*.py")):
            for node in ast.walk(ast.parse(file.read_text(), str(file))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    target = imported_folder(module)
                    if target is not None and target != folder:
                        where = f"{file.relative_to(root)}:{node.lineno}"
                        edges.setdefault((folder, target), []).append(where)
    return edges


def find_cycles(edges: dict[tuple[str, str], list[str]]) -> list[list[str]]:
    """Strongly connected components with more than one folder (each one a cycle)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_find_cycles_reports_a_two_folder_cycle_and_ignores_a_chain() -> None:
    edges = {("a", "b"): ["a.py:1"], ("b", "a"): ["b.py:2"], ("b", "c"): ["b.py:3"]}
    assert find_cycles(edges) == [["a", "b"]]
    assert find_cycles({("a", "b"): ["x"], ("b", "c"): ["y"]}) == []


def test_imported_folder_maps_import_names_to_folders() -> None:
    assert imported_folder("pbkv.trace") == "pbkv"
    assert imported_folder("pbkv") == "pbkv"
    assert imported_folder("pbkv.engine_adapter.sim.attach") == "engine_adapter"
    assert imported_folder("pbkv.v1.pbkv_pb2") == "v1"
    assert imported_folder("grpc") is None


def test_no_import_cycle_between_top_level_folders() -> None:
    edges = folder_edges()
    assert ("training", "predictor") in edges  # the scan does see imports
    cycles = find_cycles(edges)
    detail = {
        c: [w for (a, b), ws in edges.items() if a in c and b in c for w in ws]
        for c in map(tuple, cycles)
    }
    assert cycles == [], f"folder import cycles: {detail}"


def test_imports_follow_the_layer_order() -> None:
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = {f"{a} -> {b}": where for (a, b), where in folder_edges().items() if rank[b] > rank[a]}
    assert upward == {}, "imports against the layer order (see the module docstring)"


def test_no_class_name_is_defined_twice_in_the_source() -> None:
    where: dict[str, list[str]] = {}
    for path in SOURCES.values():
        for file in sorted((ROOT / path).rglob("*.py")):
            for node in ast.parse(file.read_text(), str(file)).body:
                if isinstance(node, ast.ClassDef):
                    where.setdefault(node.name, []).append(str(file.relative_to(ROOT)))
    assert {name: files for name, files in where.items() if len(files) > 1} == {}
