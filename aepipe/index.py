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
from aepipe.store import arrow_to_codes, open_store
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


MIN_POINTS_PER_CENTROID = 39  # faiss warns below this: k-means centroids are then poorly placed
MAX_POINTS_PER_CENTROID = 256  # faiss subsamples above this anyway
MAX_TRAIN = 1_000_000


def estimate_bytes(factory: str, n: int, dim: int) -> float:
    """Rough memory of an index: per-vector codes, ids and links plus fixed tables
    (OPQ rotation, IVF centroids). Understands the strings ``index_candidates`` makes."""
    parts = factory.split(",")
    fixed = 0.0
    if parts[0].startswith("OPQ"):
        fixed += dim * dim * 4  # the rotation matrix
        parts = parts[1:]
    head = parts[0]
    if head.startswith("HNSW"):
        m = int(head[4:] or HNSW_M)
        return fixed + n * (dim * 4 + m * 2 * 4 * 1.1)  # vectors + ~2M level-0 links
    if head.startswith("IVF"):
        nlist = int(head[3:].split("_")[0])
        fixed += nlist * dim * 4  # coarse centroids
        codes = parts[1] if len(parts) > 1 else "Flat"
        if codes.startswith("PQ"):
            per_vector = int(codes[2:].split("x")[0])
        elif codes == "SQ8":
            per_vector = dim
        else:
            per_vector = dim * 4
        return fixed + n * (per_vector + 8)  # codes + 64-bit ids in the inverted lists
    return fixed + n * dim * 4


def ivf_nlist(n: int) -> int:
    """About 4*sqrt(N) lists (a power of two), with at least 39 training points per list."""
    nlist = 2 ** int(round(math.log2(max(4 * math.sqrt(n), 1))))
    return int(max(1, min(nlist, n // MIN_POINTS_PER_CENTROID, 65_536)))


def index_candidates(n: int, dim: int, cfg: IndexConfig) -> list[tuple[str, float]]:
    """Index strings in order of preference (most exact / fastest to tune first), each with its
    estimated bytes: Flat (small collections), HNSW (up to 2M vectors), IVF-Flat, IVF-SQ8, then
    OPQ + IVF-PQ with ever shorter codes for collections that only fit compressed."""
    names = []
    if n <= cfg.flat_max_items:
        names.append("Flat")
    if n <= 2_000_000:
        names.append(f"HNSW{HNSW_M}")
    nlist = ivf_nlist(n)
    names += [f"IVF{nlist},Flat", f"IVF{nlist},SQ8"]
    # PQ codes of m bytes (m divides dim); OPQ rotates first, which costs little and helps recall
    names += [f"OPQ{m},IVF{nlist},PQ{m}" for m in sorted((m for m in range(1, dim + 1) if dim % m == 0 and m <= 64),
                                                        reverse=True) if m < dim]
    return [(name, estimate_bytes(name, n, dim)) for name in names]


def choose_factory(n: int, dim: int, cfg: IndexConfig) -> str:
    """The first candidate that fits ``cfg.memory_budget_mb``."""
    budget = cfg.memory_budget_mb * 2**20
    for name, size in index_candidates(n, dim, cfg):
        if size <= budget:
            return name
    raise ConfigError(f"{n} vectors of dimension {dim} do not fit index.memory_budget_mb={cfg.memory_budget_mb}; raise it")


def training_size(index: faiss.Index, n: int) -> int:
    """Points to train on: up to 256 per IVF list and never fewer than 39 (faiss's bounds),
    at least 16,384 for PQ / OPQ / SQ codebooks (256 centroids per sub-quantizer)."""
    ivf = _ivf(index)
    want = 0
    if ivf is not None:
        want = max(MIN_POINTS_PER_CENTROID * ivf.nlist, min(MAX_POINTS_PER_CENTROID * ivf.nlist, MAX_TRAIN))
    if not isinstance(index, faiss.IndexFlat):
        want = max(want, 256 * 64)
    if ivf is not None and n < MIN_POINTS_PER_CENTROID * ivf.nlist:
        log.warning("only %d vectors for %d IVF lists (faiss wants >= %d per list); use fewer lists",
                    n, ivf.nlist, MIN_POINTS_PER_CENTROID)
    return min(n, want)


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


def tuning_grid(index: faiss.Index, k: int = 10) -> tuple[str, list[int]] | None:
    """The search-time parameter that trades recall for speed, and the values to try (fastest first)."""
    ivf = _ivf(index)
    if ivf is not None:
        steps = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048)
        return "nprobe", [p for p in steps if p <= ivf.nlist] or [1]
    if "HNSW" in type(faiss.downcast_index(index)).__name__:
        return "efSearch", [e for e in (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512) if e >= k] or [k]
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
    candidates = [{"index_string": name, "estimated_bytes": int(size), "fits": size <= ic.memory_budget_mb * 2**20}
                  for name, size in index_candidates(n, dim, ic)] if ic.factory == "auto" else []
    try:
        index = faiss.index_factory(dim, factory, METRICS[ic.metric])
    except RuntimeError as exc:
        raise ConfigError(f"index.factory '{factory}' is not a valid faiss index_factory string for dim {dim}: "
                          f"{str(exc).splitlines()[0] if str(exc) else exc}") from None
    rng = np.random.default_rng(ic.seed)
    k = max(1, min(10, n - 1))  # neighbours of a query other than itself
    n_q = min(ic.n_eval_queries, n)
    query_pos = np.sort(rng.choice(n, n_q, replace=False))
    held = np.zeros(n, bool)
    held[query_pos] = True
    rest = np.flatnonzero(~held)  # held out: queries are not used to train the index (a mask: setdiff1d sorts, ~3 s at 1M)
    n_train = training_size(index, n) if not index.is_trained else 0
    train_pos = np.sort(rng.choice(rest if len(rest) >= n_train else np.arange(n), n_train, replace=False))

    seconds: dict[str, float] = {"add": 0.0, "eval_exact_knn": 0.0}  # where the build time goes (sidecar)
    with timed(f"index {n} vectors of dim {dim} as '{factory}' ({ic.metric})"):
        t = time.perf_counter()
        queries, train = _gather(store, [query_pos, train_pos], ic.metric)
        seconds["gather_sample"] = time.perf_counter() - t
        if n_train:
            with timed(f"train on {n_train} vectors"):
                t = time.perf_counter()
                index.train(train)
                seconds["train"] = time.perf_counter() - t
        heap = faiss.ResultHeap(n_q, min(k + 1, n), keep_max=ic.metric == "cosine")  # + the query itself
        ids: list[str] = []
        with timed("add vectors and compute exact neighbours of the eval queries"):
            for batch_ids, codes in store.iter_codes(ic.add_batch_size):
                x = _normalize(codes, ic.metric)
                t = time.perf_counter()
                index.add(x)
                t_added = time.perf_counter()
                d, i = _exact_knn(queries, x, min(k + 1, n), ic.metric)
                seconds["add"] += t_added - t
                seconds["eval_exact_knn"] += time.perf_counter() - t_added
                heap.add_result(d, np.where(i >= 0, i + len(ids), -1))
                ids += batch_ids
        heap.finalize()
        t = time.perf_counter()
        params, recall, latency, curve = _tune(index, queries, query_pos, _drop_self(heap.I, query_pos, k), k,
                                               ic.recall_target)
        seconds["tune"] = time.perf_counter() - t
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
        "tuning": curve,  # recall and latency of each setting tried, smallest first
        "seconds": {name: round(v, 3) for name, v in seconds.items()},
        "candidates": candidates,  # what 'auto' weighed: estimated bytes against the memory budget
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
    for batch in store.iter_batches(columns=["code"]):
        codes = arrow_to_codes(batch.column(0))
        for j, pos in enumerate(position_sets):
            lo, hi = np.searchsorted(pos, [offset, offset + len(codes)])
            if hi > lo:
                out[j].append(codes[pos[lo:hi] - offset])
        offset += len(codes)
    dim = store.code_size
    return [_normalize(np.concatenate(o) if o else np.zeros((0, dim), np.float32), metric) for o in out]


def _drop_self(found: np.ndarray, query_pos: np.ndarray, k: int) -> np.ndarray:
    """The first k results other than the query itself (eval queries are stored vectors: leave
    one out, so recall is measured as for a new query, not inflated by the exact self-match).
    (Q, k+1) -> (Q, k); a row without its own position loses its last result instead."""
    own = found == query_pos[:, None]
    own[~own.any(1), -1] = True
    own[own.cumsum(1) > 1] = False  # at most one dropped per row
    return found[~own].reshape(len(found), -1)[:, :k]


def _tune(index: faiss.Index, queries: np.ndarray, query_pos: np.ndarray, truth: np.ndarray, k: int,
          target: float) -> tuple[dict[str, Any], float, float, list[dict[str, Any]]]:
    """Smallest (so fastest: cost grows with nprobe / efSearch) setting that reaches ``target``
    recall@k on the held-out queries (``truth``: their exact neighbours, themselves left out), and the curve measured on the way. Latency is the best
    of two timed runs after a warm-up, per query, with the batch of eval queries."""
    grid = tuning_grid(index, k)
    settings = [{}] if grid is None else [{grid[0]: v} for v in grid[1]]
    curve = []
    index.search(queries[:64], k)  # warm-up: first-touch of the index memory is not search cost
    for params in settings:  # never empty: at least the index's defaults
        set_search_params(index, params)
        times = []
        for _ in range(2):
            t = time.perf_counter()
            _, found = index.search(queries, min(k + 1, index.ntotal))
            times.append(time.perf_counter() - t)
        found = _drop_self(found, query_pos, k)
        latency = min(times) * 1000 / max(len(queries), 1)
        recall = recall_at_k(found, truth, k)
        curve.append({"params": params, "recall_at_10": round(recall, 4), "latency_ms_per_query": round(latency, 4)})
        if recall >= target:
            break
    return params, round(recall, 4), round(latency, 4), curve
