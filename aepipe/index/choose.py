"""Which index to build: candidates with their estimated memory, build time and query cost, and
the choice among them.

Above ``flat_max_items`` the in-RAM candidates that fit the memory budget are built and tuned on
a seeded sample of the store (``calibrate``), and their build and query costs extrapolated to
the whole store with the cost model of each kind (``extrapolate``); the winner has the least
build seconds + ``queries_per_build`` x seconds per query within ``build_budget_s`` and
``max_query_ms``. Below it, or when memory decides (compressed or on-disk indexes), the memory
rule of ``choose_factory`` alone."""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from aepipe.config import IndexConfig
from aepipe.errors import ConfigError
from aepipe.index.faissio import EXACT_ASSIGN_MAX_LISTS, METRICS, bulk_adder, ivf_of, normalize, set_search_params
from aepipe.index.tune import tune_search

log = logging.getLogger(__name__)


HNSW_M = 32


MIN_POINTS_PER_CENTROID = 39  # faiss warns below this: k-means centroids are then poorly placed


MAX_POINTS_PER_CENTROID = 256  # faiss subsamples above this anyway (index.train_points_per_list caps it lower)


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
        elif codes == "SQfp16":
            per_vector = dim * 2
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
    names += [
        f"OPQ{m},IVF{nlist},PQ{m}"
        for m in sorted((m for m in range(1, dim + 1) if dim % m == 0 and m <= 64), reverse=True)
        if m < dim
    ]
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
    raise ConfigError(
        f"{n} vectors of dimension {dim} do not fit index.memory_budget_mb={cfg.memory_budget_mb}; raise it "
        "or set index.on_disk=auto"
    )


def wants_on_disk(factory: str, n: int, dim: int, cfg: IndexConfig) -> bool:
    """Whether this index keeps its inverted lists on disk: always (IVF only), or auto when its
    estimated size exceeds the memory budget."""
    is_ivf = any(part.startswith("IVF") for part in factory.split(","))
    if cfg.on_disk == "always" and not is_ivf:
        raise ConfigError(
            f"index.on_disk=always needs an IVF index, not '{factory}' (faiss keeps only inverted lists on disk)"
        )
    if cfg.on_disk == "auto" and is_ivf:
        try:
            return estimate_bytes(factory, n, dim) > cfg.memory_budget_mb * 2**20
        except (ValueError, IndexError):  # a factory string estimate_bytes does not parse: stay in RAM
            return False
    return cfg.on_disk == "always"


def training_size(index: faiss.Index, n: int, per_list: int = MAX_POINTS_PER_CENTROID) -> int:
    """Points to train on: up to ``per_list`` per IVF list (index.train_points_per_list; at most 256)
    and never fewer than 39 (faiss's bounds), at least 16,384 for PQ / OPQ / SQ codebooks (256
    centroids per sub-quantizer)."""
    ivf = ivf_of(index)
    want = 0
    if ivf is not None:
        per_list = max(MIN_POINTS_PER_CENTROID, min(per_list, MAX_POINTS_PER_CENTROID))
        want = max(MIN_POINTS_PER_CENTROID * ivf.nlist, min(per_list * ivf.nlist, MAX_TRAIN))
    if not isinstance(index, faiss.IndexFlat):
        want = max(want, 256 * 64)
    if ivf is not None and n < MIN_POINTS_PER_CENTROID * ivf.nlist:
        log.warning(
            "only %d vectors for %d IVF lists (faiss wants >= %d per list); use fewer lists",
            n,
            ivf.nlist,
            MIN_POINTS_PER_CENTROID,
        )
    return min(n, want)


# ---------------------------------------------------------------- choice by measured cost

CALIBRATION_QUERIES = 256  # held out of the sample index: new queries, as at search time

HNSW_QUANTIZER_MIN_LISTS = 1024  # below this a flat coarse quantizer is as fast as a graph over it

COARSE_POINTS_PER_LIST = (
    8  # k-means timing sample: cost per iteration is linear in points (20: 2.3 s of 1 thread at 4,096 lists)
)
IVF_KMEANS_ITERATIONS = 10  # faiss's IVF training (ClusteringParameters.niter)
COARSE_ITERATIONS = 3  # timed, then scaled to IVF_KMEANS_ITERATIONS: an iteration's cost does not change


@dataclass
class Choice:
    index_string: str
    reason: str
    candidates: list[dict[str, Any]]  # what was weighed (sidecar "candidates")


def calibrated_names(n: int, dim: int, cfg: IndexConfig) -> list[str]:
    """In-RAM candidates worth measuring, each fitting ``memory_budget_mb``: HNSW32 (up to 2M
    vectors), IVF-Flat with a flat coarse quantizer and, from 1,024 lists, IVF with an HNSW one
    (the flat quantizer scans every centroid per query, which dominates at small nprobe) over
    half-precision vectors (``SQfp16``). A batch of queries scanning lists of a large store is
    bound by reading the vectors: on 1M x 32-d codes, 5,000 queries at nprobe 12 ran 47k/s over
    fp16 against 28k/s over float32, with the same recall@10 (0.954; RESULTS-large.md, session
    12). Where half precision does lose neighbours (values beyond fp16's range or precision), the
    sample's recall says so and the float32 IVF-Flat candidate remains."""
    nlist = ivf_nlist(n)
    names = [f"HNSW{HNSW_M}"] if n <= 2_000_000 else []
    names.append(f"IVF{nlist},Flat")
    if nlist >= HNSW_QUANTIZER_MIN_LISTS:
        names.append(f"IVF{nlist}_HNSW{HNSW_M},SQfp16")
    budget = cfg.memory_budget_mb * 2**20
    return [name for name in names if estimate_bytes(name, n, dim) <= budget]


def nlist_of(factory: str) -> int | None:
    m = re.search(r"IVF(\d+)", factory)
    return int(m.group(1)) if m else None


def at_nlist(factory: str, nlist: int) -> str:
    return re.sub(r"IVF\d+", f"IVF{nlist}", factory)


def choose_index(store: Any, cfg: IndexConfig) -> Choice:
    """``index.factory=auto``: the index to build over ``store`` (a CodeStore) and why."""
    n, dim = store.n_items, store.code_size
    budget = cfg.memory_budget_mb * 2**20
    weighed = [
        {"index_string": name, "estimated_bytes": int(size), "fits": size <= budget}
        for name, size in index_candidates(n, dim, cfg)
    ]
    names = calibrated_names(n, dim, cfg)
    if n <= cfg.flat_max_items or cfg.on_disk == "always" or len(names) < 2:
        name = choose_factory(n, dim, cfg)
        why = (
            f"exact search: {n} vectors <= index.flat_max_items={cfg.flat_max_items}"
            if name == "Flat"
            else "the first candidate, in order of preference, that fits "
            f"index.memory_budget_mb={cfg.memory_budget_mb:g}{' (on disk)' if wants_on_disk(name, n, dim, cfg) else ''}"
        )
        return Choice(name, why, weighed)
    measured = calibrate(store, names, cfg)
    name, why = pick(measured, cfg)
    by_name = {c["index_string"]: c for c in measured}
    for c in weighed:
        c.update(by_name.pop(c["index_string"], {}))
    weighed += list(by_name.values())  # the IVF-HNSW variant is not among the memory-rule strings
    return Choice(name, why, weighed)


def calibrate(store: Any, names: list[str], cfg: IndexConfig) -> list[dict[str, Any]]:
    """Build and tune each candidate on a seeded sample of ``calibration_items`` stored vectors
    (IVF with the number of lists of the sample's size), against the exact neighbours of
    ``CALIBRATION_QUERIES`` other stored vectors, and extrapolate its costs to the whole store."""
    n = store.n_items
    rng = np.random.default_rng(cfg.seed + 1)
    s = min(cfg.calibration_items, n - CALIBRATION_QUERIES)
    pos = rng.choice(n, s + CALIBRATION_QUERIES, replace=False)
    sample_pos, query_pos = np.sort(pos[:s]), np.sort(pos[s:])
    sample, queries = (normalize(x, cfg.metric) for x in store.gather([sample_pos, query_pos]))
    k = 10
    _, truth = faiss.knn(queries, sample, k, metric=METRICS[cfg.metric])
    excluded = np.full((len(queries), k), -1, np.int64)  # new queries: nothing to set aside
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # see calibrate_one
    try:
        coarse = coarse_training_cost(store, names, sample.shape[1], rng, cfg)
        out = [calibrate_one(name, n, sample, queries, truth, excluded, rng, cfg, threads, coarse) for name in names]
    finally:
        faiss.omp_set_num_threads(threads)
    return out


def coarse_training_cost(
    store: Any, names: list[str], dim: int, rng: np.random.Generator, cfg: IndexConfig
) -> dict[int, tuple[int, float]]:
    """For each IVF list count among ``names``: seconds of faiss's k-means (the IVF coarse
    training, 10 iterations) at that FULL number of lists on ``COARSE_POINTS_PER_LIST`` points per
    list, one thread (as calibrate_one). Its cost is linear in points at a fixed number of lists,
    so the full training (up to 256 points per list) extrapolates by ~13x, where scaling a
    sample's few hundred lists up to thousands would multiply the measurement by hundreds.
    ``COARSE_ITERATIONS`` are timed and scaled to the training's 10 (each costs the same)."""
    out: dict[int, tuple[int, float]] = {}
    for nlist in sorted({nl for nl in (nlist_of(name) for name in names) if nl}):
        m = min(store.n_items, COARSE_POINTS_PER_LIST * nlist)
        (x,) = store.gather([np.sort(rng.choice(store.n_items, m, replace=False))])
        x = normalize(x, cfg.metric)
        km = faiss.Kmeans(dim, nlist, niter=COARSE_ITERATIONS, seed=cfg.seed, verbose=False)
        km.cp.min_points_per_centroid = 1  # no warning: only the time of an iteration is wanted
        t = time.perf_counter()
        km.train(x)
        out[nlist] = (m, (time.perf_counter() - t) * IVF_KMEANS_ITERATIONS / COARSE_ITERATIONS)
    return out


def sample_nlist(s: int) -> int:
    """IVF lists for a sample of ``s`` vectors: a power of two, as ivf_nlist, with >= 39 points per list."""
    return 2 ** int(math.log2(max(ivf_nlist(s), 1)))


def calibrate_one(
    name: str,
    n: int,
    sample: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    excluded: np.ndarray,
    rng: np.random.Generator,
    cfg: IndexConfig,
    threads: int,
    coarse: dict[int, tuple[int, float]],
) -> dict[str, Any]:
    """One candidate built and tuned on the sample with ONE thread: a sample's many short parallel
    regions (a k-means iteration, a batch of 256 queries) measure OpenMP's synchronisation rather
    than the work, worst on a busy machine, and the extrapolation multiplies that error by up to
    ~100x. Estimates are then divided by ``threads`` (the build's and the searches' threads)."""
    s, k = len(sample), truth.shape[1]
    small = at_nlist(name, sample_nlist(s)) if nlist_of(name) else name
    index = faiss.index_factory(sample.shape[1], small, METRICS[cfg.metric])
    t = time.perf_counter()
    if not index.is_trained:
        index.train(sample[rng.permutation(s)[: training_size(index, s, cfg.train_points_per_list)]])
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    bulk_adder(index)(sample, None)  # as build_index adds: an HNSW quantizer's lists assigned exactly
    add_s = time.perf_counter() - t
    params, recall, latency, _ = tune_search(index, queries, excluded, truth, k, cfg.recall_target)
    quantizer_ms = 0.0
    ivf = ivf_of(index)
    if ivf is not None:  # the coarse quantizer's share of the query time scales apart from the scan
        set_search_params(index, params)
        quantizer_ms = best_of(2, ivf.quantizer.search, queries, ivf.nprobe) * 1000 / len(queries)
    sample_costs = {
        "items": s,
        "index_string": small,
        "params": params,
        "recall_at_10": recall,
        "train_s": round(train_s, 4),
        "add_s": round(add_s, 4),
        "latency_ms_per_query": latency,
        "quantizer_ms_per_query": round(quantizer_ms, 5),
    }
    full_train = training_size(
        faiss.index_factory(sample.shape[1], name, METRICS[cfg.metric]), n, cfg.train_points_per_list
    )
    kmeans = coarse.get(nlist_of(name) or 0)
    if kmeans is not None:
        sample_costs["coarse_kmeans"] = {"points": kmeans[0], "seconds": round(kmeans[1], 4)}
    build_1t, query_1t = extrapolate(name, n, sample_costs, full_train, kmeans, cfg.train_points_per_list)
    build_s, query_ms = build_1t / build_speedup(name, threads), query_1t / max(threads, 1)
    log.info(
        "calibration %s on %d vectors (1 thread): recall@10 %.3f at %s; estimated with %d threads: build %.1f s, "
        "%.4f ms/query",
        name,
        s,
        recall,
        params,
        threads,
        build_s,
        query_ms,
    )
    return {
        "index_string": name,
        "estimated_build_s": round(build_s, 3),
        "estimated_query_ms": round(query_ms, 5),
        "estimated_cost_s": round(build_s + cfg.queries_per_build * query_ms / 1000, 3),
        "sample": {**sample_costs, "threads": 1},
    }


# HNSW insertion takes locks on the graph: building 1M x 32-d HNSW32 with 2 threads took 36.8 s where
# one thread's extrapolation said 41.6 s (1.13x; benchmarks/RESULTS-large.md). Batched queries, k-means
# and IVF assignment parallelise over vectors (~ x threads).
HNSW_ADD_SPEEDUP_PER_THREAD = 0.15


def build_speedup(name: str, threads: int) -> float:
    """How much faster a build of ``name`` runs on ``threads`` threads than on one."""
    threads = max(threads, 1)
    return 1 + HNSW_ADD_SPEEDUP_PER_THREAD * (threads - 1) if name.startswith("HNSW") else float(threads)


def extrapolate(
    name: str,
    n: int,
    sample: dict[str, Any],
    n_train: int,
    coarse: tuple[int, float] | None = None,
    per_list: int = MAX_POINTS_PER_CENTROID,
) -> tuple[float, float]:
    """(build seconds, ms per query) of ``name`` over ``n`` vectors from its costs on the sample,
    at the search setting tuned there. The cost model of each kind:

    - HNSW: each insertion and each query walks a graph of about log(n) levels of hops:
      add x (n/s) x ln n / ln s; query x ln n / ln s.
    - IVF, training: k-means on ``n_train`` points against nlist centroids: x n_train*nlist; with
      ``coarse`` = (points, seconds) of k-means at the full nlist (coarse_training_cost): x n_train/points.
    - IVF, add: one coarse assignment per vector, exact (a flat search over the centroids, also
      under an HNSW quantizer up to EXACT_ASSIGN_MAX_LISTS lists: ``bulk_adder``) x n*nlist, else
      through the HNSW graph x n * ln nlist.
    - IVF, query: the quantizer part x nlist (flat) or x ln nlist (HNSW); the scan of nprobe lists
      with the list length n/nlist (nprobe is taken as it was tuned on the sample)."""
    s = sample["items"]
    if name.startswith("HNSW"):
        grow = math.log(n) / math.log(s)
        return sample["add_s"] * n / s * grow, sample["latency_ms_per_query"] * grow
    nlist, nlist_s = nlist_of(name) or 1, nlist_of(sample["index_string"]) or 1
    train_s_items = min(s, training_size(faiss.index_factory(4, f"IVF{nlist_s},Flat"), s, per_list))
    train = sample["train_s"] * (n_train * nlist) / (train_s_items * nlist_s)
    if coarse is not None:
        train = coarse[1] * n_train / coarse[0]
    if "_HNSW" in name:
        lookup = math.log(max(nlist, 2)) / math.log(max(nlist_s, 2))
    else:
        lookup = nlist / nlist_s
    exact = "_HNSW" not in name or nlist <= EXACT_ASSIGN_MAX_LISTS  # how bulk_adder assigns at the full size
    add = sample["add_s"] * n / s * (nlist / nlist_s if exact else lookup)
    quantizer = sample["quantizer_ms_per_query"]
    scan = max(sample["latency_ms_per_query"] - quantizer, 0.0)
    return train + add, quantizer * lookup + scan * (n / nlist) / (s / nlist_s)


def pick(measured: list[dict[str, Any]], cfg: IndexConfig) -> tuple[str, str]:
    """The winner among calibrated candidates, and why: least estimated cost among those that
    reached the recall target on the sample and keep within the limits; failing that, the one
    over the limits by the least factor."""
    for c in measured:
        over = []
        if c["sample"]["recall_at_10"] < cfg.recall_target:
            over.append(f"recall@10 {c['sample']['recall_at_10']} < {cfg.recall_target} on the sample")
        if cfg.build_budget_s is not None and c["estimated_build_s"] > cfg.build_budget_s:
            over.append(f"build {c['estimated_build_s']:.1f} s > index.build_budget_s={cfg.build_budget_s:g}")
        if cfg.max_query_ms is not None and c["estimated_query_ms"] > cfg.max_query_ms:
            over.append(f"{c['estimated_query_ms']:.4f} ms/query > index.max_query_ms={cfg.max_query_ms:g}")
        c["within_limits"] = not over
        if over:
            c["passed_over"] = "; ".join(over)
    terms = f"build s + {cfg.queries_per_build:,} queries x s/query"
    ok = [c for c in measured if c["within_limits"]]
    if ok:
        win = min(ok, key=lambda c: c["estimated_cost_s"])
        others = [f"{c['index_string']} {c['estimated_cost_s']:.1f} s" for c in ok if c is not win]
        passed = [c["index_string"] for c in measured if not c["within_limits"]]
        why = (
            f"least estimated cost ({terms}) = {win['estimated_build_s']:.1f} + "
            f"{cfg.queries_per_build * win['estimated_query_ms'] / 1000:.1f} = {win['estimated_cost_s']:.1f} s"
            + (f"; others: {', '.join(others)}" if others else "")
            + (f"; passed over: {', '.join(passed)}" if passed else "")
        )
        return win["index_string"], why

    def excess(c: dict[str, Any]) -> float:
        ratios = [cfg.recall_target / max(c["sample"]["recall_at_10"], 1e-9)]
        if cfg.build_budget_s is not None:
            ratios.append(c["estimated_build_s"] / cfg.build_budget_s)
        if cfg.max_query_ms is not None:
            ratios.append(c["estimated_query_ms"] / cfg.max_query_ms)
        return max(ratios)

    win = min(measured, key=excess)
    why = f"no candidate keeps within the limits; {win['index_string']} exceeds them least ({win['passed_over']})"
    log.warning("index auto: %s", why)
    return win["index_string"], why


def best_of(repeat: int, fn: Any, *args: Any) -> float:
    """Least seconds of ``repeat`` calls of fn(*args): load on a shared machine only adds time."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
    return min(times)
