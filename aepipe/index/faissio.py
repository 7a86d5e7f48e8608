"""faiss at the edges: metrics, vector normalisation, search parameters, reading index files."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator
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
