"""The import graph of our packages: the kernel and the auth and proxy plugins have no import circle.

Every import between a package's modules counts: at module level, inside a function, and under
``if TYPE_CHECKING:`` (a type hint naming the service class from a part it wires is a circle by
design; the parts see the service through ``teleport_auth.state`` / ``teleport_proxy.state``).
Importing ``a.b.c`` from outside ``a.b`` also runs ``a/b/__init__.py``: that counts as an import
of ``a.b``. The kernel has no circle either, and its folders (``pki``, ``policy``, ``state``,
``net``, ``api``, ``config``) import one another one way only (docs/architecture.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

import attrs
import pytest

#: the plugin packages that must have no import circle
ACYCLIC = ("teleport_auth", "teleport_proxy")


def installed(package: str) -> Path:
    """The folder holding ``package`` as it is imported (the checkout, or site-packages when the
    tests run against installed wheels)."""
    module = pytest.importorskip(package)
    assert module.__file__ is not None
    return Path(module.__file__).resolve().parent.parent


@attrs.frozen
class Import:
    source: str  # the importing module
    target: str  # the imported module of the same package
    kind: str  # "module", "function" or "typing" (under if TYPE_CHECKING)
    line: int

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({self.kind}, line {self.line})"


def package_modules(root: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` (under ``root``) by dotted name (a package by its own name)."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """The deepest module of ours ``name`` names ("" for none)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def imports(root: Path, package: str) -> tuple[set[str], list[Import]]:
    """The modules of ``package`` and every import between them."""
    modules = package_modules(root, package)
    found: list[Import] = []
    for name, path in modules.items():
        found.extend(module_imports(name, path, modules))
    return set(modules), found


def module_imports(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """The imports of module ``name`` (at ``path``) of other ``modules``."""
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def add(target: str, kind: str, line: int) -> None:
        target = _resolve(target, modules)
        if not target or target == name:
            return
        found.append(Import(name, target, kind, line))
        # importing a.b.c from outside a.b runs a/b/__init__.py first
        parent = target.rpartition(".")[0]
        while parent and not (name == parent or name.startswith(parent + ".")):
            found.append(Import(name, parent, kind, line))
            parent = parent.rpartition(".")[0]

    def visit(node: ast.AST, kind: str) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, kind, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = here.split(".")
                origin = ".".join(parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            for alias in node.names:
                submodule = f"{origin}.{alias.name}"
                add(submodule if submodule in modules else origin, kind, node.lineno)
        elif isinstance(node, ast.If) and _type_checking(node):
            for stmt in node.body:
                visit(stmt, "typing")
            for stmt in node.orelse:
                visit(stmt, kind)
        else:
            inner = "function" if kind == "module" and isinstance(
                node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) else kind
            for child in ast.iter_child_nodes(node):
                visit(child, inner)

    visit(ast.parse(path.read_text(), str(path)), "module")
    return found


def cycles(modules: set[str], edges: list[Import]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative), sorted."""
    graph: dict[str, list[str]] = {m: [] for m in sorted(modules)}
    for edge in edges:
        graph[edge.source].append(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def describe(found: list[list[str]], edges: list[Import]) -> str:
    lines = []
    for component in found:
        members = set(component)
        lines.append("circle: " + ", ".join(component))
        lines.extend(f"  {edge}" for edge in sorted(set(edges), key=str)
                     if edge.source in members and edge.target in members)
    return "\n".join(lines)


@pytest.mark.parametrize("package", sorted(ACYCLIC))
def test_plugin_has_no_import_circle(package: str) -> None:
    modules, edges = imports(installed(package), package)
    assert any(edge.kind == "typing" for edge in edges)  # the graph sees TYPE_CHECKING imports
    found = cycles(modules, edges)
    assert not found, f"import circles in {package}:\n{describe(found, edges)}"


def test_graph_finds_circles_of_every_kind(tmp_path: Path) -> None:
    """The checker itself: a circle through a function-level import, a TYPE_CHECKING import and a
    package's ``__init__`` is found; the same imports in one direction only are not."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub import leaf\n")
    (pkg / "sub" / "leaf.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "c.py").write_text("import pkg.sub.leaf\n")
    modules, edges = imports(tmp_path, "pkg")
    assert cycles(modules, edges) == []
    (pkg / "sub" / "leaf.py").write_text("from ..a import x\n")
    found = cycles(*imports(tmp_path, "pkg"))
    assert found == [["pkg.a", "pkg.b", "pkg.c", "pkg.sub", "pkg.sub.leaf"]]


def test_kernel_has_no_import_circle() -> None:
    modules, edges = imports(installed("teleport_core"), "teleport_core")
    assert "teleport_core.service" in modules
    found = cycles(modules, edges)
    assert not found, f"import circles in teleport_core:\n{describe(found, edges)}"


#: the kernel's folders whose imports must run one way (docs/architecture.md)
FOLDERS = ("api", "config", "net", "pki", "policy", "state")


def test_kernel_folders_import_one_way() -> None:
    """Between the kernel's folders imports run one way: no folder imports one that imports it."""
    _, edges = imports(installed("teleport_core"), "teleport_core")

    def folder(module: str) -> str:
        part = module.split(".")[1] if module.count(".") else ""
        return f"teleport_core.{part}" if part in FOLDERS else ""

    between = [Import(folder(e.source), folder(e.target), e.kind, e.line) for e in edges
               if folder(e.source) and folder(e.target) and folder(e.source) != folder(e.target)]
    found = cycles({f"teleport_core.{name}" for name in FOLDERS}, between)
    examples = [e for e in edges if any({folder(e.source), folder(e.target)} <= set(c) for c in found)]
    assert not found, f"folders importing each other: {found}\n" + "\n".join(map(str, examples))
