"""Layering: the library never depends on the orchestrator. aepipe/ does not import
Prefect; only the CLI reaches into flows/ (lazily, for ``run`` and ``demo``)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "aepipe"


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            found.add(str(node.args[0].value))
    return found


def _top(name: str) -> str:
    return name.split(".")[0]


LIBRARY_FILES = sorted(PACKAGE.rglob("*.py"))


def test_scan_sees_the_library():
    names = {p.relative_to(ROOT).as_posix() for p in LIBRARY_FILES}
    assert {"aepipe/cli.py", "aepipe/train.py", "aepipe/corpus/images.py", "aepipe/models/saved.py"} <= names
    assert "flows" in {_top(m) for m in _imported_modules(PACKAGE / "cli.py")}  # the scan does find imports


@pytest.mark.parametrize("path", LIBRARY_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_library_module_does_not_import_prefect(path):
    assert "prefect" not in {_top(m) for m in _imported_modules(path)}


def test_only_the_cli_imports_flows():
    importers = {p.relative_to(ROOT).as_posix() for p in LIBRARY_FILES if "flows" in {_top(m) for m in _imported_modules(p)}}
    assert importers == {"aepipe/cli.py"}


def test_flows_only_wrap_library_stage_functions():
    for path in sorted((ROOT / "flows").glob("*.py")):
        tops = {_top(m) for m in _imported_modules(path)}
        assert tops <= {"__future__", "logging", "os", "tempfile", "pathlib", "time", "prefect", "prefect_dask", "prefect_ray", "aepipe", "flows"}, path


def test_importing_the_library_does_not_load_prefect():
    code = ("import sys; import aepipe.cli, aepipe.pipeline, aepipe.report, aepipe.search, aepipe.cluster, "
            "aepipe.info; bad = sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'flows')); "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
