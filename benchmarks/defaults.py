"""The defaults benchmark: what a new user gets with NO overrides but the code size.

    python -m benchmarks.defaults --out benchmarks/defaults                   # every row, one run
    python -m benchmarks.defaults --rows digits,png400,mixed-photos,python-docs --out DIR

Each row trains ``aepipe``'s training stage with the defaults (and the document preset for text)
in a fresh process (so its peak RSS is its own), on a corpus made here from public data:

- ``digits``: scikit-learn's 1,797 8x8 digits (``corpus.source=digits``)
- ``png400``: the first 400 of them as a folder of 32x32 grayscale PNGs (upscaled 4x, bilinear),
  labels as subfolders, as a user's folder of digit scans would be
- ``mnist20k`` / ``mnist60k``: the first 20,000 / all 60,000 MNIST training images (npz)
- ``cifar10k``: the first 10,000 CIFAR-10 training images as an RGB folder of PNGs
- ``mixed-photos``: 600 CIFAR-10 training images upscaled (bicubic) to 64x48, 200x150, 320x240
  or 96x96 and saved as JPEG, every tenth with an EXIF rotation tag: exercises the input-size choice
- ``newsgroups``: 20 Newsgroups (all 18,846 posts), ``corpus.kind=documents``
- ``python-docs``: the built-in corpus of standard-library docstrings, ``corpus.kind=documents``
- ``manpages``: a corpus none of the recipes was chosen on: the machine's own manual pages
  (``/usr/share/man``, sections 1, 2, 3, 5, 7, 8, up to 300 a section drawn with seed 0, troff
  requests and escapes stripped, pages under 30 words or ``.so`` links left out) as a folder of
  ``.txt`` files, the section as the label; ``corpus.kind=documents``. Debian's pages on the
  machine of the committed table; another system's pages give another corpus (the row says how
  many documents it made), and a machine without them reports the row as not run.

Measured on the run's own held-out test split (10 %, seed 0): reconstruction SSE per item AE vs
PCA at the same code size (on word distributions for documents), precision@10 of held-out queries
against the training items (AE codes vs PCA codes; LSA codes, cosine, for documents), k-means
(k = number of labels, faiss) on the held-out codes: ACC / NMI for AE and the baseline; training
time (the training stage: read, fit, evaluate) and the process's peak RSS after training.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

DATASETS = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"
ROWS = ["digits", "png400", "mnist20k", "mnist60k", "cifar10k", "mixed-photos", "newsgroups", "python-docs", "manpages"]
IMAGE_CODE, TEXT_CODE = 10, 32  # the only overrides: the code size (the image default is 10)


def prepare(row: str, data: Path, datasets: Path) -> list[str]:
    """Make the row's corpus under ``data`` (if needed); return its corpus overrides."""
    from PIL import Image

    if row == "digits":
        return ["corpus.source=digits"]
    if row == "python-docs":
        return ["corpus.kind=documents", "corpus.source=python-docs"]
    if row == "newsgroups":
        return ["corpus.kind=documents", f"corpus.source={datasets / '20newsgroups_bydate.parquet'}"]
    if row.startswith("mnist"):
        n = 20_000 if row == "mnist20k" else 60_000
        return [f"corpus.source={datasets / 'mnist.npz'}", "corpus.images.array_key=x_train", f"corpus.limit={n}"]
    folder = data / row
    done = folder / ".complete"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        if row == "manpages":
            write_man_corpus(folder, MAN_ROOT)
        elif row == "png400":
            from sklearn.datasets import load_digits

            d = load_digits()
            for i in range(400):
                img = Image.fromarray(np.round(d.images[i] / 16 * 255).astype(np.uint8))
                (folder / str(d.target[i])).mkdir(exist_ok=True)
                img.resize((32, 32), Image.Resampling.BILINEAR).save(folder / str(d.target[i]) / f"{i:04d}.png")
        else:
            with np.load(datasets / "cifar10.npz", allow_pickle=False) as npz:
                x, y, names = npz["x_train"], npz["y_train"], npz["label_names"]
            n = 10_000 if row == "cifar10k" else 600
            write_photo_folder(folder, x, y, names, range(n), mixed_sizes=row != "cifar10k")
        done.touch()
    return (["corpus.kind=documents"] if row == "manpages" else []) + [f"corpus.source={folder}"]


MAN_ROOT = Path("/usr/share/man")
MAN_SECTIONS, MAN_PER_SECTION = ("1", "2", "3", "5", "7", "8"), 300
# troff font changes (\fB), special characters (\(em), size changes (\s-1), strings (\*(Tm), other escapes
TROFF_ESCAPES = r"\\f[BIRP]|\\\(..|\\s[-+]?\d|\\\*\(..|\\."
# requests whose argument is text (headings, fonts, list tags, mdoc names); other requests are dropped
TEXT_REQUESTS = {".SH", ".SS", ".B", ".I", ".BR", ".IR", ".BI", ".IB", ".TP", ".IP", ".Nm", ".Nd", ".Fn", ".Xr"}


def man_page_text(troff: str) -> str:
    """Plain text of a manual page's troff source: comments and formatting requests dropped,
    the text of headings and font requests kept, escapes removed."""
    import re

    lines = []
    for line in troff.splitlines():
        if line.startswith(('.\\"', "'\\\"")):  # comments
            continue
        if line.startswith("."):
            request, _, rest = line.partition(" ")
            if request in TEXT_REQUESTS and rest:
                lines.append(rest)
            continue
        lines.append(line)
    return re.sub(TROFF_ESCAPES, " ", "\n".join(lines))


def write_man_corpus(folder: Path, root: Path) -> int:
    """Up to MAN_PER_SECTION pages of each section (seeded draw) as ``man<section>/<page>.txt``."""
    import gzip

    rng = np.random.default_rng(0)
    n = 0
    for section in MAN_SECTIONS:
        pages = sorted((root / f"man{section}").glob("*.gz"))
        kept = 0
        for i in rng.permutation(len(pages)):
            if kept == MAN_PER_SECTION:
                break
            troff = gzip.open(pages[i], "rt", errors="replace").read()
            if troff.startswith(".so "):  # a link to another page
                continue
            text = man_page_text(troff)
            if len(text.split()) < 30:
                continue
            (folder / f"man{section}").mkdir(exist_ok=True)
            (folder / f"man{section}" / (pages[i].name.removesuffix(".gz") + ".txt")).write_text(text)
            kept += 1
        n += kept
    if n == 0:
        raise FileNotFoundError(f"no manual pages under {root}: the manpages row needs them")
    return n


PHOTO_SIZES = [(64, 48), (200, 150), (320, 240), (96, 96)]


def write_photo_folder(folder: Path, x: np.ndarray, y: np.ndarray, names: np.ndarray, rows, mixed_sizes: bool) -> None:
    """Items ``rows`` of (N, H, W, 3) uint8 ``x`` as a folder of pictures, labels as subfolders.
    ``mixed_sizes``: upscaled (bicubic) in turn to the sizes of ``PHOTO_SIZES`` and saved as JPEG
    (quality 90), every tenth stored rotated with an EXIF orientation tag saying how to show it
    upright; else PNGs at their own size."""
    from PIL import Image

    for i in rows:
        sub = folder / str(names[y[i]])
        sub.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(x[i])
        if not mixed_sizes:
            img.save(sub / f"{i:05d}.png")
            continue
        img = img.resize(PHOTO_SIZES[i % len(PHOTO_SIZES)], Image.Resampling.BICUBIC)
        exif = Image.Exif()
        if i % 10 == 0:  # stored rotated; the tag says how to show it upright
            img = img.transpose(Image.Transpose.ROTATE_90)
            exif[0x0112] = 6
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90, exif=exif.tobytes())
        (sub / f"{i:05d}.jpg").write_bytes(buf.getvalue())


def run_row(row: str, corpus: list[str], out: Path) -> dict[str, Any]:
    """Child process: train with the defaults, then measure (see the module docstring)."""
    import faiss
    import pyarrow.parquet as pq
    import torch

    from aepipe.config import build_config
    from aepipe.corpus import Quarantine
    from aepipe.layout import RunLayout
    from aepipe.logs import setup_logging
    from aepipe.model import load_model
    from aepipe.model.fit import read_items
    from aepipe.model.saved import encode_array
    from aepipe.model.train import train_model
    from aepipe.model.verdict import linear_codes
    from aepipe.quality.metrics import cluster_scores

    setup_logging(0)
    code = TEXT_CODE if "corpus.kind=documents" in corpus else IMAGE_CODE
    cfg = build_config(overrides=[*corpus, f"run_dir={out / 'runs' / row}", f"model.code_size={code}"])
    t0 = time.perf_counter()
    result = train_model(cfg)
    train_s = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; peak of the training stage
    m, b = result.metrics, result.metrics["baseline"]

    model = load_model(RunLayout.at(cfg.run_dir).model.root)
    data, _ = read_items(cfg.corpus, model.prep, cfg.training.max_items, cfg.training.seed, Quarantine("bench"))
    split = dict(zip(*pq.read_table(RunLayout.at(cfg.run_dir).model.split).to_pydict().values()))
    where = np.array([split.get(i, "") for i in data.ids])
    train, test = np.flatnonzero(where == "train"), np.flatnonzero(where == "test")
    with torch.inference_mode():
        z = np.concatenate(
            [
                encode_array(model.net, torch.from_numpy(data.x[test][i : i + 4096]))[0].numpy()
                for i in range(0, len(test), 4096)
            ]
        )
    _, _, base = linear_codes(cfg, data.x[train], data.x[test])
    labels = np.array(data.labels, dtype=object)[test]
    k = len(set(labels.tolist()))
    scores = {}
    for name, codes in (("ae", z), ("base", base)):
        v = np.ascontiguousarray(codes, dtype=np.float32)
        if cfg.index.metric == "cosine":
            faiss.normalize_L2(v)
        km = faiss.Kmeans(v.shape[1], k, niter=50, nredo=3, seed=0)
        km.train(v)
        scores[name] = cluster_scores(labels, km.index.search(v, 1)[1].ravel())
    r = b["retrieval"]
    return {
        "row": row,
        "n_items": result.n_items,
        "n_quarantined": result.n_quarantined,
        "input_shape": list(model.prep.shape),
        "code_size": code,
        "baseline": b["name"],
        "ae_sse": m["ae"]["sse_per_item"],
        "pca_sse": m["pca"]["sse_per_item"],
        "ae_p10": r["ae_precision_at_10"],
        "base_p10": r["baseline_precision_at_10"],
        "p10_noise": r.get("noise"),  # the paired difference and its standard error over the test queries
        "n_queries": r["n_queries"],
        "ae_acc": scores["ae"]["acc"],
        "ae_nmi": scores["ae"]["nmi"],
        "base_acc": scores["base"]["acc"],
        "base_nmi": scores["base"]["nmi"],
        "beats_both": bool(b["ae_beats_baseline"]),
        "kept_start": bool(m.get("kept_pca_start")),
        "time_budget": m.get("time_budget"),
        "epochs": m["epochs"],
        "steps": m.get("steps"),
        "n_test": m["n_test"],
        "train_s": round(train_s, 1),
        "peak_rss_mb": round(rss_mb),
    }


def git_commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "aepipe", "benchmarks"], capture_output=True, text=True)
    return head + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def noise_cell(r: dict) -> str:
    """'+0.0050 ± 0.0120 (60)', marked when the difference is within two standard errors (noise)."""
    n = r.get("p10_noise")
    if not n:
        return "–"
    star = " (within noise)" if n["within_noise"] and n["difference"] != 0 else ""
    return f"{n['difference']:+.4f} ± {n['standard_error']:.4f} ({r.get('n_queries', '?')}){star}"


def table(rows: list[dict], not_run: list[str], argv: list[str], start: dict[str, str] | None = None) -> str:
    start = start or {}
    lines = [
        "# Defaults benchmark (no overrides but the code size)",
        "",
        f"Command: `python -m benchmarks.defaults {' '.join(argv)}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, load average {start.get('load', '?')} at the start "
        f"and {os.getloadavg()[0]:.1f} at the end, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
        f"code: commit {start.get('commit', git_commit())} at the start, {git_commit()} at the end; "
        f"{start.get('time', '?')} to {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        "| row | items | input | code | SSE/item AE | PCA | P@10 AE | PCA/LSA | P@10 difference ± SE (queries) "
        "| k-means ACC AE | base | NMI AE | base | beats both | PCA start kept | epochs (steps) | train s | peak RSS MB |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|:-:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['row']} | failed: {r['error']} |")
            continue
        lines.append(
            f"| {r['row']} | {r['n_items']:,} | {'x'.join(map(str, r['input_shape']))} | {r['code_size']} "
            f"| {r['ae_sse']:.4g} | {r['pca_sse']:.4g} | {r['ae_p10']:.4f} | {r['base_p10']:.4f} ({r['baseline']}) "
            f"| {noise_cell(r)} "
            f"| {r['ae_acc']:.3f} | {r['base_acc']:.3f} | {r['ae_nmi']:.3f} | {r['base_nmi']:.3f} "
            f"| {'yes' if r['beats_both'] else 'NO'} | {'yes' if r.get('kept_start') else 'no'} "
            f"| {r['epochs']} ({r['steps']}) | {r['train_s']:.0f} "
            f"| {r['peak_rss_mb']:,} |"
        )
    if not_run:
        lines += ["", f"Not run in this run: {', '.join(not_run)}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m benchmarks.defaults", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/defaults-run")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows (default: all): {', '.join(ROWS)}")
    p.add_argument("--datasets", default=str(DATASETS), help="folder of mnist.npz, cifar10.npz, 20newsgroups")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    if args.child:
        corpus = json.loads((out / f"{args.child}.corpus.json").read_text())
        row = run_row(args.child, corpus, out)
        (out / f"{args.child}.json").write_text(json.dumps(row))
        return 0
    rows_wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows_wanted if r not in ROWS]
    if unknown:
        p.error(f"unknown row(s) {unknown}; choose from {ROWS}")
    out.mkdir(parents=True, exist_ok=True)
    start = {"commit": git_commit(), "load": f"{os.getloadavg()[0]:.1f}", "time": f"{datetime.now(UTC):%Y-%m-%d %H:%M}"}
    rows = []
    for row in rows_wanted:
        try:
            corpus = prepare(row, out / "data", Path(args.datasets))
        except FileNotFoundError as exc:  # e.g. no manual pages on this machine: the row is not run
            rows.append({"row": row, "error": str(exc)})
            print(rows[-1], file=sys.stderr, flush=True)
            continue
        (out / f"{row}.corpus.json").write_text(json.dumps(corpus))
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.defaults", "--out", str(out), "--child", row],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            rows.append({"row": row, "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:200]})
        else:
            rows.append(json.loads((out / f"{row}.json").read_text()))
        print(rows[-1], file=sys.stderr, flush=True)
    from benchmarks import write_results

    write_results(out, rows, table(rows, [r for r in ROWS if r not in rows_wanted], argv, start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
