"""Stage: stream the corpus through the encoder into the Parquet code store.

The store is built shard by shard in a staging directory; each shard's part
file is committed atomically and recorded in ``_manifest.json``. Rerunning after
a crash skips committed shards. Only a complete store replaces the previous one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from aepipe.codes.store import PartWriter, filter_part, store_schema
from aepipe.config import CorpusConfig, EncodeConfig, PipelineConfig
from aepipe.corpus import Corpus, ImageCorpus, ItemBatch, Quarantine, Shard, open_corpus
from aepipe.corpus.base import QUARANTINE_SCHEMA
from aepipe.corpus.fingerprint import (
    FINGERPRINT_SCHEMA,
    corpus_signature,
    first_occurrences,
    first_per_id,
    shard_fingerprints,
)
from aepipe.errors import CorpusError, IndexMismatch, MissingArtifact
from aepipe.features import TextPreprocessor
from aepipe.files import (
    atomic_write_json,
    atomic_write_table,
    read_json,
    recover_dir,
    replace_dir,
)
from aepipe.layout import RunLayout, StoreFiles
from aepipe.logs import timed
from aepipe.model.saved import (
    LoadedModel,
    encode_array,
    inference_settings,
    load_model,
    reconstruction_target,
)
from aepipe.prefetch import prefetch
from aepipe.quality.metrics import RECON_TARGET_WORDS
from aepipe.runconfig import run_stage

log = logging.getLogger(__name__)

MANIFEST = StoreFiles(Path()).manifest.name
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
    payload = {
        "model": model_id,
        "corpus": cfg.corpus.model_dump(mode="json"),
        # the corpus's contents too: shards committed from files that changed since must not be reused
        "contents": corpus_signature(cfg.corpus.source),
        "encode": cfg.encode.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class EncodePlan:
    """What an encoding run has to do. Serialisable: workers get paths and shard ranges."""

    staging: str
    key: str
    model_id: str
    shards: list[Shard]
    done: list[int]  # shards already committed by an earlier, interrupted run

    @property
    def pending(self) -> list[Shard]:
        done = set(self.done)
        return [s for s in self.shards if s.index not in done]


def _marker(staging: Path, index: int) -> Path:
    return StoreFiles(staging).shard_marker(index)


def plan_encode(cfg: PipelineConfig) -> EncodePlan:
    """Split the corpus into shards and find those an interrupted run already committed."""
    layout = RunLayout.at(cfg.run_dir)
    recover_dir(layout.store)
    _model.cache_clear()  # a new run sees the current model and corpus; its shards then share them
    _corpus.cache_clear()
    model = _model(str(layout.model.root))
    corpus = _corpus(cfg.corpus.model_dump_json())
    if corpus.n_items == 0:
        raise CorpusError(f"corpus {cfg.corpus.source} holds no items; nothing encoded, the store is unchanged")
    key = encode_key(cfg, model.model_id)
    staging = layout.staging(f"store-{key}")
    _remove_stale_stagings(layout, staging)
    _marker(staging, 0).parent.mkdir(parents=True, exist_ok=True)
    shards = corpus.shards(cfg.encode.rows_per_part)
    done = [s.index for s in shards if _marker(staging, s.index).is_file()]
    if done:
        log.info("resuming: %d of %d shard(s) already committed in %s", len(done), len(shards), staging)
    return EncodePlan(str(staging), key, model.model_id, shards, done)


def _remove_stale_stagings(layout: RunLayout, keep: Path) -> None:
    """Encodes of another model, config or corpus contents can never resume: remove them. Safe
    because the caller holds the run's writer lock (no other encode is writing one)."""
    for stale in layout.staging("").glob("store-*"):
        if stale != keep and stale.is_dir():
            log.info("removing an abandoned encode in %s (another model, config or corpus)", stale)
            shutil.rmtree(stale, ignore_errors=True)


# Per-process caches, so a worker that encodes several shards loads the model and lists the corpus once.
@functools.lru_cache(maxsize=2)
def _model(model_dir: str) -> LoadedModel:
    return load_model(model_dir)


@functools.lru_cache(maxsize=2)
def _corpus(corpus_json: str) -> Corpus:
    return open_corpus(CorpusConfig.model_validate_json(corpus_json))


def encode_shard(
    cfg: PipelineConfig, plan: EncodePlan, shard: Shard, progress: Callable[[int], object] | None = None
) -> ShardResult:
    """Encode one shard into ``staging/part-NNNNN.parquet`` (atomic), then mark it committed.

    Safe to run in another process or on another machine that sees the run directory;
    a shard interrupted half-way leaves only a temp file, and is redone on the next run.
    """
    model = _model(str(RunLayout.at(cfg.run_dir).model.root))
    if model.model_id != plan.model_id:
        raise IndexMismatch(
            f"the run's model changed while encoding ({plan.model_id} -> {model.model_id}); rerun encode"
        )
    corpus = _corpus(cfg.corpus.model_dump_json())
    staging = Path(plan.staging)
    ec = cfg.encode
    schema = store_schema(
        model.code_size,
        ec.code_dtype,
        {
            "model_id": model.model_id,
            "config": cfg.model_dump(mode="json"),
            "input_shape": list(model.prep.shape),
            # what recon_error measures (documents: since 589afba; drift compares like with like)
            "recon_error_target": RECON_TARGET_WORDS if isinstance(model.prep, TextPreprocessor) else "input",
        },
        DOCUMENT_COLUMNS if isinstance(model.prep, TextPreprocessor) else (),
        ec.code_layout,
    )
    quarantine = Quarantine("encode")
    part = StoreFiles(staging).part(shard.index)
    # Fingerprints (for `aepipe update`) are taken in a thread beside the encoding (hashlib and
    # torch release the GIL); the thread runs ahead of the encoder, so an item changed while this
    # shard runs mostly looks changed to the next update.
    fingerprints = ThreadPoolExecutor(1, thread_name_prefix="aepipe-fingerprint")
    prints = fingerprints.submit(shard_fingerprints, corpus, shard)
    fingerprints.shutdown(wait=False)
    writer = PartWriter(part, schema, ec.compression, ec.row_group_size)
    try:
        for batch, codes, errors in encode_batches(model, corpus, ec, quarantine, shard=shard):
            writer.write_batch(batch, codes, errors)
            if progress is not None:
                progress(len(batch))
        atomic_write_table(StoreFiles(staging).shard_fingerprints(shard.index), prints.result())
        writer.close()
    except BaseException:
        writer.abort()
        prints.cancel()
        raise
    atomic_write_table(StoreFiles(staging).shard_quarantine(shard.index), quarantine.to_table())
    result = ShardResult(shard.index, writer.n_rows, len(quarantine), part.name)
    atomic_write_json(_marker(staging, shard.index), asdict(result))  # the commit point
    return result


def encode_batches(
    model: LoadedModel,
    corpus: Corpus,
    ec: EncodeConfig,
    quarantine: Quarantine,
    shard: Shard | None = None,
    keep: set[int] | None = None,
) -> Iterator[tuple[ItemBatch, np.ndarray, np.ndarray]]:
    """The one encode loop (encode and update): read and decode batches of ``shard`` (or the rows
    ``keep``) a batch ahead in a thread, run the encoder on ``encode.device`` with its autocast,
    yield (batch, codes (B, code), reconstruction errors (B,)). Bad items go to ``quarantine``."""
    device, autocast = inference_settings(ec.device, ec.autocast)
    net = model.net.to(device)
    n_items = len(keep) if keep is not None else shard.n_items if shard is not None else corpus.n_items
    workers = decode_workers(ec) if n_items >= ec.decode_min_items else 0
    if isinstance(corpus, ImageCorpus):
        batches = corpus.iter_batches(model.prep, ec.batch_size, quarantine, shard, keep, workers)  # type: ignore[arg-type]
    else:
        batches = corpus.iter_batches(model.prep, ec.batch_size, quarantine, shard=shard, keep=keep)  # type: ignore[arg-type]
    is_text = isinstance(model.prep, TextPreprocessor)  # errors against word distributions
    threads = torch.get_num_threads()
    if workers > 0 and device.type == "cpu":
        # the decode workers take the cores: torch's own threads beside them only oversubscribe
        # (1M PNGs on 2 cores: ~11.3k items/s with 1 torch thread, ~9.2k with 2; RESULTS-large.md)
        torch.set_num_threads(max(1, _usable_cores() - workers))
    try:
        for batch in prefetch(batches, ec.prefetch_batches):
            target = torch.from_numpy(reconstruction_target(model.prep, batch.x)) if is_text else None
            codes, errors = encode_array(net, torch.from_numpy(batch.x), autocast, target)
            yield batch, codes.numpy(), errors.numpy()
    finally:
        torch.set_num_threads(threads)


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def decode_workers(ec: EncodeConfig) -> int:
    """``encode.decode_workers``, none meaning one per CPU core (of those this process may use)."""
    if ec.decode_workers is not None:
        return ec.decode_workers
    return _usable_cores()


@run_stage("encode")
def encode_corpus(cfg: PipelineConfig) -> EncodeResult:
    """Encode ``cfg.corpus`` with the run's model into ``run_dir/store``, shard by shard."""
    t0 = time.perf_counter()
    plan = plan_encode(cfg)
    with timed(f"encode {len(plan.pending)} of {len(plan.shards)} shard(s)"):
        # a progress bar only on a terminal; logs stay parseable otherwise
        with tqdm(
            total=sum(s.n_items for s in plan.pending), unit="item", desc="encode", disable=not sys.stderr.isatty()
        ) as bar:
            for shard in plan.pending:
                encode_shard(cfg, plan, shard, bar.update)
    return finalize_store(cfg, plan, time.perf_counter() - t0)


def _drop_duplicate_ids(staging: Path, n_shards: int) -> pa.Table:
    """Keep the first item of each id in corpus order; rewrite parts that hold later ones.
    Done once at the end, so shards can be encoded in any order and in parallel. The ids of all
    parts are held as one Arrow column (compact), never as Python strings."""
    parts = [p for p in (StoreFiles(staging).part(i) for i in range(n_shards)) if p.is_file()]
    columns = [pq.read_table(p, columns=["id"]).column("id") for p in parts]
    keep = first_occurrences(pa.chunked_array([c for col in columns for c in col.chunks], pa.string()))
    dropped: list[dict] = []
    offset = 0
    for part, col in zip(parts, columns):
        part_keep = keep[offset : offset + len(col)]
        offset += len(col)
        if part_keep.all():
            continue
        table = filter_part(part, part, part_keep)
        dup = np.flatnonzero(~part_keep)
        dropped += [
            {"id": i, "source": s, "reason": "duplicate id (an earlier item has the same id)", "stage": "encode"}
            for i, s in zip(table.column("id").take(dup).to_pylist(), table.column("source").take(dup).to_pylist())
        ]
    return pa.Table.from_pylist(dropped, schema=QUARANTINE_SCHEMA)


def finalize_store(cfg: PipelineConfig, plan: EncodePlan, seconds: float = 0.0) -> EncodeResult:
    """Check every shard is committed, drop duplicate ids, combine quarantines, swap the store into place."""
    layout = RunLayout.at(cfg.run_dir)
    staging = Path(plan.staging)
    missing = [s.index for s in plan.shards if not _marker(staging, s.index).is_file()]
    if missing:
        raise MissingArtifact(f"{len(missing)} shard(s) not encoded yet (e.g. {missing[:3]}); rerun encode to finish")
    t0 = time.perf_counter()
    dups = _drop_duplicate_ids(staging, len(plan.shards))
    tables = [pq.read_table(p) for p in StoreFiles(staging).all_shard_quarantines()] + [dups]
    quarantine = pa.concat_tables(tables)
    prints = [pq.read_table(p) for p in StoreFiles(staging).all_shard_fingerprints()]
    atomic_write_table(
        StoreFiles(staging).items,
        first_per_id(pa.concat_tables(prints) if prints else FINGERPRINT_SCHEMA.empty_table()),
    )
    results = [read_json(_marker(staging, s.index)) for s in plan.shards]
    n_items = sum(r["n_items"] for r in results) - dups.num_rows
    if n_items == 0:  # a store of nothing would replace a usable one: keep the old one (and its quarantine)
        atomic_write_table(layout.quarantine("encode-refused"), quarantine)
        shutil.rmtree(staging, ignore_errors=True)
        raise CorpusError(
            f"no item of {cfg.corpus.source} could be encoded ({quarantine.num_rows} quarantined, reasons in "
            f"{layout.quarantine('encode-refused')}); the store is unchanged"
        )
    atomic_write_table(layout.quarantine("encode"), quarantine)
    atomic_write_json(
        StoreFiles(staging).manifest,
        {"key": plan.key, "model_id": plan.model_id, "complete": True, "shards": {str(r["shard"]): r for r in results}},
    )
    replace_dir(staging, layout.store)
    if quarantine.num_rows:
        log.warning("%d item(s) quarantined; see %s", quarantine.num_rows, layout.quarantine("encode"))
    return EncodeResult(
        str(layout.store),
        plan.model_id,
        n_items,
        quarantine.num_rows,
        len(plan.shards),
        len(plan.done),
        round(seconds + time.perf_counter() - t0, 3),
    )


def codes_of(model: LoadedModel, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Encode an in-memory array (N, C, H, W) or (N, V) -> (N, code), e.g. query images or texts."""
    out = [
        encode_array(model.net, torch.from_numpy(x[i : i + batch_size]))[0].numpy()
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, model.code_size), np.float32)
