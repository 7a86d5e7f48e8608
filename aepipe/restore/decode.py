"""Decode codes back into images and reconstruct images through the autoencoder.

The model that decodes a stored code is the one that produced it: the store's model id is
looked up among the run's published versions (``RUN/models/<id>``) and the working model
(``RUN/model``); a code is never decoded by another model.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch

from aepipe.codes.store import open_store
from aepipe.config import PipelineConfig
from aepipe.corpus import Quarantine, open_corpus
from aepipe.errors import AepipeError, BadItem, ConfigError, IndexMismatch, MissingArtifact
from aepipe.features import ImagePreprocessor
from aepipe.features.pictures import grid_png, png_bytes
from aepipe.files import atomic_write_bytes, atomic_write_json, read_json
from aepipe.layout import RunLayout
from aepipe.model.saved import LoadedModel, load_model
from aepipe.quality.metrics import fit_pca

log = logging.getLogger(__name__)


def model_for(layout: RunLayout, model_id: str | None = None) -> LoadedModel:
    """The model ``model_id`` of a run (a published version or the working model); without an id,
    the working model ``RUN/model``."""
    if model_id is None:
        return load_model(layout.model)
    for files in (layout.model_version(model_id), layout.model):
        if files.info.is_file() and read_json(files.info).get("model_id") == model_id:
            return load_model(files)
    raise IndexMismatch(
        f"codes were made by model {model_id}, which is not in {layout.root} (RUN/model or RUN/models/); "
        "decode them with the run that encoded them"
    )


def image_model(model: LoadedModel) -> ImagePreprocessor:
    if not isinstance(model.prep, ImagePreprocessor):
        raise ConfigError(f"model {model.model_id} was trained on documents; only image models decode to images")
    return model.prep


@torch.inference_mode()
def decode_codes(model: LoadedModel, codes: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """(N, code) -> (N, C, H, W) float32 images in [0, 1]."""
    image_model(model)
    codes = np.asarray(codes, dtype=np.float32)
    if codes.ndim != 2 or codes.shape[1] != model.code_size:
        raise ConfigError(
            f"codes of shape {tuple(codes.shape)} do not fit model {model.model_id} (code size {model.code_size})"
        )
    net = model.net
    if not net.decodes_codes:
        raise ConfigError(
            f"model {model.model_id} has skip connections or a residual output: its decoder needs the "
            "input's feature maps, so it reconstructs images but cannot decode codes alone"
        )
    out = [
        net.activate(net.decode(torch.from_numpy(codes[i : i + batch_size]))).clamp(0, 1).numpy()  # (B, C, H, W)
        for i in range(0, len(codes), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, *model.prep.shape), np.float32)


@torch.inference_mode()
def reconstruct(model: LoadedModel, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Images through encoder and decoder (for a restoration model: the restored images).
    (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1]."""
    image_model(model)
    out = [
        model.net.reconstruct(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size], np.float32)))
        .clamp(0, 1)
        .numpy()
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, *model.prep.shape), np.float32)


def png_name(item_id: str) -> str:
    """A relative file name for an item id: folder ids keep their sub-folders (``cats/001.jpg`` ->
    ``cats/001.png``); anything that could leave the output folder is flattened."""
    parts = [p for p in item_id.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    parts = [re.sub(r"[^\w.\-]+", "_", p) for p in parts] or ["item"]
    return str(Path(*parts).with_suffix(".png")) if Path(parts[-1]).suffix else str(Path(*parts)) + ".png"


def write_pngs(images: np.ndarray, names: list[str], out_dir: str | Path) -> list[str]:
    """One PNG per image under ``out_dir`` (atomic writes); returns the paths written."""
    out = Path(out_dir)
    paths = []
    for img, name in zip(images, names):
        path = out / png_name(name)
        atomic_write_bytes(path, png_bytes(img))
        paths.append(str(path))
    return paths


def read_image_files(prep: ImagePreprocessor, paths: list[str | Path], max_pixels: int) -> np.ndarray:
    """Image files as model inputs (N, C, H, W); one bad file is a one-line error (a query, not a corpus)."""
    xs = []
    for p in paths:
        try:
            xs.append(prep(Path(p).read_bytes(), max_pixels))
        except BadItem as bad:
            raise AepipeError(f"cannot use {p}: {bad.reason}") from None
        except OSError as exc:
            raise AepipeError(f"cannot read {p}: {exc.strerror or exc}") from None
    return np.stack(xs) if xs else np.zeros((0, *prep.shape), np.float32)


@dataclass
class StoredCodes:
    ids: list[str]
    codes: np.ndarray  # (N, code) float32
    positions: list[int]
    model_id: str


def stored_codes(layout: RunLayout, ids: list[str] | None = None) -> StoredCodes:
    """Codes of the store, all of them or those of ``ids`` (in that order)."""
    store = open_store(layout.store)
    filt = None if ids is None else pc.field("id").isin(ids)
    table = store.dataset.to_table(columns=["id", "code", "position"], filter=filt)
    got_ids = table.column("id").to_pylist()
    codes = store.codes(table.column("code"))
    positions = table.column("position").to_pylist()
    if ids is not None:
        row = {i: r for r, i in enumerate(got_ids)}
        missing = [i for i in ids if i not in row]
        if missing:
            raise MissingArtifact(f"id(s) not in the store: {', '.join(missing[:5])}")
        order = [row[i] for i in ids]
        got_ids, codes, positions = list(ids), codes[order], [positions[r] for r in order]
    return StoredCodes(got_ids, codes, positions, store.model_id)


def corpus_items(cfg: PipelineConfig, prep: ImagePreprocessor, positions: list[int]) -> np.ndarray:
    """The corpus items at ``positions`` as model inputs, in that order. (N, C, H, W)"""
    quarantine = Quarantine("decode")
    found: dict[int, np.ndarray] = {}
    for batch in open_corpus(cfg.corpus).iter_batches(prep, 256, quarantine, keep=set(positions)):  # type: ignore[arg-type]
        found.update(zip(batch.positions, batch.x))
    missing = [p for p in positions if p not in found]
    if missing:
        raise MissingArtifact(f"corpus item(s) at position {missing[:5]} are no longer readable in {cfg.corpus.source}")
    return np.stack([found[p] for p in positions])


def pca_for(cfg: PipelineConfig, model: LoadedModel, max_items: int = 5000):
    """PCA at the model's code size, fitted on (a seeded sample of) the model's training items."""
    import pyarrow.parquet as pq

    prep = image_model(model)
    layout = RunLayout.at(cfg.run_dir)
    split_path = next(
        (f.split for f in (layout.model_version(model.model_id), layout.model) if f.split.is_file()), None
    )
    train_ids = None
    if split_path is not None:
        split = pq.read_table(split_path)
        train_ids = {
            i for i, s in zip(split.column("id").to_pylist(), split.column("split").to_pylist()) if s == "train"
        }
    corpus = open_corpus(cfg.corpus)
    rng = np.random.default_rng(cfg.training.seed)
    keep = None
    if corpus.n_items > max_items:
        keep = set(rng.choice(corpus.n_items, max_items, replace=False).tolist())
    xs = []
    for batch in corpus.iter_batches(prep, 1024, Quarantine("decode"), keep=keep):  # type: ignore[arg-type]
        rows = [j for j, i in enumerate(batch.ids) if train_ids is None or i in train_ids]
        xs.append(batch.x[rows])
    x = np.concatenate(xs)
    if len(x) < 2:
        raise MissingArtifact("too few training items readable to fit the PCA baseline of the grid")
    return fit_pca(x, model.code_size, cfg.training.seed)


def pca_reconstruct(pca, x: np.ndarray) -> np.ndarray:
    flat = x.reshape(len(x), -1)
    return np.clip(pca.inverse_transform(pca.transform(flat)), 0, 1).reshape(x.shape).astype(np.float32)


@dataclass
class DecodeResult:
    out_dir: str
    model_id: str
    n_items: int
    files: list[str]
    grid: str | None


def decode_run(
    cfg: PipelineConfig,
    out_dir: str | Path,
    ids: list[str] | None = None,
    codes: np.ndarray | None = None,
    images: list[str | Path] | None = None,
    grid: bool = False,
) -> DecodeResult:
    """The ``aepipe decode`` stage: stored codes (``ids``), an array of codes of the run's model, or
    image files (reconstructed) -> one PNG each in ``out_dir``; with ``grid``, also ``grid.png``:
    original / AE / PCA at the same code size (needs originals: ids or images)."""
    if sum(v is not None for v in (ids, codes, images)) != 1:
        raise ConfigError("give exactly one of --id, --codes or --image")
    layout = RunLayout.at(cfg.run_dir)
    originals = None
    if ids is not None:
        stored = stored_codes(layout, ids)
        model = model_for(layout, stored.model_id)
        decoded = decode_codes(model, stored.codes)
        names = stored.ids
        if grid:
            originals = corpus_items(cfg, image_model(model), stored.positions)
    elif codes is not None:
        if grid:
            raise ConfigError("--grid compares with the originals: use --id or --image, not --codes")
        model = model_for(layout)
        decoded = decode_codes(model, codes)
        width = len(str(max(len(codes) - 1, 0)))
        names = [f"{i:0{width}d}" for i in range(len(codes))]
    else:
        model = model_for(layout)
        originals = read_image_files(image_model(model), list(images or []), cfg.corpus.images.max_pixels)
        decoded = reconstruct(model, originals)
        names = [Path(p).name for p in images or []]
    out = Path(out_dir)
    files = write_pngs(decoded, names, out)
    grid_path = None
    if grid and originals is not None:
        pca = pca_for(cfg, model)
        grid_path = str(out / "grid.png")
        atomic_write_bytes(Path(grid_path), grid_png([originals, decoded, pca_reconstruct(pca, originals)]))
        atomic_write_json(
            out / "grid.json", {"rows": ["original", "autoencoder", f"pca ({pca.n_components_})"], "ids": names}
        )
    log.info("decoded %d item(s) with model %s into %s", len(files), model.model_id, out)
    return DecodeResult(str(out), model.model_id, len(files), files, grid_path)
