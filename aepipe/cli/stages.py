"""Stage commands: train, encode, index, update, cluster, eval (the library, no orchestrator)."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from aepipe.cli.common import add_config_args, add_wait_arg, config_from_args, emit
from aepipe.config import PipelineConfig
from aepipe.runlock import command_line, run_lock

log = logging.getLogger("aepipe")


def _cmd_stage(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    # the whole command under the run's writer lock (the stage functions re-enter it)
    with run_lock(cfg.run_dir, command_line(), wait=args.wait):
        return _run_stage(args, cfg)


def _run_stage(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    if args.command == "train":
        from aepipe.model.train import train_model

        emit(train_model(cfg))
    elif args.command == "encode":
        from aepipe.codes.encode import encode_corpus

        emit(encode_corpus(cfg))
    elif args.command == "index":
        from aepipe.pipeline import index_stage

        emit(index_stage(cfg))
    elif args.command == "update":
        from aepipe.update import update_run

        emit(update_run(cfg))
    elif args.command == "eval":
        from aepipe.report.evaluate import evaluate_run, markdown_table

        report = evaluate_run(cfg)
        print(markdown_table(report) if args.format == "table" else json.dumps(report))
        return 0
    elif args.command == "cluster":
        from aepipe.pipeline import cluster_stage

        emit(cluster_stage(cfg))
    return 0


STAGES = {
    "train": (
        "train an autoencoder (Lightning)",
        "Train the autoencoder on the corpus and save it to RUN/model (weights, config, preprocessing, "
        "held-out metrics). Prints the result as one JSON object.",
        "aepipe train --corpus path/to/images --run-dir runs/photos --set model.code_size=32",
    ),
    "encode": (
        "encode the corpus into the Parquet code store",
        "Stream the corpus through the run's encoder into RUN/store (one code per item). Prints one JSON object.",
        "aepipe encode --corpus path/to/images --run-dir runs/photos",
    ),
    "index": (
        "build the FAISS index over the code store",
        "Build and tune a FAISS index over RUN/store (type from the size and memory budget, or index.factory). "
        "Prints one JSON object.",
        "aepipe index --run-dir runs/photos --set index.metric=cosine",
    ),
    "update": (
        "incremental: encode new/changed items, drop removed ones, update store and index",
        "Bring the store and index up to date with the corpus without re-encoding it. Prints one JSON object.",
        "aepipe update --run-dir runs/photos",
    ),
    "cluster": (
        "k-means on the codes",
        "k-means (faiss) on the stored codes: RUN/clusters (assignments, sizes, scores, prototypes or topics). "
        "Prints one JSON object.",
        "aepipe cluster --run-dir runs/photos --set cluster.n_clusters=20",
    ),
    "eval": (
        "AE vs PCA: reconstruction, retrieval, clustering (JSON + Markdown)",
        "Measure the codes next to PCA at the same size; writes RUN/eval/eval.json and eval.md.",
        "aepipe eval --run-dir runs/photos --format json",
    ),
}


def register(sub: Any) -> None:
    for name, (help_, description, example) in STAGES.items():
        p = sub.add_parser(name, help=help_, description=description, epilog=f"example:\n  {example}")
        add_config_args(p, corpus=name in ("train", "encode", "update", "eval"))
        if name == "eval":
            p.add_argument(
                "--format", choices=["table", "json"], default=None, help="default: table on a terminal, else json"
            )
        add_wait_arg(p)
        p.set_defaults(func=_cmd_stage)
