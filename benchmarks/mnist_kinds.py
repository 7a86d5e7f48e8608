"""Every autoencoder kind on MNIST with the published protocol.

    python -m benchmarks.mnist_kinds --data ../shared/datasets/mnist.npz

Trains each kind on the 60,000 training images (5 % of them held out for early
stopping), then evaluates on the 10,000 test images: test SSE per image, and the
test images as queries against the 60,000 training codes (precision@10, mAP@100),
k-means on the test codes (ACC, NMI). PCA at the same code size is measured in the
same run. ``--validate`` chooses recipes without the test images: a seeded ``--val-items`` of the
training images are the queries, the rest the corpus, and the test images are not read. ``--scan`` adds a row per kind for the cluster stage with ``cluster.method=scan``:
heads trained on the training codes (no labels), their assignments of the test codes scored. ``--tiny`` runs the same code on scikit-learn's digits in seconds (CI).
The same defaults serve any 28x28-ish grayscale corpus: nothing here is MNIST-specific
beyond the file path.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from aepipe.config import build_config
from aepipe.logs import setup_logging
from aepipe.model.train import train_model
from aepipe.report.evaluate import evaluate_run
from benchmarks import commit, write_results

KINDS: dict[str, list[str]] = {
    "dense": [],
    "conv": ["model.architecture=conv", "model.n_layers=3", "model.nodes_per_layer=[32, 64, 128]"],
    "sparse": ["model.sparsity={l1: 0.0001}"],
    "denoising": ["model.denoising={noise: masking, level: 0.2}"],
    "contractive": ["model.contractive={weight: 0.0001, method: projections}"],
    "variational": ["model.variational=true", "model.kl_weight=0.05"],
}

# Hinton & Salakhutdinov's 784-1000-500-250-30 shape, with batch norm, GELU, BCE, AdamW and a one-cycle schedule.
RECIPE = [
    "model.code_size=30",
    "model.n_layers=3",
    "model.nodes_per_layer=[1000, 500, 250]",
    "model.batch_norm=true",
    "model.activation=gelu",
    "model.loss=bce",
    "training.batch_size=256",
    "training.lr=0.003",
    "training.weight_decay=0.0001",
    "training.val_fraction=0.05",
    "training.test_fraction=0.0",
    "training.early_stopping_patience=5",
]

TARGETS = {"sse": 2.70, "p10": 0.97, "acc": 0.90, "nmi": 0.85}  # issue #15 (30-d SSE)


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, {platform.system()} {platform.release()}, torch {torch.__version__}"


def validation_split(data: str, n_val: int, seed: int, out: Path) -> Path:
    """An npz shaped like MNIST's (x_train/y_train, x_test/y_test) made from the training images
    only: a seeded ``n_val`` of them become the "test" images, the others the training ones. The
    test images of ``data`` are not read."""
    with np.load(data) as d:
        x, y = d["x_train"], d["y_train"]
    if not 0 < n_val < len(x):
        raise SystemExit(f"--val-items must be between 1 and {len(x) - 1}, got {n_val}")
    order = np.random.default_rng(seed).permutation(len(x))
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    path = out / "validation.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, x_train=x[train], y_train=y[train], x_test=x[val], y_test=y[val])
    tmp.replace(path)
    return path


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    for kind in args.kinds:
        run_dir = Path(args.out) / "runs" / kind
        if args.tiny:
            data = [
                "corpus.source=digits",
                "corpus.limit=600",
                "model.code_size=10",
                "model.n_layers=2",
                "model.nodes_per_layer=[64, 32]",
                "training.max_epochs=2",
                "training.test_fraction=0.2",
                "evaluation.map_k=20",
                "cluster.scan_steps=200",
                "cluster.scan_heads=4",
            ]
            if kind == "conv":
                data.append("model.nodes_per_layer=[8, 16]")
        else:
            data = [
                f"corpus.source={args.data}",
                "corpus.images.array_key=x_train",
                f"evaluation.queries={args.data}",
                "evaluation.queries_array_key=x_test",
                f"training.max_epochs={args.epochs}",
                f"training.max_time_minutes={args.minutes}",
                f"evaluation.umap={str(args.umap).lower()}",
            ]
        cfg = build_config(
            overrides=RECIPE
            + KINDS[kind]
            + data
            + [f"run_dir={run_dir}"]
            + (["model.n_layers=2"] if args.tiny else [])
            + list(args.set)
        )
        t = time.perf_counter()
        trained = train_model(cfg)
        train_s = time.perf_counter() - t
        row = {
            "kind": kind,
            "kinds": cfg.model.kinds,
            "epochs": trained.metrics["epochs"],
            "train_s": round(train_s, 1),
        }
        row.update(scores(evaluate_run(cfg), cfg.evaluation.map_k))
        rows.append(row)
        print(json.dumps(row), flush=True)
        for seed in args.scan_seeds if args.scan else []:  # before dec, which replaces the model
            rows.append(cluster_with_scan(cfg, kind, row, seed))
            print(json.dumps(rows[-1]), flush=True)
        if args.dec:
            rows.append(refine_with_dec(cfg, kind))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def refine_with_dec(cfg, kind: str) -> dict:
    """The library's clustering stage with ``cluster.method=dec`` on the trained run (encode the
    training images, refine the encoder with IDEC, re-encode), then the same evaluation: k-means on
    the refined test codes, so the columns mean what they mean for every other row. The training
    images' own DEC assignments (argmax of the soft assignment, unlabelled) are scored too."""
    from aepipe.cluster.kmeans import cluster_codes
    from aepipe.codes.encode import encode_corpus

    cfg = cfg.model_copy(update={"cluster": cfg.cluster.model_copy(update={"method": "dec", "n_clusters": 10})})
    t = time.perf_counter()
    encode_corpus(cfg)
    clustered = cluster_codes(cfg)
    dec_s = time.perf_counter() - t
    return {
        "kind": f"{kind}+dec",
        "kinds": cfg.model.kinds + ["dec"],
        "epochs": "–",
        "train_s": round(dec_s, 1),
        "train_dec_acc": clustered.acc,
        "train_dec_nmi": clustered.nmi,
        **scores(evaluate_run(cfg), cfg.evaluation.map_k),
    }


def cluster_with_scan(cfg, kind: str, base: dict, seed: int = 0) -> dict:
    """The library's clustering stage with ``cluster.method=scan`` on the trained run: encode the
    training images, train the heads on their codes (no labels), then score the chosen head's
    assignments of the test codes (``aepipe eval``'s cluster-stage scores). The encoder is not
    changed, so SSE, P@10 and k-means on the test codes are the base row's (copied)."""
    from aepipe.cluster.kmeans import cluster_codes
    from aepipe.codes.encode import encode_corpus

    update = {"method": "scan", "n_clusters": 10, "seed": seed}
    cfg = cfg.model_copy(update={"cluster": cfg.cluster.model_copy(update=update)})
    t = time.perf_counter()
    encode_corpus(cfg)  # unchanged codes after the first seed: encode skips the shards it has
    clustered = cluster_codes(cfg)
    scan_s = time.perf_counter() - t
    report = evaluate_run(cfg)
    stage = report["clustering"]["cluster_stage"]
    keep = ("sse", "pca_sse", "p10", "pca_p10", "map100", "acc", "nmi", "pca_acc", "pca_nmi")
    return {
        "kind": f"{kind}+scan",
        "scan_seed": seed,
        "kinds": cfg.model.kinds + ["scan"],
        "epochs": "–",
        "train_s": round(scan_s, 1),
        "train_scan_acc": clustered.acc,
        "train_scan_nmi": clustered.nmi,
        **{key: base[key] for key in keep if key in base},
        "stage_acc": stage["acc"],
        "stage_nmi": stage["nmi"],
    }


def scores(report: dict, map_k: int) -> dict:
    """A row's figures from ``evaluate_run``'s report: test SSE, and with labels P@10, mAP and
    k-means ACC/NMI (UMAP's too when it ran), each beside PCA's."""
    row = {
        "sse": report["reconstruction"]["ae"]["sse_per_item"],
        "pca_sse": report["reconstruction"]["pca"]["sse_per_item"],
    }
    if "retrieval" in report:
        row.update(
            p10=report["retrieval"]["ae"]["precision_at_10"],
            pca_p10=report["retrieval"]["pca"]["precision_at_10"],
            map100=report["retrieval"]["ae"][f"map_at_{map_k}"],
            acc=report["clustering"]["ae"]["acc"],
            nmi=report["clustering"]["ae"]["nmi"],
            pca_acc=report["clustering"]["pca"]["acc"],
            pca_nmi=report["clustering"]["pca"]["nmi"],
        )
        if "ae_umap" in report["clustering"]:
            row.update(umap_acc=report["clustering"]["ae_umap"]["acc"], umap_nmi=report["clustering"]["ae_umap"]["nmi"])
    return row


def _seed(row: dict) -> str:
    return f" (seed {row['scan_seed']})" if "scan_seed" in row else ""


def _mark(value: float | None, target: float, higher: bool) -> str:
    if value is None:
        return "–"
    ok = value >= target if higher else value <= target
    return f"{value:.3f}" + ("" if ok else " ✗")


def table(rows: list[dict], command: str, started: str = "", code: str = "") -> str:
    """One row per method: each kind's autoencoder, then PCA at the same code size (measured in
    every kind's evaluation; identical across them, shown once). No cell mixes two methods."""
    nan = float("nan")
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {machine()}  ",
        *([f"Commit: {code}; started {started}  "] if code else []),
        f"Targets (issue #15): SSE ≤ {TARGETS['sse']}, P@10 ≥ {TARGETS['p10']}, k-means ACC ≥ {TARGETS['acc']}, "
        f"NMI ≥ {TARGETS['nmi']} (✗ = missed)",
        "",
        "| method | epochs | train s | test SSE/img | P@10 | mAP@100 | k-means ACC | k-means NMI | UMAP+k-means ACC"
        " | UMAP+k-means NMI | cluster stage ACC | cluster stage NMI |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def umap(r: dict, key: str) -> str:
        return f"{r[key]:.3f}" if key in r else "–"

    for r in rows:
        lines.append(
            f"| AE {'+'.join(r['kinds'])}{_seed(r)} | {r['epochs']} | {r['train_s']} | {_mark(r['sse'], TARGETS['sse'], False)}"
            f" | {_mark(r.get('p10'), TARGETS['p10'], True)} | {r.get('map100', nan):.3f}"
            f" | {_mark(r.get('acc'), TARGETS['acc'], True)} | {_mark(r.get('nmi'), TARGETS['nmi'], True)}"
            f" | {umap(r, 'umap_acc')} | {umap(r, 'umap_nmi')}"
            f" | {_mark(r.get('stage_acc'), TARGETS['acc'], True)} | {_mark(r.get('stage_nmi'), TARGETS['nmi'], True)} |"
        )
    if rows:
        r = rows[0]
        lines.append(
            f"| PCA | – | – | {r['pca_sse']:.3f} | {r.get('pca_p10', nan):.3f} | – | {r.get('pca_acc', nan):.3f}"
            f" | {r.get('pca_nmi', nan):.3f} | – | – | – | – |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/datasets/mnist.npz")
    p.add_argument("--kinds", default=",".join(KINDS), type=lambda s: s.split(","))
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--minutes", type=float, default=15.0, help="training budget per model")
    p.add_argument("--umap", action="store_true", help="also k-means after UMAP (needs umap-learn)")
    p.add_argument(
        "--dec",
        action="store_true",
        help="after each kind, also refine its encoder with cluster.method=dec (IDEC) and evaluate again (a row "
        "'KIND+dec'; its 'train s' column is the encode + refinement time)",
    )
    p.add_argument(
        "--scan",
        action="store_true",
        help="after each kind, also cluster its training codes with cluster.method=scan and score the head on the "
        "test codes (a row 'KIND+scan'; 'train s' is encode + clustering; the other columns are the kind's own)",
    )
    p.add_argument(
        "--scan-seeds",
        default=[0],
        type=lambda s: [int(v) for v in s.split(",")],
        help="with --scan: one row per cluster.seed, e.g. 0,1,2 (the heads' random starts)",
    )
    p.add_argument(
        "--validate",
        action="store_true",
        help="choose recipes on training images only: --val-items of them (seeded) are the queries, the test "
        "images are not read",
    )
    p.add_argument("--val-items", type=int, default=6000, help="--validate: training images used as queries")
    p.add_argument("--seed", type=int, default=0, help="--validate: which training images are held out")
    p.add_argument("--out", default="bench-out/mnist")
    p.add_argument("--tiny", action="store_true", help="digits, 2 epochs: checks the benchmark runs (CI)")
    p.add_argument("-s", "--set", action="append", default=[], help="extra config override")
    args = p.parse_args(argv)
    bad = [k for k in args.kinds if k not in KINDS]
    if bad:
        p.error(f"unknown kind(s) {', '.join(bad)}; choose from {', '.join(KINDS)}")
    if not args.tiny and not Path(args.data).is_file():
        p.error(f"{args.data} not found (see ../shared/datasets/README.md)")
    setup_logging(0, stream_is_tty=False)  # warnings only: the results table is the output
    code, started = commit(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())  # what the run measures
    if args.validate and not args.tiny:  # the run reads this split in place of the file given
        args.data = str(validation_split(args.data, args.val_items, args.seed, Path(args.out)))
    rows = run(args)
    command = "python -m benchmarks.mnist_kinds " + " ".join(argv if argv is not None else sys.argv[1:])
    md = table(rows, command, started, code)
    if args.validate and not args.tiny:
        md = (
            f'**Validation run**: the "test" columns score {args.val_items} training images held out by seed '
            f"{args.seed} (`{args.data}`); the test images were not read.\n\n" + md
        )
    write_results(args.out, rows, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
