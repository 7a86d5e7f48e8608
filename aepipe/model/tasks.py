"""Training for a task: paired targets read by id, and the held-out measure of a restoration
model (PSNR / SSIM of the corrupted input, the model and a classical baseline against the truth)
with its picture grid."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aepipe.config import PipelineConfig
from aepipe.corpus import Quarantine
from aepipe.features import Preprocessor
from aepipe.features.degrade import task_input
from aepipe.features.pictures import grid_png
from aepipe.files import atomic_write_bytes
from aepipe.layout import ModelFiles
from aepipe.model.networks import Autoencoder
from aepipe.quality.restoration import available_inpainting, image_scores, inpaint, median_filter

log = logging.getLogger(__name__)

RESTORATION_TASKS = ("denoise", "colorize", "remove_watermark", "paired")
N_EVAL = 512  # held-out items measured after training (the baselines are per-image Python loops)
N_GRID = 8  # columns of the picture grid: the first held-out items, so every run shows the same ones


def pair_key(item_id: str) -> str:
    """Inputs and targets are matched by id; folder ids without their extension (a noisy ``a.jpg``
    pairs with a clean ``a.png``)."""
    return str(Path(item_id).with_suffix("")) if "." in Path(item_id).name else item_id


def match_targets(
    ids: list[str], target_ids: list[str], source: str, quarantine: Quarantine
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the inputs that have a target and the target row of each. Inputs without one are
    quarantined with the reason."""
    where = {pair_key(t): j for j, t in enumerate(target_ids)}
    rows, target_rows = [], []
    for i, item_id in enumerate(ids):
        j = where.get(pair_key(item_id))
        if j is None:
            quarantine.add(item_id, source, "no target with this id in corpus.target_source")
        else:
            rows.append(i)
            target_rows.append(j)
    return np.array(rows, dtype=np.int64), np.array(target_rows, dtype=np.int64)


@torch.inference_mode()
def _restore(net: Autoencoder, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    out = [net.reconstruct(torch.from_numpy(x[i : i + batch_size])).numpy() for i in range(0, len(x), batch_size)]
    return np.concatenate(out).astype(np.float32)


def classical_baseline(task: str, x: np.ndarray, mask: np.ndarray | None) -> tuple[str, np.ndarray]:
    """The cheap classical answer to the task: a 3x3 median (denoise), the grayscale input
    (colorize), inpainting given the true mask (remove_watermark), the input itself (paired)."""
    if task == "denoise":
        return "median 3x3", median_filter(x)
    if task == "remove_watermark" and mask is not None:
        method = available_inpainting()
        if method:
            return f"inpainting ({method}) given the mask", inpaint(x, mask, method)
    return "input as is", x


def _held_out_inputs(
    cfg: PipelineConfig, clean: np.ndarray, inputs: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The inputs of up to N_EVAL held-out items: their real ones (paired), else the task's
    corruption with a fixed seed, so every run is measured on the same inputs; and the mask of the
    corruption when it has one (watermarks)."""
    clean = clean[:N_EVAL]
    if inputs is not None:
        return inputs[:N_EVAL], None
    made = task_input(clean, cfg.training, np.random.default_rng([cfg.training.seed, 99]))
    return made.x, made.mask


def task_psnr(
    net: Autoencoder, cfg: PipelineConfig, clean: np.ndarray, inputs: np.ndarray | None
) -> tuple[float, float]:
    """Mean PSNR of the held-out inputs as they are and as the model restores them (up to N_EVAL items)."""
    x, _ = _held_out_inputs(cfg, clean, inputs)
    clean = clean[:N_EVAL]
    return image_scores(x, clean)["psnr"], image_scores(_restore(net, x), clean)["psnr"]


def evaluate_task(
    net: Autoencoder,
    cfg: PipelineConfig,
    prep: Preprocessor,
    clean: np.ndarray,
    inputs: np.ndarray | None,
    files: ModelFiles,
) -> dict:
    """Measure a restoration model on held-out items and write ``files.restoration_grid``.
    ``clean``: the held-out targets (N, C, H, W); ``inputs``: their real inputs (paired), else the
    task's degradation is applied with a fixed seed, so every run is measured on the same inputs."""
    task = cfg.training.task
    clean = clean[:N_EVAL]
    inputs, mask = _held_out_inputs(cfg, clean, inputs)
    restored = _restore(net, inputs)
    method, baseline = classical_baseline(task, inputs, mask)
    metrics: dict[str, Any] = {
        "task": task,
        "n_items": len(clean),
        "input": image_scores(inputs, clean),
        "autoencoder": image_scores(restored, clean),
        "baseline": {"method": method, **image_scores(baseline, clean)},
        "grid": files.restoration_grid.name,
        "grid_rows": ["corrupted", "restored", method, "truth"],
    }
    n = min(N_GRID, len(clean))
    scale = max(1, 64 // max(prep.shape[1:]))  # tiny images (8x8 digits, 32x32 CIFAR) enlarged to be seen
    atomic_write_bytes(
        files.restoration_grid, grid_png([inputs[:n], restored[:n], baseline[:n], clean[:n]], scale=scale)
    )
    log.info(
        "%s on %d held-out items: PSNR input %.2f, autoencoder %.2f, %s %.2f dB",
        task,
        len(clean),
        metrics["input"]["psnr"],
        metrics["autoencoder"]["psnr"],
        method,
        metrics["baseline"]["psnr"],
    )
    return metrics
