"""Stage commands: train, encode, index, update, cluster, eval (the library, no orchestrator)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
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
        print(markdown_table(report) if sys.stdout.isatty() else json.dumps(report))
        return 0
    elif args.command == "cluster":
        from aepipe.cluster.kmeans import cluster_codes

        emit(cluster_codes(cfg))
    return 0


def register(sub: Any) -> None:
    for name, help_ in (
        ("train", "train an autoencoder (Lightning)"),
        ("encode", "encode the corpus into the Parquet code store"),
        ("index", "build the FAISS index over the code store"),
        ("update", "incremental: encode new/changed items, drop removed ones, update store and index"),
        ("cluster", "k-means on the codes"),
        ("eval", "AE vs PCA: reconstruction, retrieval, clustering (JSON + Markdown)"),
    ):
        p = sub.add_parser(name, help=help_)
        add_config_args(p)
        add_wait_arg(p)
        p.set_defaults(func=_cmd_stage)
