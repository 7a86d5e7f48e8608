"""Nested, indented timing log lines that read like an outline."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

log = logging.getLogger("aepipe.timing")
_depth = threading.local()


@contextlib.contextmanager
def timed(what: str) -> Iterator[None]:
    depth = getattr(_depth, "n", 0)
    indent = "  " * depth
    log.info("%s%s ...", indent, what)
    _depth.n = depth + 1
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _depth.n = depth
        log.info("%s%s took %.2fs", indent, what, time.perf_counter() - t0)
