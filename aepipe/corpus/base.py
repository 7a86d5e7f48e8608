"""Types shared by all corpus readers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from aepipe.io import atomic_write_table


@dataclass(frozen=True)
class Shard:
    """A unit of reading and encoding. Holds only paths and positions, so it can
    be sent to another process or machine."""

    index: int
    start: int  # first global item position (inclusive)
    stop: int  # last global item position (exclusive)
    files: tuple[str, ...] = ()  # folder corpora: relative paths of this shard's files

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


class BadItem(Exception):
    """Raised by a preprocessor for one item that cannot be used; carries the reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


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
