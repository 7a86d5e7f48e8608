"""Recall tuning: exact neighbours of held-out queries (their copies set aside), the recall of each
search setting, and the fastest setting that meets the target."""

from __future__ import annotations

import time
from typing import Any

import faiss
import numpy as np

from aepipe.config import IndexConfig
from aepipe.errors import ConfigError
from aepipe.index.faissio import METRICS, ivf_of, normalize, set_search_params
from aepipe.index.vectors import store_batches

COPIES = 16  # exact copies of an eval query that the recall measurement can set aside with it


def tuning_grid(index: faiss.Index, k: int = 10) -> tuple[str, list[int]] | None:
    """The search-time parameter that trades recall for speed, and the values to try (fastest first)."""
    ivf = ivf_of(index)
    if ivf is not None:
        steps = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048)
        return "nprobe", [p for p in steps if p <= ivf.nlist] or [1]
    if "HNSW" in type(faiss.downcast_index(index)).__name__:
        return "efSearch", [e for e in (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512) if e >= k] or [k]
    return None


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Share of the exact k nearest neighbours that the index also returns in its top k
    (-1 in ``truth`` pads a row with fewer true neighbours; a row with none is skipped)."""
    shares = []
    for f, t in zip(found, truth):
        true = {int(i) for i in t[:k] if i >= 0}
        if true:
            shares.append(len(true & {int(i) for i in f[:k]}) / len(true))
    return float(np.mean(shares)) if shares else 1.0


def load_eval_queries(ic: IndexConfig, dim: int) -> np.ndarray | None:
    """``index.eval_queries``: up to ``n_eval_queries`` query codes from a .npy file (no pickle)."""
    if not ic.eval_queries:
        return None
    try:
        q = np.load(ic.eval_queries, mmap_mode="r", allow_pickle=False)  # read-only: normalize copies
    except (OSError, ValueError) as exc:
        raise ConfigError(f"index.eval_queries {ic.eval_queries}: cannot read it as a .npy array ({exc})") from None
    if q.ndim != 2 or q.shape[1] != dim or len(q) == 0:
        raise ConfigError(
            f"index.eval_queries {ic.eval_queries} holds an array of shape {q.shape}; "
            f"need (n, {dim}): codes of this run's model"
        )
    return normalize(np.asarray(q[: ic.n_eval_queries]), ic.metric)


def exact_neighbours(
    store, queries: np.ndarray, query_pos: np.ndarray | None, k: int, ic: IndexConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest store positions of each eval query (one streaming pass, a batch of vectors
    against all queries at a time), leaving out the query itself and its exact copies: any index
    finds those in the query's own list or neighbourhood, so counting them would measure recall as
    for a stored item, not for a new query (14% of a 1M augmented-MNIST benchmark store had a copy).
    Returns (truth (Q, k), padded with -1; excluded positions (Q, k+1+COPIES), -1 elsewhere)."""
    n_q, depth = len(queries), min(k + 1 + COPIES, store.n_items)
    heap = faiss.ResultHeap(n_q, depth, keep_max=ic.metric == "cosine")
    offset = 0
    for _, x in store_batches(store, ic.add_batch_size, ic.metric):
        d, i = exact_knn(queries, x, depth, ic.metric)
        heap.add_result(d, np.where(i >= 0, i + offset, -1))
        offset += len(x)
    heap.finalize()
    if ic.metric == "cosine":
        copy = heap.D >= 1.0 - 1e-5
    else:  # squared L2 of a copy is 0 up to BLAS rounding, relative to the query's squared norm
        copy = heap.D <= 1e-5 * np.maximum((queries.astype(np.float64) ** 2).sum(1), 1e-12)[:, None]
    if query_pos is None:  # external queries: a stored copy of one is a true neighbour
        copy[:] = False
        query_pos = np.full(n_q, -2)
    excluded = np.where(copy | (heap.I == query_pos[:, None]), heap.I, -1)
    return first_k_not_excluded(heap.I, excluded, k), excluded


def first_k_not_excluded(found: np.ndarray, excluded: np.ndarray, k: int) -> np.ndarray:
    """Per row, the first k labels of ``found`` that are not among that row's ``excluded`` (nor -1),
    padded with -1."""
    out = np.full((len(found), k), -1, np.int64)
    for row, (f, ex) in enumerate(zip(found.tolist(), excluded.tolist())):
        drop = set(ex)
        kept = [i for i in f if i >= 0 and i not in drop][:k]
        out[row, : len(kept)] = kept
    return out


def exact_knn(queries: np.ndarray, x: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of ``queries`` within one batch, padded to k columns."""
    kk = min(k, len(x))
    d, i = faiss.knn(queries, x, kk, metric=METRICS[metric])
    if kk < k:
        fill = -np.inf if metric == "cosine" else np.inf
        d = np.hstack([d, np.full((len(d), k - kk), fill, np.float32)])
        i = np.hstack([i, np.full((len(i), k - kk), -1, np.int64)])
    return d, i


def tune_search(
    index: faiss.Index, queries: np.ndarray, excluded: np.ndarray, truth: np.ndarray, k: int, target: float
) -> tuple[dict[str, Any], float, float, list[dict[str, Any]]]:
    """Smallest (so fastest: cost grows with nprobe / efSearch) setting that reaches ``target``
    recall@k on the held-out queries (``truth``: their exact neighbours, the query and its copies,
    ``excluded``, left out of both sides), and the curve measured on the way. Latency is the best
    of two timed k-nearest searches of the batch of eval queries after a warm-up, per query."""
    grid = tuning_grid(index, k)
    settings = [{}] if grid is None else [{grid[0]: v} for v in grid[1]]
    curve = []
    index.search(queries[:64], k)  # warm-up: first-touch of the index memory is not search cost
    for params in settings:  # never empty: at least the index's defaults
        set_search_params(index, params)
        times = []
        for _ in range(2):
            t = time.perf_counter()
            index.search(queries, min(k, index.ntotal))
            times.append(time.perf_counter() - t)
        _, found = index.search(queries, min(excluded.shape[1], index.ntotal))  # deep enough to set copies aside
        latency = min(times) * 1000 / max(len(queries), 1)
        recall = recall_at_k(first_k_not_excluded(found, excluded, k), truth, k)
        curve.append({"params": params, "recall_at_10": round(recall, 4), "latency_ms_per_query": round(latency, 4)})
        if recall >= target:
            break
    return params, round(recall, 4), round(latency, 4), curve


def latency_percentiles(index: faiss.Index, queries: np.ndarray, k: int, n_queries: int = 200) -> tuple[float, float]:
    """p50 and p99 of the time of one query searched alone (ms), over the first ``n_queries``
    eval queries at the index's current search setting: what an interactive caller waits."""
    times = []
    k = min(k, index.ntotal)
    for q in queries[:n_queries]:
        t = time.perf_counter()
        index.search(q[None], k)
        times.append(time.perf_counter() - t)
    p50, p99 = np.percentile(np.array(times) * 1000, [50, 99]) if times else (0.0, 0.0)
    return round(float(p50), 4), round(float(p99), 4)
