"""The packages' layering: `deploy` wires `ingest_api` and `consumer`, those use `schemas`, nothing imports
upward. Every module of each checked package is read with ast (imports at the top, in functions and under
TYPE_CHECKING alike, relative ones resolved), and checked against the packages it must not import; and no
two modules of the checked packages import each other, directly or round a longer loop.

Checking another package is one line in MUST_NOT_IMPORT."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package -> the top-level packages none of its modules may import.
MUST_NOT_IMPORT: dict[str, set[str]] = {
    "schemas": {"consumer", "ingest_api", "deploy"},
    "consumer": {"ingest_api", "deploy"},
    "ingest_api": {"consumer", "deploy"},
    # deploy wires everything below it; it is checked for cycles.
    "deploy": set(),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: str) -> dict[str, Path]:
    return {module_name(path): path for path in sorted((ROOT / package).rglob("*.py"))}


def imported(source: str, module: str, is_package: bool) -> set[str]:
    """Every name `module` imports, as absolute dotted names: `import a.b` gives a.b; `from a import b` gives
    a.b (the submodule, or the name b of package a: both mean depending on a)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            names.update(f"{prefix}.{alias.name}" for alias in node.names)
    return names


def resolve(name: str, known: set[str]) -> str | None:
    """The module of the checked packages that `name` is, or is in (a.b.c → a.b if a.b is a module)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of the checked packages it imports."""
    found = {name: path for package in MUST_NOT_IMPORT for name, path in modules(package).items()}
    graph = {}
    for name, path in found.items():
        names = imported(path.read_text(encoding="utf-8"), name, path.name == "__init__.py")
        graph[name] = {target for n in names if (target := resolve(n, set(found))) not in (None, name)}
    return graph


@pytest.mark.parametrize("package", sorted(MUST_NOT_IMPORT))
def test_no_module_imports_upward(package):
    wrong = {}
    for name, path in modules(package).items():
        names = imported(path.read_text(encoding="utf-8"), name, path.name == "__init__.py")
        upward = sorted(n for n in names if n.split(".")[0] in MUST_NOT_IMPORT[package])
        if upward:
            wrong[str(path.relative_to(ROOT))] = upward
    assert wrong == {}, f"{package}/ must not import {sorted(MUST_NOT_IMPORT[package])}"


def test_no_import_cycles():
    graph = import_graph()
    cycles, done, path = [], set(), []

    def visit(module: str) -> None:
        if module in path:
            cycles.append(path[path.index(module) :] + [module])
            return
        if module in done:
            return
        path.append(module)
        for target in sorted(graph.get(module, ())):
            visit(target)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    assert cycles == [], " ; ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_walk_sees_every_kind_of_import():
    """The checks above would pass vacuously if imports were missed: a function-level import, a relative
    one, and one under TYPE_CHECKING are all found."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from deploy.settings import Settings\n"
        "def f():\n    import ingest_api.errors\n    from .worker import Worker\n    from . import rows\n"
    )
    names = imported(source, "consumer.batch", is_package=False)
    assert {
        "deploy.settings.Settings",
        "ingest_api.errors",
        "consumer.worker.Worker",
        "consumer.rows",
    } <= names
    known = {"consumer.worker", "consumer.rows", "consumer"}
    assert resolve("consumer.worker.Worker", known) == "consumer.worker"
    assert imported("from .queue import Record\n", "schemas", is_package=True) == {"schemas.queue.Record"}
    graph = import_graph()
    assert "schemas.queue" in graph["consumer.worker"] and "schemas.warehouse" in graph["schemas.migrations"]
