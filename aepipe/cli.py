"""``aepipe`` command line: one subcommand per stage, plus ``run``, ``demo`` and ``info``.

Stage commands call the library directly; ``run`` and ``demo`` run the Prefect
pipeline flow (ephemeral local server, nothing to start by hand).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from aepipe import __version__
from aepipe.config import PipelineConfig, load_config
from aepipe.errors import AepipeError, ConfigError

log = logging.getLogger("aepipe")

DEMO_OVERRIDES = [
    "corpus.source=digits",
    "model.architecture=dense",
    "model.code_size=10",
    "model.n_layers=2",
    "model.nodes_per_layer=[256, 128]",
    "training.max_epochs=100",
    "training.batch_size=64",
    "training.lr=0.003",
]

# The documents demo: docstrings of Python's standard library, labelled by package (no download).
DOC_DEMO_OVERRIDES = [
    "corpus.kind=documents",
    "corpus.source=python-docs",
    "model.code_size=16",
    "training.max_epochs=60",
]


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="YAML config file (sections: corpus, features, model, training, encode, index, cluster, query)")
    p.add_argument("--run-dir", help="run directory (overrides run_dir)")
    p.add_argument("--corpus", help="corpus source: folder, .parquet, .npy/.npz or 'digits' (overrides corpus.source)")
    p.add_argument("-s", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.code_size=30 (repeatable)")


def _config(args: argparse.Namespace, base: list[str] | None = None) -> PipelineConfig:
    """Config file (default: the run directory's saved config.yaml, so later stages reuse the
    settings of earlier ones), then the built-in base, then command-line overrides."""
    overrides = list(base or []) + list(args.set)
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    if getattr(args, "corpus", None):
        overrides.append(f"corpus.source={args.corpus}")
    path = args.config
    if path is None and args.run_dir and (Path(args.run_dir) / "config.yaml").is_file():
        path = Path(args.run_dir) / "config.yaml"
    return load_config(path, overrides)


def _emit(obj: Any) -> None:
    """Stage results: one JSON object on stdout (parseable by scripts)."""
    if is_dataclass(obj):
        obj = asdict(obj)
    print(json.dumps(obj, default=str))


def _cmd_stage(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if args.command == "train":
        from aepipe.pipeline import save_run_config
        from aepipe.train import train_model

        save_run_config(cfg)
        _emit(train_model(cfg))
    elif args.command == "encode":
        from aepipe.encode import encode_corpus

        _emit(encode_corpus(cfg))
    elif args.command == "index":
        from aepipe.index import build_index

        _emit(build_index(cfg))
    elif args.command == "update":
        from aepipe.update import update_run

        _emit(update_run(cfg))
    elif args.command == "eval":
        from aepipe.evaluation import evaluate_run, markdown_table

        report = evaluate_run(cfg)
        print(markdown_table(report) if sys.stdout.isatty() else json.dumps(report))
        return 0
    elif args.command == "cluster":
        from aepipe.cluster import cluster_codes

        _emit(cluster_codes(cfg))
    return 0


def _run_flow(cfg: PipelineConfig, use_prefect: bool) -> dict[str, Any]:
    if not use_prefect:
        from aepipe.pipeline import run_pipeline

        return run_pipeline(cfg)
    from flows.pipeline import pipeline_flow  # imports Prefect (env defaults set in flows/__init__)

    _quiet_prefect_shutdown()
    return pipeline_flow(cfg)


def _quiet_prefect_shutdown() -> None:
    """Prefect's ephemeral server can log event-flush tracebacks while it shuts down after a
    successful run; keep them out of the user's terminal unless asked for (-vv)."""
    if not log.isEnabledFor(logging.DEBUG):
        for name in ("prefect.events.clients", "prefect._internal.concurrency", "prefect.server"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _cmd_run(args: argparse.Namespace) -> int:
    from aepipe.report import format_report

    cfg = _config(args)
    report = _run_flow(cfg, not args.no_prefect)
    print(format_report(report) if sys.stdout.isatty() else json.dumps(report))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from aepipe.report import format_report

    out = Path(args.out).resolve()
    args.run_dir, args.corpus = str(out), None
    cfg = _config(args, DOC_DEMO_OVERRIDES if args.documents else DEMO_OVERRIDES)
    what = "Python standard-library docstrings" if args.documents else "scikit-learn's digits"
    print(f"aepipe demo: training a {cfg.model.code_size}-d autoencoder on {what}; output in {out}", file=sys.stderr)
    report = _run_flow(cfg, not args.no_prefect)
    print(format_report(report))
    if args.documents:
        from aepipe.io import read_json
        from aepipe.layout import RunLayout
        from aepipe.topics import format_topics

        topics = read_json(RunLayout.at(cfg.run_dir).clusters.topics)
        topics["topics"] = topics["topics"][:5]
        print("\nlargest topics:\n" + format_topics(topics))
    print(f"report: {out / 'report.json'}")
    return 0


def _cmd_topics(args: argparse.Namespace) -> int:
    """Cluster the document codes (the cluster stage) and print the topics."""
    from aepipe.cluster import cluster_codes
    from aepipe.io import read_json
    from aepipe.layout import RunLayout
    from aepipe.topics import format_topics

    cfg = _config(args)
    cluster_codes(cfg)
    path = RunLayout.at(cfg.run_dir).clusters.topics
    if not path.is_file():
        raise ConfigError(f"no topics for {cfg.run_dir}: topics need a document run (corpus.kind=documents) "
                          "whose store was encoded by the run's model")
    topics = read_json(path)
    print(format_topics(topics) if args.format == "text" else json.dumps(topics))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    """Serve every flow as a deployment (flow/NAME) with cron schedules; no work pool. Runs until
    interrupted; flow runs execute in subprocesses of this one."""
    cfg = _config(args)
    from flows.deployments import parse_schedules, serve_deployments  # imports Prefect (env defaults in flows/)

    schedules = parse_schedules(args.cron)
    if not os.environ.get("PREFECT_API_URL"):
        print("aepipe serve: PREFECT_API_URL is not set, so runs and schedules live in a temporary local server "
              "that stops with this process; start `prefect server start` and set PREFECT_API_URL for a lasting one",
              file=sys.stderr)
    planned = ", ".join(f"{k} '{v}'" for k, v in schedules.items() if v) or "none"
    print(f"aepipe serve: deployments <flow>/{args.name} for {cfg.run_dir}; schedules ({args.timezone}): {planned}",
          file=sys.stderr)
    serve_deployments(cfg, schedules, args.name, args.timezone, args.limit)
    return 0


def _read_queries(path: str) -> list[str]:
    return [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]


def _cmd_search(args: argparse.Namespace) -> int:
    import numpy as np

    from aepipe.search import Searcher, hits_table

    searcher = Searcher(args.run_dir, args.model)
    k = args.k
    if args.vectors:
        path = Path(args.vectors)
        if not path.is_file():
            raise ConfigError(f"vector file {path} does not exist")
        try:
            vecs = np.load(path, allow_pickle=False) if path.suffix == ".npy" else np.loadtxt(path, ndmin=2, dtype=np.float32)
        except ValueError as exc:
            raise ConfigError(f"cannot read vectors from {path}: {exc}") from None
        results = searcher.search_vectors(vecs, k)
    elif args.id:
        results = searcher.search_ids(args.id, k)
    elif args.image:
        results = searcher.search_images(args.image, k)
    elif args.text or args.text_file:
        texts = list(args.text or [])
        if args.text_file:
            if not Path(args.text_file).is_file():
                raise ConfigError(f"query file {args.text_file} does not exist")
            texts += _read_queries(args.text_file)
        if not texts:
            raise ConfigError(f"no queries in {args.text_file} (one query per line)")
        results = searcher.search_texts(texts, k)
    else:
        raise ConfigError("give queries with --image, --id or --vectors, or for documents --text or --text-file")
    table = hits_table(results)
    if args.output:
        import pyarrow.parquet as pq

        pq.write_table(table, args.output)
    elif args.format == "json":
        print(json.dumps(table.to_pylist()))
    else:
        _print_table(table.to_pylist())
    return 0


def _print_table(rows: list[dict[str, Any]]) -> None:
    cols = ["query", "rank", "id", "distance", "label", "source"]
    if any(r.get("snippet") for r in rows):  # documents: the snippet says more than the file name
        cols[-1] = "snippet"
    cells = [[f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c] if r[c] is not None else "")[:80] for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def _cmd_info(args: argparse.Namespace) -> int:
    from aepipe.info import describe

    print(json.dumps(describe(Path(args.path)), indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aepipe", description="Autoencoder compression and similarity search.")
    parser.add_argument("--version", action="version", version=f"aepipe {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_ in (("train", "train an autoencoder (Lightning)"), ("encode", "encode the corpus into the Parquet code store"),
                        ("index", "build the FAISS index over the code store"),
                        ("update", "incremental: encode new/changed items, drop removed ones, update store and index"),
                        ("cluster", "k-means on the codes"),
                        ("eval", "AE vs PCA: reconstruction, retrieval, clustering (JSON + Markdown)")):
        p = sub.add_parser(name, help=help_)
        _add_config_args(p)
        p.set_defaults(func=_cmd_stage)
    p = sub.add_parser("run", help="all stages through the Prefect pipeline flow")
    _add_config_args(p)
    p.add_argument("--no-prefect", action="store_true", help="call the stage functions directly")
    p.set_defaults(func=_cmd_run)
    p = sub.add_parser("demo", help="the pipeline on scikit-learn's bundled digits (no download)")
    p.add_argument("--out", default="aepipe-demo", help="output directory (default: ./aepipe-demo)")
    p.add_argument("-c", "--config", help=argparse.SUPPRESS)
    p.add_argument("-s", "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--no-prefect", action="store_true", help="call the stage functions directly")
    p.add_argument("--documents", action="store_true",
                   help="documents demo: docstrings of Python's standard library, labelled by package")
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("serve", help="serve the flows as scheduled Prefect deployments (no work pool)")
    _add_config_args(p)
    p.add_argument("--name", default="default", help="deployment name: runs are <flow>/NAME (default: default)")
    p.add_argument("--cron", action="append", default=[], metavar="FLOW=CRON",
                   help="schedule of pipeline, update, train, encode, index or cluster, e.g. --cron 'train=0 3 * * 0'; "
                        "FLOW=none for none (default: pipeline=0 2 * * *, the rest on demand)")
    p.add_argument("--timezone", default="UTC", help="time zone of the cron schedules (IANA name, default UTC)")
    p.add_argument("--limit", type=int, help="at most this many flow runs at once")
    p.set_defaults(func=_cmd_serve)
    p = sub.add_parser("search", help="k nearest stored items of images, texts, stored ids or vectors")
    p.add_argument("--run-dir", default="runs/default")
    p.add_argument("--model", help="model directory to embed query images (default: the run's model)")
    p.add_argument("--image", nargs="+", help="query image file(s)")
    p.add_argument("--text", nargs="+", help="query text(s) (document runs)")
    p.add_argument("--text-file", help="file of query texts, one per line (document runs)")
    p.add_argument("--id", nargs="+", help="query by stored id(s)")
    p.add_argument("--vectors", help="query vectors: .npy (N, dim) or a text file with one vector per line")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--format", choices=["table", "json"], default=None, help="default: table on a terminal, else json")
    p.add_argument("--output", help="write results as Parquet to this file")
    p.set_defaults(func=_cmd_search)
    p = sub.add_parser("topics", help="document runs: cluster the codes and print topics (top terms, size, exemplars)")
    _add_config_args(p)
    p.add_argument("--format", choices=["text", "json"], default=None, help="default: text on a terminal, else json")
    p.set_defaults(func=_cmd_topics)
    p = sub.add_parser("info", help="describe a run directory, model, store or index")
    p.add_argument("path")
    p.set_defaults(func=_cmd_info)
    return parser


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose or sys.stderr.isatty() else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("aepipe").setLevel(level)
    if verbose < 2:  # Lightning's banners and tips are noise for pipeline users
        import lightning.pytorch  # noqa: F401  (it sets its own log level on import; override after)

        for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
            logging.getLogger(name).setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", module="lightning")
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING" if not verbose else "INFO")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "format", None) is None and args.command == "search":
        args.format = "table" if sys.stdout.isatty() else "json"
    if getattr(args, "format", None) is None and args.command == "topics":
        args.format = "text" if sys.stdout.isatty() else "json"
    if getattr(args, "k", 1) < 1:
        parser.error("-k must be at least 1")
    if args.command == "serve":  # flow-run logs at INFO in the Prefect UI, whatever the terminal
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    _setup_logging(args.verbose)
    try:
        return args.func(args)
    except AepipeError as exc:
        print(f"aepipe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aepipe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
