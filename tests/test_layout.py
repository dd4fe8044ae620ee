"""The architecture's rules, read from the imports of every module (see ARCHITECTURE.md).

Each folder of the design card is one sub-package of the ``vigil`` namespace (pyproject's
package-dir). The arrows point one way: the server uses the engine and storage; the engine and
storage never use the server; jobs never use the API; the client uses only the contract.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

#: What vigil-client may import besides itself, vigil.v1 and the standard library.
CLIENT_DEPENDENCIES = {
    "grpc",
    "google.protobuf",
    "google.rpc",
    "jwt",
    "cryptography",
    "standardwebhooks",
    "shtab",
}
#: Optional imports of the client, made inside the functions that need them (`vigil stream`).
CLIENT_OPTIONAL = {"av", "cv2"}
#: All storage may take from the engine: the error hierarchy and the model identities.
STORAGE_FROM_INFERENCE = {"vigil.inference.errors", "vigil.inference.catalog"}


def package_dirs() -> dict[str, Path]:
    """vigil sub-package → folder, from both distributions' package-dir."""
    found: dict[str, Path] = {}
    for project in (ROOT / "pyproject.toml", ROOT / "clients" / "pyproject.toml"):
        mapping = tomllib.loads(project.read_text())["tool"]["setuptools"]["package-dir"]
        for package, folder in mapping.items():
            found[package] = (project.parent / folder).resolve()
    return found


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # what it imports (a module, or a name's module)
    line: int
    top_level: bool  # at module level (not inside a function or a TYPE_CHECKING block)


def modules() -> dict[str, Path]:
    """Every module of the vigil namespace (generated code and migrations left out)."""
    found: dict[str, Path] = {}
    dirs = package_dirs()
    for package, folder in dirs.items():
        for path in folder.rglob("*.py"):
            relative = path.relative_to(folder).with_suffix("")
            parts = list(relative.parts)
            if "migrations" in parts or path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue
            if any(p in ("build", "tests") or p.endswith(".egg-info") for p in parts):
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, path: Path, is_package: bool, known: dict[str, Path]) -> Iterator[Import]:
    tree = ast.parse(path.read_text(), str(path))
    base = name if is_package else name.rpartition(".")[0]

    def visit(nodes: list[ast.stmt], top: bool) -> Iterator[Import]:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Import(name, alias.name, node.lineno, top)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base.rsplit(".", node.level - 1)[0] if node.level > 1 else base
                    module = f"{anchor}.{node.module}" if node.module else anchor
                else:
                    module = node.module or ""
                for alias in node.names:
                    submodule = f"{module}.{alias.name}"
                    # `from package import submodule` takes the submodule, not a package name
                    target = submodule if submodule in known else module
                    yield Import(name, target, node.lineno, top)
            elif isinstance(node, ast.If) and _is_type_checking(node):
                yield from visit(node.orelse, top)  # the guarded body never runs
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield from visit(node.body, False)
            elif isinstance(node, ast.ClassDef | ast.If | ast.With | ast.Try | ast.For):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, field, []):
                        if isinstance(child, ast.ExceptHandler):
                            yield from visit(child.body, top)
                        else:
                            yield from visit([child], top)

    yield from visit(tree.body, True)


ALL = modules()
IMPORTS = [
    imp
    for name, path in ALL.items()
    for imp in imports_of(name, path, path.name == "__init__.py", ALL)
]


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _violations(source: str, forbidden: str) -> list[str]:
    return [
        f"{i.module}:{i.line} imports {i.target}"
        for i in IMPORTS
        if _within(i.module, source) and _within(i.target, forbidden)
    ]


def test_the_layout_is_found() -> None:
    assert {"vigil.server", "vigil.inference", "vigil.storage", "vigil.client"} <= set(ALL)
    assert {"vigil.server.api", "vigil.server.security", "vigil.server.jobs"} <= set(ALL)
    assert "vigil.inference.video" in ALL and len(ALL) > 80
    assert {"vigil.web", "vigil.web.app", "vigil.web.console.app"} <= set(ALL)


@pytest.mark.parametrize(
    "source,forbidden",
    [
        ("vigil.inference", "vigil.server"),
        ("vigil.inference", "vigil.storage"),
        ("vigil.storage", "vigil.server"),
        ("vigil.server.jobs", "vigil.server.api"),
        ("vigil.server.api", "vigil.server.jobs"),
        ("vigil.server.security", "vigil.server.api"),
        ("vigil.server.security", "vigil.server.jobs"),
        ("vigil.server.rpc", "vigil.server.api"),
        ("vigil.server.rpc", "vigil.server.security"),
        ("vigil.client", "vigil.server"),
        ("vigil.client", "vigil.inference"),
        ("vigil.client", "vigil.storage"),
        ("vigil.web", "vigil.server"),
        ("vigil.web", "vigil.inference"),
        ("vigil.web", "vigil.storage"),
        ("vigil", "benchmarks"),
        ("vigil", "tests"),
    ],
)
def test_an_arrow_that_must_not_exist(source: str, forbidden: str) -> None:
    assert _violations(source, forbidden) == []


def test_storage_takes_from_the_engine_only_errors_and_model_identities() -> None:
    taken = {
        i.target if i.target in ALL else i.target.rpartition(".")[0]
        for i in IMPORTS
        if _within(i.module, "vigil.storage") and _within(i.target, "vigil.inference")
    }
    assert taken <= STORAGE_FROM_INFERENCE, taken


def test_the_client_imports_only_the_contract_and_its_dependencies() -> None:
    stdlib = sys.stdlib_module_names | {"__future__"}
    outside = []
    for i in IMPORTS:
        if not _within(i.module, "vigil.client") or _within(i.target, "vigil.client"):
            continue
        if _within(i.target, "vigil.v1") or i.target.split(".")[0] in stdlib:
            continue
        if any(_within(i.target, dep) for dep in CLIENT_DEPENDENCIES):
            continue
        if not i.top_level and i.target.split(".")[0] in CLIENT_OPTIONAL:
            continue
        outside.append(f"{i.module}:{i.line} imports {i.target}")
    assert outside == []


def test_no_import_cycles_between_modules() -> None:
    """The modules' imports form no cycle, whether at module level or hidden in a function (a
    function-level import that closes a cycle only hides it)."""
    graph: dict[str, set[str]] = {name: set() for name in ALL}
    for i in IMPORTS:
        if i.target in ALL and i.target != i.module:
            graph[i.module].add(i.target)
    cycles = _strongly_connected(graph)
    assert cycles == [], cycles


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def connect(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found
