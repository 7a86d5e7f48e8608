"""``aepipe serve-search``: keep a run's model, store and index loaded behind a JSON API and a web page."""

from __future__ import annotations

import argparse
import logging
from typing import Any

log = logging.getLogger("aepipe")


def _cmd_serve_search(args: argparse.Namespace) -> int:
    from aepipe.serve.app import serve  # FastAPI only when this command runs

    log.info("search service for %s on http://%s:%d/ (Ctrl-C stops it)", args.run_dir, args.host, args.port)
    serve(args.run_dir, args.host, args.port)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve-search",
        help="serve a run's index: JSON API (by image, text, id, vector) and a web page",
        description="Load the run's model, store and index once and answer queries over HTTP: "
        "POST /api/search/{images,text,ids,vectors}, GET /api/items/ID[/thumbnail.png], /api/info, "
        "/api/health, and a web page at /. A rebuilt or updated index is picked up without a restart.",
        epilog="example:\n  aepipe serve-search --run-dir runs/photos --port 8000   # then open http://127.0.0.1:8000/",
    )
    p.add_argument("--run-dir", default="runs/default", help="run directory with an index (default: runs/default)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.set_defaults(func=_cmd_serve_search)
