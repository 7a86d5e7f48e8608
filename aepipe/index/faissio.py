"""faiss at the edges: metrics, vector normalisation, search parameters, reading index files."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from aepipe.layout import IndexFiles

METRICS = {"l2": faiss.METRIC_L2, "cosine": faiss.METRIC_INNER_PRODUCT}


IDS_SCHEMA = pa.schema([("id", pa.string())])


def ivf_of(index: Any) -> Any:  # faiss.IndexIVF | None
    """The IVF part of an index (also inside OPQ / pre-transform wrappers), or None."""
    try:
        return faiss.extract_index_ivf(index)
    except (RuntimeError, TypeError):
        return None


# Bulk assignment by a flat search up to this many lists: at 4,096 it took 1.5 s for 1M x 32-d where
# the HNSW quantizer took 5.6 s (2 threads); its cost grows with the lists, the graph's with their log.
EXACT_ASSIGN_MAX_LISTS = 8192


def bulk_adder(index: Any) -> Callable[[np.ndarray, np.ndarray | None], None]:
    """How to add batches (vectors, and int64 ids or None for positions) to a freshly trained
    ``index``: ``index.add`` / ``add_with_ids``, except for an IVF index
    whose coarse quantizer is approximate (``IVF…_HNSW32``): there each batch is assigned to its
    exact nearest list by one flat (BLAS) search over the centroids and handed to faiss's
    ``add_preassigned`` (up to ``EXACT_ASSIGN_MAX_LISTS`` lists). Exact is also cheaper in bulk:
    1M x 32-d into IVF4096_HNSW32 spent most of its add time in 1M HNSW searches
    (benchmarks/RESULTS-large.md, session 9)."""
    ivf = faiss.downcast_index(index)

    def plain(x: np.ndarray, ids: np.ndarray | None = None) -> None:
        index.add(x) if ids is None else index.add_with_ids(x, ids)

    if not isinstance(ivf, faiss.IndexIVF) or isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat):
        return plain  # not IVF, IVF under a transform (OPQ), or already a flat quantizer
    if ivf.nlist > EXACT_ASSIGN_MAX_LISTS:
        return plain  # a flat search's cost grows with the lists, the graph's with their log
    from faiss.contrib.ivf_tools import add_preassigned

    centroids = faiss.IndexFlat(ivf.d, ivf.quantizer.metric_type)
    centroids.add(ivf.quantizer.reconstruct_n(0, ivf.nlist))

    def add(x: np.ndarray, ids: np.ndarray | None = None) -> None:
        _, lists = centroids.search(x, 1)  # (B, 1)
        add_preassigned(ivf, x, lists[:, 0].astype(np.int64), ids)

    return add


def normalize(x: np.ndarray, metric: str) -> np.ndarray:
    """Vectors as faiss takes them: contiguous float32, L2-normalised (in a copy: the caller's
    array, possibly read-only, is left alone) for the cosine metric."""
    if metric != "cosine":
        return np.ascontiguousarray(x, dtype=np.float32)
    x = np.array(x, dtype=np.float32, order="C")
    faiss.normalize_L2(x)
    return x


def set_search_params(index: faiss.Index, params: dict[str, Any]) -> None:
    ps = faiss.ParameterSpace()
    for name, value in params.items():
        ps.set_index_parameter(index, name, value)


def read_index_file(files: IndexFiles, infos: dict[str, Any]) -> Any:  # a faiss.Index (SWIG types are loose)
    """Load a built index. On-disk inverted lists are memory-mapped from the index.ivfdata next to
    index.faiss (the run directory may have moved since the build)."""
    if not infos.get("on_disk"):
        return faiss.read_index(str(files.index))
    with quiet_stdout():  # faiss says on the C stdout that it found the lists in another directory
        return faiss.read_index(str(files.index), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)


@contextmanager
def quiet_stdout() -> Iterator[None]:
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


def write_index_file(index: faiss.Index, path: str | Path) -> None:
    """faiss.write_index, with a failed write (full disk, file-size limit) raised as the OSError it
    is rather than faiss's RuntimeError, so the CLI reports it in one line."""
    try:
        faiss.write_index(index, str(path))
    except RuntimeError as exc:
        text = str(exc)
        if "write error" not in text:
            raise
        code = errno.EFBIG if "File too large" in text else errno.ENOSPC
        raise OSError(code, os.strerror(code), str(path)) from None
