"""Degradations that make restoration inputs from clean targets: seeded, of the stated strength."""

from __future__ import annotations

import numpy as np
import pytest

from aepipe.config import NoiseConfig, TrainingConfig, WatermarkConfig
from aepipe.features.degrade import add_noise, grayscale, noisy, task_input, watermark_mask, watermarked


@pytest.fixture
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (0.25 + 0.5 * rng.random((64, 3, 16, 16))).astype(np.float32)  # away from 0 and 1: no clipping


def test_gaussian_noise_has_sigma_on_the_255_scale(images):
    out = add_noise(images, "gaussian", 25, np.random.default_rng(1))
    assert abs((out - images).std() * 255 - 25) < 0.5


@pytest.mark.parametrize("kind", ["salt_pepper", "masking"])
def test_salt_pepper_and_masking_hit_the_stated_share_of_pixels(images, kind):
    out = add_noise(images, kind, 0.1, np.random.default_rng(2))
    hit = (out != images).any(1)  # whole pixels
    assert abs(hit.mean() - 0.1) < 0.01
    assert set(np.unique(out[:, 0][hit])) <= ({0.0, 1.0} if kind == "salt_pepper" else {0.0})


def test_jpeg_artefacts_grow_as_quality_falls(images):
    rng = np.random.default_rng(3)
    err = {q: np.abs(add_noise(images, "jpeg", q, rng) - images).mean() for q in (10, 90)}
    assert err[10] > err[90] > 0


def test_each_item_gets_one_of_the_listed_corruptions(images):
    out = noisy(
        images,
        [NoiseConfig(kind="masking", levels=[0.5]), NoiseConfig(kind="gaussian", levels=[50])],
        np.random.default_rng(4),
    )
    masked = (out == 0).any(1).mean((1, 2)) > 0.3  # per item
    assert 10 < masked.sum() < 54  # both kinds drawn


def test_grayscale_is_luma_in_every_channel(images):
    g = grayscale(images)
    assert np.allclose(g[:, 0], g[:, 2])
    assert np.allclose(g[:, 0], 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2], atol=1e-6)


def test_watermarks_are_seeded_vary_and_blend_within_opacity(images):
    cfg = WatermarkConfig()
    a, ma = watermarked(images, cfg, np.random.default_rng(5))
    b, mb = watermarked(images, cfg, np.random.default_rng(5))
    assert np.array_equal(a, b) and np.array_equal(ma, mb)  # the seed fixes everything
    covered = (ma > 0.05).mean((1, 2))
    assert (covered > 0).all() and covered.std() > 0  # every item marked, in different ways
    changed = np.abs(a - images).max(1)  # (B, H, W)
    assert (changed[ma == 0] == 0).all()  # nothing changes outside the mask
    assert changed.max() <= cfg.opacity[1] + 1e-6  # at most the opacity times a [0, 1] difference


def test_watermark_mask_in_unit_range_for_odd_sizes():
    m = watermark_mask(7, 40, WatermarkConfig(logo_share=1.0), np.random.default_rng(0))
    assert m.shape == (7, 40) and m.min() >= 0 and m.max() <= 1


def test_task_input_leaves_reconstruct_and_paired_alone(images):
    for task in ("reconstruct",):
        assert task_input(images, TrainingConfig(task=task), np.random.default_rng(0)).x is images
    made = task_input(images, TrainingConfig(task="remove_watermark"), np.random.default_rng(0))
    assert made.mask is not None and made.mask.shape == (64, 16, 16)
