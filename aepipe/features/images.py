"""Image features: decode bytes or arrays into model inputs of one fixed shape.

:class:`ImagePreprocessor` is saved as ``preprocess.json`` beside the model; it knows nothing
of where items come from (the corpus readers call it on each payload).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from aepipe.errors import BadItem

_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


@dataclass(frozen=True)
class ImagePreprocessor:
    """Model input spec, saved as ``preprocess.json`` beside the model."""

    height: int
    width: int
    channels: int
    kind: str = "image"

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    @property
    def dim(self) -> int:
        return self.channels * self.height * self.width

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImagePreprocessor:
        return cls(height=int(d["height"]), width=int(d["width"]), channels=int(d["channels"]))

    def __call__(self, payload: Any, max_pixels: int = 40_000_000) -> np.ndarray:
        """Raw payload (encoded bytes or array in [0, 1]) -> (C, H, W) float32 in [0, 1]."""
        if isinstance(payload, (bytes, bytearray, memoryview)):
            return self._from_bytes(bytes(payload), max_pixels)
        return self._from_array(np.asarray(payload))

    def _from_bytes(self, data: bytes, max_pixels: int) -> np.ndarray:
        img = open_image_bytes(data, max_pixels)
        img = img.convert("L" if self.channels == 1 else "RGB")
        if img.size != (self.width, self.height):
            img = img.resize((self.width, self.height), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

    def _from_array(self, arr: np.ndarray) -> np.ndarray:
        # arr: (H, W) or (H, W, C) in [0, 1]
        arr = np.asarray(arr, dtype=np.float32)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            raise BadItem(f"array of shape {tuple(arr.shape)} is not an image")
        if not np.isfinite(arr).all():
            raise BadItem("array holds NaN or infinite values")
        if arr.min() < 0.0 or arr.max() > 1.0:
            raise BadItem(f"values outside [0, 1] after scaling (min {arr.min():.3g}, max {arr.max():.3g})")
        arr = arr[:, :, :3]
        if self.channels == 1 and arr.shape[2] == 3:
            arr = arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None]  # same weights as Pillow's "L"
        elif self.channels == 3 and arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        if arr.shape[:2] != (self.height, self.width):
            arr = np.stack(
                [
                    np.asarray(
                        Image.fromarray(arr[:, :, c], mode="F").resize(
                            (self.width, self.height), Image.Resampling.BILINEAR
                        )
                    )
                    for c in range(arr.shape[2])
                ],
                axis=2,
            )
        return np.clip(arr, 0.0, 1.0).transpose(2, 0, 1).copy()


def open_image_bytes(data: bytes, max_pixels: int) -> Image.Image:
    """Decode fully, or raise BadItem with the reason (empty, not an image, too large, truncated)."""
    if not data:
        raise BadItem("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w <= 0 or h <= 0:
                raise BadItem(f"invalid dimensions {w}x{h}")
            if w * h > max_pixels:
                raise BadItem(
                    f"too large: {w}x{h} = {w * h} pixels > max_pixels {max_pixels} (decompression bomb guard)"
                )
            img.load()
    except BadItem:
        raise
    except UnidentifiedImageError:
        raise BadItem("not an image (Pillow cannot identify the format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadItem(f"too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadItem(f"truncated or corrupt image: {exc}") from None
    return img


def is_gray_mode(mode: str) -> bool:
    return mode in _GRAY_MODES
