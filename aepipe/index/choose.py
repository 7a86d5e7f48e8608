"""Which index to build: candidates with their estimated memory, and the choice among them."""

from __future__ import annotations

import logging
import math

import faiss

from aepipe.config import IndexConfig
from aepipe.errors import ConfigError
from aepipe.index.faissio import ivf_of

log = logging.getLogger(__name__)


HNSW_M = 32


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
        log.warning(
            "only %d vectors for %d IVF lists (faiss wants >= %d per list); use fewer lists",
            n,
            ivf.nlist,
            MIN_POINTS_PER_CENTROID,
        )
    return min(n, want)
