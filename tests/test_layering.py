"""The map of docs/architecture.md held against the code: no import cycles, no import that points up its layers, and
every module of services/ in the map (and nothing in the map that is no module).

The layers are read from the drawing in docs/architecture.md ("Packages and their layers"): the bands between its
rules, bottom to top; a package may import its own band and the ones below. Each entry of a band is a package
(``worker/``, ``worker/routes/``: its modules listed after it) or top-level modules (``config.py``). Imports are read
with ``ast``, including those inside functions: a local import hides a cycle from Python's import machinery, not
from the design.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SERVICES = REPO / "services"
ARCHITECTURE = REPO / "docs" / "architecture.md"


def read_map(text: str) -> tuple[list[set[str]], set[str]]:
    """The drawing's layers, bottom first (each a set of packages; a top-level module is its own package), and every
    module it lists, as a path relative to services/ (``worker/routes/admin.py``, ``config.py``)."""
    drawing = text.split("## Packages and their layers", 1)[1].split("```", 2)[1]
    bands: list[set[str]] = [set()]
    modules: set[str] = set()
    folder = None  # the package whose modules the current lines list
    for line in drawing.splitlines():
        if not line.strip():
            continue
        if set(line.strip()) == {"─"}:
            bands.append(set())
            continue
        words = line.split()
        if not line.startswith("   "):  # a new entry: a package, or top-level modules
            folder = words[0] if words[0].endswith("/") else None
            if folder is None:
                for word in words:
                    if word.endswith(".py"):
                        modules.add(word)
                        bands[-1].add(word.removesuffix(".py"))
            else:
                bands[-1].add(folder.split("/")[0])
                words = words[1:]
        if folder is not None:
            modules.update(folder + word for word in words if re.fullmatch(r"[a-z_]+\.py", word))
    return [band for band in reversed(bands) if band], modules


LAYERS, MAPPED = read_map(ARCHITECTURE.read_text())
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
        named = node.module if isinstance(node, ast.ImportFrom) else names[0]
        if named and named.split(".")[0] == "services" and named not in MODULES:
            MISSING.append(f"{path.relative_to(REPO)}:{node.lineno} imports {named}")
    return found


MISSING: list[str] = []  # imports of a module that is not there (moved or renamed), as file:line
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


def upward(graph: dict[str, dict[str, str]], rank: dict[str, int]) -> list[tuple[int, str, str, str]]:
    """The imports of ``graph`` (package → imported package → where) that point up ``rank``."""
    return sorted((rank[a], a, b, where) for a, targets in graph.items() for b, where in targets.items()
                  if a in rank and b in rank and rank[b] > rank[a])


def test_the_scan_sees_the_imports_it_must_judge():
    assert {"services.config", "services.cli", "services.evaluation.report", "services.security.tokens"} <= set(MODULES)
    assert "services.config" in MODULE_GRAPH["services.security.tls"]
    local = MODULE_GRAPH["services.evaluation.cli"]  # report is imported inside a function there
    assert "services.evaluation.report" in local


def test_the_map_is_read_as_drawn_and_an_upward_import_is_caught():
    """The checks below can fail: the drawing's order reaches the test, and an import against it is found."""
    assert LAYERS[0] >= {"protocol", "config", "atomic"} and LAYERS[-1] == {"cli"}
    assert RANK["protocol"] < RANK["data"] < RANK["model"] < RANK["security"] < RANK["observability"] \
        < RANK["worker"] == RANK["aggregator"] < RANK["evaluation"] < RANK["cli"]
    assert {"worker/routes/admin.py", "worker/ingest/mqtt.py", "config.py", "replay_mqtt.py"} <= MAPPED
    assert upward({"protocol": {"data": "services/protocol/x.py:1"}}, RANK) == \
        [(RANK["protocol"], "protocol", "data", "services/protocol/x.py:1")]
    assert _cycles({"a": {"b": 1}, "b": {"a": 1}}) == [["a", "b", "a"]]


def test_every_import_names_a_module_that_exists():
    """A module moved to another package leaves no import of its old name behind (the scan above would count such
    an import as one of the old package and judge the layers by it)."""
    assert not MISSING, "imports of modules that do not exist:\n" + "\n".join(f"  {m}" for m in MISSING)


def test_every_module_is_in_the_map_and_the_map_names_only_modules():
    modules = {str(p.relative_to(SERVICES)) for p in SERVICES.rglob("*.py") if p.name != "__init__.py"}
    assert not modules - MAPPED, f"add these modules to docs/architecture.md's drawing: {sorted(modules - MAPPED)}"
    assert not MAPPED - modules, f"docs/architecture.md's drawing names what is no module: {sorted(MAPPED - modules)}"


def test_every_package_has_a_layer():
    unplaced = sorted({_package(m) for m in MODULES} - set(RANK) - {"services"})
    assert not unplaced, f"place these packages in docs/architecture.md's drawing: {unplaced}"


def test_no_import_cycle_between_packages():
    cycles = _cycles(PACKAGE_GRAPH)
    places = [", ".join(PACKAGE_GRAPH[a][b] for a, b in zip(c, c[1:], strict=False)) for c in cycles]
    assert not cycles, "package import cycles:\n" + "\n".join(
        f"  {' -> '.join(c)}   ({where})" for c, where in zip(cycles, places, strict=True))


def test_no_import_cycle_between_modules():
    cycles = _cycles(MODULE_GRAPH)
    assert not cycles, "module import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_import_points_up_the_layering():
    found = upward(PACKAGE_GRAPH, RANK)
    assert not found, "imports pointing up docs/architecture.md's layers:\n" + "\n".join(
        f"  {a} -> {b}   ({where})" for _, a, b, where in found)
