"""Indexes larger than RAM: inverted lists built in partial indexes and merged on disk."""

from __future__ import annotations

import shutil

import faiss
import numpy as np

from aepipe.config import IndexConfig
from aepipe.index.faissio import bulk_adder, quiet_stdout, write_index_file
from aepipe.index.vectors import add_all
from aepipe.layout import IndexFiles
from aepipe.logs import timed


def add_on_disk(index: faiss.Index, store, ic: IndexConfig, files: IndexFiles) -> None:
    """faiss's recipe for indexes larger than RAM: fill partial indexes of ``on_disk_shard_items``
    vectors one at a time (each written out, then freed), merge their inverted lists into one
    memory-mapped ``index.ivfdata`` (faiss.contrib.ondisk), then write the (small) index header."""
    from faiss.contrib.ondisk import merge_ondisk

    shard_dir = files.partial_indexes
    shard_dir.mkdir(exist_ok=True)
    paths: list[str] = []
    part = None
    add_to_part = None

    def flush() -> None:
        nonlocal part
        if part is not None and part.ntotal:
            paths.append(str(shard_dir / f"shard-{len(paths):05d}.index"))
            write_index_file(part, paths[-1])
        part = None

    def add(x: np.ndarray, position: int) -> None:
        nonlocal part, add_to_part
        if part is None:
            part = faiss.clone_index(index)
            add_to_part = bulk_adder(part)
        assert add_to_part is not None
        add_to_part(x, np.arange(position, position + len(x), dtype=np.int64))  # labels = store positions
        if part.ntotal >= ic.on_disk_shard_items:
            flush()

    add_all(store, ic, files, add)
    flush()
    with timed(f"merge {len(paths)} partial index(es) into {files.ivfdata.name}"), quiet_stdout():
        merge_ondisk(index, paths, str(files.ivfdata))  # faiss prints progress on the C stdout
        write_index_file(index, files.index)
    shutil.rmtree(shard_dir)
