"""Query commands: search (by image, text, stored id or vector) and topics (document runs)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from aepipe.cli.common import add_config_args, config_from_args
from aepipe.errors import ConfigError, MissingArtifact

log = logging.getLogger("aepipe")


def _read_queries(path: str) -> list[str]:
    return [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]


OUTPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".json": "json"}


def _image_queries(paths: list[str]) -> list[str]:
    """Files as given; folders expanded to the image files under them (recursive, sorted)."""
    from aepipe.config import CorpusConfig

    exts = {e.lower() for e in CorpusConfig().images.extensions}
    out: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = sorted(str(f) for f in path.rglob("*") if f.is_file() and f.suffix.lower() in exts)
            if not found:
                raise ConfigError(f"folder {path} holds no image file ({', '.join(sorted(exts))})")
            out += found
        else:
            out.append(p)
    return out


def _known_ids(searcher: Any, ids: list[str]) -> list[str]:
    """The ids in the store; each unknown one is reported on stderr (partial results, exit status 1)."""
    meta = searcher.metadata()
    unknown = [i for i in ids if i not in meta]
    if len(unknown) == len(ids):  # nothing to answer: one line, exit status 2
        shown = ", ".join(repr(i) for i in unknown[:3]) + (", ..." if len(unknown) > 3 else "")
        raise ConfigError(f"none of the {len(ids)} id(s) is in the store ({shown})")
    for i in unknown:  # partial results: one line per unknown id, exit status 1
        print(f"aepipe: error: id {i!r} is not in the store", file=sys.stderr)
    return [i for i in ids if i in meta]


def _write_output(table: Any, path: str, fmt: str | None) -> None:
    from aepipe.files import atomic_write_bytes, atomic_write_table

    fmt = fmt or OUTPUT_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"cannot tell the format of {path} from its extension; "
            "use .parquet, .csv, .jsonl or .json, or --output-format"
        )
    if fmt == "parquet":
        atomic_write_table(Path(path), table)
    elif fmt == "csv":
        import pyarrow as pa
        import pyarrow.csv as pacsv

        buf = pa.BufferOutputStream()
        pacsv.write_csv(table, buf)
        atomic_write_bytes(Path(path), buf.getvalue().to_pybytes())
    else:
        rows = table.to_pylist()
        text = "".join(json.dumps(r) + "\n" for r in rows) if fmt == "jsonl" else json.dumps(rows) + "\n"
        atomic_write_bytes(Path(path), text.encode())


def _cmd_search(args: argparse.Namespace) -> int:
    import numpy as np

    from aepipe.index.search import Searcher, hits_table

    if args.text_file and (args.image or args.id or args.vectors):
        raise ConfigError("--text-file goes with --text only, not with --image, --id or --vectors")
    searcher = Searcher(args.run_dir, args.model)
    k, status = args.k, 0
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
        known = _known_ids(searcher, args.id)
        status = 0 if len(known) == len(args.id) else 1
        args.id = known
        results = searcher.search_ids(known, k)
    elif args.image:
        args.image = _image_queries(args.image)
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
        _write_output(table, args.output, args.output_format)
    elif args.format == "json":
        print(json.dumps(table.to_pylist()))
    else:
        _print_table(table.to_pylist())
    return status


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
    from aepipe.pipeline import cluster_stage

    cluster_stage(cfg)
    path = layout.clusters.topics
    if not path.is_file():
        raise ConfigError(
            f"no topics for {cfg.run_dir}: topics need a document run (corpus.kind=documents) "
            "whose store was encoded by the run's model"
        )
    topics = read_json(path)
    print(json.dumps(topics) if args.format == "json" else format_topics(topics))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "search",
        help="k nearest stored items of images, texts, stored ids or vectors",
        description="Search the run's index by image file(s) or folders of images, by stored id(s), by "
        "vectors, or (document runs) by text. Prints a table on a terminal, else JSON. Unknown ids are "
        "reported one per line on stderr and the others answered (exit status 1).",
        epilog="examples:\n  aepipe search --run-dir runs/photos --image query.jpg queries/ -k 5\n"
        "  aepipe search --run-dir runs/photos --id cats/001.jpg --output hits.csv --html hits.html",
    )
    p.add_argument("--run-dir", default="runs/default", help="run directory with an index (default: runs/default)")
    p.add_argument("--model", help="model directory to embed query images (default: the run's model)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--image", nargs="+", help="query image file(s) or folder(s) of images")
    what.add_argument("--text", nargs="+", help="query text(s) (document runs)")
    what.add_argument("--id", nargs="+", help="query by stored id(s)")
    what.add_argument("--vectors", help="query vectors: .npy (N, dim) or a text file with one vector per line")
    p.add_argument("--text-file", help="file of query texts, one per line (document runs)")
    p.add_argument("-k", type=int, default=10, help="neighbours per query (default: 10)")
    p.add_argument("--format", choices=["table", "json"], default=None, help="default: table on a terminal, else json")
    p.add_argument(
        "--output", help="write the results to this file; format from the extension (.parquet, .csv, .jsonl, .json)"
    )
    p.add_argument(
        "--output-format",
        choices=["parquet", "csv", "jsonl", "json"],
        help="format of --output, whatever its extension",
    )
    p.add_argument(
        "--html", metavar="FILE", help="also write a contact sheet: each query and its hits as thumbnails (snippets)"
    )
    p.set_defaults(func=_cmd_search)
    p = sub.add_parser(
        "topics",
        help="document runs: cluster the codes and print topics (top terms, size, exemplars)",
        description="Cluster a document run's codes (the cluster stage) and print each topic's top terms, "
        "size, labels and exemplar documents.",
        epilog="example:\n  aepipe topics --run-dir runs/notes --set cluster.n_clusters=20 --format json",
    )
    add_config_args(p, corpus=False)
    p.add_argument(
        "--format",
        choices=["table", "json", "text"],
        default=None,
        help="table (text is the same) or json; default: table on a terminal, else json",
    )
    p.set_defaults(func=_cmd_topics)
