"""Stage: bring the code store and the index up to date with the corpus (nightly, incremental).

Compares the corpus with the fingerprints the store recorded (``_items.parquet``: size and
modification time of folder files, a content hash of table and array payloads), encodes only
new and changed items with the run's model into new part files, drops the rows of changed and
removed items (rewriting only the parts that hold them), and updates the FAISS index in place
where faiss can (Flat: remove + add; IVF: remove_ids + add_with_ids) or rebuilds it (HNSW and
other graph/PQ types cannot remove). Checks the new items for drift (their reconstruction error
against the held-out items') and recommends, or runs, a retrain.

Crash safety: the new store version and index are built in ``RUN/.staging/update``; a
``COMMIT`` marker is written when both are complete, then each is swapped into place with
io.replace_dir. An interrupted run leaves the live store and index untouched (no marker: the
staging is discarded and the next run starts over) or is rolled forward by the next run
(marker written: the swaps are finished first).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from aepipe.config import PipelineConfig
from aepipe.corpus import Quarantine, open_corpus
from aepipe.corpus.base import Shard, prefetch
from aepipe.corpus.fingerprint import first_per_id, shard_fingerprints
from aepipe.encode import MANIFEST, encode_corpus
from aepipe.errors import IndexMismatch
from aepipe.index import build_index, ivf_of, normalize, read_index_file, write_index
from aepipe.io import atomic_write_json, atomic_write_table, fresh_dir, read_json, recover_dir, replace_dir
from aepipe.layout import IndexFiles, RunLayout
from aepipe.models.saved import encode_array, inference_settings, load_model
from aepipe.store import ITEMS, PART_GLOB, PartWriter, arrow_to_codes, filter_part, open_store
from aepipe.timing import timed
from aepipe.versions import publish_model_version

log = logging.getLogger(__name__)

COMMIT = "COMMIT"


@dataclass
class DriftReport:
    n_new: int
    n_reference: int
    reference: str  # "held-out": the model's val/test items as stored; "store": all earlier items
    percentile: float
    reference_quantile: float  # recon_error at that percentile of the reference
    share_above: float  # share of new items above it (about 1 - percentile/100 without drift)
    ks_statistic: float  # two-sample Kolmogorov-Smirnov, new vs reference
    threshold: float
    drifted: bool
    action: str  # none | recommend | retrain


@dataclass
class UpdateResult:
    store_dir: str
    index_dir: str
    model_id: str
    n_added: int = 0
    n_changed: int = 0
    n_removed: int = 0
    n_unchanged: int = 0
    n_quarantined: int = 0
    n_items: int = 0  # rows in the store afterwards
    index_ntotal: int = 0
    index_update: str = "none"  # none | incremental | rebuilt | built (first run: full encode + index)
    rebuild_advised: str | None = None
    drift: dict[str, Any] | None = None
    retrained: bool = False
    seconds: float = 0.0
    parts_rewritten: list[str] = field(default_factory=list)


def update_run(cfg: PipelineConfig) -> UpdateResult:
    """Encode what is new or changed in ``cfg.corpus``, drop what is gone, update store and index."""
    t0 = time.perf_counter()
    layout = RunLayout.at(cfg.run_dir)
    finish_interrupted_update(layout)
    recover_dir(layout.store)
    recover_dir(layout.index.root)
    if not any(layout.store.glob(PART_GLOB)):  # first run: everything is new
        enc = encode_corpus(cfg)
        idx = build_index(cfg)
        return UpdateResult(enc.store_dir, idx.index_dir, enc.model_id, n_added=enc.n_items,
                            n_quarantined=enc.n_quarantined, n_items=enc.n_items, index_ntotal=idx.n_items,
                            index_update="built", seconds=round(time.perf_counter() - t0, 3))
    model = load_model(layout.model.root)
    store = open_store(layout.store)
    if store.model_id != model.model_id:
        raise IndexMismatch(f"store was encoded with model {store.model_id}, the run's model is {model.model_id}; "
                            "re-encode everything with `aepipe encode` and `aepipe index` (or `aepipe run`)")
    corpus = open_corpus(cfg.corpus)
    with timed(f"fingerprint {corpus.n_items} corpus item(s)"):
        current = first_per_id(pa.concat_tables(shard_fingerprints(corpus, s)
                                                for s in corpus.shards(cfg.encode.rows_per_part)))
    old = _recorded_fingerprints(store, current)
    # the diff as Arrow columns and masks (compact for millions of ids; no Python string per item)
    at_old = pc.index_in(current.column("id"), value_set=old.column("id"))  # null: not in the store
    old_fp = old.column("fingerprint").take(at_old)
    is_added = pc.is_null(at_old).to_numpy(zero_copy_only=False)
    is_changed = pc.fill_null(pc.not_equal(old_fp, current.column("fingerprint")), False).to_numpy(zero_copy_only=False)
    is_removed = pc.invert(pc.is_in(old.column("id"), value_set=current.column("id"))).to_numpy(zero_copy_only=False)
    n_added, n_changed, n_removed = int(is_added.sum()), int(is_changed.sum()), int(is_removed.sum())
    result = UpdateResult(str(layout.store), str(layout.index.root), model.model_id, n_added, n_changed,
                          n_removed, current.num_rows - n_added - n_changed)
    log.info("update: %d new, %d changed, %d removed, %d unchanged item(s)", n_added, n_changed, n_removed,
             result.n_unchanged)
    infos_ok = layout.index.infos.is_file() and read_json(layout.index.infos).get("model_id") == model.model_id
    if not (n_added or n_changed or n_removed) and infos_ok:
        result.n_items, result.index_ntotal = store.n_items, int(read_json(layout.index.infos)["n_items"])
        result.seconds = round(time.perf_counter() - t0, 3)
        return result  # nothing to do: no file is touched

    staging = fresh_dir(layout.staging("update"))
    new_store, new_index = staging / "store", staging / "index"
    drop = pa.concat_arrays([current.column("id").filter(pa.array(is_changed)).combine_chunks(),
                             old.column("id").filter(pa.array(is_removed)).combine_chunks()])  # ids whose rows go
    with timed(f"new store version: drop {len(drop)} row(s), encode {n_added + n_changed} item(s)"):
        next_part, rewritten = _carry_parts(store, drop, new_store)
        todo = current.filter(pa.array(is_added | is_changed))
        quarantine = Quarantine("update")
        new_parts = _encode_items(cfg, model, corpus, todo, new_store, next_part, pq.read_schema(store.parts[0]), quarantine)
        kept = old.filter(pc.invert(pc.is_in(old.column("id"), value_set=drop)))
        _write_items(new_store / ITEMS, kept, todo)
        manifest = read_json(layout.store / MANIFEST) if (layout.store / MANIFEST).is_file() else {}
        manifest["last_update"] = {"added": n_added, "changed": n_changed, "removed": n_removed,
                                   "parts_written": [p.name for p in new_parts], "parts_rewritten": rewritten}
        atomic_write_json(new_store / MANIFEST, manifest)
    result.parts_rewritten = rewritten
    result.n_quarantined = len(quarantine)
    new_errors = _column(new_parts, "recon_error")
    drift = measure_drift(cfg, layout, store, drop, new_errors)
    with timed("update the index"):
        result.index_update, infos = update_index(cfg, layout, new_store, drop, new_parts, new_index)
    result.rebuild_advised = infos.get("rebuild_advised")
    atomic_write_json(staging / COMMIT, {"model_id": model.model_id, "added": n_added, "changed": n_changed,
                                         "removed": n_removed})
    _apply_commit(layout, staging)  # the commit point is the marker above; this only moves directories
    publish_model_version(layout, model.model_id, cfg.training.keep_versions)
    if len(quarantine):
        quarantine.write(layout.quarantine("update"))
        log.warning("%d new item(s) quarantined; see %s", len(quarantine), layout.quarantine("update"))
    result.n_items, result.index_ntotal = open_store(layout.store).n_items, int(infos["n_items"])
    if drift is not None:
        result.drift = asdict(drift)
        if drift.drifted:
            log.warning("drift: %.0f%% of %d new items reconstruct worse than the %gth percentile of the held-out "
                        "items (threshold %.0f%%, KS %.3f); %s", 100 * drift.share_above, drift.n_new,
                        drift.percentile, 100 * drift.threshold, drift.ks_statistic,
                        "retraining" if drift.action == "retrain" else "retrain with `aepipe run` (or drift.action=retrain)")
        if drift.drifted and drift.action == "retrain":
            _retrain(cfg, result)
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


def finish_interrupted_update(layout: RunLayout) -> None:
    """Roll a committed update forward (its swaps were interrupted); discard an uncommitted one."""
    staging = layout.staging("update")
    if not staging.is_dir():
        return
    if (staging / COMMIT).is_file():
        log.warning("finishing an interrupted update from %s", staging)
        _apply_commit(layout, staging)
    else:
        log.info("discarding an interrupted, uncommitted update in %s", staging)
        shutil.rmtree(staging)


def _apply_commit(layout: RunLayout, staging: Path) -> None:
    for name, final in (("store", layout.store), ("index", layout.index.root)):
        if (staging / name).is_dir():  # not yet moved (a rerun after a crash between the two swaps)
            replace_dir(staging / name, final)
    recover_dir(layout.store)  # drop any *.old-* left by a crash inside replace_dir
    recover_dir(layout.index.root)
    shutil.rmtree(staging)


def _recorded_fingerprints(store, current: pa.Table) -> pa.Table:
    """(id, fingerprint) of what the store reflects. A store from before fingerprints were recorded
    is taken as up to date for the ids it holds (the corpus' fingerprints are adopted)."""
    path = store.root / ITEMS
    if path.is_file():
        return pq.read_table(path, columns=["id", "fingerprint"])
    log.warning("%s records no item fingerprints (encoded by an older aepipe): taking its items as up to date", store.root)
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
            try:
                os.link(part, dest / part.name)  # parts are never modified in place, so sharing is safe
            except OSError:
                shutil.copy2(part, dest / part.name)
            continue
        rewritten.append(part.name)
        if not hit.all():
            filter_part(part, dest / part.name, ~hit)
    return last + 1, rewritten


def _encode_items(cfg: PipelineConfig, model, corpus, todo: pa.Table, dest: Path, first: int, schema: pa.Schema,
                  quarantine: Quarantine) -> list[Path]:
    """Encode the items of ``todo`` (id, fingerprint, position) into parts ``first``, ``first + 1``, ..."""
    if todo.num_rows == 0:
        return []
    order = np.argsort(todo.column("position").to_numpy())
    positions = todo.column("position").to_numpy()[order].tolist()
    if corpus.format == "folder":  # read only the new files (id = relative path)
        todo_ids = todo.column("id").to_pylist()
        ids = [todo_ids[i] for i in order]
        shard, keep = Shard(0, 0, len(ids), tuple(ids), tuple(positions)), None
    else:  # tables and arrays: one pass, keeping the new rows
        shard, keep = None, set(positions)
    ec, parts, writer = cfg.encode, [], None
    device, autocast = inference_settings(ec.device, ec.autocast)  # as encode: same codes for the same items
    net = model.net.to(device)
    try:
        for batch in prefetch(corpus.iter_batches(model.prep, ec.batch_size, quarantine, shard=shard, keep=keep),
                              ec.prefetch_batches):
            if writer is None:
                writer = PartWriter(dest / f"part-{first + len(parts):05d}.parquet", schema, ec.compression, ec.row_group_size)
            codes, errors = encode_array(net, torch.from_numpy(batch.x), autocast)
            writer.write(batch.ids, codes.numpy(), errors.numpy(), batch.labels, batch.sources, batch.positions, batch.meta)
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


def _write_items(path: Path, kept: pa.Table, todo: pa.Table) -> None:
    """(id, fingerprint) of every item the new store reflects, sorted by id (the same content
    gives the same file)."""
    table = pa.concat_tables([kept.select(["id", "fingerprint"]),
                              todo.select(["id", "fingerprint"]).cast(kept.select(["id", "fingerprint"]).schema)])
    atomic_write_table(path, table.take(pc.sort_indices(table, sort_keys=[("id", "ascending")])))


def _column(parts: list[Path], name: str) -> np.ndarray:
    if not parts:
        return np.zeros(0, np.float32)
    return np.concatenate([pq.read_table(p, columns=[name]).column(name).to_numpy() for p in parts])


def measure_drift(cfg: PipelineConfig, layout: RunLayout, store, drop: pa.Array, new_errors: np.ndarray) -> DriftReport | None:
    """New items' reconstruction errors against the held-out (val/test) items' of the model's
    training split, as stored (all earlier items when too few held-out items are in the store)."""
    from scipy.stats import ks_2samp

    dc = cfg.drift
    if len(new_errors) == 0:
        return None
    t = store.read(["id", "recon_error"])
    ids = t.column("id")
    errors = t.column("recon_error").to_numpy()
    mask = pc.invert(pc.is_in(ids, value_set=drop)).to_numpy(zero_copy_only=False)
    reference = "store"
    split_path = layout.model.split
    if split_path.is_file():
        s = pq.read_table(split_path)
        held = s.column("id").filter(pc.is_in(s.column("split"), value_set=pa.array(["val", "test"])))
        held_mask = mask & pc.is_in(ids, value_set=held).to_numpy(zero_copy_only=False)
        if held_mask.sum() >= dc.min_items:
            mask, reference = held_mask, "held-out"
    ref = errors[mask]
    if len(ref) == 0:
        return None
    q = float(np.percentile(ref, dc.percentile))
    share = float(np.mean(new_errors > q))
    ks = float(ks_2samp(new_errors, ref).statistic)
    drifted = len(new_errors) >= dc.min_items and share > dc.threshold
    return DriftReport(len(new_errors), int(len(ref)), reference, dc.percentile, round(q, 6), round(share, 4),
                       round(ks, 4), dc.threshold, drifted, dc.action if drifted else "none")


def update_index(cfg: PipelineConfig, layout: RunLayout, store_dir: Path, drop: pa.Array, new_parts: list[Path],
                 dest: Path) -> tuple[str, dict[str, Any]]:
    """Write into ``dest`` the live index minus the dropped ids plus the new parts' codes, or a
    rebuilt one where faiss cannot remove vectors (HNSW, ...). Returns ('incremental'|'rebuilt', sidecar)."""
    files = layout.index
    infos = read_json(files.infos) if files.infos.is_file() and files.index.is_file() else None
    ic = cfg.index
    if infos is None or infos["model_id"] != open_store(store_dir).model_id or infos["metric"] != ic.metric:
        return "rebuilt", write_index(cfg, store_dir, dest)
    if infos.get("on_disk"):  # its lists are memory-mapped from the live index.ivfdata: never modify them in place
        log.info("an on-disk index is rebuilt, not updated in place")
        return "rebuilt", write_index(cfg, store_dir, dest)
    index = read_index_file(files, infos)
    table = pq.read_table(files.ids)
    ids = table.column("id")
    explicit = "label" in table.column_names
    labels = table.column("label").to_numpy() if explicit else np.arange(len(ids), dtype=np.int64)
    is_flat = isinstance(faiss.downcast_index(index), faiss.IndexFlat) and not explicit
    if not is_flat and ivf_of(index) is None:
        log.info("a %s index cannot remove vectors: rebuilding it", infos["index_class"])
        return "rebuilt", write_index(cfg, store_dir, dest)
    new_ids, new_codes = [], []
    for p in new_parts:
        t = pq.read_table(p, columns=["id", "code"])
        new_ids += t.column("id").chunks
        new_codes.append(arrow_to_codes(t.column("code"), open_store(store_dir).code_dtype))
    x = normalize(np.concatenate(new_codes) if new_codes else np.zeros((0, int(infos["dim"])), np.float32), ic.metric)
    dropped = pc.is_in(ids, value_set=drop).to_numpy(zero_copy_only=False)
    out_ids = pa.chunked_array(ids.filter(pa.array(~dropped)).chunks + new_ids, pa.string())
    if is_flat:  # labels are positions: remove_ids compacts in order, add appends
        if dropped.any():
            index.remove_ids(np.flatnonzero(dropped).astype(np.int64))
        index.add(x)
        out = pa.table({"id": out_ids})
    else:  # IVF: labels stay with their vectors; new ones get fresh labels
        if dropped.any():
            index.remove_ids(np.ascontiguousarray(labels[dropped], dtype=np.int64))
        start = int(labels.max()) + 1 if len(labels) else 0
        new_labels = np.arange(start, start + len(x), dtype=np.int64)
        index.add_with_ids(x, new_labels)
        out = pa.table({"id": out_ids,
                        "label": pa.array(np.concatenate([labels[~dropped], new_labels]), pa.int64())})
    dest.mkdir(parents=True, exist_ok=True)
    out_files = IndexFiles(dest)
    faiss.write_index(index, str(out_files.index))
    atomic_write_table(out_files.ids, out)
    infos = dict(infos)
    n_at_build = int(infos.get("n_items_at_build", infos["n_items"]))
    infos.update(
        n_items=int(index.ntotal), labels="positions" if is_flat else "explicit",
        n_items_at_build=n_at_build,
        n_added_since_build=int(infos.get("n_added_since_build", 0)) + len(x),
        n_removed_since_build=int(infos.get("n_removed_since_build", 0)) + int(dropped.sum()),
        bytes=out_files.index.stat().st_size, bytes_per_vector=out_files.index.stat().st_size / max(index.ntotal, 1))
    if not is_flat:
        infos.setdefault("imbalance_factor_at_build", infos.get("imbalance_factor"))
        infos["imbalance_factor"] = round(float(ivf_of(index).invlists.imbalance_factor()), 4)
    infos["rebuild_advised"] = _rebuild_advice(infos, is_flat, ic.flat_max_items)
    atomic_write_json(out_files.infos, infos)
    if infos["rebuild_advised"]:
        log.warning("index: %s", infos["rebuild_advised"])
    return "incremental", infos


def _rebuild_advice(infos: dict[str, Any], is_flat: bool, flat_max_items: int) -> str | None:
    """Why a full `aepipe index` would now serve better (recall and latency were measured at build)."""
    n, base = infos["n_items"], infos["n_items_at_build"]
    if is_flat and n > flat_max_items:
        return f"the exact Flat index holds {n} vectors > index.flat_max_items {flat_max_items}; run `aepipe index`"
    if not is_flat and infos["n_added_since_build"] + infos["n_removed_since_build"] > base:
        return (f"{infos['n_added_since_build']} vectors added and {infos['n_removed_since_build']} removed since the IVF "
                f"centroids were trained on {base}; run `aepipe index` to retrain them")
    built, now = infos.get("imbalance_factor_at_build"), infos.get("imbalance_factor")
    if not is_flat and built and now and now > IMBALANCE_GROWTH * built:
        return (f"the IVF lists grew unbalanced (imbalance factor {now:.2f}, {built:.2f} at build: searches scan longer "
                "lists for the same nprobe); run `aepipe index` to retrain the centroids")
    return None


IMBALANCE_GROWTH = 1.5  # advise a rebuild once faiss's imbalance factor grew by half since the build


def _retrain(cfg: PipelineConfig, result: UpdateResult) -> None:
    from aepipe.train import train_model

    with timed("drift: retrain, re-encode, re-index"):
        trained = train_model(cfg)
        encoded = encode_corpus(cfg)
        indexed = build_index(cfg)
    result.retrained, result.model_id = True, trained.model_id
    result.n_items, result.index_ntotal, result.index_update = encoded.n_items, indexed.n_items, "rebuilt"
    result.rebuild_advised = None
