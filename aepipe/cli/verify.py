"""``aepipe verify RUN``: check the run's artifacts against the checksums recorded when they were
published; exit status 2 with one line naming the damaged files."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from aepipe.errors import CorruptArtifact


def _cmd_verify(args: argparse.Namespace) -> int:
    from aepipe.verify import verify_run

    report = verify_run(args.run_dir)
    print(json.dumps({**asdict(report), "ok": report.ok}))
    if not report.ok:
        shown = "; ".join(report.problems[:5]) + (
            f"; and {len(report.problems) - 5} more" if len(report.problems) > 5 else ""
        )
        raise CorruptArtifact(f"{len(report.problems)} problem(s) in {report.run_dir}: {shown}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "verify",
        help="check the run's published artifacts against their recorded checksums",
        description="Check the published generation (model, store, index, clusters) and the working "
        "artifacts of the same model against the checksums recorded when it was published; any "
        "missing, truncated or altered file is one line naming it, and exit status 2.",
        epilog="example:\n  aepipe verify runs/photos",
    )
    p.add_argument("run_dir", metavar="RUN", help="run directory")
    p.set_defaults(func=_cmd_verify)
