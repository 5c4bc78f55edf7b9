"""The house's import rules (docs/design.md, "Layers and imports"), checked on the source itself.

Each module of the proxy belongs to one layer; a module imports only from its own layer or the layers
below, the policies never import one another, and no two modules import each other, even indirectly.
Imports under `if TYPE_CHECKING:` create no run-time dependency and are left out.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import proxy

PACKAGE = Path(proxy.__file__).parent

# Lowest first. A module's layer is the first pattern that names it (`x.*`: the package x's modules).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "proxy",
            "proxy.types",
            "proxy.shipped",
            "proxy.identity",
            "proxy.logs",
            "proxy.metrics",
            "proxy.runtime",
            "proxy.answer",
            "proxy.catalog",
            "proxy.errors",
            "proxy.config",
            "proxy.config_loader",
            "proxy.classify",
        ),
    ),
    ("request", ("proxy.routing", "proxy.context")),
    ("state", ("proxy.state", "proxy.state.*")),
    ("policies", ("proxy.policies", "proxy.policies.*")),
    ("transport", ("proxy.upstream", "proxy.forward")),
    ("pipeline", ("proxy.recording", "proxy.pipeline")),
    ("streams", ("proxy.streams", "proxy.streams.*")),
    ("edges", ("proxy.httpserver", "proxy.listener", "proxy.admin")),
    ("app", ("proxy.app", "proxy.reload")),
    ("simulator", ("proxy.simulator", "proxy.simulator.*")),
    ("entry", ("proxy.cli", "proxy.workers", "proxy.__main__", "proxy.demo", "proxy.demo.*")),
]
# The simulator is an exchange apart from the proxy: of the core it uses only the error table.
SIMULATOR_MAY_USE = frozenset({"proxy", "proxy.catalog", "proxy.shipped"})


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    for index, (_, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            if module == pattern or (pattern.endswith(".*") and module.startswith(pattern[:-1])):
                return index
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS and to docs/design.md")


def imported_from(node: ast.ImportFrom, package: str) -> str:
    """The absolute name of the module a `from … import` reads from; a relative one (`from . import x`,
    `from ..state import y`) resolved against `package`, the package of the importing module."""
    if node.level == 0:
        return node.module or ""
    parts = package.split(".")
    if node.level > len(parts):
        raise AssertionError(f"`{ast.unparse(node)}` reaches above the top-level package {parts[0]!r}")
    base = ".".join(parts[: len(parts) - node.level + 1])
    return f"{base}.{node.module}" if node.module else base


def runtime_imports(source: str, module: str, is_package: bool = False) -> Iterator[str]:
    """The proxy modules that `source`, the text of `module`, imports at run time (its TYPE_CHECKING
    blocks left out). `is_package`: the module is a package's `__init__`."""
    package = module if is_package else module.rpartition(".")[0]
    tree = ast.parse(source)
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            origin = imported_from(node, package)
            # `from proxy.x import y` imports the module proxy.x.y where y is one (as import-linter
            # reads it), else the names of proxy.x.
            submodules = [f"{origin}.{alias.name}" for alias in node.names]
            names = [name for name in submodules if name in MODULES]
            if len(names) < len(submodules):
                names.append(origin)
        else:
            continue
        yield from (name for name in names if name in MODULES)


def imports_of(path: Path) -> Iterator[str]:
    return runtime_imports(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}
GRAPH = {module: sorted(set(imports_of(path)) - {module}) for module, path in MODULES.items()}


@pytest.mark.parametrize(
    ("source", "module", "is_package", "expected"),
    [
        ("from .breaker import BreakerStateStore", "proxy.state.backends", False, ["proxy.state.breaker"]),
        (
            "from . import breaker, nothing_here",
            "proxy.state.backends",
            False,
            ["proxy.state.breaker", "proxy.state"],
        ),
        ("from .. import errors", "proxy.policies.dedup", False, ["proxy.errors"]),
        ("from ..pipeline import Pipeline", "proxy.policies.dedup", False, ["proxy.pipeline"]),
        ("from .dedup import DedupPolicy", "proxy.policies", True, ["proxy.policies.dedup"]),
        ("from . import types", "proxy", True, ["proxy.types"]),
        ("from .errors import SeawallError", "proxy.forward", False, ["proxy.errors"]),
    ],
)
def test_relative_imports_are_resolved_against_the_importing_modules_package(
    source: str, module: str, is_package: bool, expected: list[str]
) -> None:
    assert list(runtime_imports(source, module, is_package)) == expected


def test_a_relative_import_from_a_policy_into_the_pipeline_is_caught() -> None:
    """The rules hold for relative imports too: an upward import spelled `from ..pipeline` is found."""
    names = list(runtime_imports("from ..pipeline import Pipeline\n", "proxy.policies.breaker"))
    assert [name for name in names if layer_of(name) > layer_of("proxy.policies.breaker")] == [
        "proxy.pipeline"
    ]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_its_own_layer_and_the_layers_below(module: str) -> None:
    upward = [name for name in GRAPH[module] if layer_of(name) > layer_of(module)]
    assert not upward, f"{module} ({LAYERS[layer_of(module)][0]}) imports from a higher layer: {upward}"


def test_policies_are_siblings_that_never_import_one_another() -> None:
    policies = [module for module in MODULES if module.startswith("proxy.policies.")]
    for module in policies:
        others = [name for name in GRAPH[module] if name in policies]
        assert not others, f"{module} imports another policy: {others}"


def test_the_simulator_knows_nothing_of_the_proxy_core() -> None:
    for module in MODULES:
        if module.startswith("proxy.simulator"):
            core = [
                n for n in GRAPH[module] if not n.startswith("proxy.simulator") and n not in SIMULATOR_MAY_USE
            ]
            assert not core, f"{module} imports the proxy core: {core}"


def test_the_types_module_imports_nothing_of_the_proxy_at_run_time() -> None:
    assert GRAPH["proxy.types"] == []


def test_no_two_modules_import_each_other_even_indirectly() -> None:
    seen: dict[str, str] = {}  # module -> "active" | "done"

    def visit(module: str, trail: list[str]) -> None:
        seen[module] = "active"
        for name in GRAPH[module]:
            if seen.get(name) == "active":
                cycle = [*trail[trail.index(name) :], name] if name in trail else [module, name]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if name not in seen:
                visit(name, [*trail, name])
        seen[module] = "done"

    for module in sorted(GRAPH):
        if module not in seen:
            visit(module, [module])


def test_no_class_docstring_hides_behind_an_attribute() -> None:
    """A string placed after a class attribute is no docstring: `__doc__` is None and help() shows nothing."""
    misplaced = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                strings = [
                    stmt
                    for stmt in node.body[1:]
                    if isinstance(stmt, ast.Expr)
                    and isinstance(stmt.value, ast.Constant)
                    and isinstance(stmt.value.value, str)
                ]
                if strings and ast.get_docstring(node) is None:
                    misplaced.append(f"{module}.{node.name} (line {strings[0].lineno})")
    assert not misplaced, f"class docstrings after an attribute: {misplaced}"
