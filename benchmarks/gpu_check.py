"""GPU check (issue #15): on a machine with CUDA, train the MNIST recipe with bf16 mixed precision
and DDP on every visible GPU, encode with autocast, and print throughput against the same run on
the CPU and how far bf16 codes are from fp32 codes. Without CUDA it says so and exits 0.

    infra/gpu-check.sh                      # or: python -m benchmarks.gpu_check --items 60000

Data: augmented MNIST training images (``../shared/datasets/mnist.npz``; scikit-learn's digits
when it is absent), made once and not timed. Rows: CPU (fp32, ``--cpu-threads`` threads) and GPU
(bf16-mixed training, DDP when more than one GPU; encode with bf16 autocast, then fp32 for the
comparison). Code agreement: mean cosine of each item's bf16 and fp32 codes, the largest absolute
difference relative to the codes' standard deviation, and the overlap of the 10 nearest neighbours
of 1,000 items in both code sets (exact search, faiss).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import write_results
from benchmarks.stages import RECIPE, TINY_RECIPE, corpus_file, machine


def cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def timed_run(args: argparse.Namespace, name: str, extra: list[str]) -> tuple[dict[str, Any], np.ndarray]:
    """Train then encode in ``out/runs/name``; (row, codes in store order)."""
    from aepipe.codes.encode import encode_corpus
    from aepipe.codes.store import open_store
    from aepipe.config import build_config
    from aepipe.model.train import train_model

    src = corpus_file(args, "gpu-check", args.items, seed=1)
    run_dir = Path(args.out) / "runs" / name
    cfg = build_config(
        overrides=(TINY_RECIPE if args.tiny else RECIPE)
        + [
            f"run_dir={run_dir}",
            f"corpus.source={src}",
            f"training.max_epochs={args.epochs}",
            "training.early_stopping_patience=1000",  # the same number of epochs on both devices
            "encode.batch_size=4096",
            *extra,
        ]
    )
    t = time.perf_counter()
    train_model(cfg)
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    encoded = encode_corpus(cfg)
    encode_s = time.perf_counter() - t
    _, codes = open_store(run_dir / "store").read_codes()
    row = {
        "run": name,
        "n_items": encoded.n_items,
        "train_s": train_s,
        "train_items_per_s": args.epochs * encoded.n_items / train_s,
        "encode_s": encode_s,
        "encode_items_per_s": encoded.n_items / encode_s,
    }
    return row, codes


def encode_only(args: argparse.Namespace, name: str, extra: list[str]) -> np.ndarray:
    """Re-encode ``name``'s corpus with its trained model under other encode settings."""
    from aepipe.codes.encode import encode_corpus
    from aepipe.codes.store import open_store
    from aepipe.config import build_config

    src = corpus_file(args, "gpu-check", args.items, seed=1)
    run_dir = Path(args.out) / "runs" / name
    cfg = build_config(
        overrides=(TINY_RECIPE if args.tiny else RECIPE)
        + [f"run_dir={run_dir}", f"corpus.source={src}", "encode.batch_size=4096", *extra]
    )
    encode_corpus(cfg)
    return open_store(run_dir / "store").read_codes()[1]


def agreement(a: np.ndarray, b: np.ndarray, n_queries: int = 1000) -> dict[str, float]:
    import faiss

    a, b = np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    q = np.random.default_rng(0).choice(len(a), min(n_queries, len(a)), replace=False)
    _, ia = faiss.knn(a[q], a, 11)
    _, ib = faiss.knn(b[q], b, 11)
    overlap = np.mean([len(set(x[1:]) & set(y[1:])) / 10 for x, y in zip(ia, ib)])
    return {
        "mean_cosine": float(cos.mean()),
        "max_abs_diff_over_std": float(np.abs(a - b).max() / max(a.std(), 1e-12)),
        "knn10_overlap": float(overlap),
    }


def table(rows: list[dict[str, Any]], agree: dict[str, float], args: argparse.Namespace, argv: list[str]) -> str:
    cpu = rows[0]
    lines = [
        f"Command: `python -m benchmarks.gpu_check {' '.join(argv)}`  ",
        f"Machine: {machine(args.cpu_threads)}  ",
        f"GPUs: {gpu_names()}  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| run | items | train (items/s, all epochs) | vs CPU | encode (items/s) | vs CPU |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['n_items']:,} | {r['train_s']:.1f} s ({r['train_items_per_s']:,.0f}) | "
            f"{r['train_items_per_s'] / cpu['train_items_per_s']:.1f}x | {r['encode_s']:.1f} s "
            f"({r['encode_items_per_s']:,.0f}) | {r['encode_items_per_s'] / cpu['encode_items_per_s']:.1f}x |"
        )
    lines += [
        "",
        "bf16 autocast vs fp32 codes of the GPU-trained model: mean cosine "
        f"{agree['mean_cosine']:.5f}, largest |difference| {agree['max_abs_diff_over_std']:.4f} x the codes' std, "
        f"10-NN overlap {agree['knn10_overlap']:.3f}",
    ]
    return "\n".join(lines)


def gpu_names() -> str:
    import torch

    return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "none"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/datasets/mnist.npz")
    p.add_argument("--items", type=int, default=60_000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--cpu-threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", default="bench-out/gpu-check")
    # tests: every step of the check with "cpu" where CUDA would be (bf16 on the CPU; N processes
    # in DDP as N GPUs would be), so that the path a GPU machine takes is exercised where there is none
    p.add_argument("--rehearse-on-cpu", type=int, default=0, metavar="N", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    n_gpus = args.rehearse_on_cpu or cuda_devices()
    if not n_gpus:
        print("gpu-check: skipped: no CUDA device (torch.cuda.is_available() is False)")
        return 0
    accelerator, device = ("cpu", "cpu") if args.rehearse_on_cpu else ("gpu", "cuda")
    import torch

    from aepipe.logs import setup_logging

    setup_logging(0, stream_is_tty=False)
    args.tiny = not Path(args.data).is_file()  # digits when MNIST is not there
    torch.set_num_threads(args.cpu_threads)
    cpu, _ = timed_run(args, "cpu", ["training.accelerator=cpu", "encode.device=cpu", "encode.autocast=off"])
    gpu_train = [
        f"training.accelerator={accelerator}",
        f"training.devices={n_gpus}",
        f"training.strategy={'ddp' if n_gpus > 1 else 'auto'}",
        "training.precision=bf16-mixed",
    ]
    name = f"{accelerator} x{n_gpus} bf16"
    gpu, bf16 = timed_run(args, name, [*gpu_train, f"encode.device={device}", "encode.autocast=bf16"])
    fp32 = encode_only(args, name, [*gpu_train, f"encode.device={device}", "encode.autocast=off"])
    agree = agreement(bf16, fp32)
    write_results(Path(args.out), [cpu, gpu, {"agreement": agree}], table([cpu, gpu], agree, args, argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
