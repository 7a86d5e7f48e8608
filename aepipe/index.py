"""Stage: build a FAISS index over the code store, tuned on held-out queries.

The index type comes from the number of vectors and a memory budget (exact Flat
for small collections, HNSW or IVF for larger ones) unless the config forces an
``index_factory`` string. ``ids.parquet`` maps index positions back to store ids;
``index_infos.json`` records what was built and how well it searches.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aepipe.config import IndexConfig, PipelineConfig
from aepipe.corpus.base import prefetch
from aepipe.errors import ConfigError
from aepipe.io import atomic_write_json, fresh_dir, recover_dir, replace_dir
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
    """The first candidate that fits ``cfg.memory_budget_mb`` in RAM; failing that (``on_disk``
    auto or always) IVF-Flat with its inverted lists on disk rather than lossy PQ codes in RAM."""
    budget = cfg.memory_budget_mb * 2**20
    candidates = index_candidates(n, dim, cfg)
    if cfg.on_disk == "always":
        return next(name for name, _ in candidates if name.startswith("IVF"))
    for name, size in candidates:
        if size <= budget and not (cfg.on_disk == "auto" and name.startswith("OPQ")):
            return name
    if cfg.on_disk == "auto":
        return next(name for name, _ in candidates if name.startswith("IVF"))
    raise ConfigError(f"{n} vectors of dimension {dim} do not fit index.memory_budget_mb={cfg.memory_budget_mb}; raise it "
                      "or set index.on_disk=auto")


def wants_on_disk(factory: str, n: int, dim: int, cfg: IndexConfig) -> bool:
    """Whether this index keeps its inverted lists on disk: always (IVF only), or auto when its
    estimated size exceeds the memory budget."""
    is_ivf = any(part.startswith("IVF") for part in factory.split(","))
    if cfg.on_disk == "always" and not is_ivf:
        raise ConfigError(f"index.on_disk=always needs an IVF index, not '{factory}' (faiss keeps only inverted lists on disk)")
    if cfg.on_disk == "auto" and is_ivf:
        try:
            return estimate_bytes(factory, n, dim) > cfg.memory_budget_mb * 2**20
        except (ValueError, IndexError):  # a factory string estimate_bytes does not parse: stay in RAM
            return False
    return cfg.on_disk == "always"


def training_size(index: faiss.Index, n: int) -> int:
    """Points to train on: up to 256 per IVF list and never fewer than 39 (faiss's bounds),
    at least 16,384 for PQ / OPQ / SQ codebooks (256 centroids per sub-quantizer)."""
    ivf = ivf_of(index)
    want = 0
    if ivf is not None:
        want = max(MIN_POINTS_PER_CENTROID * ivf.nlist, min(MAX_POINTS_PER_CENTROID * ivf.nlist, MAX_TRAIN))
    if not isinstance(index, faiss.IndexFlat):
        want = max(want, 256 * 64)
    if ivf is not None and n < MIN_POINTS_PER_CENTROID * ivf.nlist:
        log.warning("only %d vectors for %d IVF lists (faiss wants >= %d per list); use fewer lists",
                    n, ivf.nlist, MIN_POINTS_PER_CENTROID)
    return min(n, want)


def ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    """The IVF part of an index (also inside OPQ / pre-transform wrappers), or None."""
    try:
        return faiss.extract_index_ivf(index)
    except (RuntimeError, TypeError):
        return None


def normalize(x: np.ndarray, metric: str) -> np.ndarray:
    """Vectors as faiss takes them: contiguous float32, L2-normalised (in a copy: the caller's
    array, possibly read-only, is left alone) for the cosine metric."""
    if metric != "cosine":
        return np.ascontiguousarray(x, dtype=np.float32)
    x = np.array(x, dtype=np.float32, order="C")
    faiss.normalize_L2(x)
    return x


def tuning_grid(index: faiss.Index, k: int = 10) -> tuple[str, list[int]] | None:
    """The search-time parameter that trades recall for speed, and the values to try (fastest first)."""
    ivf = ivf_of(index)
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
    """Share of the exact k nearest neighbours that the index also returns in its top k
    (-1 in ``truth`` pads a row with fewer true neighbours; a row with none is skipped)."""
    shares = []
    for f, t in zip(found, truth):
        true = {int(i) for i in t[:k] if i >= 0}
        if true:
            shares.append(len(true & {int(i) for i in f[:k]}) / len(true))
    return float(np.mean(shares)) if shares else 1.0


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
    Returns the sidecar (index_infos.json).

    Three streaming passes over the store, so memory holds the index (or, on disk, one partial
    index) plus a batch, never the store: (1) gather the training sample and the held-out eval
    queries, (2) add every vector, writing ids.parquet as it goes, (3) exact neighbours of the
    eval queries, which the search parameters are then tuned against."""
    t0 = time.perf_counter()
    layout = RunLayout.at(cfg.run_dir)
    store = open_store(store_dir)
    n, dim, ic = store.n_items, store.code_size, cfg.index
    factory = choose_factory(n, dim, ic) if ic.factory == "auto" else ic.factory
    on_disk = wants_on_disk(factory, n, dim, ic)
    candidates = [{"index_string": name, "estimated_bytes": int(size), "fits": size <= ic.memory_budget_mb * 2**20}
                  for name, size in index_candidates(n, dim, ic)] if ic.factory == "auto" else []
    try:
        index = faiss.index_factory(dim, factory, METRICS[ic.metric])
    except RuntimeError as exc:
        raise ConfigError(f"index.factory '{factory}' is not a valid faiss index_factory string for dim {dim}: "
                          f"{str(exc).splitlines()[0] if str(exc) else exc}") from None
    external = _eval_queries(ic, dim)  # checked before the (long) build
    rng = np.random.default_rng(ic.seed)
    k = max(1, min(10, n - 1))  # neighbours of a query other than itself
    n_q = min(ic.n_eval_queries, n)
    query_pos = np.sort(rng.choice(n, n_q, replace=False))
    held = np.zeros(n, bool)
    held[query_pos] = True
    rest = np.flatnonzero(~held)  # held out: queries are not used to train the index (a mask: setdiff1d sorts, ~3 s at 1M)
    n_train = training_size(index, n) if not index.is_trained else 0
    train_pos = np.sort(rng.choice(rest if len(rest) >= n_train else np.arange(n), n_train, replace=False))

    files = IndexFiles(dest)
    dest.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}  # where the build time goes (sidecar)
    with timed(f"index {n} vectors of dim {dim} as '{factory}' ({ic.metric}){' on disk' if on_disk else ''}"):
        t = time.perf_counter()
        queries, train = (normalize(x, ic.metric) for x in store.gather([query_pos, train_pos]))
        seconds["gather_sample"] = time.perf_counter() - t
        if n_train:
            with timed(f"train on {n_train} vectors"):
                t = time.perf_counter()
                index.train(train)
                seconds["train"] = time.perf_counter() - t
        del train
        t = time.perf_counter()
        if on_disk:
            _add_on_disk(index, store, ic, files)
        else:
            _add_all(store, ic, files, lambda x, _: index.add(x))
        seconds["add"] = time.perf_counter() - t
        if not on_disk:
            t = time.perf_counter()
            faiss.write_index(index, str(files.index))
            seconds["write"] = time.perf_counter() - t
        if external is not None:  # the user's own queries: not stored items, nothing to leave out
            queries, query_pos, k = external, None, min(10, n)
        t = time.perf_counter()
        truth, excluded = _exact_neighbours(store, queries, query_pos, k, ic)
        seconds["eval_exact_knn"] = time.perf_counter() - t
        t = time.perf_counter()
        params, recall, latency, curve = _tune(index, queries, excluded, truth, k, ic.recall_target)
        seconds["tune"] = time.perf_counter() - t
    size = files.index.stat().st_size + (files.ivfdata.stat().st_size if on_disk else 0)
    ivf = ivf_of(index)
    infos = {
        "index_string": factory,
        "index_class": type(faiss.downcast_index(index)).__name__,
        "on_disk": on_disk,  # inverted lists in index.ivfdata, memory-mapped when searched
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
        "eval_queries": ic.eval_queries or "held-out stored items",  # for these: each itself and its exact copies left out
        "n_eval_queries": len(queries),
        "n_eval_queries_with_copies": int(((excluded >= 0).sum(1) > 1).sum()),
        "latency_ms_per_query": latency,
        "tuning": curve,  # recall and latency of each setting tried, smallest first
        "imbalance_factor": round(float(ivf.invlists.imbalance_factor()), 4) if ivf is not None else None,
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


def _store_batches(store, batch_size: int, metric: str) -> Iterator[tuple[pa.Array, np.ndarray]]:
    """(ids, vectors ready for faiss) a batch at a time in store order, decoded a batch ahead in a
    thread while faiss works (it releases the GIL)."""
    def read() -> Iterator[tuple[pa.Array, np.ndarray]]:
        for batch in store.iter_batches(batch_size, ["id", "code"]):
            yield batch.column(0), normalize(store.codes(batch.column(1)), metric)
    return prefetch(read(), 2)


def _add_all(store, ic: IndexConfig, files: IndexFiles, add: Callable[[np.ndarray, int], object]) -> None:
    """Hand every stored vector to ``add(vectors, position of the first)``, a batch at a time,
    writing ids.parquet as they go (faiss labels are store positions, i.e. ids.parquet rows)."""
    position = 0
    with pq.ParquetWriter(files.ids, IDS_SCHEMA) as ids:
        for batch_ids, x in _store_batches(store, ic.add_batch_size, ic.metric):
            add(x, position)
            position += len(x)
            ids.write_table(pa.table([batch_ids], schema=IDS_SCHEMA))


def _add_on_disk(index: faiss.Index, store, ic: IndexConfig, files: IndexFiles) -> None:
    """faiss's recipe for indexes larger than RAM: fill partial indexes of ``on_disk_shard_items``
    vectors one at a time (each written out, then freed), merge their inverted lists into one
    memory-mapped ``index.ivfdata`` (faiss.contrib.ondisk), then write the (small) index header."""
    from faiss.contrib.ondisk import merge_ondisk

    shard_dir = files.root / ".shards"
    shard_dir.mkdir(exist_ok=True)
    paths: list[str] = []
    part = None

    def flush() -> None:
        nonlocal part
        if part is not None and part.ntotal:
            paths.append(str(shard_dir / f"shard-{len(paths):05d}.index"))
            faiss.write_index(part, paths[-1])
        part = None

    def add(x: np.ndarray, position: int) -> None:
        nonlocal part
        if part is None:
            part = faiss.clone_index(index)
        part.add_with_ids(x, np.arange(position, position + len(x), dtype=np.int64))  # labels = store positions
        if part.ntotal >= ic.on_disk_shard_items:
            flush()

    _add_all(store, ic, files, add)
    flush()
    with timed(f"merge {len(paths)} partial index(es) into {files.ivfdata.name}"), _quiet_stdout():
        merge_ondisk(index, paths, str(files.ivfdata))  # faiss prints progress on the C stdout
        faiss.write_index(index, str(files.index))
    shutil.rmtree(shard_dir)


IDS_SCHEMA = pa.schema([("id", pa.string())])


def read_index_file(files: IndexFiles, infos: dict[str, Any]) -> faiss.Index:
    """Load a built index. On-disk inverted lists are memory-mapped from the index.ivfdata next to
    index.faiss (the run directory may have moved since the build)."""
    if not infos.get("on_disk"):
        return faiss.read_index(str(files.index))
    with _quiet_stdout():  # faiss says on the C stdout that it found the lists in another directory
        return faiss.read_index(str(files.index), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)


@contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence faiss's C-level printf (fd 1) for the duration: stdout may carry a command's JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


COPIES = 16  # exact copies of an eval query that the recall measurement can set aside with it


def _eval_queries(ic: IndexConfig, dim: int) -> np.ndarray | None:
    """``index.eval_queries``: up to ``n_eval_queries`` query codes from a .npy file (no pickle)."""
    if not ic.eval_queries:
        return None
    try:
        q = np.load(ic.eval_queries, mmap_mode="r", allow_pickle=False)  # read-only: normalize copies
    except (OSError, ValueError) as exc:
        raise ConfigError(f"index.eval_queries {ic.eval_queries}: cannot read it as a .npy array ({exc})") from None
    if q.ndim != 2 or q.shape[1] != dim or len(q) == 0:
        raise ConfigError(f"index.eval_queries {ic.eval_queries} holds an array of shape {q.shape}; "
                          f"need (n, {dim}): codes of this run's model")
    return normalize(np.asarray(q[: ic.n_eval_queries]), ic.metric)


def _exact_neighbours(store, queries: np.ndarray, query_pos: np.ndarray | None, k: int,
                      ic: IndexConfig) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest store positions of each eval query (one streaming pass, a batch of vectors
    against all queries at a time), leaving out the query itself and its exact copies: any index
    finds those in the query's own list or neighbourhood, so counting them would measure recall as
    for a stored item, not for a new query (14% of a 1M augmented-MNIST benchmark store had a copy).
    Returns (truth (Q, k), padded with -1; excluded positions (Q, k+1+COPIES), -1 elsewhere)."""
    n_q, depth = len(queries), min(k + 1 + COPIES, store.n_items)
    heap = faiss.ResultHeap(n_q, depth, keep_max=ic.metric == "cosine")
    offset = 0
    for _, x in _store_batches(store, ic.add_batch_size, ic.metric):
        d, i = _exact_knn(queries, x, depth, ic.metric)
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
    return _first_k_not_excluded(heap.I, excluded, k), excluded


def _first_k_not_excluded(found: np.ndarray, excluded: np.ndarray, k: int) -> np.ndarray:
    """Per row, the first k labels of ``found`` that are not among that row's ``excluded`` (nor -1),
    padded with -1."""
    out = np.full((len(found), k), -1, np.int64)
    for row, (f, ex) in enumerate(zip(found.tolist(), excluded.tolist())):
        drop = set(ex)
        kept = [i for i in f if i >= 0 and i not in drop][:k]
        out[row, : len(kept)] = kept
    return out


def _exact_knn(queries: np.ndarray, x: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of ``queries`` within one batch, padded to k columns."""
    kk = min(k, len(x))
    d, i = faiss.knn(queries, x, kk, metric=METRICS[metric])
    if kk < k:
        fill = -np.inf if metric == "cosine" else np.inf
        d = np.hstack([d, np.full((len(d), k - kk), fill, np.float32)])
        i = np.hstack([i, np.full((len(i), k - kk), -1, np.int64)])
    return d, i


def _tune(index: faiss.Index, queries: np.ndarray, excluded: np.ndarray, truth: np.ndarray, k: int,
          target: float) -> tuple[dict[str, Any], float, float, list[dict[str, Any]]]:
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
        recall = recall_at_k(_first_k_not_excluded(found, excluded, k), truth, k)
        curve.append({"params": params, "recall_at_10": round(recall, 4), "latency_ms_per_query": round(latency, 4)})
        if recall >= target:
            break
    return params, round(recall, 4), round(latency, 4), curve
