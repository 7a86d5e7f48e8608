"""What every command shares: the config arguments, the config they resolve to, and stage
results printed as one JSON object on stdout."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, is_dataclass
from typing import Any

from aepipe.config import PipelineConfig, load_config
from aepipe.layout import RunLayout


def add_config_args(p: argparse.ArgumentParser, corpus: bool = True) -> None:
    """-c, --run-dir, --set, and --corpus for the commands that read the corpus."""
    p.add_argument(
        "-c",
        "--config",
        help="YAML config file (sections: corpus, features, model, training, encode, index, cluster, "
        "evaluation, drift; see data/example.yaml)",
    )
    p.add_argument("--run-dir", help="run directory (overrides run_dir)")
    if corpus:
        p.add_argument(
            "--corpus", help="corpus source: folder, .parquet, .npy/.npz or 'digits' (overrides corpus.source)"
        )
    p.add_argument(
        "-s",
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set model.code_size=30 (repeatable)",
    )


def add_wait_arg(p: argparse.ArgumentParser) -> None:
    """Writing commands: how long to wait for another writer of the run (default: fail at once)."""
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="if another process is writing the run, wait up to SECONDS for it (default: fail at once)",
    )


def config_from_args(args: argparse.Namespace, base: list[str] | None = None) -> PipelineConfig:
    """Config file (default: the run directory's saved config.yaml, so later stages reuse the
    settings of earlier ones), then the built-in base, then command-line overrides."""
    overrides = list(base or []) + list(args.set)
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    if getattr(args, "corpus", None):
        overrides.append(f"corpus.source={args.corpus}")
    path = args.config
    if path is None and args.run_dir and RunLayout.at(args.run_dir).config.is_file():
        path = RunLayout.at(args.run_dir).config
    return load_config(path, overrides)


def emit(obj: Any) -> None:
    """Stage results: one JSON object on stdout (parseable by scripts)."""
    if is_dataclass(obj) and not isinstance(obj, type):
        obj = asdict(obj)
    print(json.dumps(obj, default=str))
