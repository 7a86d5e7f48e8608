"""Image corpora: a folder of files, a Parquet table of encoded images, a NumPy
array, or the bundled scikit-learn ``digits``. Every reader normalises pixel
values to [0, 1]; the preprocessor converts channels and resizes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from aepipe.config import CorpusConfig, FeaturesConfig
from aepipe.corpus.base import (
    BadItem,
    ItemBatch,
    Quarantine,
    RawItem,
    Shard,
    iter_folder,
    iter_row_slices,
    list_files,
    make_shards,
)
from aepipe.corpus.decode import decode_in_line, decode_in_workers
from aepipe.errors import CorpusError
from aepipe.features.images import ImagePreprocessor, choose_input_size, probe_image

log = logging.getLogger(__name__)


class ImageCorpus:
    """A readable, shardable image corpus described by a CorpusConfig."""

    def __init__(self, cfg: CorpusConfig):
        self.cfg = cfg
        self.format = _detect_format(cfg)
        self._files: list[str] | None = None
        self._arrays: tuple[np.ndarray, np.ndarray | None, float] | None = None
        if self.format == "folder":
            self._files = list_files(Path(cfg.source))
        elif self.format in ("numpy", "digits"):
            self._arrays = _load_arrays(cfg) if self.format == "numpy" else _load_digits()
        elif self.format == "parquet":
            self._dataset = _open_parquet(cfg)
        n = self._count()
        self.n_items = min(n, cfg.limit) if cfg.limit else n

    def _count(self) -> int:
        if self._files is not None:
            return len(self._files)
        if self._arrays is not None:
            return len(self._arrays[0])
        return self._dataset.count_rows()

    @property
    def has_labels(self) -> bool:
        if self.format == "folder":
            return any("/" in f for f in (self._files or []))
        if self._arrays is not None:
            return self._arrays[1] is not None
        return self.cfg.label_column is not None and self.cfg.label_column in self._dataset.schema.names

    def shards(self, rows_per_shard: int) -> list[Shard]:
        return make_shards(self.n_items, rows_per_shard, self._files)

    def iter_raw(self, shard: Shard | None = None) -> Iterator[RawItem]:
        shard = shard or Shard(0, 0, self.n_items, tuple(self._files or ()))
        if self.format == "folder":
            yield from self._iter_folder(shard)
        elif self._arrays is not None:
            yield from self._iter_arrays(shard)
        else:
            yield from self._iter_parquet(shard)

    def _iter_folder(self, shard: Shard) -> Iterator[RawItem]:
        return iter_folder(
            Path(self.cfg.source),
            shard,
            "an image",
            self.cfg.images.extensions,
            "corpus.images.extensions",
            self.cfg.images.max_file_bytes,
            "corpus.images.max_file_bytes",
        )

    def _iter_arrays(self, shard: Shard) -> Iterator[RawItem]:
        images, labels, scale = self._arrays  # type: ignore[misc]
        width = len(str(max(self._count() - 1, 0)))  # of the whole array: ids must not depend on corpus.limit
        name = "digits" if self.format == "digits" else Path(self.cfg.source).name
        for pos in range(shard.start, shard.stop):
            label = None if labels is None else str(labels[pos])
            payload = np.asarray(images[pos], dtype=np.float32) / scale
            yield RawItem(pos=pos, id=f"{pos:0{width}d}", source=f"{name}[{pos}]", label=label, payload=payload)

    def _iter_parquet(self, shard: Shard) -> Iterator[RawItem]:
        for first, ids, payloads, labels in self._parquet_slices(shard):
            for p, rid, payload, label in zip(range(first, first + len(ids)), ids, payloads, labels):
                yield RawItem(pos=p, id=rid, source=f"{self.cfg.source}#row={p}", label=label, payload=payload)

    def _parquet_slices(self, shard: Shard) -> Iterator[tuple[int, list[str], list[bytes | BadItem], list[str | None]]]:
        """The shard's rows a slice at a time: (position of the first, ids, payloads, labels), a
        missing id or image as a BadItem payload (a missing id also gets the id ``row-N``)."""
        id_col, img_col, label_col = self.cfg.id_column, self.cfg.images.column, self.cfg.label_column
        cols = [id_col, img_col] + ([label_col] if label_col and self.has_labels else [])
        for first, rows in iter_row_slices(self._dataset, cols, shard):
            raw_ids = rows[id_col].to_pylist()
            ids = [str(i) if i is not None else f"row-{p}" for p, i in enumerate(raw_ids, first)]
            payloads: list[bytes | BadItem] = [
                BadItem(f"missing id in column '{id_col}'")
                if i is None
                else BadItem(f"missing image bytes in column '{img_col}'")
                if b is None
                else b
                for i, b in zip(raw_ids, _binary_values(rows[img_col]))
            ]
            if label_col and label_col in rows:
                labels = [None if v is None else str(v) for v in rows[label_col].to_pylist()]
            else:
                labels = [None] * len(ids)
            yield first, ids, payloads, labels

    def payload_slices(self, shard: Shard) -> Iterator[tuple[list[int], list[str], list[bytes | BadItem]]]:
        """(positions, ids, payloads) of a Parquet corpus's ``shard`` a slice at a time, for
        fingerprints: what ``iter_raw`` gives, without an item object per row."""
        for first, ids, payloads, _ in self._parquet_slices(shard):
            yield list(range(first, first + len(ids))), ids, payloads

    def infer_preprocessor(
        self, features: FeaturesConfig, keep: set[int] | None = None, architecture: str = "dense", seed: int = 0
    ) -> ImagePreprocessor:
        """Input spec from the config; unset size and channels are chosen from a seeded sample of
        ``features.image.sample_items`` items (``choose_input_size``: the median size, capped at
        ``features.image.max_side`` of ``architecture``; 3 channels when any sampled item holds
        colour). ``keep`` is accepted for the interface of DocumentCorpus."""
        spec = features.image
        if spec.size and spec.channels:
            return ImagePreprocessor(spec.size[0], spec.size[1], spec.channels, resize=spec.resize)
        probes = []
        for raw in self._sample_raw(spec.sample_items, seed):
            try:
                if isinstance(raw.payload, BadItem):
                    raise raw.payload
                probes.append(probe_image(raw.payload, self.cfg.images.max_pixels))
            except BadItem:
                continue
        if not probes:
            raise CorpusError(f"corpus {self.cfg.source} holds no readable image (in a sample of {spec.sample_items})")
        max_side = spec.max_side.conv if architecture == "conv" else spec.max_side.dense
        size = spec.size or choose_input_size([(p.height, p.width) for p in probes], max_side)
        n_colour = sum(p.colour for p in probes)
        channels = spec.channels or (3 if n_colour else 1)
        sizes = {(p.height, p.width) for p in probes}
        log.info(
            "input size %dx%dx%d from %d sampled items (%d size(s)%s, median %dx%d, %s max_side %d, resize %s); "
            "%d colour, %d gray%s",
            channels,
            size[0],
            size[1],
            len(probes),
            len(sizes),
            "" if len(sizes) > 1 else " all alike",
            int(np.median([p.height for p in probes])),
            int(np.median([p.width for p in probes])),
            architecture,
            max_side,
            spec.resize,
            n_colour,
            len(probes) - n_colour,
            " (gray items repeated over RGB)" if channels == 3 and n_colour < len(probes) else "",
        )
        return ImagePreprocessor(size[0], size[1], channels, resize=spec.resize)

    def _sample_raw(self, n: int, seed: int) -> Iterator[RawItem]:
        """A seeded sample of at most ``n`` raw items spread over the corpus (Parquet: the first
        ``n`` rows, which need no scan of the whole dataset)."""
        if self.format == "parquet" or self.n_items <= n:
            yield from self.iter_raw(Shard(0, 0, min(n, self.n_items), tuple(self._files or ())))
            return
        positions = np.sort(np.random.default_rng(seed).choice(self.n_items, n, replace=False)).tolist()
        if self._files is not None:
            files = tuple(self._files[p] for p in positions)
            yield from self.iter_raw(Shard(0, 0, n, files, tuple(positions)))
            return
        for p in positions:
            yield from self.iter_raw(Shard(0, p, p + 1))

    def iter_batches(
        self,
        prep: ImagePreprocessor,
        batch_size: int,
        quarantine: Quarantine,
        shard: Shard | None = None,
        keep: set[int] | None = None,
        decode_workers: int = 0,
    ) -> Iterator[ItemBatch]:
        """Decoded batches of ``batch_size`` good items; bad items go to ``quarantine``. ``keep``
        restricts to positions. ``decode_workers`` > 0: encoded files (folder and Parquet
        corpora) are decoded in that many worker processes, with the same batches, in the same
        order, with the same quarantine entries as decoding in line."""
        if keep is None and self._arrays_match(prep):
            yield from self._iter_array_batches(prep, batch_size, quarantine, shard)
            return
        raws = (raw for raw in self.iter_raw(shard) if keep is None or raw.pos in keep)
        chunks = chunked(raws, batch_size)
        max_pixels = self.cfg.images.max_pixels
        if decode_workers > 0 and self.format in ("folder", "parquet"):
            decoded = decode_in_workers(chunks, prep, max_pixels, decode_workers)
        else:
            decoded = decode_in_line(chunks, prep, max_pixels)
        ids: list[str] = []
        labels: list[str | None] = []
        sources: list[str] = []
        positions: list[int] = []
        parts: list[np.ndarray] = []  # the good items' arrays, a chunk's stack at a time
        for chunk in decoded:
            for raw, reason in zip(chunk.items, chunk.reasons):
                if reason:
                    quarantine.add(raw.id, raw.source, reason)
                    continue
                ids.append(raw.id)
                labels.append(raw.label)
                sources.append(raw.source)
                positions.append(raw.pos)
            if chunk.x is not None:
                parts.append(chunk.x)
            while len(ids) >= batch_size:  # batches of exactly batch_size good items, as before
                x = parts[0] if len(parts) == 1 else np.concatenate(parts)
                b = batch_size
                yield ItemBatch(ids[:b], x[:b], labels[:b], sources[:b], positions[:b])
                ids, labels, sources, positions = ids[b:], labels[b:], sources[b:], positions[b:]
                parts = [x[b:]] if len(x) > b else []
        if ids:
            yield ItemBatch(ids, parts[0] if len(parts) == 1 else np.concatenate(parts), labels, sources, positions)

    def _arrays_match(self, prep: ImagePreprocessor) -> bool:
        """An in-memory array already at the model's size and channels needs no per-item conversion."""
        if self._arrays is None:
            return False
        shape = self._arrays[0].shape[1:]
        channels = shape[2] if len(shape) == 3 else 1
        return tuple(shape[:2]) == (prep.height, prep.width) and channels == prep.channels

    def array_payloads(
        self, shard: Shard | None, batch_size: int
    ) -> Iterator[tuple[np.ndarray, list[str], np.ndarray]]:
        """Array corpora, a batch at a time: (positions, ids, payloads) where ``payloads[j]`` holds
        exactly what ``iter_raw`` gives as item j's payload (float32 / scale, the array's own layout)."""
        images, _, scale = self._arrays  # type: ignore[misc]
        shard = shard or Shard(0, 0, self.n_items, ())
        width = len(str(max(self._count() - 1, 0)))  # of the whole array: ids must not depend on corpus.limit
        for start in range(shard.start, shard.stop, batch_size):
            stop = min(start + batch_size, shard.stop)
            yield (
                np.arange(start, stop),
                [f"{p:0{width}d}" for p in range(start, stop)],
                np.asarray(images[start:stop], dtype=np.float32) / scale,
            )

    def _iter_array_batches(
        self, prep: ImagePreprocessor, batch_size: int, quarantine: Quarantine, shard: Shard | None
    ) -> Iterator[ItemBatch]:
        """The array path a whole batch at a time (per item it costs ~50 us of Python, as much as
        the model's forward pass). Same values, ids and quarantine reasons as ``iter_raw`` + ``prep``."""
        labels = self._arrays[1]  # type: ignore[index]
        name = "digits" if self.format == "digits" else Path(self.cfg.source).name
        for pos, ids, payloads in self.array_payloads(shard, batch_size):  # (B, H, W[, C])
            x = payloads[:, None] if payloads.ndim == 3 else payloads.transpose(0, 3, 1, 2)  # (B, C, H, W)
            flat = x.reshape(len(x), -1)
            good = np.isfinite(flat).all(1) & (flat.min(1) >= 0.0) & (flat.max(1) <= 1.0)
            sources = [f"{name}[{p}]" for p in pos]
            for j in np.flatnonzero(~good):  # the per-item path names the reason
                try:
                    prep(payloads[j])
                except BadItem as bad:
                    quarantine.add(ids[j], sources[j], bad.reason)
            keep = np.flatnonzero(good)
            if not len(keep):
                continue
            batch_labels: list[str | None] = (
                [None] * len(keep) if labels is None else [str(v) for v in labels[pos[keep]]]
            )
            yield ItemBatch(
                [ids[j] for j in keep],
                np.ascontiguousarray(x if len(keep) == len(x) else x[keep]),
                batch_labels,
                [sources[j] for j in keep],
                pos[keep].tolist(),
            )


def chunked(items: Iterator[RawItem], size: int) -> Iterator[list[RawItem]]:
    chunk: list[RawItem] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _binary_values(col: pa.Array) -> list[bytes | None]:
    """Image bytes from a binary column or a struct column with a 'bytes' field
    (the layout Hugging Face datasets use)."""
    if pa.types.is_struct(col.type):
        col = col.field("bytes")
    return col.to_pylist()


def _detect_format(cfg: CorpusConfig) -> str:
    if cfg.format != "auto":
        fmt = cfg.format
    elif cfg.source == "digits":
        fmt = "digits"
    else:
        p = Path(cfg.source)
        if not p.exists():
            raise CorpusError(
                f"corpus source {cfg.source} does not exist (give a folder, .parquet, .npy/.npz, or 'digits')"
            )
        if p.suffix.lower() in (".npy", ".npz"):
            fmt = "numpy"
        elif p.suffix.lower() == ".parquet" or (p.is_dir() and any(p.rglob("*.parquet"))):
            fmt = "parquet"
        elif p.is_dir():
            fmt = "folder"
        elif p.suffix.lower() in (".jsonl", ".ndjson", ".csv", ".tsv", ".txt", ".md"):
            raise CorpusError(f"{cfg.source} looks like a document corpus; set corpus.kind=documents")
        else:
            raise CorpusError(f"cannot tell the format of {cfg.source}; set corpus.format")
    if fmt not in ("digits", "folder", "parquet", "numpy"):
        raise CorpusError(f"corpus.format {fmt} is for documents; set corpus.kind=documents")
    if fmt != "digits" and not Path(cfg.source).exists():
        raise CorpusError(f"corpus source {cfg.source} does not exist")
    return fmt


def _scale_for(dtype: np.dtype, sample: np.ndarray) -> float:
    """Divisor that maps stored values to [0, 1]: 255 for uint8, the type's max for
    other unsigned ints, 1 for floats (which must already lie in [0, 1])."""
    if dtype == np.uint8:
        return 255.0
    if np.issubdtype(dtype, np.unsignedinteger):
        return float(np.iinfo(dtype).max)
    if np.issubdtype(dtype, np.integer):
        return 255.0 if sample.size and sample.max() <= 255 else float(np.iinfo(dtype).max)
    return 1.0


def _load_arrays(cfg: CorpusConfig) -> tuple[np.ndarray, np.ndarray | None, float]:
    path = Path(cfg.source)
    try:
        if path.suffix.lower() == ".npy":
            images = np.load(path, mmap_mode="r", allow_pickle=False)
            labels = None
        else:
            with np.load(path, allow_pickle=False) as npz:
                keys = list(npz.keys())
                key = cfg.images.array_key or next((k for k in keys if npz[k].ndim in (3, 4)), None)
                if key is None or key not in keys:
                    raise CorpusError(f"{path}: no image array (keys: {', '.join(keys)}); set corpus.images.array_key")
                images = npz[key]
                lkey = cfg.images.labels_key or _guess_labels_key(key, keys)
                labels = npz[lkey] if lkey in keys else None
                if labels is not None and len(labels) != len(images):
                    raise CorpusError(f"{path}: {lkey} has {len(labels)} labels for {len(images)} images")
    except (ValueError, OSError) as exc:
        raise CorpusError(f"cannot read {path}: {exc}") from None
    if images.ndim not in (3, 4):
        raise CorpusError(f"{path}: array of shape {images.shape} is not a stack of images (N, H, W[, C])")
    return images, labels, _scale_for(images.dtype, np.asarray(images[: min(len(images), 64)]))


def _guess_labels_key(image_key: str, keys: list[str]) -> str | None:
    suffix = image_key[1:] if image_key.startswith("x") else ""
    for cand in (f"y{suffix}", "y", "labels", "label", "targets"):
        if cand in keys:
            return cand
    return None


def _load_digits() -> tuple[np.ndarray, np.ndarray, float]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32), d.target, 16.0  # pixel values are 0..16


def _open_parquet(cfg: CorpusConfig) -> pads.Dataset:
    try:
        ds = pads.dataset(cfg.source, format="parquet")
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorpusError(f"cannot open Parquet corpus {cfg.source}: {exc}") from None
    for col in (cfg.id_column, cfg.images.column):
        if col not in ds.schema.names:
            raise CorpusError(
                f"Parquet corpus {cfg.source} has no column '{col}' (columns: {', '.join(ds.schema.names)}); "
                "set corpus.id_column / corpus.images.column"
            )
    return ds


def open_image_corpus(cfg: CorpusConfig) -> ImageCorpus:
    return ImageCorpus(cfg)


def ceil_div(a: int, b: int) -> int:
    return math.ceil(a / b)
