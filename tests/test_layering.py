"""No import cycles and no import that points up the layering, read from the source of every module under services/.

Imports are read with ``ast``, including those inside functions: a local import hides a cycle from Python's import
machinery, not from the design. Layers, bottom to top (a package may import its own layer and the ones below):

    protocol, config, atomic, logs, faults, machine, data, model
    security
    observability      metrics, logging context and dashboard pages the services push to (it imports no
                       aggregator or worker internals), so it sits below them
    aggregator, worker
    evaluation         drives the aggregator's and the workers' own code
    cli
"""

from __future__ import annotations

import ast
from pathlib import Path

SERVICES = Path(__file__).resolve().parent.parent / "services"

LAYERS = [
    {"protocol", "config", "atomic", "logs", "faults", "machine", "data", "model"},
    {"security"},
    {"observability"},
    {"aggregator", "worker"},
    {"evaluation", "replay", "replay_mqtt"},
    {"cli"},
]
RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SERVICES.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(SERVICES.rglob("*.py"))}


def _package(module: str) -> str:
    """services.data.skab -> data, services.config -> config (a top-level module is its own package)."""
    return module.split(".")[1] if module.count(".") else module


def _resolve(name: str) -> str:
    """The longest prefix of ``name`` that is one of our modules (``services.config.REPO_ROOT`` -> services.config)."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(path: Path) -> dict[str, int]:
    """Our modules imported anywhere in ``path`` (module scope or inside functions), each with its first line."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import; write services.… in full"
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "services":
                target = _resolve(name)
                found[target] = min(found.get(target, node.lineno), node.lineno)
    return found


MODULE_GRAPH = {module: _imports(path) for module, path in MODULES.items()}


def _package_graph() -> dict[str, dict[str, str]]:
    """package -> imported package -> one place that imports it (file:line), for the messages."""
    graph: dict[str, dict[str, str]] = {}
    for module, targets in MODULE_GRAPH.items():
        mine = _package(module)
        for target, line in targets.items():
            theirs = _package(target)
            if theirs != mine:
                graph.setdefault(mine, {}).setdefault(theirs, f"{MODULES[module].relative_to(SERVICES.parent)}:{line}")
    return graph


PACKAGE_GRAPH = _package_graph()


def _cycles(graph: dict[str, dict[str, str]] | dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one node (Tarjan), as a path a -> b -> ... -> a."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    cycles = []
    for component in components:
        start = min(component)
        path, seen = [start], {start}
        while True:  # walk inside the component until a node repeats
            nxt = min(n for n in graph[path[-1]] if n in component)
            if nxt in seen:
                cycles.append(path[path.index(nxt):] + [nxt])
                break
            path.append(nxt)
            seen.add(nxt)
    return cycles


def test_the_scan_sees_the_imports_it_must_judge():
    assert {"services.config", "services.cli", "services.evaluation.report", "services.security.tokens"} <= set(MODULES)
    assert "services.config" in MODULE_GRAPH["services.security.tls"]
    local = MODULE_GRAPH["services.evaluation.cli"]  # report is imported inside a function there
    assert "services.evaluation.report" in local


def test_every_package_has_a_layer():
    unplaced = sorted({_package(m) for m in MODULES} - set(RANK) - {"services"})
    assert not unplaced, f"place these packages in LAYERS: {unplaced}"


def test_no_import_cycle_between_packages():
    cycles = _cycles(PACKAGE_GRAPH)
    places = [", ".join(PACKAGE_GRAPH[a][b] for a, b in zip(c, c[1:], strict=False)) for c in cycles]
    assert not cycles, "package import cycles:\n" + "\n".join(
        f"  {' -> '.join(c)}   ({where})" for c, where in zip(cycles, places, strict=True))


def test_no_import_cycle_between_modules():
    cycles = _cycles(MODULE_GRAPH)
    assert not cycles, "module import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_import_points_up_the_layering():
    upward = sorted((RANK[a], a, b, where) for a, targets in PACKAGE_GRAPH.items() for b, where in targets.items()
                    if a in RANK and b in RANK and RANK[b] > RANK[a])
    assert not upward, "imports pointing up the layering:\n" + "\n".join(
        f"  {a} -> {b}   ({where})" for _, a, b, where in upward)

