"""``aepipe info``: describe a run directory, model directory, code store or index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aepipe.codes.store import PART_GLOB, open_store
from aepipe.errors import MissingArtifact
from aepipe.files import read_json
from aepipe.layout import IndexFiles, ModelFiles, RunLayout


def _model(root: Path) -> dict[str, Any]:
    files = ModelFiles(root)
    out = {"kind": "model", "path": str(root), **read_json(files.info)}
    if files.metrics.is_file():
        out["metrics"] = read_json(files.metrics)
    return out


def _store(root: Path) -> dict[str, Any]:
    store = open_store(root)
    meta = {k: v for k, v in store.meta.items() if k != "config"}
    return {
        "kind": "store",
        "path": str(root),
        "n_items": store.n_items,
        "n_parts": len(store.parts),
        "columns": store.dataset.schema.names,
        **meta,
    }


def _index(root: Path) -> dict[str, Any]:
    return {"kind": "index", "path": str(root), **read_json(IndexFiles(root).infos)}


def describe(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise MissingArtifact(f"{path} does not exist")
    if ModelFiles(path).info.is_file():
        return _model(path)
    if any(path.glob(PART_GLOB)):
        return _store(path)
    if IndexFiles(path).infos.is_file():
        return _index(path)
    layout = RunLayout.at(path)
    parts: dict[str, Any] = {"kind": "run", "path": str(path)}
    if layout.model.info.is_file():
        parts["model"] = _model(layout.model.root)
    if layout.store.is_dir() and any(layout.store.glob(PART_GLOB)):
        parts["store"] = _store(layout.store)
    if layout.index.infos.is_file():
        parts["index"] = _index(layout.index.root)
    if layout.clusters.summary.is_file():
        parts["clusters"] = read_json(layout.clusters.summary)
    if layout.report.is_file():
        parts["report"] = read_json(layout.report)
    if len(parts) == 2:
        raise MissingArtifact(f"{path} is not an aepipe run, model, store or index directory")
    return parts
