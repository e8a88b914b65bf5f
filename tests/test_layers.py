"""The layers of docs/layout.md, read from the source: which package may import which, no import circle, and the
modules that must stay free of torch (the report, the shared modules at the top) stay so."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

# what each package of bench/ may import besides itself and the shared modules at the top of bench/
MAY_IMPORT = {
    "spec": set(),  # what to measure
    "harness": {"spec"},  # one shape in one worker
    "run": {"harness", "spec"},  # a run's life
    "scale": {"run", "harness", "spec"},  # larger grids
    "report": set(),  # reads result files only
    "tuning": {"harness", "spec", "report"},  # autotune in the user's process
}
ENTRY_POINTS = {"cli", "__main__", "__init__"}  # the top-level modules that wire the packages together
TORCH_FREE = {"report"}  # packages that never import torch (a report opens where torch is not installed)


def layer(module: str) -> str:
    """bench.run.host -> "run"; bench.stats -> "top"; bench.cli -> "cli"."""
    parts = module.split(".")
    if len(parts) > 2 or (BENCH / parts[1]).is_dir():
        return parts[1]
    return parts[1] if parts[1] in ENTRY_POINTS else "top"


def module_name(path: Path) -> str:
    parts = path.relative_to(BENCH.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 2 else parts)


@cache
def imports(path: Path, top_level_only: bool = False) -> frozenset[str]:
    """The modules `path` imports (anywhere in it, or only where the module itself runs), resolved to module names."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return frozenset(resolve(name) for name in found if resolve(name))


def resolve(name: str) -> str | None:
    """The bench module (or torch) a dotted name refers to: bench.stats.spread -> bench.stats; None for the rest."""
    if name.split(".")[0] == "torch":
        return "torch"
    if not name.startswith("bench."):
        return None
    parts = name.split(".")
    for end in range(len(parts), 1, -1):
        candidate = BENCH.parent.joinpath(*parts[:end])
        if candidate.with_suffix(".py").exists() or (candidate / "__init__.py").exists():
            return ".".join(parts[:end])
    return None


SOURCES = sorted(BENCH.rglob("*.py"))


def wrong_imports(path: Path, module: str) -> list[str]:
    """What `path` (the source of `module`) imports against the layers, one line each."""
    here = layer(module)
    if here in ENTRY_POINTS:
        return []
    allowed = {here, "top"} | MAY_IMPORT.get(here, set())
    found = imports(path)
    wrong = [f"{module} ({here}) imports {m}; {here} may import {sorted(allowed)}"
             for m in sorted(found) if m != "torch" and layer(m) not in allowed]
    if "torch" in found and (here in TORCH_FREE or here == "top"):
        wrong.append(f"{module} imports torch; {here} stays torch-free")
    return wrong


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(BENCH)))
def test_a_module_imports_only_the_layers_below_it(path):
    assert not wrong_imports(path, module_name(path))


def test_no_import_circle():
    """Among the imports a module runs when it is imported (the ones at its top), no module reaches itself."""
    graph = {module_name(p): {m for m in imports(p, top_level_only=True) if m != "torch"} for p in SOURCES}
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, set())):
            if state.get(nxt) == "open":
                raise AssertionError("import circle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])


def test_the_rules_see_a_wrong_import(tmp_path):
    """A report module that imports the harness and torch is caught (the rules are not vacuous)."""
    planted = tmp_path / "planted.py"
    planted.write_text("import torch\nfrom bench.harness import runner\n")
    found = wrong_imports(planted, "bench.report.planted")
    assert any("imports bench.harness" in line for line in found), found
    assert any("torch-free" in line for line in found), found
    assert not wrong_imports(planted, "bench.run.planted")  # the run may import both
