"""The package's shape, read from its imports: stages import only earlier stages (atlib.STAGES),
nothing in atlib imports `workflow`, there are no import cycles and no private names across
modules, and a module over 400 lines says in its docstring why it is one idea."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

import atlib

ROOT = Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 400
# A long module's docstring names the one idea that keeps it whole (e.g. "One idea: the claims check").
ONE_IDEA = "One idea:"


def module_name(path: Path, top: Path) -> str:
    parts = list(path.relative_to(top.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, name: str, is_package: bool) -> str:
    """The absolute module of a `from ... import` (relative imports resolved against `name`)."""
    if not node.level:
        return node.module or ""
    base = name.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(top: Path) -> dict[str, dict[str, list[str]]]:
    """{module: {imported module: [names imported from it]}} for every module under the package `top`,
    counting imports anywhere in a module (inside functions and `if TYPE_CHECKING:` too)."""
    paths = {module_name(p, top): p for p in sorted(top.rglob("*.py"))}
    graph: dict[str, dict[str, list[str]]] = {}
    for name, path in paths.items():
        edges: dict[str, list[str]] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in paths:
                        edges.setdefault(alias.name, [])
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, name, path.name == "__init__.py")
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in paths:  # `from atlib.train import resume`: the module itself
                        edges.setdefault(sub, [])
                    elif base in paths:
                        edges.setdefault(base, []).append(alias.name)
        edges.pop(name, None)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (graphlib's topological sort finds it)."""
    try:
        tuple(graphlib.TopologicalSorter({m: set(e) for m, e in graph.items()}).static_order())
    except graphlib.CycleError as err:
        return list(err.args[1])
    return None


def stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in atlib.STAGES else None


def stage_violations(graph: dict[str, dict[str, list[str]]]) -> list[str]:
    order = {s: i for i, s in enumerate(atlib.STAGES)}
    bad = []
    for mod, edges in graph.items():
        here = stage(mod)
        for dep in edges:
            there = stage(dep)
            if here is None or there is None:
                continue
            if order[there] > order[here]:
                bad.append(f"{mod} ({here}) imports {dep}, a later stage ({there})")
    return bad


def private_imports(graph: dict[str, dict[str, list[str]]]) -> list[str]:
    return [f"{mod} imports {dep}.{n}" for mod, edges in graph.items() for dep, names in edges.items()
            for n in names if n.startswith("_") and not n.startswith("__")]


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, list[str]]]:
    return import_graph(ROOT / "atlib")


def test_every_module_lives_in_a_stage_package(graph):
    loose = [m for m in graph if m != "atlib" and stage(m) is None]
    assert not loose, f"modules outside the stage packages {atlib.STAGES}: {loose}"
    assert {stage(m) for m in graph} - {None} == set(atlib.STAGES)


def test_no_stage_imports_a_later_stage(graph):
    assert not stage_violations(graph), "\n".join(stage_violations(graph))


def test_nothing_in_the_library_imports_the_workflow(graph):
    """`workflow` is the last stage, so this is the stage rule; spelled out because it is the one a
    job would break by importing Snakemake's machinery (tracking, progress) into a training run."""
    bad = [f"{m} imports {d}" for m, edges in graph.items() if stage(m) != "workflow"
           for d in edges if stage(d) == "workflow"]
    assert not bad, bad


def test_there_are_no_import_cycles(graph):
    assert cycles(graph) is None, f"import cycle: {' -> '.join(cycles(graph))}"


def test_no_private_name_is_imported_across_modules(graph):
    assert not private_imports(graph), private_imports(graph)


def test_a_long_module_says_why_it_is_one_idea():
    long = []
    for path in sorted((ROOT / "atlib").rglob("*.py")):
        text = path.read_text()
        n = text.count("\n")
        if n > MAX_MODULE_LINES and ONE_IDEA not in (ast.get_docstring(ast.parse(text)) or ""):
            long.append(f"{path.relative_to(ROOT)} ({n} lines)")
    assert not long, f"split these, or say '{ONE_IDEA} ...' in their docstring:\n" + "\n".join(long)


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    top = tmp_path / "atlib"
    for rel, text in files.items():
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_text(text)
    return top


def test_the_checks_find_a_planted_cycle_a_backward_import_and_a_private_name(tmp_path):
    """The checks above can fail: on a small planted package each finds what was planted."""
    top = _package(tmp_path, {
        "__init__.py": "", "core/__init__.py": "", "data/__init__.py": "",
        "data/store.py": "def f():\n    from .tensors import g\n",
        "data/tensors.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from atlib.data.store import f\n",
        "core/runtime.py": "from atlib.data.store import f\nfrom ..data.tensors import _h\n",
    })
    g = import_graph(top)
    assert set(cycles(g)) == {"atlib.data.store", "atlib.data.tensors"}
    assert stage_violations(g) == ["atlib.core.runtime (core) imports atlib.data.store, a later stage (data)",
                                   "atlib.core.runtime (core) imports atlib.data.tensors, a later stage (data)"]
    assert private_imports(g) == ["atlib.core.runtime imports atlib.data.tensors._h"]
