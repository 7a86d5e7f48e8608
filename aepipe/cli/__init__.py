"""``aepipe`` command line: one subcommand per stage, plus ``run``, ``demo``, ``serve``, ``search``,
``serve-search``, ``topics``, ``report``, ``config``, ``info`` and ``verify``.

Stage commands call the library directly; ``run`` and ``demo`` run the Prefect pipeline flow
(ephemeral local server, nothing to start by hand). Each module of this package registers its
commands (``register(sub)``); a new command is a new module listed in ``COMMAND_MODULES``.
Failures the user can fix are AepipeErrors: one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

from aepipe import __version__
from aepipe.cli import inspect, pipeline, report, restore, search, serve_search, stages, verify
from aepipe.errors import AepipeError
from aepipe.logs import setup_logging

COMMAND_MODULES = (stages, pipeline, search, restore, serve_search, report, inspect, verify)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aepipe", description="Autoencoder compression and similarity search.")
    parser.add_argument("--version", action="version", version=f"aepipe {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    for p in sub.choices.values():
        # global flags also after the subcommand (`aepipe search ... -v`); SUPPRESS keeps an earlier -v
        p.add_argument(
            "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more log output (-vv for debug)"
        )
        p.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples' line breaks
    return parser


def _setup_logging(verbose: int) -> None:
    setup_logging(verbose)
    if verbose < 2:  # Prefect's own lines (temporary server, task states) are third-party plumbing: -vv
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "format", None) is None and args.command == "search":
        args.format = "table" if sys.stdout.isatty() else "json"
    if getattr(args, "format", None) is None and args.command in ("topics", "eval", "info"):
        args.format = "table" if sys.stdout.isatty() else "json"
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
    except OSError as exc:
        if not _disk_full(exc):
            raise
        # a full disk (or a file-size limit) is the user's to fix: the stage left the previous
        # artifacts in place (it writes to staging and swaps only when complete)
        where = f" writing {exc.filename}" if exc.filename else ""
        print(
            f"aepipe: error: no space left{where} ({exc.strerror or str(exc).splitlines()[0]}); "
            "the previous artifacts are intact: free space and rerun",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("aepipe: interrupted", file=sys.stderr)
        return 130


def _disk_full(exc: OSError) -> bool:
    """ENOSPC, EDQUOT or EFBIG (a file-size limit), from the OS or as pyarrow/faiss report it."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    text = str(exc)
    return any(s in text for s in ("No space left", "Disk quota exceeded", "File too large"))


if __name__ == "__main__":
    sys.exit(main())
