"""Images out: model outputs (C, H, W) in [0, 1] as PNG bytes, and grids of them for reports."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def to_uint8(img: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W) or (H, W, 3) uint8, rounded."""
    a = np.clip(np.rint(np.asarray(img, np.float32) * 255.0), 0, 255).astype(np.uint8)
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


def png_bytes(img: np.ndarray) -> bytes:
    """(C, H, W) in [0, 1] -> PNG file bytes."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8(img)).save(buf, format="PNG")
    return buf.getvalue()


def grid_png(rows: list[np.ndarray], pad: int = 2, scale: int = 1) -> bytes:
    """Rows of images side by side as one PNG: ``rows[r]`` is (N, C, H, W) in [0, 1] (one row per
    method, one column per item); grayscale rows are shown as gray in an RGB grid if any row is colour."""
    n = max(len(r) for r in rows)
    c = max(r.shape[1] for r in rows)
    h, w = rows[0].shape[2:]
    canvas = np.ones((c, len(rows) * (h + pad) + pad, n * (w + pad) + pad), np.float32)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            img = np.repeat(img, c, axis=0) if img.shape[0] != c else img
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[:, y : y + h, x : x + w] = img
    pil = Image.fromarray(to_uint8(canvas))
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()
