"""Input size chosen, never stumbled on: the median of a sample, capped per architecture, aspect
ratio kept, EXIF orientation applied, mixed gray/RGB folders made RGB on purpose, and training that
refuses (one line, naming the override) when the model would not fit the memory budget."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from aepipe.config import CorpusConfig, FeaturesConfig, build_config
from aepipe.corpus import Quarantine, open_image_corpus
from aepipe.errors import BadItem, ConfigError
from aepipe.features.images import ImagePreprocessor, choose_input_size, probe_image
from aepipe.model.budget import check_memory_budget, estimate_training_memory
from aepipe.model.train import train_model


def _jpeg(arr: np.ndarray, orientation: int | None = None) -> bytes:
    img = Image.fromarray(arr)
    buf = io.BytesIO()
    if orientation is None:
        img.save(buf, format="JPEG", quality=95)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        img.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth colour image (compresses well, has real colour), drawn small and scaled up."""
    rng = np.random.default_rng(seed)
    sh, sw = max(h // 16, 2), max(w // 16, 2)
    yy, xx = np.mgrid[0:sh, 0:sw] / max(sh, sw)
    base = rng.uniform(0.2, 0.8, 3)
    arr = np.stack([base[0] + 0.2 * yy, base[1] + 0.2 * xx, base[2] - 0.2 * yy], axis=2)
    small = Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8))
    return np.asarray(small.resize((w, h), Image.Resampling.BILINEAR))


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_median_size_capped_with_the_aspect_ratio_kept():
    assert choose_input_size([(48, 64)] * 5 + [(150, 200)], max_side=64) == (48, 64)
    assert choose_input_size([(3000, 4000)], max_side=64) == (48, 64)
    assert choose_input_size([(4000, 3000)], max_side=128) == (128, 96)
    assert choose_input_size([(28, 28)], max_side=64) == (28, 28)  # never scaled up


def test_mixed_size_folder_takes_the_median_not_the_first_file(tmp_path):
    root = tmp_path / "photos"
    _write(root / "a" / "000-big.jpg", _jpeg(_photo(150, 200)))  # first in order, as in the issue
    for i in range(6):
        _write(root / "a" / f"{i + 1:03d}.jpg", _jpeg(_photo(48, 64, i)))
    corpus = open_image_corpus(CorpusConfig(source=str(root)))
    prep = corpus.infer_preprocessor(FeaturesConfig())
    assert prep.shape == (3, 48, 64) and prep.resize == "pad"


def test_a_phone_sized_photo_is_capped_per_architecture(tmp_path):
    root = tmp_path / "phone"
    _write(root / "IMG_0001.jpg", _jpeg(_photo(3000, 4000)))
    corpus = open_image_corpus(CorpusConfig(source=str(root)))
    assert corpus.infer_preprocessor(FeaturesConfig()).shape == (3, 48, 64)
    assert corpus.infer_preprocessor(FeaturesConfig(), architecture="conv").shape == (3, 96, 128)
    small = FeaturesConfig.model_validate({"image": {"max_side": {"dense": 32}}})
    prep = corpus.infer_preprocessor(small)
    assert prep.shape == (3, 24, 32)
    batch = next(corpus.iter_batches(prep, 4, Quarantine("t")))
    assert batch.x.shape == (1, 3, 24, 32) and 0.0 <= batch.x.min() and batch.x.max() <= 1.0


def test_exif_orientation_is_applied_to_size_and_pixels(tmp_path):
    arr = np.zeros((40, 80, 3), np.uint8)  # stored landscape: left half white, right half black
    arr[:, :40] = 255
    data = _jpeg(arr, orientation=6)  # 6: the camera was rotated; display rotated 90 degrees clockwise
    probe = probe_image(data, 10**8)
    assert (probe.height, probe.width) == (80, 40)  # upright: portrait
    x = ImagePreprocessor(8, 4, 1)(data)[0]  # (8, 4) upright
    assert x[:3].mean() > 0.9 and x[-3:].mean() < 0.1  # the stored left (white) half is now on top


def test_aspect_ratio_kept_by_pad_and_crop_and_ignored_by_stretch():
    arr = np.full((10, 40), 255, np.uint8)  # a wide white bar
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    data = buf.getvalue()
    pad = ImagePreprocessor(20, 20, 1, resize="pad")(data)[0]
    assert pad[0].max() < 0.05 and pad[-1].max() < 0.05 and pad[10].min() > 0.95  # black borders above/below
    crop = ImagePreprocessor(20, 20, 1, resize="crop")(data)[0]
    assert crop.min() > 0.95  # filled: the centre of the bar
    stretch = ImagePreprocessor(20, 20, 1, resize="stretch")(data)[0]
    assert stretch.min() > 0.95
    # arrays take the same path
    np.testing.assert_allclose(ImagePreprocessor(20, 20, 1, resize="pad")(arr / 255.0)[0, 0], 0.0, atol=1e-6)


def test_old_preprocess_json_without_resize_keeps_stretching():
    assert ImagePreprocessor.from_dict({"height": 8, "width": 8, "channels": 1}).resize == "stretch"
    prep = ImagePreprocessor(8, 6, 3, resize="crop")
    assert ImagePreprocessor.from_dict(prep.to_dict()) == prep


def test_mixed_gray_and_rgb_folder_becomes_rgb_and_says_so(tmp_path, caplog):
    root = tmp_path / "mixed"
    for i in range(5):
        _write(root / f"g{i}.png", _png(np.full((16, 16), 40 * i, np.uint8)))
    gray_as_rgb = np.repeat(np.full((16, 16, 1), 90, np.uint8), 3, axis=2)
    _write(root / "scan.jpg", _jpeg(gray_as_rgb))  # RGB file, gray content: counts as gray
    corpus = open_image_corpus(CorpusConfig(source=str(root)))
    assert corpus.infer_preprocessor(FeaturesConfig()).channels == 1
    _write(root / "z-colour.jpg", _jpeg(_photo(16, 16)))
    corpus = open_image_corpus(CorpusConfig(source=str(root)))
    with caplog.at_level(logging.INFO, logger="aepipe"):
        prep = corpus.infer_preprocessor(FeaturesConfig())
    assert prep.channels == 3
    assert "1 colour, 6 gray (gray items repeated over RGB)" in caplog.text
    x = np.concatenate([b.x for b in corpus.iter_batches(prep, 8, Quarantine("t"))])
    assert x.shape == (7, 3, 16, 16)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_estimate_counts_parameters_without_allocating_them():
    cfg = build_config(overrides=["model.n_layers=1", "model.nodes_per_layer=[512]", "model.code_size=32"])
    big = (3, 3000, 4000)  # a dense layer of 36M x 512 weights: 74 GB if it were allocated
    est = estimate_training_memory(cfg, big, n_items=61)
    d = 3 * 3000 * 4000
    pca_path = 32 * d + d  # the images preset's model.linear_path: pca: components (32 x d) and mean (d)
    b = 128  # model.pca_basis auto: the deep path reads and writes 128 principal components of the d inputs
    bn = 2 * (512 + 512)  # model.batch_norm auto (on with a basis): scale and shift of the two 512-wide layers
    assert est.n_parameters == (b * 512 + 512) + (512 * 32 + 32) + (32 * 512 + 512) + (512 * b + b) + pca_path + bn
    assert est.model_mb >= (est.n_parameters * 16 + b * d * 4) / 2**20  # the basis (a buffer) counts once
    assert est.peak_mb > 40_000  # the linear path alone holds 33 x 36M floats, four times over (Adam)
    raw = estimate_training_memory(
        cfg.model_copy(update={"model": cfg.model.model_copy(update={"pca_basis": 0})}), big, 61
    )
    assert raw.n_parameters == (d * 512 + 512) + (512 * 32 + 32) + (32 * 512 + 512) + (512 * d + d) + pca_path
    small = estimate_training_memory(cfg, (1, 8, 8), n_items=1797)
    assert small.peak_mb < 1000


def test_over_budget_is_a_one_line_error_naming_the_override(caplog):
    cfg = build_config(overrides=["training.memory_budget_mb=2048"])
    with caplog.at_level(logging.INFO, logger="aepipe"):
        check_memory_budget(cfg, (1, 28, 28), 60_000, with_target=False)
    assert "input 1x28x28" in caplog.text and "parameters" in caplog.text and "estimated peak memory" in caplog.text
    with pytest.raises(ConfigError) as err:
        check_memory_budget(cfg, (3, 3000, 4000), 61, with_target=False)
    msg = str(err.value)
    assert "\n" not in msg and "training.memory_budget_mb=2048" in msg
    assert "features.image.max_side.dense" in msg and "features.image.size" in msg


def test_training_refuses_before_reading_when_over_budget(tmp_path):
    root = tmp_path / "photos"
    for i in range(12):
        _write(root / f"{i:02d}.jpg", _jpeg(_photo(300, 400, i)))
    cfg = build_config(
        overrides=[
            f"corpus.source={root}",
            f"run_dir={tmp_path / 'run'}",
            "features.image.size=[3000, 4000]",  # the user asked for full size
            "training.max_epochs=1",
        ]
    )
    with pytest.raises(ConfigError, match="memory_budget_mb"):
        train_model(cfg)
    assert not (tmp_path / "run" / "model").exists()


@pytest.mark.parametrize(
    "payload, reason",
    [
        ("not bytes", "holds text, not image bytes"),
        ([["a", "b"]], "not an array of numbers"),
        (None, "is not an image"),
    ],
)
def test_payloads_that_are_not_images_are_bad_items_not_crashes(payload, reason):
    prep = ImagePreprocessor(height=8, width=8, channels=1)
    with pytest.raises(BadItem, match=reason):
        prep(payload)


def _full_path(prep: ImagePreprocessor, data: bytes) -> np.ndarray:
    """What the preprocessor computed before it skipped steps: always transpose, always convert."""
    img = Image.open(io.BytesIO(data))
    if img.format in ("JPEG", "MPO"):
        img.draft(None, (2 * max(prep.height, prep.width),) * 2)
    img = ImageOps.exif_transpose(img).convert("L" if prep.channels == 1 else "RGB")
    arr = np.asarray(prep.fit(img), dtype=np.float32) / 255.0
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_skipped_steps_change_no_value_whatever_the_format_mode_or_orientation_tag():
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="3"/></x:xmpmeta>'
    items = {
        "gray png": _encoded(rgb.convert("L"), "PNG"),
        "rgb png": _encoded(rgb, "PNG"),
        "rgba png": _encoded(rgb.convert("RGBA"), "PNG"),
        "palette gif": _encoded(rgb.convert("P"), "GIF"),
        "16-bit png": _encoded(Image.fromarray(rng.integers(0, 65536, (20, 20), dtype=np.uint16)), "PNG"),
        "png with exif orientation": _encoded(rgb, "PNG", exif=exif.tobytes()),
        "png with xmp orientation": _encoded(rgb, "PNG", pnginfo=_xmp_text(xmp)),
        "jpeg": _encoded(rgb, "JPEG", quality=90),
        "jpeg with exif orientation": _encoded(rgb, "JPEG", quality=90, exif=exif.tobytes()),
        "tiff with orientation tag": _encoded(rgb, "TIFF", exif=exif.tobytes()),
    }
    rotated = {name for name in items if "orientation" in name and "tiff" not in name}  # TIFFs: Pillow's own
    for channels in (1, 3):
        for resize in ("pad", "crop", "stretch"):
            prep = ImagePreprocessor(16, 24, channels, resize=resize)
            for name, data in items.items():
                got, want = prep(data), _full_path(prep, data)
                assert got.shape == (channels, 16, 24) and got.dtype == np.float32, name
                assert np.array_equal(got, want), f"{name}, {channels} channels, {resize}"
    # the tagged items really are turned (so the comparison above covers the transpose)
    for name in rotated:
        img = Image.open(io.BytesIO(items[name])).convert("RGB")
        turned = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(items[name]))).convert("RGB"))
        assert turned.shape != np.asarray(img).shape or not np.array_equal(turned, np.asarray(img)), name


def _xmp_text(xmp: bytes):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp.decode())
    return info
