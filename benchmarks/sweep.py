"""Recipe sweep that chose the image defaults: each recipe trained on validation items carved
from TRAINING data only, never on a benchmark's held-out split.

    python -m benchmarks.sweep --out benchmarks/sweep-digits            # scikit-learn digits, every recipe
    python -m benchmarks.sweep --recipes "pca-path, 1500 steps; pca-path frozen, 1500 steps" --out DIR

Protocol: the defaults benchmark's digits row trains with the pipeline's own split
(``split_indices(1797, 0.1, 0.1, seed 0)``) and reports on its test items. The sweep keeps only
that split's TRAINING items (1,437), writes them as an .npz, and trains every recipe on it with
the same pipeline code: each run's own 10 % test split (144 items carved from those training
items) is the sweep's validation set, where AE and PCA are compared (SSE per item, P@10 of
validation queries against the run's training items). The benchmark's test items are never read.
Each recipe is one set of overrides on top of the defaults; one row per recipe, all in one run.

``--dataset digits32`` (a png400 stand-in, 1,024 inputs): 400 of those training items outside the
first 400 digits (png400's items), upscaled 4x bilinear to 32x32 as png400 is; the same protocol
(each run's 40-item test split is the validation set). Neither png400 nor any test split is read.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from aepipe.config import build_config
from aepipe.logs import setup_logging
from aepipe.model.fit import split_indices
from aepipe.model.train import train_model
from benchmarks import write_results

STEPS = ["training.max_steps=1500", "training.max_epochs=1000"]
NO_KNN = "training.knn_target=null"  # the images preset sets knn_target: a recipe without it must say so
# Recipes: overrides on top of the defaults (the code size is set by --code-size for all).
RECIPES: dict[str, list[str]] = {
    "before: 512-256-128, 60 epochs": ["model.nodes_per_layer=[512, 256, 128]", "training.max_epochs=60"],
    "widths-auto (256-128-64), 60 epochs": ["training.max_epochs=60"],
    "512-256-128, 1500 steps": ["model.nodes_per_layer=[512, 256, 128]", *STEPS, NO_KNN],
    "512-256-128, 1500 steps, knn_target k=10": [
        "model.nodes_per_layer=[512, 256, 128]",
        *STEPS,
        "training.knn_target={k: 10}",
    ],
    "widths-auto, 1500 steps, knn_target k=10": [*STEPS, "training.knn_target={k: 10}"],
    # The PCA-initialised linear path (model.linear_path, #12): MSE with an identity output, so the
    # network starts as PCA; trainable or frozen P, with and without neighbour-smoothed targets.
    # "mse, no path" separates the loss change from the path itself.
    "pca-path, 1500 steps": [*STEPS, "model.linear_path=pca", NO_KNN],
    "pca-path, 1500 steps, knn_target k=10": [*STEPS, "model.linear_path=pca", "training.knn_target={k: 10}"],
    "pca-path frozen, 1500 steps": [*STEPS, "model.linear_path=pca-frozen", NO_KNN],
    "pca-path frozen, 1500 steps, knn_target k=10": [
        *STEPS,
        "model.linear_path=pca-frozen",
        "training.knn_target={k: 10}",
    ],
    "mse, no path, 1500 steps, knn_target k=10": [*STEPS, "model.loss=mse", "training.knn_target={k: 10}"],
    # On top of the images preset as a user gets it (min_steps 1500, then early stopping; knn_target
    # k=10): max_steps above turns the min_steps floor off, so 400 items stop after ~50 steps there.
    "defaults": [],
    "defaults + pca-path": ["model.linear_path=pca"],
    "defaults + pca-path frozen": ["model.linear_path=pca-frozen"],
    "defaults + pca-path, no knn": ["model.linear_path=pca", NO_KNN],
    "defaults + pca-path frozen, no knn": ["model.linear_path=pca-frozen", NO_KNN],
    "demo: 256-128, 100 epochs, batch 64, lr 3e-3": [
        "model.n_layers=2",
        "model.nodes_per_layer=[256, 128]",
        "training.max_epochs=100",
        "training.batch_size=64",
        "training.lr=0.003",
    ],
}


def carve_digits(out: Path) -> Path:
    """The digits row's training split only, as an .npz (uint8 0..16 scaled as the digits reader does)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    train = split_indices(len(d.target), 0.1, 0.1, 0)["train"]
    path = out / "digits-train-split.npz"
    x = np.round(d.images[train] / 16.0 * 255).astype(np.uint8)  # (N, 8, 8)
    np.savez(path, x=x, y=d.target[train])
    return path


def carve_digits32(out: Path, n_items: int = 400) -> Path:
    """A stand-in for the png400 row (1,024 inputs, 400 items) that shares no item with it nor with
    the digits row's test split: ``n_items`` of the digits row's training items outside the first
    400 digits (png400's), upscaled 4x bilinear to 32x32 as ``benchmarks.defaults`` makes png400."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    train = split_indices(len(d.target), 0.1, 0.1, 0)["train"]
    pool = train[train >= 400]  # png400 is digits 0..399
    rows = np.sort(np.random.default_rng(0).choice(pool, n_items, replace=False))
    small = np.round(d.images[rows] / 16.0 * 255).astype(np.uint8)  # (N, 8, 8)
    x = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.Resampling.BILINEAR)) for im in small])
    path = out / "digits32-train-split.npz"
    np.savez(path, x=x, y=d.target[rows])  # (N, 32, 32) uint8
    return path


CARVES = {"digits": carve_digits, "digits32": carve_digits32}


def run_recipe(source: Path, name: str, overrides: list[str], code_size: int, out: Path) -> dict:
    cfg = build_config(
        overrides=[
            f"corpus.source={source}",
            f"run_dir={out / 'runs' / str(abs(hash(name)))}",
            f"model.code_size={code_size}",
            *overrides,
        ]
    )
    t0 = time.perf_counter()
    result = train_model(cfg)
    m, b = result.metrics, result.metrics["baseline"]
    r = b["retrieval"]
    return {
        "recipe": name,
        "overrides": overrides,
        "val_ae_sse": m["ae"]["sse_per_item"],
        "val_pca_sse": m["pca"]["sse_per_item"],
        "val_ae_p10": r["ae_precision_at_10"],
        "val_pca_p10": r["baseline_precision_at_10"],
        "beats_both": bool(b["ae_beats_baseline"]),
        "epochs": m["epochs"],
        "n_val": m["n_test"],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def table(rows: list[dict], argv: list[str]) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# Recipe sweep (validation items carved from training data)",
        "",
        f"Command: `python -m benchmarks.sweep {' '.join(argv)}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other jobs, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; commit {commit}; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        "| recipe | val SSE/item AE | PCA | val P@10 AE | PCA | beats PCA on both | epochs | train s |",
        "|---|---:|---:|---:|---:|:-:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {r['val_ae_sse']:.3f} | {r['val_pca_sse']:.3f} | {r['val_ae_p10']:.3f} "
            f"| {r['val_pca_p10']:.3f} | {'yes' if r['beats_both'] else 'no'} | {r['epochs']} | {r['seconds']:.0f} |"
        )
    lines += ["", f"Validation: {rows[0]['n_val']} items per run, carved from the digits row's training split."]
    if "digits32" in argv:
        lines[-1] += " Inputs: 400 of those items outside png400's, upscaled to 32x32 (--dataset digits32)."
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/sweep-digits")
    p.add_argument("--code-size", type=int, default=10)
    p.add_argument(
        "--dataset",
        choices=list(CARVES),
        default="digits",
        help="digits: the digits row's 1,437 training items (8x8); digits32: 400 of them outside png400, "
        "upscaled to 32x32 (a png400 stand-in)",
    )
    # Recipe names hold commas: the list is separated by semicolons.
    p.add_argument("--recipes", help="semicolon-separated recipe names (default: all): " + "; ".join(RECIPES))
    args = p.parse_args(argv)
    names = list(RECIPES) if not args.recipes else [n.strip() for n in args.recipes.split(";") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        p.error(f"unknown recipe(s) {unknown}; choose from {list(RECIPES)}")
    setup_logging(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    source = CARVES[args.dataset](out)
    rows = []
    for name in names:
        rows.append(run_recipe(source, name, RECIPES[name], args.code_size, out))
        print(rows[-1], file=sys.stderr, flush=True)
    write_results(out, rows, table(rows, argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
