"""Image features: decode bytes or arrays into model inputs of one fixed shape.

:class:`ImagePreprocessor` is saved as ``preprocess.json`` beside the model; it knows nothing
of where items come from (the corpus readers call it on each payload).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from aepipe.errors import BadItem

_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


@dataclass(frozen=True)
class ImagePreprocessor:
    """Model input spec, saved as ``preprocess.json`` beside the model."""

    height: int
    width: int
    channels: int
    kind: str = "image"
    # How an item of another aspect ratio meets (height, width): "pad" (fit inside, centred, black
    # borders), "crop" (fill, centre crop) or "stretch" (the only behaviour before aspect ratios
    # were kept, so a saved preprocess.json without the key means stretch).
    resize: str = "pad"

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
        return cls(
            height=int(d["height"]),
            width=int(d["width"]),
            channels=int(d["channels"]),
            resize=str(d.get("resize", "stretch")),
        )

    def __call__(self, payload: Any, max_pixels: int = 40_000_000) -> np.ndarray:
        """Raw payload (encoded bytes or array in [0, 1]) -> (C, H, W) float32 in [0, 1]."""
        if isinstance(payload, (bytes, bytearray, memoryview)):
            return to_unit(self.pixels(payload, max_pixels))
        if isinstance(payload, str):
            raise BadItem("the image column holds text, not image bytes")
        return self._from_array(payload)

    def pixels(self, payload: bytes | bytearray | memoryview, max_pixels: int = 40_000_000) -> np.ndarray:
        """Encoded image bytes -> (C, H, W) uint8: what ``__call__`` gives, before ``to_unit``."""
        return stack_pixels([self.fitted(payload, max_pixels)], self.channels)[0]

    def fitted(self, payload: bytes | bytearray | memoryview, max_pixels: int = 40_000_000) -> Image.Image:
        """Encoded image bytes -> the decoded image in the model's mode ("L" or "RGB") and size
        (``stack_pixels`` turns a list of them into one array; decode workers do that per chunk)."""
        # JPEG: decode at the smallest DCT scale still at least twice the input size (a 4000x3000
        # photo for a 64x48 input decodes at 1/8 of its pixels); the resize below still antialiases.
        # Per 28x28 PNG the zlib decode is ~10 us and Pillow's Python around it most of the rest, so
        # the steps that do nothing for an item are skipped (same values either way).
        side = 2 * max(self.height, self.width)
        img = open_image_bytes(bytes(payload), max_pixels, draft=(side, side))
        if may_be_rotated(img):
            img = ImageOps.exif_transpose(img)  # phone photos store their rotation as an EXIF tag
        mode = "L" if self.channels == 1 else "RGB"
        if img.mode != mode:
            img = img.convert(mode)
        return self.fit(img)

    def _from_array(self, arr: np.ndarray) -> np.ndarray:
        # arr: (H, W) or (H, W, C) in [0, 1]
        try:
            arr = np.asarray(arr, dtype=np.float32)
        except (TypeError, ValueError):
            raise BadItem(f"a {type(arr).__name__} that is not an array of numbers") from None
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
                [np.asarray(self.fit(Image.fromarray(arr[:, :, c], mode="F"))) for c in range(arr.shape[2])], axis=2
            )
        return np.clip(arr, 0.0, 1.0).transpose(2, 0, 1).copy()

    def fit(self, img: Image.Image) -> Image.Image:
        """Resize to (width, height) as ``resize`` says (Pillow's ImageOps.pad / ImageOps.fit keep
        the aspect ratio; both antialias when shrinking)."""
        size = (self.width, self.height)
        if img.size == size:
            return img
        if self.resize == "pad":
            return ImageOps.pad(img, size, method=Image.Resampling.BILINEAR, color=0)
        if self.resize == "crop":
            return ImageOps.fit(img, size, method=Image.Resampling.BILINEAR)
        return img.resize(size, Image.Resampling.BILINEAR)


def to_unit(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels (one image or a stack) -> float32 in [0, 1]; the same values either way."""
    return pixels.astype(np.float32) / 255.0


def stack_pixels(images: Sequence[Image.Image], channels: int) -> np.ndarray:
    """Images of one size and mode ("L" for 1 channel, "RGB" for 3) -> (N, C, H, W) uint8. They
    are pasted one below the other into a single image, read out once: a ``tobytes`` per small
    image costs more than a tenth of its decoding."""
    width, height = images[0].size
    column = Image.new(images[0].mode, (width, height * len(images)))
    for i, img in enumerate(images):
        column.paste(img, (0, height * i))
    stacked = np.frombuffer(column.tobytes(), dtype=np.uint8).reshape(len(images), height, width, channels)
    return np.ascontiguousarray(stacked.transpose(0, 3, 1, 2))


# Formats worth naming to Pillow from a file's first bytes (it then tries no other plugin; a file
# with the signature that is not one is still "not an image"); anything else is left to Pillow's own
# identification. JPEG alone: its opener itself returns an MPO file where the file is one.
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", ["PNG"]), (b"\xff\xd8\xff", ["JPEG"]))


def open_image_bytes(data: bytes, max_pixels: int, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode fully, or raise BadItem with the reason (empty, not an image, too large, truncated).
    ``draft``: let a JPEG decode at a reduced scale no smaller than this (width, height).

    ``max_pixels`` is checked before the pixels are decoded. Pillow's own guard still applies:
    an image over twice ``Image.MAX_IMAGE_PIXELS`` (~179 M) raises in ``Image.open`` (quarantined
    as too large) whatever ``max_pixels`` says; over ``MAX_IMAGE_PIXELS`` alone it only warns.
    That warning is not turned into an error here: ``max_pixels`` (40 M by default) is the limit
    meant to apply, and a ``warnings.catch_warnings`` per item cost ~10 % of decoding a small PNG."""
    if not data:
        raise BadItem("empty file (0 bytes)")
    formats = next((names for magic, names in _SIGNATURES if data.startswith(magic)), None)
    try:
        img = Image.open(io.BytesIO(data), formats=formats)
        w, h = img.size
        if w <= 0 or h <= 0:
            raise BadItem(f"invalid dimensions {w}x{h}")
        if w * h > max_pixels:
            raise BadItem(f"too large: {w}x{h} = {w * h} pixels > max_pixels {max_pixels} (decompression bomb guard)")
        if draft is not None and img.format in ("JPEG", "MPO"):
            img.draft(None, draft)  # only JPEG acts on it
        img.load()
    except BadItem:
        raise
    except UnidentifiedImageError:
        raise BadItem("not an image (Pillow cannot identify the format)") from None
    # the warning only when a caller's warnings filter made it an error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadItem(f"too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadItem(f"truncated or corrupt image: {exc}") from None
    return img


# Where Pillow's getexif finds an orientation: these info keys, or a TIFF's own tags (tag_v2).
_ORIENTATION_SOURCES = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")


def may_be_rotated(img: Image.Image) -> bool:
    """Whether ``img`` can carry an orientation tag (EXIF or XMP) for ``ImageOps.exif_transpose``
    to apply: a PNG or JPEG without those chunks cannot, and the transpose (a copy) is skipped."""
    return hasattr(img, "tag_v2") or any(key in img.info for key in _ORIENTATION_SOURCES)


def is_gray_mode(mode: str) -> bool:
    return mode in _GRAY_MODES


# Largest difference between colour channels (0..255) of a thumbnail that still counts as gray:
# JPEG chroma noise on a gray scan stays well below it.
_COLOUR_TOLERANCE = 12


@dataclass(frozen=True)
class ImageProbe:
    """What the size and channel choice needs of one item: its upright size and whether it has colour."""

    height: int
    width: int
    colour: bool


def probe_image(payload: Any, max_pixels: int) -> ImageProbe:
    """Upright (EXIF orientation applied) size of an encoded image or array, and whether it holds
    colour: a gray-mode file, or an RGB one whose channels agree (a gray scan saved as RGB JPEG),
    counts as gray. Decodes a JPEG at 1/8 scale at most. Raises BadItem."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        arr = np.asarray(payload)
        if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 1):
            return ImageProbe(arr.shape[0], arr.shape[1], False)
        if arr.ndim == 3 and arr.shape[2] in (3, 4):
            rgb = np.asarray(arr[:, :, :3], dtype=np.float32)
            return ImageProbe(arr.shape[0], arr.shape[1], bool(np.ptp(rgb, axis=2).max() * 255 > _COLOUR_TOLERANCE))
        raise BadItem(f"array of shape {arr.shape} is not an image")
    data = bytes(payload)
    img = open_image_bytes(data, max_pixels, draft=(64, 64))
    with Image.open(io.BytesIO(data)) as header:  # the draft shrank img; the header has the stored size
        w, h = header.size
    if img.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8):  # stored rotated by 90 degrees
        w, h = h, w
    if is_gray_mode(img.mode):
        return ImageProbe(h, w, False)
    thumb = np.asarray(img.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.int16)
    return ImageProbe(h, w, bool(np.ptp(thumb, axis=2).max() > _COLOUR_TOLERANCE))


_ORIENTATION = 0x0112  # the EXIF tag


def choose_input_size(sizes: Sequence[tuple[int, int]], max_side: int) -> tuple[int, int]:
    """The model's (H, W) for items of these (H, W): the median height and width, scaled down
    (aspect ratio kept) so the longer side is at most ``max_side``."""
    h = float(np.median([s[0] for s in sizes]))
    w = float(np.median([s[1] for s in sizes]))
    scale = min(1.0, max_side / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))
