"""Inspection commands: config show (the resolved config or a preset), info (describe artifacts)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from aepipe.cli.common import add_config_args, config_from_args

log = logging.getLogger("aepipe")


def _cmd_config(args: argparse.Namespace) -> int:
    """Print the resolved config (file, run directory's saved config, overrides) or a preset as YAML."""
    import yaml

    from aepipe.config import dump_config, load_preset

    if args.preset:
        print(
            f"# preset {args.preset}: applied under your keys when preset is {args.preset} "
            f"(or auto and corpus.kind is {args.preset})"
        )
        print(yaml.safe_dump(load_preset(args.preset), sort_keys=False).rstrip())
        return 0
    print(dump_config(config_from_args(args)).rstrip())
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from aepipe.info import describe, summarize

    info = describe(Path(args.path))
    if args.format == "json":
        print(json.dumps(info, indent=2, default=str))
    else:
        rows = summarize(info)
        width = max(len(k) for k, _ in rows)
        print("\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "config",
        help="print the resolved config (or a named preset) as YAML",
        description="Print the config a command would use: the file, the run directory's saved config.yaml "
        "and --set overrides, resolved and validated, as YAML.",
        epilog="example:\n  aepipe config show --run-dir runs/photos --set model.code_size=16",
    )
    p.add_argument("action", choices=["show"], help="show: print it")
    add_config_args(p)
    p.add_argument("--preset", choices=["images", "documents"], help="print this preset's defaults instead")
    p.set_defaults(func=_cmd_config)
    p = sub.add_parser(
        "info",
        help="describe a run directory, model, store or index",
        description="Describe a run directory, model, store or index as JSON.",
        epilog="example:\n  aepipe info runs/photos --format json",
    )
    p.add_argument("path", help="run directory, model directory, store or index")
    p.add_argument(
        "--format",
        choices=["table", "json"],
        default=None,
        help="table: a few lines; json: everything; default: table on a terminal, else json",
    )
    p.set_defaults(func=_cmd_info)
