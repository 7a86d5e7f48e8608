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
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aepipe.codes.encode import encode_corpus
from aepipe.codes.store import (
    PART_GLOB,
    open_store,
)
from aepipe.codes.versions import diff_corpus, part_column, write_store_version
from aepipe.config import PipelineConfig
from aepipe.corpus import open_corpus
from aepipe.errors import IndexMismatch
from aepipe.files import (
    atomic_write_json,
    fresh_dir,
    read_json,
    recover_dir,
    replace_dir,
)
from aepipe.generations import publish_generation, unpublished
from aepipe.index.build import build_index
from aepipe.index.incremental import update_index
from aepipe.layout import RunLayout
from aepipe.logs import timed
from aepipe.model.registry import publish_model_version
from aepipe.model.saved import load_model
from aepipe.quality.drift import measure_drift
from aepipe.runconfig import run_stage

log = logging.getLogger(__name__)

COMMIT = "COMMIT"


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


@run_stage("update")
def update_run(cfg: PipelineConfig) -> UpdateResult:
    """Encode what is new or changed in ``cfg.corpus``, drop what is gone, update store and index."""
    t0 = time.perf_counter()
    layout = RunLayout.at(cfg.run_dir)
    # a committed update whose swaps were interrupted is finished; one stopped after its swaps but
    # before its publish left nothing to finish, yet its store and index were never published
    if (finish_interrupted_update(layout) or unpublished(layout)) and layout.index.infos.is_file():
        _publish(cfg, layout, str(read_json(layout.index.infos).get("model_id")))
    recover_dir(layout.store)
    recover_dir(layout.index.root)
    if not any(layout.store.glob(PART_GLOB)):  # first run: everything is new
        enc = encode_corpus(cfg)
        idx = build_index(cfg)
        _publish(cfg, layout, idx.model_id)
        return UpdateResult(
            enc.store_dir,
            idx.index_dir,
            enc.model_id,
            n_added=enc.n_items,
            n_quarantined=enc.n_quarantined,
            n_items=enc.n_items,
            index_ntotal=idx.n_items,
            index_update="built",
            seconds=round(time.perf_counter() - t0, 3),
        )
    model = load_model(layout.model.root)
    store = open_store(layout.store)
    if store.model_id != model.model_id:
        raise IndexMismatch(
            f"store was encoded with model {store.model_id}, the run's model is {model.model_id}; "
            "re-encode everything with `aepipe encode` and `aepipe index` (or `aepipe run`)"
        )
    corpus = open_corpus(cfg.corpus)
    diff = diff_corpus(corpus, store, cfg.encode.rows_per_part)
    result = UpdateResult(
        str(layout.store),
        str(layout.index.root),
        model.model_id,
        diff.n_added,
        diff.n_changed,
        diff.n_removed,
        diff.n_unchanged,
    )
    log.info(
        "update: %d new, %d changed, %d removed, %d unchanged item(s)",
        diff.n_added,
        diff.n_changed,
        diff.n_removed,
        diff.n_unchanged,
    )
    infos = read_json(layout.index.infos) if layout.index.infos.is_file() else {}
    # the live index must hold the store's items to be updated in place: after `aepipe encode` of
    # another corpus (without `aepipe index`) it holds the previous store's, and adding only the
    # new items would publish an index that misses most of the store
    covers = infos.get("model_id") == model.model_id and int(infos.get("n_items", -1)) == store.n_items
    if infos and not covers:
        log.warning(
            "the index holds %s vector(s) of model %s, the store %d item(s) of model %s: rebuilding the index",
            infos.get("n_items"),
            infos.get("model_id"),
            store.n_items,
            model.model_id,
        )
    if diff.empty and covers:
        result.n_items, result.index_ntotal = store.n_items, int(infos["n_items"])
        result.seconds = round(time.perf_counter() - t0, 3)
        return result  # nothing to do: no file is touched
    if diff.empty:  # the store is current; only the index is not
        idx = build_index(cfg)
        _publish(cfg, layout, model.model_id)
        result.n_items, result.index_ntotal, result.index_update = store.n_items, idx.n_items, "rebuilt"
        result.seconds = round(time.perf_counter() - t0, 3)
        return result

    staging = fresh_dir(layout.staging("update"))
    drop = diff.drop
    version = write_store_version(cfg, model, corpus, store, diff, staging / "store")
    quarantine = version.quarantine
    result.parts_rewritten = version.parts_rewritten
    result.n_quarantined = len(quarantine)
    drift = measure_drift(cfg, layout, store, drop, part_column(version.new_parts, "recon_error"))
    with timed("update the index"):
        result.index_update, infos = update_index(
            cfg, layout, version.root, drop, version.new_parts, staging / "index", rebuild=not covers
        )
    result.rebuild_advised = infos.get("rebuild_advised")
    atomic_write_json(
        staging / COMMIT,
        {"model_id": model.model_id, "added": diff.n_added, "changed": diff.n_changed, "removed": diff.n_removed},
    )
    _apply_commit(layout, staging)  # the commit point is the marker above; this only moves directories
    _publish(cfg, layout, model.model_id)
    if len(quarantine):
        quarantine.write(layout.quarantine("update"))
        log.warning("%d new item(s) quarantined; see %s", len(quarantine), layout.quarantine("update"))
    result.n_items, result.index_ntotal = open_store(layout.store).n_items, int(infos["n_items"])
    if drift is not None:
        result.drift = asdict(drift)
        if drift.drifted:
            log.warning(
                "drift: %.0f%% of %d new items reconstruct worse than the %gth percentile of the held-out "
                "items (threshold %.0f%%, KS %.3f); %s",
                100 * drift.share_above,
                drift.n_new,
                drift.percentile,
                100 * drift.threshold,
                drift.ks_statistic,
                "retraining" if drift.action == "retrain" else "retrain with `aepipe run` (or drift.action=retrain)",
            )
        if drift.drifted and drift.action == "retrain":
            _retrain(cfg, result)
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


def finish_interrupted_update(layout: RunLayout) -> bool:
    """Roll a committed update forward (its swaps were interrupted): True, and the caller publishes
    what it put in place. Discard an uncommitted one: False."""
    staging = layout.staging("update")
    if not staging.is_dir():
        return False
    if (staging / COMMIT).is_file():
        log.warning("finishing an interrupted update from %s", staging)
        _apply_commit(layout, staging)
        return True
    log.info("discarding an interrupted, uncommitted update in %s", staging)
    shutil.rmtree(staging)
    return False


def _apply_commit(layout: RunLayout, staging: Path) -> None:
    for name, final in (("store", layout.store), ("index", layout.index.root)):
        if (staging / name).is_dir():  # not yet moved (a rerun after a crash between the two swaps)
            replace_dir(staging / name, final)
    recover_dir(layout.store)  # drop any *.old-* left by a crash inside replace_dir
    recover_dir(layout.index.root)
    shutil.rmtree(staging)


def _publish(cfg: PipelineConfig, layout: RunLayout, model_id: str) -> None:
    """The model version, then the generation, of a store and index that are complete and in place."""
    publish_model_version(layout, model_id, cfg.training.keep_versions)
    publish_generation(layout, cfg.training.keep_versions, cfg.training.generation_grace_s)


def _retrain(cfg: PipelineConfig, result: UpdateResult) -> None:
    from aepipe.model.train import train_model

    with timed("drift: retrain, re-encode, re-index"):
        trained = train_model(cfg)
        encoded = encode_corpus(cfg)
        indexed = build_index(cfg)
        layout = RunLayout.at(cfg.run_dir)
        _publish(cfg, layout, indexed.model_id)
    result.retrained, result.model_id = True, trained.model_id
    result.n_items, result.index_ntotal, result.index_update = encoded.n_items, indexed.n_items, "rebuilt"
    result.rebuild_advised = None
