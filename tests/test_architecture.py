"""The package map holds: no import circles, and the domain library loads without Airflow.

Read from the source with ``ast``, so the test needs no imports of its own and names the
file and line to fix. Every import counts for circles, at module level or inside a
function: a lazy import that closes a circle still ties the two modules together, and
hides the circle from whoever reads only the top of the file. Importing a submodule
(``mai_ops.cli.models``) is not counted as importing its package's ``__init__``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import PROJECT

PACKAGES = ("mai_ops", "mai_ops_airflow")
AIRFLOW = ("airflow", "mai_ops_airflow")  # mai_ops_airflow imports Airflow on load


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the module it imports (dotted)
    line: int
    top_level: bool  # runs when the importing module is loaded


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((PROJECT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, known: set[str]) -> list[Import]:
    """Every import in ``path``, each import of a project module resolved to that module."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, top_level: bool) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            top_level = False
        if isinstance(node, ast.Import):
            found.extend(Import(module, a.name, node.lineno, top_level) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, module, is_package)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                target = sub if sub in known else base  # `from pkg import submodule`
                found.append(Import(module, target, node.lineno, top_level))
        for child in ast.iter_child_nodes(node):
            visit(child, top_level)

    visit(tree, True)
    return found


def import_graph() -> tuple[dict[str, set[str]], list[Import]]:
    modules = project_modules()
    known = set(modules)
    every = [imp for name, path in modules.items() for imp in imports_of(name, path, known)]
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for imp in every:
        if imp.target in known and imp.target != imp.module:
            graph[imp.module].add(imp.target)
    return graph, every


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per back edge found by a depth-first search (empty when there is none)."""
    cycles: list[list[str]] = []
    state: dict[str, str] = {}  # "open" while on the DFS stack, then "done"
    stack: list[str] = []

    def dfs(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            dfs(node)
    return cycles


def test_the_cycle_finder_finds_direct_and_longer_circles():
    assert find_cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_the_import_reader_sees_lazy_relative_and_submodule_imports(tmp_path):
    source = (
        "from mai_ops.cli import models\n"
        "def f():\n"
        "    import mai_ops.tasks\n"
        "    from . import layout\n"
    )
    path = tmp_path / "x.py"
    path.write_text(source)
    known = {"mai_ops.cli", "mai_ops.cli.models", "mai_ops.tasks", "mai_ops.infra.layout"}
    found = imports_of("mai_ops.infra.x", path, known)
    assert [(i.target, i.top_level) for i in found] == [
        ("mai_ops.cli.models", True),
        ("mai_ops.tasks", False),
        ("mai_ops.infra.layout", False),
    ]


def test_the_graph_covers_the_packages():
    graph, _ = import_graph()
    assert {"mai_ops.tasks", "mai_ops.cli", "mai_ops.infra.layout", "mai_ops_airflow"} <= set(graph)
    assert "mai_ops.infra.layout" in graph["mai_ops.submissions.intake"]


def test_no_two_modules_import_each_other_directly_or_in_a_circle():
    graph, _ = import_graph()
    circles = [" -> ".join(c) for c in find_cycles(graph)]
    assert circles == [], "import circles:\n" + "\n".join(circles)


def test_mai_ops_does_not_import_airflow_at_module_level():
    _, every = import_graph()
    offenders = [
        f"{imp.module} line {imp.line}: imports {imp.target}"
        for imp in every
        if imp.top_level
        and not imp.module.startswith("mai_ops_airflow")
        and imp.target.split(".")[0] in AIRFLOW
    ]
    assert offenders == [], "\n".join(offenders)


def test_loading_every_mai_ops_module_leaves_airflow_unloaded():
    """The same rule, as Python sees it: nothing pulls Airflow in on the way."""
    names = sorted(
        n
        for n in project_modules()
        if n.split(".")[0] == "mai_ops" and not n.endswith(".__main__")  # a program, it runs
    )
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {set(AIRFLOW)!r}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
