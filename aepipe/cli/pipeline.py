"""Pipeline commands: run (the Prefect pipeline flow), demo, serve (scheduled deployments)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from aepipe.cli.common import add_config_args, add_wait_arg, config_from_args
from aepipe.config import PipelineConfig
from aepipe.runlock import command_line, run_lock

log = logging.getLogger("aepipe")

# The demos run the defaults (the document preset for text): only the corpus and, for documents,
# the code size are set, so what the demo shows is what a user's own corpus gets.
DEMO_OVERRIDES = ["corpus.source=digits"]

# The documents demo: docstrings of Python's standard library, labelled by package (no download).
DOC_DEMO_OVERRIDES = ["corpus.kind=documents", "corpus.source=python-docs", "model.code_size=16"]


def _run_flow(cfg: PipelineConfig, use_prefect: bool) -> dict[str, Any]:
    if not use_prefect:
        from aepipe.pipeline import run_pipeline

        return run_pipeline(cfg)
    from aepipe_flows.pipeline import (
        pipeline_flow,  # imports Prefect (env defaults set in flows/__init__)
    )

    _quiet_prefect_shutdown()
    return pipeline_flow(cfg)


def _quiet_prefect_shutdown() -> None:
    """Prefect's ephemeral server can log event-flush tracebacks while it shuts down after a
    successful run; keep them out of the user's terminal unless asked for (-vv)."""
    if not log.isEnabledFor(logging.DEBUG):
        for name in ("prefect.events.clients", "prefect._internal.concurrency", "prefect.server"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _cmd_run(args: argparse.Namespace) -> int:
    from aepipe.report.summary import format_report

    cfg = config_from_args(args)
    with run_lock(cfg.run_dir, command_line(), wait=args.wait):
        report = _run_flow(cfg, not args.no_prefect)
    print(format_report(report) if sys.stdout.isatty() else json.dumps(report))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from aepipe.report.summary import format_report

    out = Path(args.out).resolve()
    args.run_dir, args.corpus = str(out), None
    cfg = config_from_args(args, DOC_DEMO_OVERRIDES if args.documents else DEMO_OVERRIDES)
    what = "Python standard-library docstrings" if args.documents else "scikit-learn's digits"
    print(f"aepipe demo: training a {cfg.model.code_size}-d autoencoder on {what}; output in {out}", file=sys.stderr)
    with run_lock(cfg.run_dir, command_line(), wait=args.wait):
        report = _run_flow(cfg, not args.no_prefect)
    print(format_report(report))
    if args.documents:
        from aepipe.cluster.topics import format_topics
        from aepipe.files import read_json
        from aepipe.layout import RunLayout

        topics = read_json(RunLayout.at(cfg.run_dir).clusters.topics)
        topics["topics"] = topics["topics"][:5]
        print("\nlargest topics:\n" + format_topics(topics))
    print(f"report: {out / 'report.json'}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    """Serve every flow as a deployment (flow/NAME) with cron schedules; no work pool. Runs until
    interrupted; flow runs execute in subprocesses of this one."""
    from aepipe.cli.prefect_server import api_url_configured, session_server

    cfg = config_from_args(args)
    server: AbstractContextManager[object] = nullcontext()
    if not api_url_configured():
        print(
            "aepipe serve: PREFECT_API_URL is not set: starting a Prefect server for this session (runs and "
            "schedules stop with it); start `prefect server start` and set PREFECT_API_URL for a lasting one",
            file=sys.stderr,
        )
        server = session_server()
    with server:  # before Prefect is imported: it reads PREFECT_API_URL from the environment
        from aepipe_flows.deployments import (  # imports Prefect (env defaults in flows/)
            parse_schedules,
            serve_deployments,
        )

        schedules = parse_schedules(args.cron)
        planned = ", ".join(f"{k} '{v}'" for k, v in schedules.items() if v) or "none"
        print(
            f"aepipe serve: deployments <flow>/{args.name} for {cfg.run_dir}; schedules ({args.timezone}): {planned}",
            file=sys.stderr,
        )
        serve_deployments(cfg, schedules, args.name, args.timezone, args.limit)
    print("aepipe serve: stopped", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="all stages through the Prefect pipeline flow",
        description="Train, encode, index and cluster through the Prefect pipeline flow (a temporary local "
        "server unless PREFECT_API_URL is set); writes RUN/report.json and RUN/report.html.",
        epilog="example:\n  aepipe run --corpus path/to/images --run-dir runs/photos --set model.code_size=32",
    )
    add_config_args(p)
    p.add_argument("--no-prefect", action="store_true", help="call the stage functions directly")
    add_wait_arg(p)
    p.set_defaults(func=_cmd_run)
    p = sub.add_parser(
        "demo",
        help="the pipeline on scikit-learn's bundled digits (no download)",
        description="Run the whole pipeline on scikit-learn's bundled digits (or --documents: Python's "
        "docstrings) and print a short report; everything goes under --out.",
        epilog="example:\n  aepipe demo --out /tmp/aepipe-demo --no-prefect",
    )
    p.add_argument("--out", default="aepipe-demo", help="output directory (default: ./aepipe-demo)")
    p.add_argument("-c", "--config", help=argparse.SUPPRESS)
    p.add_argument("-s", "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--no-prefect", action="store_true", help="call the stage functions directly")
    p.add_argument(
        "--documents",
        action="store_true",
        help="documents demo: docstrings of Python's standard library, labelled by package",
    )
    add_wait_arg(p)
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser(
        "serve",
        help="serve the flows as scheduled Prefect deployments (no work pool)",
        description="Register a deployment per flow with the config as parameter and run the scheduled and "
        "triggered runs until stopped (for the search service, see serve-search).",
        epilog="example:\n  aepipe serve -c nightly.yaml --cron 'pipeline=0 2 * * *'",
    )
    add_config_args(p)
    p.add_argument("--name", default="default", help="deployment name: runs are <flow>/NAME (default: default)")
    p.add_argument(
        "--cron",
        action="append",
        default=[],
        metavar="FLOW=CRON",
        help="schedule of pipeline, update, train, encode, index or cluster, e.g. --cron 'train=0 3 * * 0'; "
        "FLOW=none for none (default: pipeline=0 2 * * *, the rest on demand)",
    )
    p.add_argument("--timezone", default="UTC", help="time zone of the cron schedules (IANA name, default UTC)")
    p.add_argument("--limit", type=int, help="at most this many flow runs at once")
    p.set_defaults(func=_cmd_serve)
