"""The encode stage: shards become part files, a crashed run resumes where it
stopped, duplicate ids are quarantined, codes can be stored as float16."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from aepipe.codes.encode import codes_of, encode_corpus
from aepipe.codes.store import open_store
from aepipe.errors import CorpusError, MissingArtifact
from aepipe.layout import RunLayout
from aepipe.model import load_model


def test_digits_encode_has_an_empty_quarantine(trained_run):
    q = pq.read_table(RunLayout.at(trained_run.run_dir).quarantine("encode"))
    assert q.num_rows == 0 and q.schema.names == ["id", "source", "reason", "stage"]


def test_small_parts_hold_the_same_codes_in_corpus_order(run_copy):
    layout = RunLayout.at(run_copy.run_dir)
    ids_one, codes_one = open_store(layout.store).read_codes()
    res = encode_corpus(run_copy.config("encode.rows_per_part=150", "encode.batch_size=64"))
    assert (res.n_items, res.n_shards, res.n_shards_skipped, res.n_quarantined) == (400, 3, 0, 0)
    store = open_store(layout.store)
    assert [p.name for p in store.parts] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    ids, codes = store.read_codes()
    assert ids == ids_one
    np.testing.assert_allclose(codes, codes_one, rtol=1e-5, atol=1e-6)
    assert not list((layout.root / ".staging").glob("store-*"))  # staging was swapped into place


def test_crashed_encode_resumes_from_committed_shards(run_copy, monkeypatch):
    from aepipe.corpus.images import ImageCorpus

    cfg = run_copy.config("encode.rows_per_part=100")
    real_iter = ImageCorpus.iter_batches

    def crash_at_250(self, *args, **kwargs):
        for batch in real_iter(self, *args, **kwargs):
            if 250 in batch.positions:
                raise KeyboardInterrupt  # e.g. the user pressed Ctrl-C
            yield batch

    monkeypatch.setattr(ImageCorpus, "iter_batches", crash_at_250)
    with pytest.raises(KeyboardInterrupt):
        encode_corpus(cfg)
    monkeypatch.setattr(ImageCorpus, "iter_batches", real_iter)

    res = encode_corpus(cfg)
    assert (res.n_shards, res.n_shards_skipped, res.n_items) == (4, 2, 400)
    ids, codes = open_store(RunLayout.at(cfg.run_dir).store).read_codes()
    assert ids == [f"{i:04d}" for i in range(400)]
    # the resumed store equals an uninterrupted run
    fresh = encode_corpus(cfg)
    assert fresh.n_shards_skipped == 0
    ids2, codes2 = open_store(RunLayout.at(cfg.run_dir).store).read_codes()
    assert ids2 == ids
    np.testing.assert_array_equal(codes2, codes)


def test_float16_store_matches_float32_codes(run_copy):
    layout = RunLayout.at(run_copy.run_dir)
    _, codes32 = open_store(layout.store).read_codes()
    encode_corpus(run_copy.config("encode.code_dtype=float16"))
    store = open_store(layout.store)
    assert store.meta["code_dtype"] == "float16"
    assert store.dataset.schema.field("code").type == pa.binary(20)
    _, codes16 = store.read_codes()
    np.testing.assert_allclose(codes16, codes32, rtol=2**-10, atol=1e-4)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_duplicate_ids_are_quarantined_across_shards(run_copy, tmp_path, digits_x):
    images = [_png((digits_x[i, 0] * 255).round().astype(np.uint8)) for i in range(6)]
    ids = ["a", "b", "c", "a", "d", "c"]
    path = tmp_path / "dups.parquet"
    pq.write_table(pa.table({"id": ids, "image": pa.array(images, pa.binary()), "label": list("012345")}), path)
    res = encode_corpus(run_copy.config(f"corpus.source={path}", "corpus.limit=null", "encode.rows_per_part=2"))
    assert res.n_items == 4 and res.n_quarantined == 2
    table = open_store(RunLayout.at(run_copy.run_dir).store).read()
    assert table.column("id").to_pylist() == ["a", "b", "c", "d"]
    assert table.column("label").to_pylist() == ["0", "1", "2", "4"]  # the first item with an id wins
    q = pq.read_table(RunLayout.at(run_copy.run_dir).quarantine("encode")).to_pylist()
    assert [(r["id"], r["source"].rsplit("=", 1)[1]) for r in q] == [("a", "3"), ("c", "5")]
    assert all("duplicate id" in r["reason"] for r in q)


@pytest.mark.parametrize("what", ["zero rows", "nothing usable"])
def test_a_corpus_with_nothing_to_encode_leaves_the_store_as_it_was(run_copy, tmp_path, what):
    layout = RunLayout.at(run_copy.run_dir)
    before = open_store(layout.store).read_codes()
    quarantine_before = pq.read_table(layout.quarantine("encode"))
    path = tmp_path / "bad.parquet"
    images = [] if what == "zero rows" else [b"not an image", None, b"\x89PNG\r\n"]
    pq.write_table(
        pa.table({"id": [f"x{i}" for i in range(len(images))], "image": pa.array(images, pa.binary())}), path
    )
    with pytest.raises(CorpusError, match="the store is unchanged"):
        encode_corpus(run_copy.config(f"corpus.source={path}", "corpus.limit=null"))
    after = open_store(layout.store).read_codes()
    assert after[0] == before[0] and np.array_equal(after[1], before[1])
    assert pq.read_table(layout.quarantine("encode")).equals(quarantine_before)
    if what == "nothing usable":  # the reasons are kept beside it
        assert pq.read_table(layout.quarantine("encode-refused")).num_rows == 3
    assert not list((layout.root / ".staging").glob("store-*"))


def test_encode_without_a_model_is_a_missing_artifact(tmp_path):
    from aepipe.config import build_config

    with pytest.raises(MissingArtifact, match="aepipe train"):
        encode_corpus(build_config(overrides=[f"run_dir={tmp_path}", "corpus.limit=20"]))


def test_codes_of_in_memory_arrays(trained_run, digits_x):
    model = load_model(RunLayout.at(trained_run.run_dir).model.root)
    codes = codes_of(model, digits_x[:7], batch_size=3)
    assert codes.shape == (7, 10) and codes.dtype == np.float32
    np.testing.assert_allclose(codes, codes_of(model, digits_x[:7], batch_size=100), rtol=1e-5, atol=1e-6)
    assert codes_of(model, digits_x[:0]).shape == (0, 10)


def test_prefetch_keeps_order_passes_errors_and_stops_when_closed():
    import threading

    from aepipe.prefetch import prefetch

    assert list(prefetch(iter(range(100)), 3)) == list(range(100))
    assert list(prefetch(iter(range(5)), 0)) == list(range(5))

    def failing():
        yield 1
        raise ValueError("bad batch")

    got = []
    with pytest.raises(ValueError, match="bad batch"):
        for item in prefetch(failing(), 2):
            got.append(item)
    assert got == [1]

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    gen = prefetch(endless(), 2)
    assert [next(gen) for _ in range(3)] == [0, 1, 2]
    gen.close()  # the consumer stops early: the producer thread must end, not spin or block
    assert not [t for t in threading.enumerate() if t.name == "aepipe-prefetch"]
    assert len(produced) <= 3 + 2 + 2  # read ahead by at most the queue depth (+ one in hand)


def test_array_fingerprints_equal_the_per_item_hash(trained_run):
    from aepipe.corpus.fingerprint import payload_hash, shard_fingerprints
    from aepipe.corpus.images import ImageCorpus

    corpus = ImageCorpus(load_model(RunLayout.at(trained_run.run_dir).model.root).config.corpus)
    shard = corpus.shards(150)[1]
    table = shard_fingerprints(corpus, shard)
    raws = list(corpus.iter_raw(shard))
    assert table.column("id").to_pylist() == [r.id for r in raws]
    assert table.column("position").to_pylist() == list(range(150, 300))
    assert table.column("fingerprint").to_pylist() == [payload_hash(r.payload) for r in raws]
    assert len(set(table.column("fingerprint").to_pylist())) > 140  # digits differ (a few are duplicates)


def test_bf16_autocast_codes_are_close_to_full_precision(run_copy):
    layout = RunLayout.at(run_copy.run_dir)
    _, codes32 = open_store(layout.store).read_codes()
    encode_corpus(run_copy.config("encode.autocast=bf16", "encode.prefetch_batches=0"))
    _, codes_bf16 = open_store(layout.store).read_codes()
    assert not np.array_equal(codes_bf16, codes32)  # the forward pass did run in bf16
    scale = np.abs(codes32).max()
    np.testing.assert_allclose(codes_bf16, codes32, atol=0.05 * scale)


def test_cuda_device_without_cuda_is_a_config_error(run_copy):
    import torch

    from aepipe.errors import ConfigError

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="no CUDA device"):
        encode_corpus(run_copy.config("encode.device=cuda"))
    assert open_store(RunLayout.at(run_copy.run_dir).store).n_items == run_copy.n_items  # the old store is intact


def test_list_layout_store_holds_the_same_codes(run_copy):
    layout = RunLayout.at(run_copy.run_dir)
    _, binary = open_store(layout.store).read_codes()
    encode_corpus(run_copy.config("encode.code_layout=list"))
    store = open_store(layout.store)
    assert store.dataset.schema.field("code").type == pa.list_(pa.float32(), 10)
    np.testing.assert_array_equal(store.read_codes()[1], binary)


def test_first_occurrences_marks_the_first_row_of_each_id():
    from aepipe.corpus.fingerprint import first_occurrences, first_per_id

    ids = pa.chunked_array([["b", "a", "b"], ["c", "a", "a", "d"], []], pa.string())
    assert first_occurrences(ids).tolist() == [True, True, False, True, False, False, True]
    assert first_occurrences(pa.array([], pa.string())).tolist() == []
    table = pa.table({"id": ids, "fingerprint": [str(i) for i in range(7)]})
    assert first_per_id(table).column("fingerprint").to_pylist() == ["0", "1", "3", "6"]  # order kept
