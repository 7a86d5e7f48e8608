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


def summarize(info: dict[str, Any]) -> list[tuple[str, str]]:
    """The few lines a person wants from ``describe``: (what, value). Clusters come from the live
    clusters/summary.json, not from the last pipeline report (a standalone `cluster` changes them)."""

    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    kind = info["kind"]
    rows: list[tuple[str, str]] = [(kind, info["path"])]
    model = info if kind == "model" else info.get("model")
    store = info if kind == "store" else info.get("store")
    index = info if kind == "index" else info.get("index")
    if model:
        m = model.get("metrics", {})
        shape = f"{model.get('architecture')}, {model.get('code_size')}-d code, {model.get('epochs')} epochs"
        what = f"{model['model_id']} ({shape})"
        rows.append(("model", what))
        if m:
            rows.append(
                ("held-out SSE/item", f"AE {fmt(m['ae']['sse_per_item'])} vs PCA {fmt(m['pca']['sse_per_item'])}")
            )
    if store:
        rows.append(
            (
                "store",
                f"{store['n_items']} items in {store['n_parts']} part(s), {store.get('code_dtype')} codes, "
                f"model {store.get('model_id')}",
            )
        )
    if index:
        params = ", ".join(f"{k}={v}" for k, v in (index.get("params") or {}).items()) or "exact"
        rows.append(("index", f"{index['index_string']} ({params}), {index['n_items']} vectors, {index['metric']}"))
        rows.append(
            ("recall@10 / latency", f"{fmt(index.get('recall_at_10'))} / {fmt(index.get('latency_ms_per_query'))} ms")
        )
    if "clusters" in info:
        c = info["clusters"]
        rows.append(("clusters", f"k={c['n_clusters']}, ACC {fmt(c.get('acc'))}, NMI {fmt(c.get('nmi'))}"))
    if "report" in info:
        t = info["report"].get("timings_s", {})
        rows.append(("last pipeline", ", ".join(f"{k} {v:.1f}s" for k, v in t.items())))
    if kind == "run" and (Path(info["path"]) / "report.html").is_file():
        rows.append(("report", str(RunLayout.at(info["path"]).report_html)))
    return rows
