"""Stage: build a FAISS index over the code store, tuned on held-out queries.

The index type comes from the number of vectors and a memory budget (exact Flat
for small collections, HNSW or IVF for larger ones) unless the config forces an
``index_factory`` string. ``ids.parquet`` maps index positions back to store ids;
``index_infos.json`` records what was built and how well it searches.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from aepipe.config import IndexConfig, PipelineConfig
from aepipe.errors import ConfigError
from aepipe.io import atomic_write_json, atomic_write_table, fresh_dir, recover_dir, replace_dir
from aepipe.layout import IndexFiles, RunLayout
from aepipe.store import open_store
from aepipe.timing import timed
from aepipe.versions import publish_model_version

log = logging.getLogger(__name__)

METRICS = {"l2": faiss.METRIC_L2, "cosine": faiss.METRIC_INNER_PRODUCT}
HNSW_M = 32


@dataclass
class IndexResult:
    index_dir: str
    index_string: str
    n_items: int
    recall_at_10: float
    params: dict[str, Any]
    seconds: float


def estimate_bytes(factory: str, n: int, dim: int) -> float:
    """Rough memory of an index: vectors plus per-vector structure overhead."""
    if factory.startswith("HNSW"):
        return n * (dim * 4 + HNSW_M * 2 * 4 * 1.1)
    if ",PQ" in factory:
        m = int(factory.split(",PQ")[1].split("x")[0])
        return n * (m + 8)
    if factory.startswith("IVF"):
        return n * (dim * 4 + 8)
    return n * dim * 4


def ivf_nlist(n: int) -> int:
    """About 4*sqrt(N) lists (a power of two), with at least 39 training points per list."""
    nlist = 2 ** int(round(math.log2(max(4 * math.sqrt(n), 1))))
    return int(max(1, min(nlist, n // 39, 65_536)))


def choose_factory(n: int, dim: int, cfg: IndexConfig) -> str:
    budget = cfg.memory_budget_mb * 2**20
    if n <= cfg.flat_max_items and estimate_bytes("Flat", n, dim) <= budget:
        return "Flat"
    if n <= 2_000_000 and estimate_bytes(f"HNSW{HNSW_M}", n, dim) <= budget:
        return f"HNSW{HNSW_M}"
    nlist = ivf_nlist(n)
    if estimate_bytes(f"IVF{nlist},Flat", n, dim) <= budget:
        return f"IVF{nlist},Flat"
    for m in sorted((m for m in range(1, dim + 1) if dim % m == 0 and m <= 64), reverse=True):
        if estimate_bytes(f"IVF{nlist},PQ{m}", n, dim) <= budget:
            return f"IVF{nlist},PQ{m}"
    raise ConfigError(f"{n} vectors of dimension {dim} do not fit index.memory_budget_mb={cfg.memory_budget_mb}; raise it")


def training_size(index: faiss.Index, n: int) -> int:
    """Points to train on: 256 per IVF list (faiss wants at least 39), enough for PQ codebooks."""
    ivf = _ivf(index)
    want = 256 * ivf.nlist if ivf is not None else 0
    if not isinstance(index, faiss.IndexFlat):
        want = max(want, 256 * 64)  # PQ / OPQ codebooks: 256 centroids each
    return min(n, want, 1_000_000)


def _ivf(index: faiss.Index) -> faiss.IndexIVF | None:
    try:
        return faiss.extract_index_ivf(index)
    except (RuntimeError, TypeError):
        return None


def _normalize(x: np.ndarray, metric: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if metric == "cosine":
        faiss.normalize_L2(x)
    return x


def tuning_grid(index: faiss.Index) -> tuple[str, list[int]] | None:
    """The search-time parameter that trades recall for speed, and the values to try (fastest first)."""
    ivf = _ivf(index)
    if ivf is not None:
        return "nprobe", [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if p <= ivf.nlist] or [1]
    if "HNSW" in type(faiss.downcast_index(index)).__name__:
        return "efSearch", [16, 32, 64, 128, 256, 512]
    return None


def set_search_params(index: faiss.Index, params: dict[str, Any]) -> None:
    ps = faiss.ParameterSpace()
    for name, value in params.items():
        ps.set_index_parameter(index, name, value)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Share of the exact k nearest neighbours that the index also returns in its top k."""
    hits = [len(set(f[:k]) & set(t[:k])) for f, t in zip(found, truth)]
    return float(np.mean(hits) / k)


def build_index(cfg: PipelineConfig) -> IndexResult:
    t0 = time.perf_counter()
    layout = RunLayout.at(cfg.run_dir)
    recover_dir(layout.index.root)
    staging = fresh_dir(layout.staging("index"))
    infos = write_index(cfg, layout.store, staging)
    replace_dir(staging, layout.index.root)
    publish_model_version(layout, infos["model_id"], cfg.training.keep_versions)  # store + index complete
    return IndexResult(str(layout.index.root), infos["index_string"], infos["n_items"], infos["recall_at_10"],
                       infos["params"], round(time.perf_counter() - t0, 3))


def write_index(cfg: PipelineConfig, store_dir: Path, dest: Path) -> dict[str, Any]:
    """Build and tune an index over the store at ``store_dir``; write its files into ``dest``.
    Returns the sidecar (index_infos.json)."""
    t0 = time.perf_counter()
    layout = RunLayout.at(cfg.run_dir)
    store = open_store(store_dir)
    n, dim, ic = store.n_items, store.code_size, cfg.index
    factory = choose_factory(n, dim, ic) if ic.factory == "auto" else ic.factory
    try:
        index = faiss.index_factory(dim, factory, METRICS[ic.metric])
    except RuntimeError as exc:
        raise ConfigError(f"index.factory '{factory}' is not a valid faiss index_factory string for dim {dim}: "
                          f"{str(exc).splitlines()[0] if str(exc) else exc}") from None
    rng = np.random.default_rng(ic.seed)
    k = min(10, n)
    n_q = min(ic.n_eval_queries, n)
    query_pos = np.sort(rng.choice(n, n_q, replace=False))
    rest = np.setdiff1d(np.arange(n), query_pos)  # held out: queries are not used to train the index
    n_train = training_size(index, n) if not index.is_trained else 0
    train_pos = np.sort(rng.choice(rest if len(rest) >= n_train else np.arange(n), n_train, replace=False))

    with timed(f"index {n} vectors of dim {dim} as '{factory}' ({ic.metric})"):
        queries, train = _gather(store, [query_pos, train_pos], ic.metric)
        if n_train:
            with timed(f"train on {n_train} vectors"):
                index.train(train)
        heap = faiss.ResultHeap(n_q, k, keep_max=ic.metric == "cosine")
        ids: list[str] = []
        with timed("add vectors and compute exact neighbours of the eval queries"):
            for batch_ids, codes in store.iter_codes(ic.add_batch_size):
                x = _normalize(codes, ic.metric)
                index.add(x)
                d, i = _exact_knn(queries, x, k, ic.metric)
                heap.add_result(d, np.where(i >= 0, i + len(ids), -1))
                ids += batch_ids
        heap.finalize()
        params, recall, latency = _tune(index, queries, heap.I, k, ic.recall_target)
    files = IndexFiles(dest)
    dest.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(files.index))
    atomic_write_table(files.ids, pa.table({"id": pa.array(ids, pa.string())}))
    size = files.index.stat().st_size
    infos = {
        "index_string": factory,
        "index_class": type(faiss.downcast_index(index)).__name__,
        "metric": ic.metric,
        "params": params,
        "n_items": int(index.ntotal),
        "labels": "positions",  # faiss labels are store positions (ids.parquet row); "explicit": its label column
        "n_items_at_build": int(index.ntotal),
        "dim": dim,
        "model_id": store.model_id,
        "store_dir": str(layout.store),
        "code_dtype": store.meta.get("code_dtype"),
        "recall_at_10": recall,
        "recall_target": ic.recall_target,
        "recall_target_met": recall >= ic.recall_target,
        "n_eval_queries": n_q,
        "latency_ms_per_query": latency,
        "bytes": size,
        "bytes_per_vector": size / max(index.ntotal, 1),
        "build_seconds": round(time.perf_counter() - t0, 3),
        "faiss_version": faiss.__version__,
    }
    atomic_write_json(files.infos, infos)
    if recall < ic.recall_target:
        log.warning("index recall@10 %.3f is below the target %.3f even at %s", recall, ic.recall_target, params)
    return infos


def _exact_knn(queries: np.ndarray, x: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of ``queries`` within one batch, padded to k columns."""
    kk = min(k, len(x))
    d, i = faiss.knn(queries, x, kk, metric=METRICS[metric])
    if kk < k:
        fill = -np.inf if metric == "cosine" else np.inf
        d = np.hstack([d, np.full((len(d), k - kk), fill, np.float32)])
        i = np.hstack([i, np.full((len(i), k - kk), -1, np.int64)])
    return d, i


def _gather(store, position_sets: list[np.ndarray], metric: str) -> list[np.ndarray]:
    """Vectors at the given (sorted) store positions, in one pass over the store."""
    out = [[] for _ in position_sets]
    offset = 0
    for _, codes in store.iter_codes():
        for j, pos in enumerate(position_sets):
            lo, hi = np.searchsorted(pos, [offset, offset + len(codes)])
            if hi > lo:
                out[j].append(codes[pos[lo:hi] - offset])
        offset += len(codes)
    dim = store.code_size
    return [_normalize(np.concatenate(o) if o else np.zeros((0, dim), np.float32), metric) for o in out]


def _tune(index: faiss.Index, queries: np.ndarray, truth: np.ndarray, k: int,
          target: float) -> tuple[dict[str, Any], float, float]:
    """Fastest setting that reaches ``target`` recall@k on the held-out queries."""
    grid = tuning_grid(index)
    settings = [{}] if grid is None else [{grid[0]: v} for v in grid[1]]
    for params in settings:  # never empty: at least the index's defaults
        set_search_params(index, params)
        t = time.perf_counter()
        _, found = index.search(queries, k)
        latency = (time.perf_counter() - t) * 1000 / max(len(queries), 1)
        recall = recall_at_k(found, truth, k)
        if recall >= target:
            break
    return params, round(recall, 4), round(latency, 4)
