"""Logging: the one set-up of every entry point, and nested timing lines that read like an outline."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
import warnings
from collections.abc import Iterator

log = logging.getLogger("aepipe.logs")
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


# Loggers of libraries that talk at INFO about their own plumbing (HTTP calls to the Prefect API,
# faiss's SIMD loader, Lightning's banners and tips); shown only with -vv.
NOISY_LOGGERS = (
    "httpx",
    "httpcore",
    "faiss",
    "faiss.loader",
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "pytorch_lightning",
    "prefect.client",
    "urllib3",
    "asyncio",
)


def setup_logging(verbose: int = 0, *, stream_is_tty: bool | None = None, prefix: str = "") -> int:
    """The one logging set-up of every entry point (CLI, DDP ranks, benchmarks): aepipe at INFO on
    a terminal or with -v (WARNING otherwise), third-party loggers at WARNING unless -vv, and
    Lightning's advice warnings (dataloader workers, unused accelerators) filtered by module,
    never by category. Returns the level chosen for aepipe."""
    tty = sys.stderr.isatty() if stream_is_tty is None else stream_is_tty
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose or tty else logging.WARNING
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        datefmt="%H:%M:%S",
        format=f"%(asctime)s %(levelname)s %(name)s{prefix}: %(message)s",
    )
    logging.getLogger("aepipe").setLevel(level)
    # Per-epoch training lines (aepipe.model.progress; only written when stderr is not a terminal)
    # are what a scheduled job's log has instead of a progress bar: shown at the default verbosity.
    logging.getLogger("aepipe.progress").setLevel(min(level, logging.INFO))
    if verbose < 2:
        import lightning.pytorch  # noqa: F401  (it sets its own log level on import; override after)

        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", module=r"lightning(\.|$)")
        warnings.filterwarnings("ignore", module=r"pytorch_lightning(\.|$)")
    return level
