"""Degradations that make a restoration task's input from its clean target, on the fly.

All take a batch of images (B, C, H, W) float32 in [0, 1] and a numpy Generator, so a run is
repeatable from its seed: noise (gaussian sigma on the 0-255 scale, salt-and-pepper, masking,
JPEG artefacts at a quality), grayscale (ITU-R 601 luma, as Pillow's "L", replicated to the
colour channels), and synthetic watermarks.

Watermarks: per item, a text (from ``WatermarkConfig.texts``, Pillow's default scalable font)
or, with probability ``logo_share``, a logo (a ring, a box or a five-pointed star), drawn white
on a 4x canvas, rotated by a uniform angle in [-max_rotation, max_rotation], resized to a width
drawn from ``size`` (a share of the image width) and pasted at a uniform position (it may be
cut by the border); its colour is white, black or a uniform RGB colour (one in three each), and
it is alpha-blended with an opacity drawn from ``opacity``: out = (1 - a m) x + a m colour,
where m is the antialiased mask in [0, 1]. The mask is returned too (classical inpainting is
given it in the benchmark; the autoencoder never is).
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from aepipe.config import NoiseConfig, TrainingConfig, WatermarkConfig

LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def add_noise(x: np.ndarray, kind: str, level: float, rng: np.random.Generator) -> np.ndarray:
    """One corruption at one level for the whole batch. (B, C, H, W) -> (B, C, H, W)"""
    if kind == "gaussian":
        return np.clip(x + rng.normal(0.0, level / 255.0, x.shape).astype(np.float32), 0.0, 1.0)
    if kind == "jpeg":
        return np.stack([jpeg(img, int(level)) for img in x])
    hit = rng.random((len(x), 1, *x.shape[2:])) < level  # whole pixels (all channels), as in scans
    if kind == "masking":
        return np.where(hit, 0.0, x).astype(np.float32)
    salt = (rng.random(hit.shape) < 0.5).astype(np.float32)  # salt_pepper: hit pixels become black or white
    return np.where(hit, salt, x).astype(np.float32)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """(C, H, W) in [0, 1] through Pillow's JPEG encoder at ``quality`` and back."""
    a = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    pil = Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0))
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=quality)
    back = np.asarray(Image.open(buf), np.float32) / 255.0
    return back[None] if back.ndim == 2 else back.transpose(2, 0, 1)


def noisy(x: np.ndarray, noise: list[NoiseConfig], rng: np.random.Generator) -> np.ndarray:
    """Each item gets one of the corruptions at one of its levels (uniformly)."""
    out = np.empty_like(x)
    spec = rng.integers(len(noise), size=len(x))
    for s, cfg in enumerate(noise):
        level_of = rng.integers(len(cfg.levels), size=len(x))
        for li, level in enumerate(cfg.levels):
            rows = np.flatnonzero((spec == s) & (level_of == li))
            if len(rows):
                out[rows] = add_noise(x[rows], cfg.kind, level, rng)
    return out


def grayscale(x: np.ndarray) -> np.ndarray:
    """Luma replicated to every channel. (B, 3, H, W) -> (B, 3, H, W)"""
    y = np.einsum("bchw,c->bhw", x, LUMA)[:, None]  # (B, 1, H, W)
    return np.repeat(y, x.shape[1], axis=1).astype(np.float32)


def _logo(draw: ImageDraw.ImageDraw, size: int, kind: int) -> None:
    c, r = size / 2, size * 0.45
    width = max(size // 12, 1)
    if kind == 0:
        draw.ellipse([c - r, c - r, c + r, c + r], outline=255, width=width)
    elif kind == 1:
        draw.rectangle([c - r, c - r * 0.6, c + r, c + r * 0.6], outline=255, width=width)
    else:
        pts = [
            (
                c + (r if i % 2 == 0 else r * 0.45) * math.sin(i * math.pi / 5),
                c - (r if i % 2 == 0 else r * 0.45) * math.cos(i * math.pi / 5),
            )
            for i in range(10)
        ]
        draw.polygon(pts, fill=255)


@functools.lru_cache(maxsize=64)
def _stamp(text: str | None, logo: int, big: int) -> Image.Image:
    """An unrotated white overlay on black: ``text`` in Pillow's default font, or logo number ``logo``.
    Cached: the same few stamps are drawn again and again (rendering costs more than rotating)."""
    if text is None:
        canvas = Image.new("L", (big, big), 0)
        _logo(ImageDraw.Draw(canvas), big, logo)
        return canvas
    font = ImageFont.load_default(size=max(big // 4, 8))
    stroke = max(big // 32, 1)  # bold enough to survive the resize to a few pixels high
    left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
    canvas = Image.new("L", (int(right - left) + 4, int(bottom - top) + 4), 0)
    ImageDraw.Draw(canvas).text((2 - left, 2 - top), text, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    return canvas


def watermark_mask(h: int, w: int, cfg: WatermarkConfig, rng: np.random.Generator) -> np.ndarray:
    """One random overlay mask (H, W) in [0, 1] (see the module docstring)."""
    big = 2 * max(h, w, 16)  # drawn larger, then resized: antialiased edges at any image size
    if rng.random() < cfg.logo_share:
        canvas = _stamp(None, int(rng.integers(3)), big)
    else:
        canvas = _stamp(cfg.texts[int(rng.integers(len(cfg.texts)))], 0, big)
    angle = float(rng.uniform(-cfg.max_rotation, cfg.max_rotation))
    canvas = canvas.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    width = max(int(round(w * rng.uniform(*cfg.size))), 2)
    height = max(int(round(canvas.height * width / canvas.width)), 2)
    stamp = np.asarray(canvas.resize((width, height), Image.Resampling.LANCZOS), np.float32) / 255.0
    mask = np.zeros((h, w), np.float32)
    y0 = int(rng.integers(-(height // 4), max(h - 3 * height // 4, -(height // 4)) + 1))
    x0 = int(rng.integers(-(width // 4), max(w - 3 * width // 4, -(width // 4)) + 1))
    ys, xs = slice(max(y0, 0), min(y0 + height, h)), slice(max(x0, 0), min(x0 + width, w))
    mask[ys, xs] = stamp[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    return np.clip(mask, 0.0, 1.0)


def watermarked(x: np.ndarray, cfg: WatermarkConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Watermarked images and their masks. (B, C, H, W) -> (B, C, H, W), (B, H, W) in [0, 1]"""
    b, c, h, w = x.shape
    masks = np.stack([watermark_mask(h, w, cfg, rng) for _ in range(b)]) if b else np.zeros((0, h, w), np.float32)
    alpha = np.asarray(rng.uniform(*cfg.opacity, size=b), np.float32)[:, None, None, None] * masks[:, None]
    choice = rng.integers(3, size=b)
    colour = np.where((choice == 0)[:, None], 1.0, np.where((choice == 1)[:, None], 0.0, rng.random((b, 3)))).astype(
        np.float32
    )  # white, black or any colour
    colour = colour[:, :c] if c == 3 else colour.mean(1, keepdims=True)
    out = (1.0 - alpha) * x + alpha * colour[:, :, None, None]
    return out.astype(np.float32), masks


@dataclass
class TaskInput:
    x: np.ndarray  # (B, C, H, W) the degraded input
    mask: np.ndarray | None = None  # (B, H, W) watermark masks (remove_watermark only)


def task_input(target: np.ndarray, training: TrainingConfig, rng: np.random.Generator) -> TaskInput:
    """The input of ``training.task`` made from clean targets (reconstruct / paired: unchanged)."""
    task = training.task
    if task == "denoise":
        return TaskInput(noisy(target, training.noise, rng))
    if task == "colorize":
        return TaskInput(grayscale(target))
    if task == "remove_watermark":
        x, mask = watermarked(target, training.watermark, rng)
        return TaskInput(x, mask)
    return TaskInput(target)
