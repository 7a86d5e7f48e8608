"""Store versions for incremental updates: what changed in the corpus since the store was
written (fingerprint diff), and a new store version made of the old parts minus dropped rows."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aepipe.codes.encode import encode_batches
from aepipe.codes.store import CodeStore, PartWriter, filter_part
from aepipe.config import PipelineConfig
from aepipe.corpus import Corpus, Quarantine, Shard
from aepipe.corpus.fingerprint import first_per_id, shard_fingerprints
from aepipe.files import atomic_write_json, atomic_write_table, link_or_copy, read_json
from aepipe.layout import StoreFiles
from aepipe.logs import timed
from aepipe.model.saved import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class CorpusDiff:
    """The corpus against what the store reflects, as Arrow columns and masks (compact for millions
    of ids; no Python string per item)."""

    current: pa.Table  # (id, fingerprint, position) of the corpus now
    old: pa.Table  # (id, fingerprint) the store recorded
    is_added: np.ndarray  # over current
    is_changed: np.ndarray  # over current
    is_removed: np.ndarray  # over old

    @property
    def n_added(self) -> int:
        return int(self.is_added.sum())

    @property
    def n_changed(self) -> int:
        return int(self.is_changed.sum())

    @property
    def n_removed(self) -> int:
        return int(self.is_removed.sum())

    @property
    def n_unchanged(self) -> int:
        return self.current.num_rows - self.n_added - self.n_changed

    @property
    def empty(self) -> bool:
        return not (self.n_added or self.n_changed or self.n_removed)

    @property
    def drop(self) -> pa.Array:
        """Ids whose rows leave the store: changed and removed items."""
        return pa.concat_arrays(
            [
                self.current.column("id").filter(pa.array(self.is_changed)).combine_chunks(),
                self.old.column("id").filter(pa.array(self.is_removed)).combine_chunks(),
            ]
        )

    @property
    def todo(self) -> pa.Table:
        """Items to encode: added and changed."""
        return self.current.filter(pa.array(self.is_added | self.is_changed))


@dataclass
class StoreVersion:
    root: Path
    new_parts: list[Path]  # parts of newly encoded items
    parts_rewritten: list[str]  # old parts copied without their dropped rows
    quarantine: Quarantine


def diff_corpus(corpus: Corpus, store: CodeStore, rows_per_part: int) -> CorpusDiff:
    """Fingerprint the corpus and compare with the fingerprints the store recorded."""
    with timed(f"fingerprint {corpus.n_items} corpus item(s)"):
        current = first_per_id(pa.concat_tables(shard_fingerprints(corpus, s) for s in corpus.shards(rows_per_part)))
    old = _recorded_fingerprints(store, current)
    at_old = pc.index_in(current.column("id"), value_set=old.column("id"))  # null: not in the store
    old_fp = old.column("fingerprint").take(at_old)
    is_added = pc.is_null(at_old).to_numpy(zero_copy_only=False)
    is_changed = pc.fill_null(pc.not_equal(old_fp, current.column("fingerprint")), False).to_numpy(zero_copy_only=False)
    is_removed = pc.invert(pc.is_in(old.column("id"), value_set=current.column("id"))).to_numpy(zero_copy_only=False)
    return CorpusDiff(current, old, is_added, is_changed, is_removed)


def write_store_version(
    cfg: PipelineConfig, model: LoadedModel, corpus: Corpus, store: CodeStore, diff: CorpusDiff, dest: Path
) -> StoreVersion:
    """Into ``dest``: the store without the dropped rows plus the new and changed items, encoded
    with the shared encode loop, with their fingerprints and an updated manifest."""
    drop = diff.drop
    with timed(f"new store version: drop {len(drop)} row(s), encode {diff.n_added + diff.n_changed} item(s)"):
        next_part, rewritten = _carry_parts(store, drop, dest)
        quarantine = Quarantine("update")
        new_parts = _encode_items(
            cfg, model, corpus, diff.todo, dest, next_part, pq.read_schema(store.parts[0]), quarantine
        )
        kept = diff.old.filter(pc.invert(pc.is_in(diff.old.column("id"), value_set=drop)))
        _write_items(StoreFiles(dest).items, kept, diff.todo)
        old_manifest = StoreFiles(store.root).manifest
        manifest = read_json(old_manifest) if old_manifest.is_file() else {}
        manifest["last_update"] = {
            "added": diff.n_added,
            "changed": diff.n_changed,
            "removed": diff.n_removed,
            "parts_written": [p.name for p in new_parts],
            "parts_rewritten": rewritten,
        }
        atomic_write_json(StoreFiles(dest).manifest, manifest)
    return StoreVersion(dest, new_parts, rewritten, quarantine)


def part_column(parts: list[Path], name: str) -> np.ndarray:
    """One numeric column of some part files, concatenated."""
    return _column(parts, name)


def _recorded_fingerprints(store, current: pa.Table) -> pa.Table:
    """(id, fingerprint) of what the store reflects. A store from before fingerprints were recorded
    is taken as up to date for the ids it holds (the corpus' fingerprints are adopted)."""
    path = StoreFiles(store.root).items
    if path.is_file():
        return pq.read_table(path, columns=["id", "fingerprint"])
    log.warning(
        "%s records no item fingerprints (encoded by an older aepipe): taking its items as up to date", store.root
    )
    ids = store.read(["id"]).column("id")
    fps = current.column("fingerprint").take(pc.index_in(ids, value_set=current.column("id")))
    return pa.table({"id": ids, "fingerprint": pc.fill_null(fps, "unknown")})


def _carry_parts(store, drop: pa.Array, dest: Path) -> tuple[int, list[str]]:
    """Into ``dest``: hard links of the parts without a dropped row, filtered copies of the others.
    Returns the next free part number and the names of the rewritten parts."""
    dest.mkdir(parents=True)
    rewritten, last = [], -1
    for part in store.parts:
        last = max(last, int(part.stem.split("-")[1]))
        hit = pc.is_in(pq.read_table(part, columns=["id"]).column("id"), value_set=drop).to_numpy(zero_copy_only=False)
        if not hit.any():
            link_or_copy(part, dest / part.name)  # parts are never modified in place, so sharing is safe
            continue
        rewritten.append(part.name)
        if not hit.all():
            filter_part(part, dest / part.name, ~hit)
    return last + 1, rewritten


def _write_items(path: Path, kept: pa.Table, todo: pa.Table) -> None:
    """(id, fingerprint) of every item the new store reflects, sorted by id (the same content
    gives the same file)."""
    table = pa.concat_tables(
        [
            kept.select(["id", "fingerprint"]),
            todo.select(["id", "fingerprint"]).cast(kept.select(["id", "fingerprint"]).schema),
        ]
    )
    atomic_write_table(path, table.take(pc.sort_indices(table, sort_keys=[("id", "ascending")])))


def _column(parts: list[Path], name: str) -> np.ndarray:
    if not parts:
        return np.zeros(0, np.float32)
    return np.concatenate([pq.read_table(p, columns=[name]).column(name).to_numpy() for p in parts])


def _encode_items(
    cfg: PipelineConfig,
    model: LoadedModel,
    corpus: Corpus,
    todo: pa.Table,
    dest: Path,
    first: int,
    schema: pa.Schema,
    quarantine: Quarantine,
) -> list[Path]:
    """Encode the items of ``todo`` (id, fingerprint, position) into parts ``first``, ``first + 1``, ..."""
    if todo.num_rows == 0:
        return []
    order = np.argsort(todo.column("position").to_numpy())
    positions = todo.column("position").to_numpy()[order].tolist()
    shard: Shard | None
    if corpus.format == "folder":  # read only the new files (id = relative path)
        todo_ids = todo.column("id").to_pylist()
        ids = [todo_ids[i] for i in order]
        shard, keep = Shard(0, 0, len(ids), tuple(ids), tuple(positions)), None
    else:  # tables and arrays: one pass, keeping the new rows
        shard, keep = None, set(positions)
    ec = cfg.encode
    parts: list[Path] = []
    writer: PartWriter | None = None
    try:
        for batch, codes, errors in encode_batches(model, corpus, ec, quarantine, shard=shard, keep=keep):
            if writer is None:
                writer = PartWriter(
                    StoreFiles(dest).part(first + len(parts)), schema, ec.compression, ec.row_group_size
                )
            writer.write_batch(batch, codes, errors)
            if writer.n_rows >= ec.rows_per_part:
                writer.close()
                parts.append(writer.path)
                writer = None
        if writer is not None:
            writer.close()
            parts.append(writer.path)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return parts
