"""The dependency rule of docs/architecture.md ("Layers"), checked on the source.

Every import of every module of ours is read with ``ast`` (no module is imported), and:

- each package imports only the packages below it: ``pipeline`` nothing of ours, ``models``,
  ``store`` and ``client`` only ``pipeline``, ``server`` those four, ``benchmarks`` everything but
  ``server`` (it reaches the server over HTTP/WS); ``cli`` is the composition root, the one place
  that may use both ``server`` and ``benchmarks``, and it imports ``server`` inside the commands
  that need it;
- no package has an import cycle among its modules (imports made at module level; those under
  ``if TYPE_CHECKING:`` or inside a function run later and cannot deadlock an import).

A failure names the offending import (module, line) or the cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "models", "store", "client", "server", "benchmarks", "cli")
ALLOWED: dict[str, frozenset[str]] = {
    "pipeline": frozenset(),
    "models": frozenset({"pipeline"}),
    "store": frozenset({"pipeline"}),
    "client": frozenset({"pipeline"}),
    "server": frozenset({"pipeline", "models", "store", "client"}),
    "benchmarks": frozenset({"pipeline", "models", "client"}),
    "cli": frozenset(PACKAGES),
}
LAZY_ONLY = {"cli": frozenset({"server"})}
"""Packages a package may import only inside functions (per command)."""


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the imported module, dotted
    line: int
    top_level: bool  # executed when the importing module is imported


def _modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        base = ROOT / package
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            yield name, path


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(nodes: list[ast.stmt], top_level: bool) -> Iterator[Import]:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Import(module, alias.name, node.lineno, top_level)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against the package
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    target = node.module or ""
                for alias in node.names:
                    # ``from pkg import mod`` imports the module pkg.mod when it is one
                    sub = f"{target}.{alias.name}"
                    name = sub if _module_path(sub) else target
                    yield Import(module, name, node.lineno, top_level)
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                yield from visit(node.body, False)
                yield from visit(node.orelse, top_level)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                yield from visit(getattr(node, "body", []), False)
            elif isinstance(node, ast.ClassDef):
                yield from visit(node.body, top_level)
            elif isinstance(node, ast.If | ast.Try | ast.With | ast.For | ast.While):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    children = getattr(node, field, [])
                    for child in children:
                        if isinstance(child, ast.ExceptHandler):
                            yield from visit(child.body, top_level)
                    yield from visit([c for c in children if isinstance(c, ast.stmt)], top_level)

    yield from visit(tree.body, True)


def _module_path(dotted: str) -> Path | None:
    path = ROOT.joinpath(*dotted.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def _all_imports() -> list[Import]:
    return [imp for name, path in _modules() for imp in _imports(name, path)]


def test_packages_import_only_the_layers_below_them() -> None:
    violations = []
    for imp in _all_imports():
        source, target = imp.module.split(".")[0], imp.target.split(".")[0]
        if target not in PACKAGES or target == source:
            continue
        where = f"{imp.module}:{imp.line} imports {imp.target}"
        if target not in ALLOWED[source]:
            violations.append(f"{where} ({source} may import {sorted(ALLOWED[source]) or 'none'})")
        elif imp.top_level and target in LAZY_ONLY.get(source, ()):
            violations.append(f"{where} at module level ({source} imports {target} per command)")
    assert not violations, "\n".join(violations)


def test_no_package_has_an_import_cycle() -> None:
    graph: dict[str, set[str]] = {name: set() for name, _ in _modules()}
    for imp in _all_imports():
        if imp.top_level and imp.target in graph and imp.target != imp.module:
            graph[imp.module].add(imp.target)
    cycles = [c for c in _strongly_connected(graph) if len(c) > 1]
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(sorted(c)) for c in cycles)


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative enough for a few hundred modules)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            out.append(component)

    for node in graph:
        if node not in index:
            connect(node)
    return out


def test_the_checker_sees_a_violation_and_a_cycle(tmp_path: Path) -> None:
    # the rule is only as good as the parser: a planted upward import and a planted cycle
    bad = tmp_path / "bad.py"
    bad.write_text("from server.app import create_app\nif TYPE_CHECKING:\n    import models\n")
    found = list(_imports("pipeline.bad", bad))
    assert [(i.target, i.top_level) for i in found] == [("server.app", True), ("models", False)]
    assert _strongly_connected({"a": {"b"}, "b": {"a"}, "c": set()}) == [["b", "a"], ["c"]]


def test_every_route_module_is_served() -> None:
    from server.app import ROUTERS

    served = {router.routes[0].endpoint.__module__ for router in ROUTERS if router.routes}
    modules = {f"server.{p.stem}" for p in (ROOT / "server").glob("routes_*.py")}
    assert modules <= served, f"route modules not in server.app.ROUTERS: {modules - served}"


@pytest.mark.parametrize("package", PACKAGES)
def test_no_code_cites_a_document_outside_the_repository(package: str) -> None:
    base = ROOT / package
    if not base.is_dir():
        pytest.skip(f"no {package} package yet")
    cited = [p for p in base.rglob("*") if p.is_file() and "ARCHITECTURE.md" in _text(p)]
    assert not cited, f"cite docs/architecture.md instead: {cited}"


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return ""
