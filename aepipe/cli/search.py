"""Query commands: search (by image, text, stored id or vector) and topics (document runs)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from aepipe.cli.common import add_config_args, config_from_args
from aepipe.errors import ConfigError, MissingArtifact

log = logging.getLogger("aepipe")


def _read_queries(path: str) -> list[str]:
    return [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]


def _cmd_search(args: argparse.Namespace) -> int:
    import numpy as np

    from aepipe.index.search import Searcher, hits_table

    searcher = Searcher(args.run_dir, args.model)
    k = args.k
    if args.vectors:
        path = Path(args.vectors)
        if not path.is_file():
            raise ConfigError(f"vector file {path} does not exist")
        try:
            vecs = (
                np.load(path, allow_pickle=False)
                if path.suffix == ".npy"
                else np.loadtxt(path, ndmin=2, dtype=np.float32)
            )
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
    if args.html:
        from aepipe.report.contact import write_contact_sheet

        sheet = write_contact_sheet(args.run_dir, results, args.html, image_paths=args.image, query_ids=args.id)
        log.info("contact sheet: %s", sheet["path"])
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
    cells = [
        [f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c] if r[c] is not None else "")[:80] for c in cols]
        for r in rows
    ]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def _cmd_topics(args: argparse.Namespace) -> int:
    """Cluster the document codes (the cluster stage) and print the topics."""
    from aepipe.cluster.kmeans import cluster_codes
    from aepipe.cluster.topics import format_topics
    from aepipe.files import read_json
    from aepipe.layout import ModelFiles, RunLayout
    from aepipe.model.registry import current_model_dir

    cfg = config_from_args(args)
    layout = RunLayout.at(cfg.run_dir)
    model_config = ModelFiles(current_model_dir(layout)).config
    if not model_config.is_file():
        raise MissingArtifact(f"no trained model in {model_config.parent}; run `aepipe train` first")
    # decide before clustering: an image run's clusters/ must not be overwritten by a command that fails
    if read_json(model_config).get("corpus", {}).get("kind") != "documents":
        raise ConfigError(
            f"no topics for {cfg.run_dir}: topics need a document run (corpus.kind=documents); "
            "for an image run use `aepipe cluster`"
        )
    cluster_codes(cfg)
    path = layout.clusters.topics
    if not path.is_file():
        raise ConfigError(
            f"no topics for {cfg.run_dir}: topics need a document run (corpus.kind=documents) "
            "whose store was encoded by the run's model"
        )
    topics = read_json(path)
    print(format_topics(topics) if args.format == "text" else json.dumps(topics))
    return 0


def register(sub: Any) -> None:
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
    p.add_argument(
        "--html", metavar="FILE", help="also write a contact sheet: each query and its hits as thumbnails (snippets)"
    )
    p.set_defaults(func=_cmd_search)
    p = sub.add_parser("topics", help="document runs: cluster the codes and print topics (top terms, size, exemplars)")
    add_config_args(p)
    p.add_argument("--format", choices=["text", "json"], default=None, help="default: text on a terminal, else json")
    p.set_defaults(func=_cmd_topics)
