"""The shape of the package, kept by a test: imports point inward, with no circle; the core is pure; the
doors reach the store through its one front object; no store module grows past what a reader can hold."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "ledger"
# What the core may import besides itself: the standard library's pure parts (no files, sockets, processes,
# clocks of the machine, threads or databases).
PURE = {
    "__future__",
    "collections",
    "dataclasses",
    "datetime",
    "decimal",
    "enum",
    "functools",
    "heapq",
    "itertools",
    "json",
    "math",
    "operator",
    "re",
    "typing",
}
MAX_STORE_MODULE_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path) -> Iterator[str]:
    """Every module `name` imports, at any depth of the file (lazy and TYPE_CHECKING imports count)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {m for m in _imports(name, path) if m in modules and m != name}
        for name, path in modules.items()
    }


def test_the_import_graph_of_ledger_has_no_circle() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert cycles == []


def test_the_core_imports_nothing_but_itself_and_pure_standard_modules() -> None:
    modules = _modules()
    wrong = {
        name: sorted(
            m
            for m in _imports(name, path)
            if not m.startswith("ledger.core") and m != "ledger" and m.split(".")[0] not in PURE
        )
        for name, path in modules.items()
        if name.startswith("ledger.core")
    }
    assert {name: found for name, found in wrong.items() if found} == {}


def test_the_doors_use_the_store_through_the_ledger_object() -> None:
    """bus, events and the service wiring read results from ledger.core, never from store internals."""
    modules = _modules()
    reached = {
        name: sorted(
            m
            for m in _imports(name, path)
            if m.startswith("ledger.store.") and not m.startswith("ledger.store.ledger")
        )
        for name, path in modules.items()
        if name.startswith(("ledger.bus", "ledger.events"))
    }
    assert {name: found for name, found in reached.items() if found} == {}


def test_no_store_module_is_longer_than_a_reader_can_hold() -> None:
    lengths = {path.name: len(path.read_text().splitlines()) for path in (PACKAGE / "store").glob("*.py")}
    assert {name: n for name, n in lengths.items() if n > MAX_STORE_MODULE_LINES} == {}


def test_the_checks_see_every_module() -> None:
    """A guard on the guards: the walk finds the package's modules and their imports."""
    graph = _graph()
    assert "ledger.core.admission" in graph and "ledger.store.ledger" in graph
    assert "ledger.core.host" in graph["ledger.core.admission"]
    assert "ledger.store.admission" in graph["ledger.store.ledger"]
