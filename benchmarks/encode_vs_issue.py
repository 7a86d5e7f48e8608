"""Encode of the 1M-PNG corpus: this tree against the code issue #15 measured, run in turn.

    git worktree add /tmp/aepipe-3c74c6b 3c74c6b
    python -m benchmarks.encode_vs_issue --reference /tmp/aepipe-3c74c6b --data ../shared/datasets/mnist.npz

#15's encode target is "at least 1.6x today's 6,846 items/s": today's being what encode_corpus of
commit 3c74c6b did on the 1M-PNG corpus (RESULTS-large.md, 2026-11-28). Figures from different
days are not comparable on a shared VM, so this runs both in the same sitting: the reference
tree's encode_corpus and this tree's, alternately (reference, this, reference, this, ...), each in
a process of its own with the same torch threads, on the same Parquet corpus of PNG bytes
(``--bf16`` adds this tree with the opt-in bf16 autocast to each round). Each of this tree's runs
is divided by the reference run of its round; the verdict is on the median of those ratios.

Untimed, beforehand: the corpus (this tree's ``benchmarks.large`` makes it; the reference reads
the same files through a symlink) and one model per tree, trained by that tree on 20,000 items
for 2 epochs with the same recipe (784-1000-500-250-30, the benchmarks' MNIST recipe), so both
encode with networks of the same size. This tree encodes at its defaults (decode workers, fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from aepipe.logs import setup_logging
from benchmarks import commit, write_results
from benchmarks.large import ENCODE_RATIO_TARGET, decoding, ratio_verdict
from benchmarks.stages import machine

RSS_TARGET_GIB = 2.0
ROOT = Path(__file__).resolve().parent.parent

# Runs inside the reference tree (3c74c6b's module layout: aepipe.benchmarks.large, aepipe.encode).
REFERENCE_CODE = """
import json, sys, time
from pathlib import Path
import torch
from aepipe.benchmarks import large as L
from aepipe.config import build_config
args = L.parser().parse_args(["images", "--data", sys.argv[1], "--out", sys.argv[2], "--items", sys.argv[3]])
L.prepare(args)
if sys.argv[5] == "prepare":
    sys.exit(0)
torch.set_num_threads(int(sys.argv[4]))
cfg = build_config(overrides=L.overrides(args, Path(sys.argv[2]) / "runs" / "images"))
from aepipe.encode import encode_corpus
t0 = time.perf_counter()
enc = encode_corpus(cfg)
s = time.perf_counter() - t0
print(json.dumps({"n_items": enc.n_items, "n_quarantined": enc.n_quarantined, "encode_s": s,
                  "encode_items_per_s": enc.n_items / s, "peak_rss_mb": L.peak_rss_mb(),
                  "workers_peak_rss_mb": 0.0, "decode_workers": 0}))
"""


def _run(cmd: list[str], cwd: Path, threads: int) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(cwd)}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed in {cwd}:\n{proc.stderr[-3000:]}")
    return proc.stdout


def reference_run(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    out = Path(args.out).resolve() / "reference"
    cmd = [sys.executable, "-c", REFERENCE_CODE, str(Path(args.data).resolve()), str(out), str(args.items)]
    stdout = _run(cmd + [str(args.threads), mode], Path(args.reference).resolve(), args.threads)
    return json.loads(stdout.strip().splitlines()[-1]) if mode == "run" else {}


def this_run(args: argparse.Namespace, mode: str, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.large", "encode", "--data", str(Path(args.data).resolve())]
    cmd += ["--out", str(Path(args.out).resolve() / "this"), "--items", str(args.items), "--threads", str(args.threads)]
    cmd += list(extra)
    # prepared in a process of its own too: a measured process forked from one that had trained a
    # model would start with that peak as its own ru_maxrss
    stdout = _run(cmd + [f"--{'prepare-only' if mode == 'prepare' else 'child'}"], ROOT, args.threads)
    if mode == "prepare":
        return {}
    return json.loads(stdout.strip().splitlines()[-1])


def prepare(args: argparse.Namespace) -> None:
    """The corpus (made here, linked into the reference's output folder) and each tree's model."""
    this_run(args, "prepare")
    name = f"png-{args.items}"
    data = Path(args.out).resolve() / "reference" / "data"
    data.mkdir(parents=True, exist_ok=True)
    if not (data / name).exists():
        (data / name).symlink_to(Path(args.out).resolve() / "this" / "data" / name)
    for folder in Path(args.out).resolve().glob("this/data/queries-*"):
        if not (data / folder.name).exists():
            (data / folder.name).symlink_to(folder)
    reference_run(args, "prepare")


def table(rows: list[dict[str, Any]], args: argparse.Namespace, argv: list[str], reference: str) -> str:
    lines = [
        f"Command: `python -m benchmarks.encode_vs_issue {' '.join(argv)}`  ",
        f"This tree: {commit()}; reference tree: {reference}  ",
        f"Machine: {machine(args.threads)}  ",
        f"Corpus: {args.items:,} PNGs (28x28, Parquet); run in turn, the reference first in each round",
        "",
        "| round | run | decoding | model precision | encode | items/s | / reference of the round | peak RSS (run + decode workers) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ratios: dict[str, list[float]] = {}
    peaks: dict[str, float] = {}
    n = 0
    for r in rows:
        n += r["tree"] == "reference"
        if r["tree"] == "reference":
            ref, ratio = r["encode_items_per_s"], "–"
        else:
            ratios.setdefault(r["tree"], []).append(r["encode_items_per_s"] / ref)
            ratio = f"{ratios[r['tree']][-1]:.2f}x"
        peak = (r["peak_rss_mb"] + r["workers_peak_rss_mb"]) / 1024
        peaks[r["tree"]] = max(peaks.get(r["tree"], 0.0), peak)
        lines.append(
            f"| {n} | {r['tree']} | {decoding(r)} | {'bf16' if r.get('autocast') == 'bf16' else 'fp32'} | {r['encode_s']:.1f} s | "
            f"{r['encode_items_per_s']:,.0f} | {ratio} | {r['peak_rss_mb']:,.0f} + {r['workers_peak_rss_mb']:,.0f} MiB |"
        )
    lines.append("")
    for tree, values in ratios.items():
        median = statistics.median(values)
        rss = "met" if peaks[tree] < RSS_TARGET_GIB else f"missed by {peaks[tree] - RSS_TARGET_GIB:.2f} GiB"
        lines.append(
            f"{tree} / reference: median {median:.2f}x, rounds {min(values):.2f}x to {max(values):.2f}x (target >= "
            f"{ENCODE_RATIO_TARGET}x: {ratio_verdict(median)}); peak RSS at most {peaks[tree]:.2f} GiB (target < {RSS_TARGET_GIB} GiB: {rss})"
        )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", required=True, help="a checkout of 3c74c6b (git worktree add PATH 3c74c6b)")
    p.add_argument("--data", default="../shared/datasets/mnist.npz")
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--bf16", action="store_true", help="also this tree with encode.autocast=bf16 (opt-in), each round")
    p.add_argument("--threads", type=int, default=2, help="torch threads in each measured process")
    p.add_argument("--out", default="bench-out/encode-vs-issue")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    args = p.parse_args(argv)
    setup_logging(0, stream_is_tty=False)
    if not Path(args.data).is_file():
        p.error(f"{args.data} not found (see ../shared/datasets/README.md)")
    if not (Path(args.reference) / "aepipe" / "benchmarks" / "large.py").is_file():
        p.error(f"{args.reference} is not a checkout of 3c74c6b (no aepipe/benchmarks/large.py)")
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    reference = subprocess.run(
        ["git", "-C", args.reference, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    prepare(args)
    rows: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        rows += [{"tree": "reference", **reference_run(args, "run")}, {"tree": "this", **this_run(args, "run")}]
        if args.bf16:
            rows.append({"tree": "this, bf16", **this_run(args, "run", ("--set", "encode.autocast=bf16"))})
    write_results(args.out, rows, table(rows, args, argv, reference or "unknown"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
