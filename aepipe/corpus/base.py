"""Types shared by all corpus readers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from aepipe.errors import BadItem, CorpusError  # noqa: F401  (re-exported: readers mark bad items)
from aepipe.files import atomic_write_table


@dataclass(frozen=True)
class Shard:
    """A unit of reading and encoding. Holds only paths and positions, so it can
    be sent to another process or machine."""

    index: int
    start: int  # first global item position (inclusive)
    stop: int  # last global item position (exclusive)
    files: tuple[str, ...] = ()  # folder corpora: relative paths of this shard's files
    positions: tuple[int, ...] = ()  # folder corpora: positions of ``files`` when not start..stop (an update's subset)

    @property
    def n_items(self) -> int:
        return self.stop - self.start

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RawItem:
    pos: int  # global position in the corpus (stable order)
    id: str
    source: str
    label: str | None
    payload: Any  # bytes (encoded file) or np.ndarray


@dataclass
class ItemBatch:
    ids: list[str]
    x: np.ndarray  # images: (B, C, H, W) float32 in [0, 1]; documents: (B, V) weighted term counts
    labels: list[str | None]
    sources: list[str]
    positions: list[int]
    meta: dict[str, list[str]] = field(default_factory=dict)  # extra store columns, e.g. documents' snippet

    def __len__(self) -> int:
        return len(self.ids)


QUARANTINE_SCHEMA = pa.schema(
    [("id", pa.string()), ("source", pa.string()), ("reason", pa.string()), ("stage", pa.string())]
)


@dataclass
class Quarantine:
    """Collects items that could not be used, with the reason, for a Parquet report."""

    stage: str
    items: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, item_id: str, source: str, reason: str) -> None:
        self.items.append((item_id, source, reason))

    def __len__(self) -> int:
        return len(self.items)

    def extend(self, other: Quarantine) -> None:
        self.items.extend(other.items)

    def to_table(self) -> pa.Table:
        ids, sources, reasons = (list(col) for col in zip(*self.items)) if self.items else ([], [], [])
        return pa.table(
            {"id": ids, "source": sources, "reason": reasons, "stage": [self.stage] * len(ids)},
            schema=QUARANTINE_SCHEMA,
        )

    def write(self, path: Path) -> None:
        atomic_write_table(path, self.to_table())


def make_shards(n_items: int, rows_per_shard: int, files: list[str] | None = None) -> list[Shard]:
    """Consecutive position ranges of ``rows_per_shard`` items (with their files, for folders)."""
    return [
        Shard(
            index=i,
            start=start,
            stop=min(start + rows_per_shard, n_items),
            files=tuple(files[start : start + rows_per_shard]) if files is not None else (),
        )
        for i, start in enumerate(range(0, n_items, rows_per_shard))
    ]


def iter_folder(
    root: Path, shard: Shard, what: str, extensions: list[str], ext_key: str, max_bytes: int, size_key: str
) -> Iterator[RawItem]:
    """Raw items of a folder shard: bytes of each file, id = relative path, label = parent
    folder name. Files of other extensions, too large or unreadable carry a BadItem."""
    exts = {e.lower() for e in extensions}
    for pos, rel in zip(shard.positions or range(shard.start, shard.stop), shard.files):
        parent = rel.split("/")[-2] if "/" in rel else None  # the parent folder names the label
        item = RawItem(pos=pos, id=rel, source=str(root / rel), label=parent, payload=None)
        suffix = Path(rel).suffix
        if suffix.lower() not in exts:
            item.payload = BadItem(f"not {what} file (extension '{suffix}' not in {ext_key})")
        else:
            try:
                size = os.path.getsize(root / rel)
                if size > max_bytes:
                    item.payload = BadItem(f"file of {size} bytes exceeds {size_key} {max_bytes}")
                else:
                    item.payload = (root / rel).read_bytes()
            except OSError as exc:
                item.payload = BadItem(f"unreadable file: {exc.strerror or exc}")
        yield item


def iter_row_slices(
    dataset: pads.Dataset, columns: list[str], shard: Shard, batch_size: int = 4096
) -> Iterator[tuple[int, dict[str, Any]]]:  # {column: pyarrow array}
    """The rows [shard.start, shard.stop) of a Parquet dataset, as (position of the first row,
    {column: values}) slices, streamed batch by batch. Only the row groups that overlap the shard
    are read (their sizes come from the file footers), so shard k costs its own rows, not the k
    shards before it, and nothing is read ahead beyond one batch."""
    pos = 0
    for fragment in dataset.get_fragments():
        with dataset.filesystem.open_input_file(fragment.path) as f:
            meta = pq.ParquetFile(f).metadata
            sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
            wanted: list[int] = []
            first = -1  # position of the first wanted row group's first row
            for i, n in enumerate(sizes):
                if pos + n > shard.start and pos < shard.stop:
                    wanted.append(i)
                    first = pos if first < 0 else first
                pos += n
            if not wanted:
                if pos >= shard.stop:
                    return
                continue
            at = first
            for batch in pq.ParquetFile(f).iter_batches(batch_size, row_groups=wanted, columns=columns):
                n = batch.num_rows
                lo, hi = max(shard.start - at, 0), min(shard.stop - at, n)
                if hi > lo:
                    yield at + lo, {name: batch.column(name).slice(lo, hi - lo) for name in columns}
                at += n
        if pos >= shard.stop:
            return


def list_files(root: Path) -> list[str]:
    """Every file under ``root`` (recursive, hidden files and folders skipped) as sorted relative
    POSIX paths: the ids of a folder corpus."""
    if not root.is_dir():
        raise CorpusError(f"{root} is not a folder")
    files = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise CorpusError(f"folder {root} holds no files")
    return files
