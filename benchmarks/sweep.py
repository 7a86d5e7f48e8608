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

``--dataset python-docs`` (documents, code size 32 as the defaults row): the python-docs row's
training split only (the same read and ``split_indices(n, 0.1, 0.1, seed 0)`` as the pipeline),
written as a JSONL of text and label (the package); each run's 10 % test split of it is the
validation set, AE against LSA (P@10, cosine) and PCA on the word distributions (SSE). Only the
document recipes (``doc:``) apply to it. ``--dataset manpages``: the same for the defaults
benchmark's manpages row (the machine's manual pages, made as that row makes them).

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
    # model.linear_path_lr (auto: min(1, sqrt(1024 / inputs)) x training.lr for P and the mean):
    # the full rate was the rule before; with and without neighbour-smoothed targets.
    "defaults, linear_path_lr 1": ["model.linear_path_lr=1"],
    "defaults, no knn": [NO_KNN],
    "defaults, linear_path_lr 1, no knn": ["model.linear_path_lr=1", NO_KNN],
    # Wide colour inputs (the photos/cifar stand-ins): a frozen PCA path, a narrower deep path.
    "defaults, pca-path frozen": ["model.linear_path=pca-frozen"],
    "defaults, pca-path frozen, no knn": ["model.linear_path=pca-frozen", NO_KNN],
    "defaults, 256-128": ["model.n_layers=2", "model.nodes_per_layer=[256, 128]"],
    "defaults, 256-128, no knn": ["model.n_layers=2", "model.nodes_per_layer=[256, 128]", NO_KNN],
    # model.pca_basis (session 8): the deep path reads and writes N principal components instead of
    # the raw values. "defaults" is auto (128 above 2,048 inputs); 0 is the preset before.
    "defaults, pca_basis 0": ["model.pca_basis=0"],
    "defaults, pca_basis 0, no knn": ["model.pca_basis=0", NO_KNN],
    "defaults, pca_basis 64": ["model.pca_basis=64"],
    "defaults, pca_basis 64, no knn": ["model.pca_basis=64", NO_KNN],
    "defaults, pca_basis 128, no knn": ["model.pca_basis=128", NO_KNN],
    "defaults, pca_basis 256": ["model.pca_basis=256"],
    "defaults, pca_basis 256, no knn": ["model.pca_basis=256", NO_KNN],
    "defaults, pca_basis 128, batch norm": ["model.pca_basis=128", "model.batch_norm=true"],
    "defaults, pca_basis 128, batch norm, no knn": ["model.pca_basis=128", "model.batch_norm=true", NO_KNN],
    "defaults, pca_basis 64, batch norm, no knn": ["model.pca_basis=64", "model.batch_norm=true", NO_KNN],
    "defaults, pca_basis 256, batch norm, no knn": ["model.pca_basis=256", "model.batch_norm=true", NO_KNN],
    "defaults, batch norm, no knn": ["model.batch_norm=true", NO_KNN],  # pca_basis auto: 128 on colour photos
    "defaults, pca_basis 0, batch norm, no knn": ["model.pca_basis=0", "model.batch_norm=true", NO_KNN],
    "demo: 256-128, 100 epochs, batch 64, lr 3e-3": [
        "model.n_layers=2",
        "model.nodes_per_layer=[256, 128]",
        "training.max_epochs=100",
        "training.batch_size=64",
        "training.lr=0.003",
    ],
}


DOCS = ["corpus.kind=documents"]
# Document recipes, on top of the document preset (model.code_size from --code-size, 32 for python-docs).
DOC_RECIPES: dict[str, list[str]] = {
    "doc: before: no knn_target": [*DOCS, NO_KNN],  # the document preset before #12's sweep
    "doc: defaults": [*DOCS],  # the document preset as a user gets it (knn_target k=10 since that sweep)
    # The LSA start (model.linear_path: lsa, #12): code = P x + f(x) with P from the verdict's LSA, the
    # softmax decoder from zero weights (the unigram model); trainable or frozen P; with and without
    # neighbour-smoothed targets.
    "doc: lsa-path": [*DOCS, "model.linear_path=lsa", NO_KNN],
    "doc: lsa-path frozen": [*DOCS, "model.linear_path=lsa-frozen", NO_KNN],
    "doc: lsa-path, knn_target k=10": [*DOCS, "model.linear_path=lsa", "training.knn_target={k: 10}"],
    "doc: lsa-path frozen, knn_target k=10": [*DOCS, "model.linear_path=lsa-frozen", "training.knn_target={k: 10}"],
    "doc: lsa-path, knn_target k=20": [*DOCS, "model.linear_path=lsa", "training.knn_target={k: 20}"],
    "doc: lsa-path, lr 1e-3": [*DOCS, "model.linear_path=lsa", "training.lr=0.001", NO_KNN],
    "doc: lsa-path, lr 1e-3, knn_target k=10": [
        *DOCS,
        "model.linear_path=lsa",
        "training.lr=0.001",
        "training.knn_target={k: 10}",
    ],
    "doc: lsa-path, no denoising": [*DOCS, "model.linear_path=lsa", "model.denoising=null", NO_KNN],
    "doc: knn_target k=10": [*DOCS, "training.knn_target={k: 10}"],
    "doc: knn_target k=20": [*DOCS, "training.knn_target={k: 20}"],
    "doc: lr 1e-3": [*DOCS, "training.lr=0.001", NO_KNN],
    # session 9, after the manpages row: less or no masking noise (with the preset's knn_target)
    "doc: masking 0.25": [*DOCS, "model.denoising.level=0.25"],
    "doc: no denoising": [*DOCS, "model.denoising=null"],
    "doc: min_steps 1000": [*DOCS, "training.min_steps=1000"],
    "doc: min_steps 1000, masking 0.25": [*DOCS, "training.min_steps=1000", "model.denoising.level=0.25"],
}
RECIPES.update(DOC_RECIPES)


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


def carve_documents(out: Path, row: str, source: str) -> Path:
    """A document row's training split only, as a JSONL of id, text and label: the items read as
    the training stage reads them (``load_training_data``), split as it splits them."""
    import json

    from aepipe.corpus import Quarantine, open_corpus
    from aepipe.model.fit import load_training_data

    cfg = build_config(overrides=["corpus.kind=documents", f"corpus.source={source}", "model.code_size=32"])
    data, _ = load_training_data(cfg, Quarantine("train"))
    tc = cfg.training
    train = split_indices(len(data.ids), tc.val_fraction, tc.test_fraction, tc.seed)["train"]
    keep = {data.ids[i] for i in train}
    path = out / f"{row}-train-split.jsonl"
    with open(path, "w") as fh:
        for raw in open_corpus(cfg.corpus).iter_raw():
            if raw.id in keep:
                fh.write(json.dumps({"id": raw.id, "text": raw.payload.text, "label": raw.label}) + "\n")
                keep.discard(raw.id)
    return path


def carve_python_docs(out: Path) -> Path:
    """The python-docs row's training split only."""
    return carve_documents(out, "python-docs", "python-docs")


def carve_manpages(out: Path) -> Path:
    """The manpages row's training split only: the machine's manual pages made into a folder as
    ``benchmarks.defaults`` makes them (same draw), then its training split as a JSONL."""
    from benchmarks.defaults import MAN_ROOT, write_man_corpus

    folder = out / "manpages"
    if not (folder / ".complete").exists():
        folder.mkdir(parents=True, exist_ok=True)
        write_man_corpus(folder, MAN_ROOT)
        (folder / ".complete").touch()
    return carve_documents(out, "manpages", str(folder))


def carve_photos(out: Path, n_items: int = 600) -> Path:
    """A stand-in for the mixed-photos row (and the cifar10k row's colour photos) that shares no item
    with either: ``n_items`` CIFAR-10 training images drawn (seed 0) from those after the first 10,000
    (cifar10k is images 0..9,999, mixed-photos 0..599), written as ``benchmarks.defaults`` writes
    mixed-photos (JPEGs upscaled to mixed sizes, every tenth EXIF-rotated)."""
    from benchmarks.defaults import DATASETS, write_photo_folder

    folder = out / "photos-train"
    if not (folder / ".complete").exists():
        folder.mkdir(parents=True, exist_ok=True)
        with np.load(DATASETS / "cifar10.npz", allow_pickle=False) as npz:
            x, y, names = npz["x_train"], npz["y_train"], npz["label_names"]
        rows = np.sort(np.random.default_rng(0).choice(np.arange(10_000, len(x)), n_items, replace=False))
        write_photo_folder(folder, x, y, names, rows, mixed_sizes=True)
        (folder / ".complete").touch()
    return folder


def carve_cifar(out: Path) -> Path:
    """A stand-in for the cifar10k row: the 10,000 CIFAR-10 training images after its first 10,000
    (cifar10k's items), written as ``benchmarks.defaults`` writes cifar10k (a folder of PNGs)."""
    from benchmarks.defaults import DATASETS, write_photo_folder

    folder = out / "cifar-train"
    if not (folder / ".complete").exists():
        folder.mkdir(parents=True, exist_ok=True)
        with np.load(DATASETS / "cifar10.npz", allow_pickle=False) as npz:
            x, y, names = npz["x_train"], npz["y_train"], npz["label_names"]
        write_photo_folder(folder, x, y, names, range(10_000, 20_000), mixed_sizes=False)
        (folder / ".complete").touch()
    return folder


CARVES = {
    "digits": carve_digits,
    "digits32": carve_digits32,
    "photos": carve_photos,
    "cifar": carve_cifar,
    "python-docs": carve_python_docs,
    "manpages": carve_manpages,
}
DOCUMENT_SETS = ("python-docs", "manpages")


def run_recipe(
    source: Path, name: str, overrides: list[str], code_size: int, out: Path, seed: int | None = None
) -> dict:
    cfg = build_config(
        overrides=[
            f"corpus.source={source}",
            f"run_dir={out / 'runs' / str(abs(hash(name)))}",
            f"model.code_size={code_size}",
            *overrides,
            *([f"training.seed={seed}"] if seed is not None else []),
        ]
    )
    t0 = time.perf_counter()
    result = train_model(cfg)
    m, b = result.metrics, result.metrics["baseline"]
    r = b["retrieval"]
    return {
        "baseline": b["name"],
        "kept_start": m.get("kept_pca_start"),
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


def mean_over_seeds(runs: list[dict]) -> dict:
    """One row from a recipe's runs with different ``training.seed`` (each its own validation split
    of the same carved training items): means, and on how many seeds the AE beat the baseline on both."""
    row = dict(runs[0])
    for key in ("val_ae_sse", "val_pca_sse", "val_ae_p10", "val_pca_p10", "epochs", "seconds"):
        row[key] = float(np.mean([r[key] for r in runs]))
    row["beats_both"] = sum(r["beats_both"] for r in runs) if len(runs) > 1 else runs[0]["beats_both"]
    row["kept_start"] = sum(bool(r["kept_start"]) for r in runs) if len(runs) > 1 else runs[0]["kept_start"]
    row["n_seeds"], row["runs"] = len(runs), runs
    return row


def _count(v: bool | int, n: int) -> str:
    return f"{int(v)}/{n}" if n > 1 else ("yes" if v else "no")


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
        "| recipe | val SSE/item AE | PCA | val P@10 AE | PCA (LSA) | beats it on both | kept start | epochs "
        "| train s |",
        "|---|---:|---:|---:|---:|:-:|:-:|---:|---:|",
    ]
    for r in rows:
        base = "" if r["baseline"] == "pca" else f" ({r['baseline']})"
        lines.append(
            f"| {r['recipe']} | {r['val_ae_sse']:.4g} | {r['val_pca_sse']:.4g} | {r['val_ae_p10']:.3f} "
            f"| {r['val_pca_p10']:.3f}{base} | {_count(r['beats_both'], r['n_seeds'])} "
            f"| {_count(r['kept_start'], r['n_seeds'])} | {r['epochs']:.0f} | {r['seconds']:.0f} |"
        )
    row = next((d for d in DOCUMENT_SETS if d in argv), "digits")
    if "cifar" in argv:
        lines += [
            "",
            f"Validation: {rows[0]['n_val']} items per run (each run's own test split), from CIFAR-10 training images "
            "10,000-19,999, outside the cifar10k and mixed-photos rows (--dataset cifar).",
        ]
    elif "photos" in argv:
        lines += [
            "",
            f"Validation: {rows[0]['n_val']} items per run (each run's own test split), from 600 CIFAR-10 training "
            "images outside the cifar10k and mixed-photos rows (--dataset photos).",
        ]
    else:
        lines += ["", f"Validation: {rows[0]['n_val']} items per run, carved from the {row} row's training split."]
    if rows[0]["n_seeds"] > 1:
        lines[-1] += (
            f" Means over {rows[0]['n_seeds']} seeds (training.seed: each run's own validation split of those "
            "items and its own initialisation); 'beats it on both' and 'kept start' count the seeds."
        )
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
        "upscaled to 32x32 (a png400 stand-in); photos: 600 CIFAR-10 training images outside the cifar10k "
        "and mixed-photos rows, written as mixed-photos is (a stand-in for both); cifar: CIFAR-10 training images "
        "10,000-19,999 as PNGs (a cifar10k stand-in); python-docs / manpages: that row's training documents "
        "(use --code-size 32, as the defaults rows)",
    )
    # Recipe names hold commas: the list is separated by semicolons.
    p.add_argument(
        "--recipes", help="semicolon-separated recipe names (default: all of the dataset's kind): " + "; ".join(RECIPES)
    )
    p.add_argument(
        "--seeds",
        type=lambda v: [int(s) for s in v.split(",")],
        help="comma-separated training.seed values: each recipe runs once per seed, the table shows means",
    )
    args = p.parse_args(argv)
    default = [n for n in RECIPES if (n in DOC_RECIPES) == (args.dataset in DOCUMENT_SETS)]
    names = default if not args.recipes else [n.strip() for n in args.recipes.split(";") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        p.error(f"unknown recipe(s) {unknown}; choose from {list(RECIPES)}")
    setup_logging(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    source = CARVES[args.dataset](out)
    rows = []
    for name in names:
        runs = [run_recipe(source, name, RECIPES[name], args.code_size, out, s) for s in args.seeds or [None]]
        rows.append(mean_over_seeds(runs))
        print(rows[-1], file=sys.stderr, flush=True)
    write_results(out, rows, table(rows, argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
