"""The code's layout holds: the core (slmops/) is plain Python that imports no orchestrator and
none of the project's folders, its modules import each other without a cycle, the flows sit
over the tasks over the core, and only the core is installed."""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import ROOT

PROJECT_FOLDERS = ("tasks", "flows", "infra", "benchmarks", "examples", "tests")


def modules(folder: str) -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imported(path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """Every module `path` imports, at any depth (a lazy import in a function counts), with
    its line: `from a.b import c` names a.b, and a.b.c when that is a module."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno
            for alias in node.names:
                if f"{node.module}.{alias.name}" in known:
                    yield f"{node.module}.{alias.name}", node.lineno


def top(module: str) -> str:
    return module.split(".")[0]


def test_the_core_imports_no_orchestrator_and_no_project_folder() -> None:
    core = modules("slmops")
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in core.values()
        for name, line in imported(path, core)
        if top(name) in ("prefect", *PROJECT_FOLDERS)
    ]
    assert not found, "the core must run without Prefect or a checkout:\n" + "\n".join(found)


def test_the_core_modules_import_each_other_without_a_cycle() -> None:
    """Lazy imports included. Edges into the root package (`from slmops import __version__`)
    are left out: Python imports a package before any module in it anyway."""
    core = modules("slmops")
    graph = {
        name: {m for m, _ in imported(path, core) if m in core and m not in (name, "slmops")}
        for name, path in core.items()
    }
    cycles, done = [], set()

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            cycles.append(" -> ".join([*trail[trail.index(node) :], node]))
            return
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, [*trail, node])
        done.add(node)

    for name in sorted(graph):
        visit(name, [])
    assert not cycles, "import cycles in the core:\n" + "\n".join(sorted(set(cycles)))


def test_every_import_of_the_core_names_a_module_that_exists() -> None:
    """A module moved or renamed leaves no import behind, lazy ones in functions included
    (mypy is told to ignore missing imports, for third-party packages without types)."""
    core = modules("slmops")
    found = []
    for folder in ("slmops", *PROJECT_FOLDERS):
        for path in modules(folder).values():
            for name, line in imported(path, core):
                if top(name) == "slmops" and name not in core:
                    found.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not found, "\n".join(found)


def test_flows_sit_over_tasks_over_the_core() -> None:
    """tasks/ wraps the core for Prefect and never starts a flow; flows/ chain tasks (and each
    other, as subflows); neither reaches into infra/, benchmarks/, examples/ or tests/."""
    allowed = {"tasks": {"tasks"}, "flows": {"tasks", "flows"}}
    found = []
    for folder, may in allowed.items():
        known = modules(folder)
        for path in known.values():
            for name, line in imported(path, known):
                if top(name) in PROJECT_FOLDERS and top(name) not in may:
                    found.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not found, "\n".join(found)


def test_only_the_core_is_installed() -> None:
    """flows/, tasks/, infra/, benchmarks/ are folders of the checkout (prefect.yaml names the
    flows by path), not top-level packages in site-packages."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["slmops*"]
    plugins = project["project"]["entry-points"]["slmops.cli"]
    assert plugins == {"stack": "infra.cli:stack_app"}


# The core's layers, bottom up. A module imports its own package and the layers below it:
# the foundation (the store, errors, settings, the suites, generation, base models) nothing
# above it; a stage package only the foundation, never another stage; a pipeline (which
# chains stages) stages and the foundation; the CLI and the package's own front door
# (`slmops.retrieve`, lazily) anything.
STAGES = ("rag", "training", "evaluation", "serving", "assess")
PIPELINES, FRONT = ("pipelines",), ("cli", "__main__")


def layer(module: str) -> tuple[int, str]:
    """(rank, package) of a core module: 0 foundation, 1 a stage, 2 pipelines, 3 the front."""
    if module == "slmops":
        return 3, ""
    package = module.split(".")[1] if "." in module else ""
    if package in STAGES:
        return 1, package
    if package in PIPELINES:
        return 2, package
    if package in FRONT:
        return 3, package
    return 0, package


def test_stages_are_leaves_over_the_foundation_and_pipelines_chain_them() -> None:
    """Lazy imports included: a stage that needs another's work takes it as an argument (a
    retriever, an answering backend, a clearance) from the pipeline that chains them."""
    core = modules("slmops")
    found = []
    for name, path in core.items():
        rank, package = layer(name)
        for imp, line in imported(path, core):
            if imp not in core or imp == "slmops":
                continue
            their_rank, theirs = layer(imp)
            sideways = rank == their_rank == 1 and theirs != package
            if their_rank > rank or sideways:
                found.append(f"{path.relative_to(ROOT)}:{line} imports {imp}")
    assert not found, "a module imports one of a higher layer or another stage:\n" + "\n".join(
        found
    )


def test_no_module_of_the_core_is_a_room_too_big_to_hold_in_ones_head() -> None:
    core = modules("slmops")
    big = {
        str(path.relative_to(ROOT)): n
        for path in core.values()
        if (n := len(path.read_text().splitlines())) > 600
    }
    assert not big, f"split these by concern (under ~500 lines each): {big}"
