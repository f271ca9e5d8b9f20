"""The layers of docs/architecture.md hold: no module imports a higher layer, and no import cycle.

Imports under `if TYPE_CHECKING:` are left out: they only name types for the checker and run nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

CORE = Path(__file__).resolve().parent.parent / "tracer_core"
RANK = {"vocabulary": 0, "learning": 1, "observability": 2, "storage": 3, "serving": 4, "report": 5, "cli": 6}


def module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in RANK) else "vocabulary"


def runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """The tracer_core modules `path` imports when it runs (any depth, not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found & modules


def import_graph() -> nx.DiGraph:
    paths = {module_name(p): p for p in CORE.rglob("*.py")}
    graph = nx.DiGraph()
    for module, path in paths.items():
        graph.add_node(module)
        for target in runtime_imports(path, set(paths)) - {module}:
            graph.add_edge(module, target)
    return graph


def test_no_module_imports_a_higher_layer():
    graph = import_graph()
    upward = [f"{a} ({layer(a)}) imports {b} ({layer(b)})" for a, b in graph.edges
              if a != "tracer_core" and RANK[layer(b)] > RANK[layer(a)]]  # the package's face re-exports every layer
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    cycles = [sorted(c) for c in nx.strongly_connected_components(import_graph()) if len(c) > 1]
    assert not cycles, cycles


def test_every_module_belongs_to_a_known_layer():
    assert {layer(m) for m in import_graph().nodes} == set(RANK)
