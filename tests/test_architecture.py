"""The house keeps its shape: the layers and contracts of docs/architecture.md hold (import-linter on pyproject.toml),
the import graph has no cycles, and the layer check would catch an upward import."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("intermix_core", "pipelines", "components")
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
LAYERS = next(c for c in CONFIG["contracts"] if c["type"] == "layers")["layers"]


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    """The import graph of the three packages, external packages included (what import-linter analyses)."""
    return grimp.build_graph(*PACKAGES, include_external_packages=True, cache_dir=None)


def _layers() -> list[set[str]]:
    return [{m.strip() for m in layer.split("|")} for layer in LAYERS]


def test_every_contract_of_pyproject_is_kept() -> None:
    """`lint-imports` on the repository's contracts: every one kept (a broken one is printed with its import chain)."""
    proc = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--config", str(ROOT / "pyproject.toml"),
                           "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert f"Contracts: {len(CONFIG['contracts'])} kept, 0 broken." in proc.stdout
    assert len(CONFIG["contracts"]) >= 7


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module among the project's own modules (Tarjan)."""
    nodes = sorted(m for m in graph.modules if m.split(".")[0] in PACKAGES)
    edges = {m: sorted(i for i in graph.find_modules_directly_imported_by(m) if i.split(".")[0] in PACKAGES)
             for m in nodes}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in nodes:
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycles(graph: grimp.ImportGraph) -> None:
    assert len([m for m in graph.modules if m.startswith("intermix_core.")]) > 40  # the graph is really built
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle(graph: grimp.ImportGraph) -> None:
    """The check above can fail: one added back-edge makes a cycle it reports."""
    graph.add_import(importer="intermix_core.records", imported="intermix_core.method.train")
    try:
        assert ["intermix_core.method.train", "intermix_core.records"] == [
            m for c in _cycles(graph) for m in c if m in ("intermix_core.records", "intermix_core.method.train")]
    finally:
        graph.remove_import(importer="intermix_core.records", imported="intermix_core.method.train")


def test_no_import_goes_up_a_layer_and_an_upward_one_is_caught(graph: grimp.ImportGraph) -> None:
    assert graph.find_illegal_dependencies_for_layers(layers=_layers()) == set()
    graph.add_import(importer="intermix_core.method.train", imported="intermix_core.tracking.tracker")
    try:
        illegal = graph.find_illegal_dependencies_for_layers(layers=_layers())
        assert {(d.importer, d.imported) for d in illegal} == {("intermix_core.method", "intermix_core.tracking")}
    finally:
        graph.remove_import(importer="intermix_core.method.train", imported="intermix_core.tracking.tracker")


def test_every_package_of_intermix_core_is_in_a_layer() -> None:
    """A new package must be placed in the layers (and so in docs/architecture.md), not left unconstrained."""
    packages = {f"intermix_core.{p.name}" for p in (ROOT / "intermix_core").iterdir()
                if (p / "__init__.py").is_file() and p.name != "testing"}
    modules = {f"intermix_core.{p.stem}" for p in (ROOT / "intermix_core").glob("*.py") if p.stem != "__init__"}
    placed = set().union(*_layers())
    assert packages | modules <= placed, f"not in a layer: {sorted((packages | modules) - placed)}"
