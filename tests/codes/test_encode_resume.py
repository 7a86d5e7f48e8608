"""Encode resume is keyed to the corpus contents: a changed corpus restarts, abandoned staging goes."""

from __future__ import annotations

import os

import numpy as np
import pytest

from aepipe.codes.encode import codes_of, encode_corpus
from aepipe.codes.store import open_store
from aepipe.config import build_config
from aepipe.layout import RunLayout
from aepipe.model import load_model
from aepipe.model.train import train_model
from tests.conftest import QUICK_OVERRIDES


@pytest.fixture
def folder_run(tmp_path, write_png):
    rng = np.random.default_rng(0)
    for i in range(60):
        write_png(tmp_path / "data" / f"c{i % 3}" / f"{i:03d}.png", rng.integers(0, 256, (8, 8)))
    cfg = build_config(
        overrides=[
            *QUICK_OVERRIDES,
            f"corpus.source={tmp_path / 'data'}",
            f"run_dir={tmp_path / 'run'}",
            "encode.rows_per_part=20",
        ]
    )
    train_model(cfg)
    return cfg


def _crash_in_shard_1(cfg, monkeypatch) -> None:
    """An encode interrupted (Ctrl-C) at item 30: shard 0 is committed in its staging, shard 1 not."""
    from aepipe.corpus.images import ImageCorpus

    real_iter = ImageCorpus.iter_batches

    def crash_in_shard_1(self, *args, **kwargs):
        for batch in real_iter(self, *args, **kwargs):
            if 30 in batch.positions:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(ImageCorpus, "iter_batches", crash_in_shard_1)
    with pytest.raises(KeyboardInterrupt):
        encode_corpus(cfg)
    monkeypatch.setattr(ImageCorpus, "iter_batches", real_iter)


def test_a_corpus_changed_after_a_crash_is_encoded_again_not_resumed(folder_run, monkeypatch, write_png):
    cfg = folder_run
    _crash_in_shard_1(cfg, monkeypatch)  # shard 0 (the first 20 files in path order) is committed

    corpus_root = RunLayout.at(cfg.run_dir).root.parent / "data"
    changed = sorted(corpus_root.rglob("*.png"))[0]
    new = np.full((8, 8), 255)
    write_png(changed, new)
    os.utime(changed, ns=(2_000_000_000, 2_000_000_000))
    result = encode_corpus(cfg)
    assert result.n_shards_skipped == 0  # before the fix: shard 0 resumed with the old file's code

    store = open_store(RunLayout.at(cfg.run_dir).store)
    ids, codes = store.read_codes()
    model = load_model(RunLayout.at(cfg.run_dir).model)
    expected = codes_of(model, model.prep(changed.read_bytes())[None])  # (1, C, H, W) -> (1, code)
    np.testing.assert_allclose(codes[ids.index(changed.relative_to(corpus_root).as_posix())], expected[0], atol=1e-5)
    assert not list(RunLayout.at(cfg.run_dir).staging("").glob("store-*"))


def test_abandoned_staging_of_another_encode_is_removed(folder_run):
    stale = RunLayout.at(folder_run.run_dir).staging("store-0123456789abcdef")
    (stale / "_shards").mkdir(parents=True)
    (stale / "part-00000.parquet").write_bytes(b"half a part")
    encode_corpus(folder_run)
    assert not stale.exists()


def test_a_killed_writers_temporary_files_are_neither_resumed_nor_published(folder_run, monkeypatch):
    """Found by the torture suite: a SIGKILL mid-write left `.part-00001.parquet.tmp-*` in the
    staging; the resumed encode swapped it into the store and publishing linked it into the
    generation. The writer that takes the run's lock removes such leftovers (aepipe.runlock)."""
    from aepipe.pipeline import index_stage

    cfg = folder_run
    _crash_in_shard_1(cfg, monkeypatch)
    layout = RunLayout.at(cfg.run_dir)
    (staging,) = layout.staging("").glob("store-*")
    (staging / ".part-00001.parquet.tmp-0badf00d").write_bytes(b"half a part")  # as a SIGKILL leaves it
    assert encode_corpus(cfg).n_shards_skipped == 1  # resumed
    assert not [p for p in layout.store.rglob("*") if ".tmp-" in p.name]

    (layout.store / ".part-00002.parquet.tmp-0badf00d").write_bytes(b"left in place")  # however it got there
    index_stage(cfg)
    generation = layout.current()
    assert generation.name is not None and not [p for p in generation.store.rglob("*") if ".tmp-" in p.name]
