"""Report command: ``aepipe report RUN`` writes the visual run report, RUN/report.html."""

from __future__ import annotations

import argparse
from typing import Any

from aepipe.cli.common import emit


def _cmd_report(args: argparse.Namespace) -> int:
    from aepipe.report.html import write_html_report

    emit(write_html_report(args.run_dir, args.output))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="write RUN/report.html: training curves, reconstructions, clusters, code map, index tuning",
        description="Write the run's visual report: one self-contained HTML page (images embedded) made "
        "from the run directory's artifacts. Prints {path, bytes, seconds} as JSON.",
        epilog="example:\n  aepipe report runs/photos   # then open runs/photos/report.html",
    )
    p.add_argument("run_dir", metavar="RUN", help="run directory")
    p.add_argument("-o", "--output", help="write the page here instead of RUN/report.html")
    p.set_defaults(func=_cmd_report)
