"""Stage: stream the corpus through the encoder into the Parquet code store.

The store is built shard by shard in a staging directory; each shard's part
file is committed atomically and recorded in ``_manifest.json``. Rerunning after
a crash skips committed shards. Only a complete store replaces the previous one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from aepipe.config import PipelineConfig
from aepipe.corpus import Corpus, Quarantine, Shard, TextPreprocessor, open_corpus
from aepipe.corpus.base import QUARANTINE_SCHEMA
from aepipe.io import atomic_write_json, atomic_write_table, read_json, recover_dir, replace_dir
from aepipe.layout import RunLayout
from aepipe.models.saved import LoadedModel, encode_array, load_model
from aepipe.store import PartWriter, store_schema
from aepipe.timing import timed

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
DOCUMENT_COLUMNS = ("snippet", "text_encoding")  # extra store columns of document corpora


@dataclass
class ShardResult:
    shard: int
    n_items: int
    n_quarantined: int
    part: str


@dataclass
class EncodeResult:
    store_dir: str
    model_id: str
    n_items: int
    n_quarantined: int
    n_shards: int
    n_shards_skipped: int
    seconds: float


def encode_key(cfg: PipelineConfig, model_id: str) -> str:
    """Identifies one encoding job: the same key means a staging dir can be resumed."""
    payload = {"model": model_id, "corpus": cfg.corpus.model_dump(mode="json"), "encode": cfg.encode.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def encode_shard(corpus: Corpus, model: LoadedModel, shard: Shard, staging: Path, cfg: PipelineConfig,
                 seen_ids: set[str] | None = None) -> ShardResult:
    """Encode one shard into ``staging/part-NNNNN.parquet`` (atomic) plus its quarantine."""
    ec = cfg.encode
    schema = store_schema(model.code_size, ec.code_dtype, {
        "model_id": model.model_id, "config": cfg.model_dump(mode="json"), "input_shape": list(model.prep.shape)},
        DOCUMENT_COLUMNS if isinstance(model.prep, TextPreprocessor) else ())
    quarantine = Quarantine("encode")
    part = staging / f"part-{shard.index:05d}.parquet"
    writer = PartWriter(part, schema, ec.compression, ec.row_group_size)
    try:
        for batch in corpus.iter_batches(model.prep, ec.batch_size, quarantine, shard=shard):
            keep = _dedupe(batch.ids, seen_ids, batch.sources, quarantine)
            x = torch.from_numpy(batch.x[keep])
            codes, errors = encode_array(model.net, x)
            writer.write([batch.ids[i] for i in keep], codes.numpy(), errors.numpy(),
                         [batch.labels[i] for i in keep], [batch.sources[i] for i in keep],
                         [batch.positions[i] for i in keep], {k: [v[i] for i in keep] for k, v in batch.meta.items()})
        writer.close()
    except BaseException:
        writer.abort()
        raise
    atomic_write_table(staging / "_quarantine" / f"shard-{shard.index:05d}.parquet", quarantine.to_table())
    return ShardResult(shard.index, writer.n_rows, len(quarantine), part.name)


def _dedupe(ids: list[str], seen: set[str] | None, sources: list[str], quarantine: Quarantine) -> list[int]:
    if seen is None:
        return list(range(len(ids)))
    keep = []
    for i, item_id in enumerate(ids):
        if item_id in seen:
            quarantine.add(item_id, sources[i], "duplicate id (an earlier item has the same id)")
        else:
            seen.add(item_id)
            keep.append(i)
    return keep


def _load_manifest(staging: Path, key: str) -> dict:
    path = staging / MANIFEST
    if path.is_file():
        manifest = read_json(path)
        if manifest.get("key") == key:
            return manifest
    return {"key": key, "shards": {}}


def encode_corpus(cfg: PipelineConfig) -> EncodeResult:
    """Encode ``cfg.corpus`` with the run's model into ``run_dir/store``."""
    t0 = time.perf_counter()
    layout = RunLayout.at(cfg.run_dir)
    recover_dir(layout.store)
    model = load_model(layout.model)
    corpus = open_corpus(cfg.corpus)
    key = encode_key(cfg, model.model_id)
    staging = layout.staging(f"store-{key}")
    staging.mkdir(parents=True, exist_ok=True)
    manifest = _load_manifest(staging, key)
    shards = corpus.shards(cfg.encode.rows_per_part)
    done = manifest["shards"]
    seen_ids: set[str] = set()
    for entry in done.values():  # ids already committed, for duplicate detection
        seen_ids.update(pq.read_table(staging / entry["part"], columns=["id"]).column("id").to_pylist())
    skipped = 0
    with timed(f"encode {corpus.n_items} items in {len(shards)} shard(s)"):
        for shard in shards:
            if str(shard.index) in done:
                skipped += 1
                continue
            res = encode_shard(corpus, model, shard, staging, cfg, seen_ids)
            done[str(shard.index)] = {"part": res.part, "n_items": res.n_items, "n_quarantined": res.n_quarantined}
            atomic_write_json(staging / MANIFEST, manifest)
    return finalize_store(cfg, staging, manifest, len(shards), skipped, model.model_id, t0)


def finalize_store(cfg: PipelineConfig, staging: Path, manifest: dict, n_shards: int, skipped: int,
                   model_id: str, t0: float) -> EncodeResult:
    """Combine shard quarantines and swap the completed store into place."""
    layout = RunLayout.at(cfg.run_dir)
    qparts = sorted((staging / "_quarantine").glob("shard-*.parquet"))
    tables = [pq.read_table(p) for p in qparts]
    quarantine = pa.concat_tables(tables) if tables else QUARANTINE_SCHEMA.empty_table()
    atomic_write_table(layout.quarantine("encode"), quarantine)
    manifest["complete"] = True
    atomic_write_json(staging / MANIFEST, manifest)
    replace_dir(staging, layout.store)
    n_items = sum(e["n_items"] for e in manifest["shards"].values())
    if quarantine.num_rows:
        log.warning("%d item(s) quarantined; see %s", quarantine.num_rows, layout.quarantine("encode"))
    return EncodeResult(str(layout.store), model_id, n_items, quarantine.num_rows, n_shards, skipped,
                        round(time.perf_counter() - t0, 3))


def codes_of(model: LoadedModel, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Encode an in-memory array (N, C, H, W) or (N, V) -> (N, code), e.g. query images or texts."""
    out = [encode_array(model.net, torch.from_numpy(x[i : i + batch_size]))[0].numpy() for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.code_size), np.float32)
