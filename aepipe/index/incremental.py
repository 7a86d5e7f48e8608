"""Incremental index updates: remove and add vectors in place where faiss can (Flat, IVF),
rebuild where it cannot (HNSW, ...), and say when a full rebuild would serve better."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aepipe.codes.store import (
    arrow_to_codes,
    open_store,
)
from aepipe.config import PipelineConfig
from aepipe.files import atomic_write_json, atomic_write_table, read_json
from aepipe.index.build import write_index
from aepipe.index.faissio import ivf_of, normalize, read_index_file, write_index_file
from aepipe.layout import IndexFiles, RunLayout

log = logging.getLogger(__name__)


def update_index(
    cfg: PipelineConfig,
    layout: RunLayout,
    store_dir: Path,
    drop: pa.Array,
    new_parts: list[Path],
    dest: Path,
    rebuild: bool = False,
) -> tuple[str, dict[str, Any]]:
    """Write into ``dest`` the live index minus the dropped ids plus the new parts' codes, or a
    rebuilt one where faiss cannot remove vectors (HNSW, ...) or ``rebuild`` says the live index
    does not cover the store it is updated with. Returns ('incremental'|'rebuilt', sidecar)."""
    files = layout.index
    infos = read_json(files.infos) if files.infos.is_file() and files.index.is_file() else None
    ic = cfg.index
    if rebuild or infos is None or infos["model_id"] != open_store(store_dir).model_id or infos["metric"] != ic.metric:
        return "rebuilt", write_index(cfg, store_dir, dest)
    if infos.get("on_disk"):  # its lists are memory-mapped from the live index.ivfdata: never modify them in place
        log.info("an on-disk index is rebuilt, not updated in place")
        return "rebuilt", write_index(cfg, store_dir, dest)
    index = read_index_file(files, infos)
    table = pq.read_table(files.ids)
    ids = table.column("id")
    explicit = "label" in table.column_names
    labels = table.column("label").to_numpy() if explicit else np.arange(len(ids), dtype=np.int64)
    is_flat = isinstance(faiss.downcast_index(index), faiss.IndexFlat) and not explicit
    if not is_flat and ivf_of(index) is None:
        log.info("a %s index cannot remove vectors: rebuilding it", infos["index_class"])
        return "rebuilt", write_index(cfg, store_dir, dest)
    new_ids, new_codes = [], []
    for p in new_parts:
        t = pq.read_table(p, columns=["id", "code"])
        new_ids += t.column("id").chunks
        new_codes.append(arrow_to_codes(t.column("code"), open_store(store_dir).code_dtype))
    x = normalize(np.concatenate(new_codes) if new_codes else np.zeros((0, int(infos["dim"])), np.float32), ic.metric)
    dropped = pc.is_in(ids, value_set=drop).to_numpy(zero_copy_only=False)
    out_ids = pa.chunked_array(ids.filter(pa.array(~dropped)).chunks + new_ids, pa.string())
    if is_flat:  # labels are positions: remove_ids compacts in order, add appends
        if dropped.any():
            index.remove_ids(np.flatnonzero(dropped).astype(np.int64))
        index.add(x)
        out = pa.table({"id": out_ids})
    else:  # IVF: labels stay with their vectors; new ones get fresh labels
        if dropped.any():
            index.remove_ids(np.ascontiguousarray(labels[dropped], dtype=np.int64))
        start = int(labels.max()) + 1 if len(labels) else 0
        new_labels = np.arange(start, start + len(x), dtype=np.int64)
        index.add_with_ids(x, new_labels)
        out = pa.table({"id": out_ids, "label": pa.array(np.concatenate([labels[~dropped], new_labels]), pa.int64())})
    dest.mkdir(parents=True, exist_ok=True)
    out_files = IndexFiles(dest)
    write_index_file(index, out_files.index)
    atomic_write_table(out_files.ids, out)
    infos = dict(infos)
    n_at_build = int(infos.get("n_items_at_build") or infos["n_items"])
    infos.update(
        n_items=int(index.ntotal),
        labels="positions" if is_flat else "explicit",
        n_items_at_build=n_at_build,
        n_added_since_build=int(infos.get("n_added_since_build", 0)) + len(x),
        n_removed_since_build=int(infos.get("n_removed_since_build", 0)) + int(dropped.sum()),
        bytes=out_files.index.stat().st_size,
        bytes_per_vector=out_files.index.stat().st_size / max(index.ntotal, 1),
    )
    if not is_flat:
        infos.setdefault("imbalance_factor_at_build", infos.get("imbalance_factor"))
        infos["imbalance_factor"] = round(float(ivf_of(index).invlists.imbalance_factor()), 4)
    infos["rebuild_advised"] = _rebuild_advice(infos, is_flat, ic.flat_max_items)
    atomic_write_json(out_files.infos, infos)
    if infos["rebuild_advised"]:
        log.warning("index: %s", infos["rebuild_advised"])
    return "incremental", infos


def _rebuild_advice(infos: dict[str, Any], is_flat: bool, flat_max_items: int) -> str | None:
    """Why a full `aepipe index` would now serve better (recall and latency were measured at build)."""
    n, base = infos["n_items"], infos["n_items_at_build"]
    if is_flat and n > flat_max_items:
        return f"the exact Flat index holds {n} vectors > index.flat_max_items {flat_max_items}; run `aepipe index`"
    if not is_flat and infos["n_added_since_build"] + infos["n_removed_since_build"] > base:
        return (
            f"{infos['n_added_since_build']} vectors added and {infos['n_removed_since_build']} removed since the IVF "
            f"centroids were trained on {base}; run `aepipe index` to retrain them"
        )
    built, now = infos.get("imbalance_factor_at_build"), infos.get("imbalance_factor")
    if not is_flat and built and now and now > IMBALANCE_GROWTH * built:
        return (
            f"the IVF lists grew unbalanced (imbalance factor {now:.2f}, {built:.2f} at build: searches scan longer "
            "lists for the same nprobe); run `aepipe index` to retrain the centroids"
        )
    return None


IMBALANCE_GROWTH = 1.5  # advise a rebuild once faiss's imbalance factor grew by half since the build
