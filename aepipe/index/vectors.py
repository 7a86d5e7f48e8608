"""Stored codes as faiss-ready batches, and the one add loop of in-RAM and on-disk builds."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aepipe.config import IndexConfig
from aepipe.index.faissio import IDS_SCHEMA, normalize
from aepipe.layout import IndexFiles
from aepipe.prefetch import prefetch


def store_batches(store, batch_size: int, metric: str) -> Iterator[tuple[pa.Array, np.ndarray]]:
    """(ids, vectors ready for faiss) a batch at a time in store order, decoded a batch ahead in a
    thread while faiss works (it releases the GIL)."""

    def read() -> Iterator[tuple[pa.Array, np.ndarray]]:
        for batch in store.iter_batches(batch_size, ["id", "code"]):
            yield batch.column(0), normalize(store.codes(batch.column(1)), metric)

    return prefetch(read(), 2)


def add_all(store, ic: IndexConfig, files: IndexFiles, add: Callable[[np.ndarray, int], object]) -> None:
    """Hand every stored vector to ``add(vectors, position of the first)``, a batch at a time,
    writing ids.parquet as they go (faiss labels are store positions, i.e. ids.parquet rows)."""
    position = 0
    with pq.ParquetWriter(files.ids, IDS_SCHEMA) as ids:
        for batch_ids, x in store_batches(store, ic.add_batch_size, ic.metric):
            add(x, position)
            position += len(x)
            ids.write_table(pa.table([batch_ids], schema=IDS_SCHEMA))
