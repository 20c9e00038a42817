"""The house's rules, read from the source: contracts → common → services, a service never imports
another, no import circle anywhere, modules and functions of one concept's size, and every ``>>>``
example in a docstring runs."""

from __future__ import annotations

import ast
import doctest
import importlib
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("contracts", "common", "services")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
        for path in sorted((ROOT / package).rglob("*.so")):  # compiled helpers (common/shm/_fence)
            found[_module_name(path).split(".cpython")[0].rsplit(".", 1)[0] + "." + path.name.split(".")[0]] = path
    return found


def _imports(name: str, path: Path) -> set[str]:
    """The repo modules ``name`` imports, at any depth of its body (``TYPE_CHECKING`` and function-level
    imports count: a circle hidden in either is still a circle of ideas). ``from package import module``
    depends on the module, not on the package's ``__init__``."""
    known = modules()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            submodules = {f"{source}.{alias.name}" for alias in node.names} & known.keys()
            found.update(submodules)
            if len(submodules) < len(node.names):
                found.add(source)
    return {module for module in found if module in known and module != name}


@cache
def import_graph() -> dict[str, frozenset[str]]:
    return {name: frozenset(_imports(name, path)) for name, path in modules().items() if path.suffix == ".py"}


def _circles(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan, iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in graph:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        circles.append(sorted(group))
    return circles


def test_the_circle_finder_finds_a_circle() -> None:
    graph = {"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"}), "d": frozenset({"a"})}
    assert _circles(graph) == [["a", "b", "c"]]
    assert _circles({"a": frozenset({"b"}), "b": frozenset()}) == []


def test_no_import_circle() -> None:
    assert _circles(import_graph()) == []


def test_layers_point_one_way() -> None:
    """contracts imports neither common nor services; common never imports a service; a service imports
    only itself, common and contracts."""

    def allowed(importer: str, imported: str) -> bool:
        layer, other = importer.split(".")[0], imported.split(".")[0]
        if layer == "contracts":
            return other == "contracts"
        if layer == "common":
            return other != "services"
        return other != "services" or imported.split(".")[1] == importer.split(".")[1]

    wrong = [f"{name} -> {other}" for name, imported in import_graph().items() for other in imported]
    wrong = [edge for edge in wrong if not allowed(*edge.split(" -> "))]
    assert wrong == []


def test_the_graph_sees_imports() -> None:
    """The checks above would pass on an empty graph: make sure it reads real edges."""
    graph = import_graph()
    assert "contracts.messages" in graph["contracts.codec"]
    assert any(module.startswith("common.") for module in graph["services.rules.service"])
    assert len(graph) > 80


def _modules_with_examples() -> list[str]:
    return [name for name, path in modules().items() if path.suffix == ".py" and ">>>" in path.read_text()]


@pytest.mark.parametrize("name", _modules_with_examples())
def test_docstring_examples_run(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A ``>>>`` example is documentation that can lie; run each one."""
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [test for test in finder.find(module, name) if test.examples]
    for test in tests:
        runner.run(test, out=sys.stdout.write)
    summary = runner.summarize(verbose=False)
    assert summary.attempted > 0, f"{name} has '>>>' but no example doctest can find"
    assert summary.failed == 0


# A module is one concept (supervision's rule); past these a module or a function has usually grown a
# second one. The largest today: the Panorama v0 SDK (one concept, 426 lines), ``SlotFill.fill`` (62).
MAX_MODULE_LINES = 430
MAX_FUNCTION_LINES = 70


def test_modules_and_functions_stay_small() -> None:
    too_long = []
    for name, path in modules().items():
        if path.suffix != ".py":
            continue
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert too_long == []
