"""The shape of the tree: one package per pipeline stage, imports that flow one way (no cycles,
never up the stage order), a library free of Prefect, flows that only wrap library functions.

Module names written in strings (``python -m aepipe.model.ddp`` entry points, ``import_module``)
count as imports: a subprocess entry point is a dependency like any other."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "aepipe"

# Bottom-up: a unit may import only units of a lower level (and itself). The pipeline's data
# flow reads upward: corpus -> features -> model -> codes -> index -> cluster / report.
LEVELS = {
    "aepipe": 0,
    "aepipe.errors": 0,
    "aepipe.files": 0,
    "aepipe.logs": 0,
    "aepipe.layout": 0,
    "aepipe.prefetch": 0,
    "aepipe.presets": 0,  # YAML data that config reads
    "aepipe.config": 1,
    "aepipe.runlock": 1,  # the run's writer lock: layout (the path) and errors; used by every writing stage
    "aepipe.generations": 1,  # publishes model+store+index together: files and layout only
    "aepipe.runconfig": 2,  # the run's recorded config + the stage decorator (config, runlock)
    "aepipe.verify": 2,  # checks a generation's checksums (generations, layout): a reader
    "aepipe.quality": 2,  # measures and baselines (numpy, scikit-learn, faiss): used by every stage
    "aepipe.features": 3,  # payload -> model input; knows nothing of corpora
    "aepipe.corpus": 4,  # readers; apply a preprocessor to each payload
    "aepipe.model": 5,
    "aepipe.codes": 6,
    "aepipe.index": 7,
    "aepipe.restore": 7,  # codes/images back to images: reads the store (6), runs the model (5); no index
    "aepipe.cluster": 8,
    "aepipe.report": 9,
    "aepipe.pipeline": 10,
    "aepipe.update": 10,
    "aepipe.info": 10,
    "aepipe.serve": 10,  # the search service: a query front-end over index + report (thumbnails); FastAPI only here
    "aepipe.cli": 11,
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    if parts[0] == "flows":
        parts[0] = "aepipe_flows"
    return ".".join(parts)


def unit_of(module: str) -> str:
    """The package (or top-level module) of the tree that ``module`` belongs to."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "aepipe" and len(parts) > 1 else parts[0]


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Modules imported by ``path``: import statements (``from x import y`` also as ``x.y`` when that
    is a module), import_module / __import__ calls, and module names in string constants."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            for name in re.findall(r"\b(aepipe(?:_flows)?(?:\.\w+)+)", node.value):
                if name in known:
                    found.add(name)
    return found


SOURCES = sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "flows").glob("*.py"))
LIBRARY = [p for p in SOURCES if p.is_relative_to(PACKAGE)]
KNOWN = {module_name(p) for p in SOURCES}
GRAPH = {module_name(p): {m for m in imported_modules(p, KNOWN) if m in KNOWN and m != module_name(p)} for p in SOURCES}


def test_the_scan_sees_the_tree_and_its_string_imports():
    assert {
        "aepipe.cli",
        "aepipe.model.train",
        "aepipe.corpus.images",
        "aepipe.index.build",
        "aepipe_flows.pipeline",
    } <= KNOWN
    assert "aepipe.model.ddp" in GRAPH["aepipe.model.train"]
    assert "aepipe.model.ddp" in GRAPH["aepipe.model.ddp"] | {"aepipe.model.ddp"}
    assert "aepipe_flows.pipeline" in GRAPH["aepipe.cli.pipeline"]  # the CLI starts the flows lazily


def test_every_library_module_has_a_level():
    assert {unit_of(m) for m in KNOWN if m.startswith("aepipe.") or m == "aepipe"} <= set(LEVELS)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_cycle_finder_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert find_cycles(GRAPH) == []


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_imports_flow_down_the_stage_order(path):
    me = module_name(path)
    mine = LEVELS[unit_of(me)]
    upward = sorted(
        m
        for m in GRAPH[me]
        if m.startswith("aepipe.")
        and unit_of(m) != unit_of(me)
        and LEVELS[unit_of(m)] >= mine
        and unit_of(m) != "aepipe"
    )
    assert upward == [], f"{me} (level {mine}) imports from the same or a higher level"


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_library_module_does_not_import_prefect(path):
    tops = {m.split(".")[0] for m in imported_modules(path, KNOWN)}
    assert "prefect" not in tops


def test_only_the_cli_imports_flows():
    importers = {
        unit_of(module_name(p)) for p in LIBRARY if any(m.startswith("aepipe_flows") for m in GRAPH[module_name(p)])
    }
    assert importers == {"aepipe.cli"}


def test_flows_only_wrap_library_stage_functions():
    allowed = {
        "__future__",
        "logging",
        "os",
        "tempfile",
        "pathlib",
        "time",
        "datetime",
        "prefect",
        "prefect_dask",
        "prefect_ray",
        "aepipe",
        "aepipe_flows",
    }
    for path in sorted((ROOT / "flows").glob("*.py")):
        tops = {m.split(".")[0] for m in imported_modules(path, KNOWN)}
        assert tops <= allowed, path


def test_installed_packages_are_the_tree():
    """pyproject lists every package of the tree (flows installed as aepipe_flows), and nothing else."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {module_name(p.parent) if p.parent != PACKAGE else "aepipe" for p in PACKAGE.rglob("__init__.py")}
    assert set(tool["packages"]) == on_disk | {"aepipe_flows"}
    assert tool["package-dir"] == {"aepipe_flows": "flows"}


def test_importing_the_query_path_does_not_load_prefect():
    code = (
        "import sys; import aepipe.cli, aepipe.pipeline, aepipe.report.summary, aepipe.index.search, "
        "aepipe.cluster.kmeans, aepipe.info; bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('prefect', 'aepipe_flows')); print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
