"""Apply a restoration model to folders of images: ``aepipe restore`` and the restore flow.

Each input file becomes a PNG with the same relative path under the output folder (a folder
given as input keeps its sub-folders; a single file goes to the top). Any image size works:
the model sees tiles of its own input size, taken with 25 % overlap and blended back with
triangular weights (so no seams), at the image's own resolution; images smaller than the model
are padded by mirroring and cropped back. Nothing is resized. Grayscale and colour: each file is
converted to the model's channels (a colorize model takes any image as gray and writes RGB).

Writes are atomic (temporary name, rename), so an output file that exists is complete: a rerun
skips it (resumable, like encode), unless ``overwrite``. Files that cannot be read or decoded
are quarantined with the reason in ``RUN/quarantine/restore.parquet`` and never stop the run.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from aepipe.config import PipelineConfig
from aepipe.corpus import Quarantine
from aepipe.corpus.base import list_files
from aepipe.errors import BadItem, ConfigError
from aepipe.features import ImagePreprocessor
from aepipe.features.images import open_image_bytes
from aepipe.features.pictures import png_bytes
from aepipe.files import atomic_write_bytes
from aepipe.layout import RunLayout
from aepipe.restore.decode import image_model, model_for, reconstruct

log = logging.getLogger(__name__)


@dataclass
class RestoreResult:
    out_dir: str
    model_id: str
    n_files: int
    n_written: int
    n_skipped: int  # outputs already complete (an earlier, interrupted run)
    n_quarantined: int
    quarantine: str | None
    tiles: int
    seconds: float


@dataclass(frozen=True)
class Job:
    source: Path
    output: Path
    item_id: str  # as quarantined: the relative path under its input folder, or the file name


def list_jobs(inputs: list[str | Path], out_dir: Path) -> Iterator[Job]:
    """Every input file and its output path (same relative path, suffix .png)."""
    for raw in inputs:
        src = Path(raw)
        if src.is_dir():
            for rel in list_files(src):
                yield Job(src / rel, out_dir / Path(rel).with_suffix(".png"), rel)
        elif src.is_file():
            yield Job(src, out_dir / (src.stem + ".png"), src.name)
        else:
            raise ConfigError(f"input {src} is neither a file nor a folder")


def read_image(job: Job, prep: ImagePreprocessor, max_pixels: int, max_bytes: int) -> np.ndarray:
    """A file at its own size, in the model's channels. -> (C, h, w) float32 in [0, 1]"""
    try:
        size = job.source.stat().st_size
        if size > max_bytes:
            raise BadItem(f"file of {size} bytes exceeds corpus.images.max_file_bytes {max_bytes}")
        data = job.source.read_bytes()
    except OSError as exc:
        raise BadItem(f"unreadable file: {exc.strerror or exc}") from None
    img = open_image_bytes(data, max_pixels).convert("L" if prep.channels == 1 else "RGB")
    a = np.asarray(img, dtype=np.float32) / 255.0
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _starts(size: int, tile: int) -> list[int]:
    """Tile offsets along one axis: stride 3/4 of the tile, the last one flush with the end."""
    if size <= tile:
        return [0]
    stride = max(tile - tile // 4, 1)
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def _weights(tile: int) -> np.ndarray:
    """Triangular blending weights, highest in the tile's middle, never zero. (tile,)"""
    i = np.arange(tile, dtype=np.float32)
    return np.minimum(i + 1, tile - i)


def tile_image(img: np.ndarray, th: int, tw: int) -> tuple[np.ndarray, list[tuple[int, int]], tuple[int, int]]:
    """Overlapping tiles of the model's size. (C, h, w) -> (T, C, th, tw), offsets, padded (H, W)"""
    c, h, w = img.shape
    ph, pw = max(th - h, 0), max(tw - w, 0)
    if ph or pw:  # smaller than the model: mirror to its size (symmetric works for any pad width)
        img = np.pad(img, ((0, 0), (0, ph), (0, pw)), mode="symmetric")
    offsets = [(y, x) for y in _starts(img.shape[1], th) for x in _starts(img.shape[2], tw)]
    tiles = np.stack([img[:, y : y + th, x : x + tw] for y, x in offsets])
    return tiles, offsets, (img.shape[1], img.shape[2])


def stitch(
    tiles: np.ndarray, offsets: list[tuple[int, int]], padded: tuple[int, int], size: tuple[int, int]
) -> np.ndarray:
    """Blend restored tiles (T, C, th, tw) back into one (C, h, w) image."""
    _, c, th, tw = tiles.shape
    wt = _weights(th)[:, None] * _weights(tw)[None, :]  # (th, tw)
    out = np.zeros((c, *padded), np.float32)
    norm = np.zeros(padded, np.float32)
    for tile, (y, x) in zip(tiles, offsets):
        out[:, y : y + th, x : x + tw] += tile * wt
        norm[y : y + th, x : x + tw] += wt
    return (out / norm)[:, : size[0], : size[1]]


def restore_files(
    cfg: PipelineConfig,
    inputs: list[str | Path],
    out_dir: str | Path,
    batch_size: int = 256,
    overwrite: bool = False,
) -> RestoreResult:
    """The restore stage: every image under ``inputs`` through the run's model into ``out_dir``."""
    t0 = time.perf_counter()
    layout = RunLayout.at(cfg.run_dir)
    model = model_for(layout)
    prep = image_model(model)
    out = Path(out_dir)
    jobs = list(list_jobs(inputs, out))
    quarantine = Quarantine("restore")
    seen: set[Path] = set()
    todo: list[Job] = []
    n_skipped = 0
    for job in jobs:
        if job.output in seen:
            quarantine.add(job.item_id, str(job.source), f"another input also maps to {job.output}")
            continue
        seen.add(job.output)
        if job.output.is_file() and not overwrite:
            n_skipped += 1
        else:
            todo.append(job)
    if n_skipped:
        log.info("resuming: %d of %d output(s) already written in %s", n_skipped, len(jobs), out)
    exts = {e.lower() for e in cfg.corpus.images.extensions}
    n_written = n_tiles = 0
    progress = tqdm(total=len(todo), unit="img", disable=not sys.stderr.isatty(), desc="restore")
    pending: list[tuple[Job, np.ndarray, list[tuple[int, int]], tuple[int, int], tuple[int, int]]] = []
    pending_tiles = 0

    def flush() -> int:
        if not pending:
            return 0
        restored = reconstruct(model, np.concatenate([p[1] for p in pending]), batch_size)  # (T, C, th, tw)
        at = 0
        for job, tiles, offsets, padded, size in pending:
            img = stitch(restored[at : at + len(tiles)], offsets, padded, size)
            at += len(tiles)
            atomic_write_bytes(job.output, png_bytes(img))
        progress.update(len(pending))
        n = len(pending)
        pending.clear()
        return n

    for job in todo:
        try:
            if job.source.suffix.lower() not in exts:
                raise BadItem(f"not an image file (extension '{job.source.suffix}' not in corpus.images.extensions)")
            img = read_image(job, prep, cfg.corpus.images.max_pixels, cfg.corpus.images.max_file_bytes)
        except BadItem as bad:
            quarantine.add(job.item_id, str(job.source), bad.reason)
            progress.update(1)
            continue
        tiles, offsets, padded = tile_image(img, prep.height, prep.width)
        pending.append((job, tiles, offsets, padded, img.shape[1:]))
        pending_tiles += len(tiles)
        n_tiles += len(tiles)
        if pending_tiles >= batch_size:
            n_written += flush()
            pending_tiles = 0
    n_written += flush()
    progress.close()
    qpath = None
    if len(quarantine):
        qpath = str(layout.quarantine("restore"))
        quarantine.write(Path(qpath))
        log.warning("%d file(s) quarantined: see %s", len(quarantine), qpath)
    return RestoreResult(
        str(out),
        model.model_id,
        len(jobs),
        n_written,
        n_skipped,
        len(quarantine),
        qpath,
        n_tiles,
        round(time.perf_counter() - t0, 3),
    )
