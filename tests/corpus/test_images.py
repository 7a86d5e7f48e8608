"""Image corpora: folders, Parquet tables of encoded images, NumPy arrays, digits.
Bad items are quarantined with a reason; good ones become (C, H, W) floats in [0, 1]."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from aepipe.codes.encode import encode_corpus
from aepipe.codes.store import open_store
from aepipe.config import CorpusConfig, FeaturesConfig, build_config
from aepipe.corpus import BadItem, Quarantine, Shard, open_corpus, open_image_corpus
from aepipe.errors import CorpusError
from aepipe.features import ImagePreprocessor
from aepipe.features.images import stack_pixels
from aepipe.layout import RunLayout
from aepipe.model import build_autoencoder, save_model


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A syntactically valid PNG whose header claims width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def _one_bit_png(width: int, height: int) -> bytes:
    """A real, fully decodable large image that costs almost nothing to store."""
    buf = io.BytesIO()
    Image.new("1", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


GOOD = {  # relative path -> how it was made
    "cat/a.png": "gray",
    "cat/b.png": "gray",
    "cat/c.jpg": "rgb-jpeg",
    "cat/d.png": "rgb",
    "dog/e.png": "gray-big",
    "dog/f.jpeg": "gray-jpeg",
    "dog/g.png": "gray",
    "dog/sub/h.png": "gray",
    "dog/i.PNG": "gray",
    "dog/j.png": "rgba",
    "dog/k.png": "gray",
    "dog/l.bmp": "gray",
}
BAD = {  # relative path -> expected reason substring
    "cat/truncated.png": "truncated or corrupt image",
    "cat/zero.png": "empty file (0 bytes)",
    "dog/notes.jpg": "not an image",
    "dog/bomb.png": "too large",
    "dog/bomb-header.png": "too large",
    "dog/readme.txt": "not an image file",
}


@pytest.fixture
def image_folder(tmp_path) -> Path:
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for rel, kind in GOOD.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "gray":
            data = _png(rng.integers(0, 256, (12, 12)))
        elif kind == "gray-big":
            data = _png(rng.integers(0, 256, (30, 20)))
        elif kind == "rgb":
            data = _png(rng.integers(0, 256, (12, 12, 3)))
        elif kind == "rgba":
            data = _png(rng.integers(0, 256, (12, 12, 4)))
        elif kind == "rgb-jpeg":
            data = _jpeg(rng.integers(0, 256, (16, 16, 3)))
        elif kind == "gray-jpeg":
            data = _jpeg(rng.integers(0, 256, (16, 16)))
        else:
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(buf, format="BMP")
            data = buf.getvalue()
        path.write_bytes(data)
    good_png = _png(rng.integers(0, 256, (40, 40)))
    (root / "cat/truncated.png").write_bytes(good_png[: len(good_png) // 2])
    (root / "cat/zero.png").write_bytes(b"")
    (root / "dog/notes.jpg").write_text("these are notes, not a JPEG\n")
    (root / "dog/bomb.png").write_bytes(_one_bit_png(2000, 2000))  # 4 M pixels > corpus.images.max_pixels below
    (root / "dog/bomb-header.png").write_bytes(_png_header_only(30_000, 30_000))  # trips Pillow's own guard
    (root / "dog/readme.txt").write_text("a text file\n")
    (root / ".hidden").mkdir()
    (root / ".hidden/x.png").write_bytes(b"ignored: hidden folders are skipped")
    (root / "cat/.DS_Store").write_bytes(b"\0\0")
    return root


FOLDER_OVERRIDES = ["corpus.images.max_pixels=1000000", "features.image.size=[12, 12]", "features.image.channels=1"]


def _fake_model(cfg, prep: ImagePreprocessor) -> str:
    """An untrained (random) model saved with the real model format, for encoding tests
    that care about the corpus, not about code quality."""
    net = build_autoencoder(cfg.model, prep.shape).eval()
    return save_model(RunLayout.at(cfg.run_dir).model, net, cfg, prep)


def test_folder_encode_quarantines_exactly_the_bad_files(tmp_path, image_folder):
    cfg = build_config(
        overrides=[
            f"run_dir={tmp_path / 'run'}",
            f"corpus.source={image_folder}",
            *FOLDER_OVERRIDES,
            "model.n_layers=1",
            "model.nodes_per_layer=[8]",
            "model.code_size=3",
        ]
    )
    _fake_model(cfg, ImagePreprocessor(12, 12, 1))
    result = encode_corpus(cfg)

    quarantine = pq.read_table(RunLayout.at(cfg.run_dir).quarantine("encode")).to_pylist()
    reasons = {row["id"]: row["reason"] for row in quarantine}
    assert set(reasons) == set(BAD)
    for rel, expected in BAD.items():
        assert expected in reasons[rel], (rel, reasons[rel])
    assert all(row["stage"] == "encode" for row in quarantine)
    assert {row["source"] for row in quarantine} == {str(image_folder / rel) for rel in BAD}

    assert result.n_items == len(GOOD) and result.n_quarantined == len(BAD)
    table = open_store(RunLayout.at(cfg.run_dir).store).read()
    rows = {r["id"]: r for r in table.to_pylist()}
    assert set(rows) == set(GOOD)  # ids are paths relative to the corpus root; hidden files skipped
    assert rows["cat/a.png"]["label"] == "cat"
    assert rows["dog/e.png"]["label"] == "dog"
    assert rows["dog/sub/h.png"]["label"] == "sub"  # the parent folder, as the README says
    assert rows["cat/a.png"]["source"] == str(image_folder / "cat/a.png")
    assert np.isfinite(table.column("recon_error").to_numpy()).all()


def test_folder_items_decode_to_grayscale_at_the_configured_size(image_folder):
    corpus = open_image_corpus(CorpusConfig(source=str(image_folder), max_pixels=1_000_000))
    assert corpus.format == "folder" and corpus.has_labels
    prep = corpus.infer_preprocessor(FeaturesConfig(image_size=(10, 7), channels=1))
    q = Quarantine("test")
    batches = list(corpus.iter_batches(prep, 5, q))
    assert [len(b) for b in batches] == [5, 5, 2]
    x = np.concatenate([b.x for b in batches])
    assert x.shape == (len(GOOD), 1, 10, 7) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert sorted(i for b in batches for i in b.ids) == sorted(GOOD)
    assert len(q) == len(BAD)


def test_native_size_and_channels_come_from_the_good_items(tmp_path, write_png):
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    (root / "a" / "0-empty.png").write_bytes(b"")  # skipped: unreadable
    red = np.zeros((9, 5, 3), np.uint8)
    red[..., 0] = 200
    write_png(root / "a" / "1.png", red)
    write_png(root / "a" / "2.png", np.zeros((9, 5), np.uint8))
    write_png(root / "a" / "3.png", np.zeros((4, 4), np.uint8))
    corpus = open_image_corpus(CorpusConfig(source=str(root)))
    assert corpus.infer_preprocessor(FeaturesConfig()) == ImagePreprocessor(9, 5, 3)  # median size; one has colour
    assert corpus.infer_preprocessor(FeaturesConfig(channels=1)) == ImagePreprocessor(9, 5, 1)


def test_rgb_to_grayscale_uses_luma_weights():
    red = np.zeros((6, 6, 3), np.uint8)
    red[..., 0] = 255
    prep = ImagePreprocessor(6, 6, 1)
    x = prep(_png(red))
    assert x.shape == (1, 6, 6)
    np.testing.assert_allclose(x, round(0.299 * 255) / 255, atol=1 / 255)
    # arrays (already in [0, 1]) use the same weights
    np.testing.assert_allclose(prep(red.astype(np.float32) / 255), 0.299, atol=1e-6)


def test_gray_to_rgb_repeats_the_channel_and_resizes():
    gray = np.full((20, 30), 128, np.uint8)
    x = ImagePreprocessor(5, 7, 3)(_png(gray))
    assert x.shape == (3, 5, 7)
    np.testing.assert_allclose(x, 128 / 255, atol=1e-6)
    y = ImagePreprocessor(5, 7, 3)(gray.astype(np.float32) / 255)
    assert y.shape == (3, 5, 7)
    np.testing.assert_allclose(y, 128 / 255, atol=1e-6)


def test_preprocessor_rejects_bad_arrays():
    prep = ImagePreprocessor(4, 4, 1)
    with pytest.raises(BadItem, match="outside"):
        prep(np.full((4, 4), 2.0, np.float32))
    with pytest.raises(BadItem, match="NaN"):
        prep(np.full((4, 4), np.nan, np.float32))
    with pytest.raises(BadItem, match="not an image"):
        prep(np.zeros((4, 4, 2), np.float32))


def test_stacked_pixels_are_each_image_s_own():
    rng = np.random.default_rng(3)
    for mode, channels in (("L", 1), ("RGB", 3)):
        shape = (5, 7) if channels == 1 else (5, 7, 3)
        images = [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode) for _ in range(4)]
        stacked = stack_pixels(images, channels)
        assert stacked.shape == (4, channels, 5, 7) and stacked.flags.c_contiguous
        for img, pixels in zip(images, stacked):
            np.testing.assert_array_equal(pixels, np.asarray(img).reshape(5, 7, channels).transpose(2, 0, 1))


def test_max_pixels_is_the_limit_and_pillow_s_guard_stays_beneath_it(monkeypatch):
    """An image over Pillow's warning threshold but within corpus.images.max_pixels decodes (the
    user's limit applies); over twice that threshold Pillow refuses it, quarantined as too large."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)
    prep = ImagePreprocessor(4, 4, 1)
    with pytest.warns(Image.DecompressionBombWarning):
        assert prep(_png(np.full((20, 30), 7, np.uint8)), 10_000).shape == (1, 4, 4)  # 600 pixels
    with pytest.raises(BadItem, match="too large"):
        prep(_png(np.full((30, 30), 7, np.uint8)), 10_000)  # 900 > 2 x 400: Pillow's error
    with pytest.raises(BadItem, match="too large: 20x15 = 300 pixels > max_pixels 200"):
        prep(_png(np.full((15, 20), 7, np.uint8)), 200)


def test_files_that_only_start_like_png_or_jpeg_are_quarantined_with_a_reason():
    prep = ImagePreprocessor(4, 4, 1)
    for fake in (b"\x89PNG\r\n\x1a\n" + b"x" * 64, b"\xff\xd8\xff" + b"y" * 64, _png(np.zeros((9, 9), np.uint8))[:40]):
        with pytest.raises(BadItem, match="not an image|truncated or corrupt"):
            prep(fake)


def test_folder_limit_and_shards_cover_items_once(image_folder):
    corpus = open_image_corpus(CorpusConfig(source=str(image_folder), limit=10))
    assert corpus.n_items == 10
    shards = corpus.shards(4)
    assert [(s.start, s.stop) for s in shards] == [(0, 4), (4, 8), (8, 10)]
    ids = [item.id for s in shards for item in corpus.iter_raw(s)]
    assert ids == [item.id for item in corpus.iter_raw()]
    assert len(set(ids)) == 10


def test_missing_source_and_empty_folder_are_corpus_errors(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        open_image_corpus(CorpusConfig(source=str(tmp_path / "nowhere")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no files"):
        open_image_corpus(CorpusConfig(source=str(tmp_path / "empty")))


def test_folder_of_only_bad_files_has_no_readable_image(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "x.png").write_bytes(b"")
    (root / "y.jpg").write_text("nope")
    with pytest.raises(CorpusError, match="no readable image"):
        open_image_corpus(CorpusConfig(source=str(root))).infer_preprocessor(FeaturesConfig())


# -- Parquet -------------------------------------------------------------------------------------------------------


@pytest.fixture
def parquet_corpus(tmp_path) -> tuple[Path, list[np.ndarray]]:
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, (8, 8)).astype(np.uint8) for _ in range(6)]
    ids = ["p0", "p1", "p2", "p3", None, "p5"]
    images = [_png(a) for a in arrays]
    images[2] = None  # null payload
    labels = ["x", "y", "x", "y", "x", None]
    path = tmp_path / "corpus.parquet"
    pq.write_table(
        pa.table(
            {
                "id": pa.array(ids, pa.string()),
                "image": pa.array(images, pa.binary()),
                "label": pa.array(labels, pa.string()),
            }
        ),
        path,
    )
    return path, arrays


def test_parquet_corpus_reads_bytes_ids_labels_and_quarantines_nulls(parquet_corpus):
    path, arrays = parquet_corpus
    corpus = open_image_corpus(CorpusConfig(source=str(path)))
    assert corpus.format == "parquet" and corpus.n_items == 6 and corpus.has_labels
    prep = corpus.infer_preprocessor(FeaturesConfig())
    assert prep == ImagePreprocessor(8, 8, 1)
    q = Quarantine("encode")
    (batch,) = list(corpus.iter_batches(prep, 100, q))
    assert batch.ids == ["p0", "p1", "p3", "p5"]
    assert batch.labels == ["x", "y", "y", None]
    assert batch.positions == [0, 1, 3, 5]
    np.testing.assert_allclose(batch.x[2, 0], arrays[3] / 255.0, atol=1e-6)  # PNG is lossless
    reasons = {i: r for i, _, r in q.items}
    assert set(reasons) == {"p2", "row-4"}
    assert "missing image bytes" in reasons["p2"]
    assert "missing id" in reasons["row-4"]


def test_parquet_corpus_shards_respect_row_ranges(parquet_corpus):
    path, _ = parquet_corpus
    corpus = open_image_corpus(CorpusConfig(source=str(path)))
    got = [[r.pos for r in corpus.iter_raw(s)] for s in corpus.shards(4)]
    assert got == [[0, 1, 2, 3], [4, 5]]


def test_parquet_fingerprints_match_those_of_the_items(parquet_corpus):
    """Fingerprints of a Parquet image corpus are taken a slice at a time, without an item
    object per row: the same ids, positions and hashes as from ``iter_raw``, bad rows included,
    for the whole corpus and for each shard."""
    from aepipe.corpus.fingerprint import payload_hash, shard_fingerprints

    path, _ = parquet_corpus
    corpus = open_image_corpus(CorpusConfig(source=str(path)))
    for shard in [*corpus.shards(100), *corpus.shards(4), *corpus.shards(1)]:
        raws = list(corpus.iter_raw(shard))
        got = shard_fingerprints(corpus, shard).to_pydict()
        assert got == {
            "id": [r.id for r in raws],
            "fingerprint": [payload_hash(r.payload) for r in raws],
            "position": [r.pos for r in raws],
        }
    (whole_corpus,) = corpus.shards(100)
    whole = shard_fingerprints(corpus, whole_corpus).to_pydict()
    assert whole["id"] == ["p0", "p1", "p2", "p3", "row-4", "p5"]
    assert len(set(whole["fingerprint"])) == 6  # two bad rows, for different reasons


def test_parquet_struct_column_hugging_face_layout(tmp_path):
    arr = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    images = pa.array(
        [{"bytes": _png(arr), "path": "a.png"}] * 3, pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    )
    path = tmp_path / "hf.parquet"
    pq.write_table(pa.table({"name": ["a", "b", "c"], "img": images}), path)
    cfg = CorpusConfig(source=str(path), id_column="name", image_column="img", label_column=None)
    corpus = open_image_corpus(cfg)
    assert not corpus.has_labels
    (batch,) = list(corpus.iter_batches(corpus.infer_preprocessor(FeaturesConfig()), 10, Quarantine("t")))
    assert batch.ids == ["a", "b", "c"] and batch.labels == [None] * 3
    np.testing.assert_allclose(batch.x[1, 0], arr / 255.0, atol=1e-6)


def test_parquet_missing_column_is_a_corpus_error(parquet_corpus):
    path, _ = parquet_corpus
    with pytest.raises(CorpusError, match="no column 'pixels'"):
        open_image_corpus(CorpusConfig(source=str(path), image_column="pixels"))


# -- NumPy ---------------------------------------------------------------------------------------------------------


def test_npy_uint8_scaled_to_unit_range_without_labels(tmp_path):
    arr = np.random.default_rng(2).integers(0, 256, (7, 5, 6)).astype(np.uint8)
    path = tmp_path / "x.npy"
    np.save(path, arr)
    corpus = open_image_corpus(CorpusConfig(source=str(path)))
    assert corpus.format == "numpy" and not corpus.has_labels
    prep = corpus.infer_preprocessor(FeaturesConfig())
    assert prep == ImagePreprocessor(5, 6, 1)
    (batch,) = list(corpus.iter_batches(prep, 100, Quarantine("t")))
    np.testing.assert_allclose(batch.x[:, 0], arr / 255.0, atol=1e-6)
    assert batch.ids == [str(i) for i in range(7)]  # zero-padded positions (one digit here)
    assert batch.labels == [None] * 7
    assert batch.sources[3] == "x.npy[3]"


def test_npz_float_images_with_labels_rgb_to_gray_and_resize(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.random((12, 6, 4, 3)).astype(np.float32)
    x[5] += 1.0  # out of [0, 1]: this item is quarantined
    y = np.arange(12) % 3
    path = tmp_path / "data.npz"
    np.savez(path, x_train=x, y_train=y)
    corpus = open_image_corpus(CorpusConfig(source=str(path)))
    assert corpus.has_labels and corpus.n_items == 12
    prep = corpus.infer_preprocessor(FeaturesConfig(image_size=(3, 2), channels=1))
    q = Quarantine("t")
    (batch,) = list(corpus.iter_batches(prep, 100, q))
    assert batch.x.shape == (11, 1, 3, 2)
    assert batch.ids[:6] == ["00", "01", "02", "03", "04", "06"]
    assert batch.labels == [str(v) for i, v in enumerate(y) if i != 5]
    assert [i for i, _, _ in q.items] == ["05"] and "outside [0, 1]" in q.items[0][2]
    # native size, gray: equals the luma-weighted array exactly
    prep_native = ImagePreprocessor(6, 4, 1)
    np.testing.assert_allclose(prep_native(x[0]), (x[0] @ np.array([0.299, 0.587, 0.114], np.float32))[None], atol=1e-6)


def test_npz_explicit_keys_and_label_count_mismatch(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, imgs=np.zeros((4, 3, 3), np.uint8), cls=np.array([1, 2, 3, 4]), other=np.zeros((5, 2, 2)))
    corpus = open_image_corpus(CorpusConfig(source=str(path), array_key="imgs", labels_key="cls"))
    assert [r.label for r in corpus.iter_raw()] == ["1", "2", "3", "4"]
    with pytest.raises(CorpusError, match="labels"):
        open_image_corpus(CorpusConfig(source=str(path), array_key="other", labels_key="cls"))


def test_digits_corpus_is_bundled_and_labelled():
    corpus = open_image_corpus(CorpusConfig(source="digits", limit=20))
    assert corpus.format == "digits" and corpus.n_items == 20 and corpus.has_labels
    prep = corpus.infer_preprocessor(FeaturesConfig())
    assert prep == ImagePreprocessor(8, 8, 1)
    (batch,) = list(corpus.iter_batches(prep, 64, Quarantine("t")))
    assert batch.ids[:3] == ["0000", "0001", "0002"]  # width of the whole corpus (1797), not of the limit
    assert batch.labels[:3] == ["0", "1", "2"]
    assert batch.x.max() == pytest.approx(1.0) and batch.x.min() == 0.0


def test_array_ids_do_not_depend_on_the_limit():
    """The same item keeps its id whether a run reads 20 items or all of them."""
    small = [r.id for r in open_image_corpus(CorpusConfig(source="digits", limit=20)).iter_raw()]
    full = open_image_corpus(CorpusConfig(source="digits"))
    assert full.n_items == 1797
    assert small == [r.id for r, _ in zip(full.iter_raw(), range(20))]


def test_array_batches_match_the_per_item_path(tmp_path):
    """The whole-batch array reader gives the same ids, values, labels and quarantine as item by item."""
    x = np.random.default_rng(0).random((300, 12, 12)).astype(np.float32)
    x[105, 1, 1], x[107, 2, 2] = np.nan, 3.0
    np.savez(tmp_path / "a.npz", x=x, y=np.arange(300) % 10)
    corpus = open_corpus(CorpusConfig(source=str(tmp_path / "a.npz")))
    prep = corpus.infer_preprocessor(FeaturesConfig())
    shard = Shard(1, 100, 250, ())
    fast_q, slow_q = Quarantine("encode"), Quarantine("encode")
    fast = list(corpus.iter_batches(prep, 64, fast_q, shard=shard))
    slow = list(corpus.iter_batches(prep, 64, slow_q, shard=shard, keep=set(range(300))))  # keep: item by item
    for attr in ("ids", "labels", "sources", "positions"):
        assert sum((getattr(b, attr) for b in fast), []) == sum((getattr(b, attr) for b in slow), [])
    np.testing.assert_array_equal(np.concatenate([b.x for b in fast]), np.concatenate([b.x for b in slow]))
    assert fast_q.to_table().equals(slow_q.to_table()) and len(fast_q) == 2


def test_row_slices_read_only_the_shard_across_files_and_row_groups(tmp_path):
    import pyarrow.dataset as pads

    from aepipe.corpus.base import Shard, iter_row_slices

    values = list(range(100))
    for f, (lo, hi) in enumerate([(0, 37), (37, 40), (40, 100)]):  # uneven files, row groups of 7
        pq.write_table(pa.table({"v": values[lo:hi]}), tmp_path / f"part-{f}.parquet", row_group_size=7)
    ds = pads.dataset(str(tmp_path), format="parquet")
    for start, stop in [(0, 100), (0, 5), (5, 38), (36, 41), (40, 40), (99, 100), (13, 90)]:
        got, at = [], []
        for first, rows in iter_row_slices(ds, ["v"], Shard(0, start, stop), batch_size=4):
            at.append(first)
            got += rows["v"].to_pylist()
        assert got == values[start:stop], (start, stop)
        assert at == sorted(at) and (not at or at[0] == start)
