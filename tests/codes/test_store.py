"""The Parquet code store: exact round trips, schema metadata, and that a failed
re-encode never damages the store that was there."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from aepipe.codes.encode import codes_of, encode_corpus
from aepipe.codes.store import (
    META_KEY,
    PartWriter,
    arrow_to_codes,
    codes_to_arrow,
    open_store,
    store_schema,
)
from aepipe.errors import CorpusError, MissingArtifact
from aepipe.layout import RunLayout
from aepipe.model import load_model


def _write_store(root, codes: np.ndarray, dtype: str, ids=None, rows_per_part=None, layout="binary") -> None:
    n = len(codes)
    ids = ids or [f"item-{i}" for i in range(n)]
    schema = store_schema(codes.shape[1], dtype, {"model_id": "m0", "config": {"k": 1}}, code_layout=layout)
    step = rows_per_part or n
    for part, start in enumerate(range(0, n, step)):
        stop = min(start + step, n)
        w = PartWriter(root / f"part-{part:05d}.parquet", schema, row_group_size=7)
        for lo in range(start, stop, 5):  # several small writes per part
            hi = min(lo + 5, stop)
            w.write(
                ids[lo:hi],
                codes[lo:hi],
                np.arange(lo, hi, dtype=np.float32),
                [str(i % 3) for i in range(lo, hi)],
                [f"src{i}" for i in range(lo, hi)],
                list(range(lo, hi)),
            )
        w.close()


def test_float32_codes_round_trip_exactly(tmp_path):
    rng = np.random.default_rng(0)
    codes = (rng.standard_normal((53, 7)) * 1e3).astype(np.float32)
    codes[0, 0], codes[1, 1] = np.float32(1e-38), np.float32(-3.4e38)  # extremes survive too
    _write_store(tmp_path, codes, "float32", rows_per_part=20)
    store = open_store(tmp_path)
    assert len(store.parts) == 3 and store.n_items == 53 and store.code_size == 7
    ids, back = store.read_codes()
    assert ids == [f"item-{i}" for i in range(53)]
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, codes)
    # streaming reads give the same, in the same order
    streamed_ids, streamed = zip(*store.iter_codes(batch_size=11))
    assert [i for chunk in streamed_ids for i in chunk] == ids
    np.testing.assert_array_equal(np.concatenate(streamed), codes)
    table = store.read()
    assert table.column("position").to_pylist() == list(range(53))
    assert table.column("label").to_pylist()[:4] == ["0", "1", "2", "0"]


@pytest.mark.parametrize("layout", ["binary", "list"])
def test_float16_codes_round_trip_within_half_precision(tmp_path, layout):
    rng = np.random.default_rng(1)
    codes = rng.standard_normal((40, 5)).astype(np.float32) * 10
    _write_store(tmp_path, codes, "float16", layout=layout)
    store = open_store(tmp_path)
    assert store.dataset.schema.field("code").type == (
        pa.binary(10) if layout == "binary" else pa.list_(pa.float16(), 5)
    )
    _, back = store.read_codes()
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, codes.astype(np.float16).astype(np.float32))  # exactly fp16 rounding
    np.testing.assert_allclose(back, codes, rtol=2**-11, atol=0)
    assert not np.array_equal(back, codes)  # and it really was rounded


@pytest.mark.parametrize("layout,dtype", [("binary", "float32"), ("binary", "float16"), ("list", "float32")])
def test_codes_arrow_conversion_round_trips_slices_and_chunks(layout, dtype):
    codes = np.arange(12, dtype=np.float32).reshape(4, 3) - 5.5
    arr = codes_to_arrow(codes, dtype, layout)
    assert (
        arr.type
        == (pa.binary(3 * (2 if dtype == "float16" else 4)) if layout == "binary" else pa.list_(pa.float32(), 3))
        and len(arr) == 4
    )
    np.testing.assert_array_equal(arrow_to_codes(pa.chunked_array([arr[:1], arr[1:]]), dtype), codes)
    np.testing.assert_array_equal(arrow_to_codes(arr.slice(1, 2), dtype), codes[1:3])  # an offset into the buffer
    if layout == "binary":  # plain little-endian floats: readable without aepipe
        raw = np.frombuffer(arr.buffers()[1], "<f2" if dtype == "float16" else "<f4").reshape(4, 3)
        np.testing.assert_array_equal(raw, codes)


def test_binary_layout_is_the_default_and_list_stays_readable(tmp_path):
    codes = np.random.default_rng(2).standard_normal((30, 4)).astype(np.float32)
    _write_store(tmp_path / "b", codes, "float32")
    _write_store(tmp_path / "l", codes, "float32", layout="list")
    binary, listed = open_store(tmp_path / "b"), open_store(tmp_path / "l")
    assert binary.meta["code_layout"] == "binary" and listed.meta["code_layout"] == "list"
    np.testing.assert_array_equal(binary.read_codes()[1], codes)
    np.testing.assert_array_equal(listed.read_codes()[1], codes)
    with pytest.raises(ValueError, match="code_layout"):
        store_schema(4, "float32", {}, code_layout="columns")


def test_store_of_the_trained_run_has_schema_and_metadata(trained_run):
    store = open_store(RunLayout.at(trained_run.run_dir).store)
    schema = store.dataset.schema
    assert schema.field("code").type == pa.binary(40)  # 10 float32 codes per item, the default layout
    assert not schema.field("id").nullable and not schema.field("code").nullable
    assert schema.names == ["id", "code", "recon_error", "label", "source", "position"]
    meta = json.loads(schema.metadata[META_KEY])
    assert meta["model_id"] == trained_run.model_id
    assert meta["code_size"] == 10 and meta["code_dtype"] == "float32" and meta["code_layout"] == "binary"
    assert meta["config"]["model"]["code_size"] == 10 and meta["config"]["corpus"]["limit"] == 400
    assert meta["input_shape"] == [1, 8, 8]
    # every part file carries the metadata, not just the dataset view
    for part in store.parts:
        assert json.loads(pq.read_schema(part).metadata[META_KEY])["model_id"] == trained_run.model_id
    assert store.n_items == 400


def test_stored_codes_are_the_models_codes(trained_run, digits_x):
    layout = RunLayout.at(trained_run.run_dir)
    table = open_store(layout.store).read()
    ids = table.column("id").to_pylist()
    assert ids == [f"{i:04d}" for i in range(400)]
    assert table.column("label").to_pylist()[:12] == [str(i % 10) for i in range(10)] + ["0", "1"]
    assert table.column("source").to_pylist()[5] == "digits[5]"
    codes = arrow_to_codes(table.column("code"))
    model = load_model(layout.model.root)
    expected = codes_of(model, digits_x[:400], batch_size=512)
    np.testing.assert_allclose(codes, expected, rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        recon = model.net.reconstruct(torch.from_numpy(digits_x[:400])).numpy()
    sse = ((recon - digits_x[:400]) ** 2).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(table.column("recon_error").to_numpy(), sse, rtol=1e-4, atol=1e-5)


def _digest(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_failed_reencode_leaves_the_store_unchanged(run_copy, tmp_path):
    layout = RunLayout.at(run_copy.run_dir)
    before = _digest(layout.store)
    ids_before, codes_before = open_store(layout.store).read_codes()
    with pytest.raises(CorpusError, match="does not exist"):
        encode_corpus(run_copy.config(f"corpus.source={tmp_path / 'gone'}"))
    assert _digest(layout.store) == before
    ids_after, codes_after = open_store(layout.store).read_codes()
    assert ids_after == ids_before
    np.testing.assert_array_equal(codes_after, codes_before)


def test_reencode_interrupted_mid_run_leaves_the_store_unchanged(run_copy, monkeypatch):
    """An exception while encoding (here: the corpus reader fails on the batch of its 150th item)
    must not touch the completed store; the partial part file is not left behind."""
    from aepipe.corpus.images import ImageCorpus

    layout = RunLayout.at(run_copy.run_dir)
    before = _digest(layout.store)
    real_iter = ImageCorpus.iter_batches

    def failing(self, *args, **kwargs):
        for batch in real_iter(self, *args, **kwargs):
            if 150 in batch.positions:
                raise OSError("disk went away")
            yield batch

    monkeypatch.setattr(ImageCorpus, "iter_batches", failing)
    with pytest.raises(OSError, match="disk went away"):
        encode_corpus(run_copy.config("encode.rows_per_part=100", "encode.batch_size=32"))
    assert _digest(layout.store) == before
    staging = [p for p in (layout.root / ".staging").glob("store-*")]
    assert len(staging) == 1
    assert sorted(p.name for p in staging[0].glob("part-*.parquet")) == ["part-00000.parquet"]
    assert not list(staging[0].glob(".part-*"))  # the aborted part's temp file is removed


def test_open_store_errors(tmp_path):
    with pytest.raises(MissingArtifact, match="aepipe encode"):
        open_store(tmp_path)
    pq.write_table(pa.table({"id": ["a"]}), tmp_path / "part-00000.parquet")
    with pytest.raises(MissingArtifact, match="not an aepipe code store"):
        open_store(tmp_path)
