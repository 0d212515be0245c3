"""The import rules between the packages (DESIGN §2, issue 9), read from the source with `ast`.

Every import counts: at module level or inside a function, absolute or relative, and `from pkg import name`
when `name` is a submodule. Importing `a.b.c` also runs the packages `a` and `a.b`, so those are edges too,
except a module's own parent packages: they are always running before the module itself.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("backend", "bikeguard", "firmware_sim", "gateway", "maps", "protocol")

# Which other top-level packages each package may import (DESIGN §2): protocol is the only code shared by the
# components; backend and gateway never import bikeguard (the command line, the demo and its service starter);
# maps take plain data and never import backend; bikeguard wires everything together.
ALLOWED = {
    "protocol": set(),
    "maps": {"protocol"},
    "firmware_sim": {"protocol"},
    "gateway": {"protocol"},
    "backend": {"protocol", "maps"},
    "bikeguard": set(PACKAGES),
}

Graph = dict[str, dict[str, int]]  # module -> {imported module: line of its first import}


def module_files(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Every module under the given top-level packages, by dotted name (a package by its __init__.py)."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _names(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    """The dotted names an import statement may load: the module itself and each `from` name under it."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def import_graph(modules: Mapping[str, Path]) -> Graph:
    """Which first-party modules each module imports, with the line of the first import."""
    graph: Graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for dotted in _names(node, package):
                parts = dotted.split(".")
                for i in range(1, len(parts) + 1):
                    target = ".".join(parts[:i])
                    if target in modules and target != name and not name.startswith(target + "."):
                        edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def strongly_connected(graph: Mapping[str, Mapping[str, int]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module: each holds at least one cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, {})):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def one_cycle(graph: Mapping[str, Mapping[str, int]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module, staying inside the component (breadth first)."""
    start, inside = component[0], set(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w not in inside or w in came_from:
                    continue
                came_from[w] = v
                if w == start:
                    path = [start]
                    while path[-1] != start or len(path) == 1:
                        path.append(came_from[path[-1]])
                    return path[::-1]
                following.append(w)
        frontier = following
    raise AssertionError(f"no cycle in the strongly connected component {component}")


def describe_cycle(graph: Graph, modules: Mapping[str, Path], cycle: list[str]) -> str:
    """`a (a.py:12) -> b (b.py:3) -> a`: each step with the line that imports the next module."""
    steps = [
        f"{a} ({modules[a].relative_to(REPO) if modules[a].is_relative_to(REPO) else modules[a]}:{graph[a][b]})"
        for a, b in zip(cycle, cycle[1:], strict=False)
    ]
    return " -> ".join([*steps, cycle[-1]])


def _package(name: str) -> str:
    return name.partition(".")[0]


def forbidden_imports(graph: Graph, modules: Mapping[str, Path], package: str) -> list[str]:
    """`file:line imports module` for each import from `package` into a package it may not import."""
    allowed = ALLOWED[package] | {package}
    return [
        f"{modules[name].relative_to(REPO)}:{line} imports {target}"
        for name, edges in sorted(graph.items())
        if _package(name) == package
        for target, line in sorted(edges.items())
        if _package(target) not in allowed
    ]


@pytest.fixture(scope="module")
def project() -> tuple[Graph, dict[str, Path]]:
    modules = module_files(REPO, PACKAGES)
    return import_graph(modules), modules


def test_every_package_has_its_import_rule():
    assert set(ALLOWED) == set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_what_its_layer_allows(project, package: str):
    graph, modules = project
    assert forbidden_imports(graph, modules, package) == [], f"{package} may import only {sorted(ALLOWED[package])}"


def test_no_import_cycles(project):
    graph, modules = project
    cycles = []
    for component in strongly_connected(graph):
        cycle = one_cycle(graph, component)
        more = f" (one of the cycles among {', '.join(component)})" if len(component) > len(cycle) - 1 else ""
        cycles.append(describe_cycle(graph, modules, cycle) + more)
    print("\n".join(cycles))
    assert cycles == []


def _write(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return module_files(root, {name.split("/")[0] for name in files})


def test_the_graph_sees_relative_submodule_and_function_level_imports(tmp_path: Path):
    modules = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from . import b\nfrom .sub import c as c_module\n",
            "pkg/b.py": "def later():\n    from pkg.sub.c import thing\n    return thing\n",
            "pkg/sub/__init__.py": "from ..a import x\n",
            "pkg/sub/c.py": "import os\nthing = os.sep\n",
            "other/__init__.py": "import pkg.b\n",
        },
    )
    graph = import_graph(modules)
    assert graph["pkg.a"] == {"pkg.b": 1, "pkg.sub": 2, "pkg.sub.c": 2}
    assert graph["pkg.b"] == {"pkg.sub": 2, "pkg.sub.c": 2}
    assert graph["pkg.sub"] == {"pkg.a": 1}  # its own parent `pkg` is already running
    assert graph["pkg.sub.c"] == {}
    assert graph["other"] == {"pkg": 1, "pkg.b": 1}


def test_a_cycle_is_found_and_printed_with_the_lines_that_close_it(tmp_path: Path):
    modules = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "import pkg.b\n",
            "pkg/b.py": "\ndef f():\n    from pkg import c\n",
            "pkg/c.py": "from .a import x\n",
            "pkg/d.py": "import pkg.a\n",
        },
    )
    graph = import_graph(modules)
    components = strongly_connected(graph)
    assert components == [["pkg.a", "pkg.b", "pkg.c"]]
    cycle = one_cycle(graph, components[0])
    assert cycle == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    text = describe_cycle(graph, modules, cycle)
    assert text == (
        f"pkg.a ({tmp_path / 'pkg/a.py'}:1) -> pkg.b ({tmp_path / 'pkg/b.py'}:3) -> "
        f"pkg.c ({tmp_path / 'pkg/c.py'}:1) -> pkg.a"
    )


def test_forbidden_imports_name_the_file_and_line():
    modules = {"maps.x": REPO / "maps/x.py", "backend.y": REPO / "backend/y.py", "protocol.z": REPO / "protocol/z.py"}
    graph: Graph = {"maps.x": {"backend.y": 7, "protocol.z": 8}, "backend.y": {"maps.x": 2}, "protocol.z": {}}
    assert forbidden_imports(graph, modules, "maps") == ["maps/x.py:7 imports backend.y"]
    assert forbidden_imports(graph, modules, "backend") == []
