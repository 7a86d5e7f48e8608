"""One writer per run: an exclusive OS-level lock on ``RUN/.lock``, held by every writing stage.

``fcntl.flock`` on an open file: the kernel releases it when the holding process exits however it
exits (SIGKILL included), so a crashed writer never blocks the next one and there is no stale-lock
clean-up to get wrong. The holder writes who it is (pid, host, command, since) into the lock file
so a refused writer can name it. Readers (search, info, topics) take no lock. The writer that takes
the lock removes the temporary files (``.*.tmp-*``) killed writers left anywhere in the run: no
other writer can own them then.

The lock is re-entrant within one process: ``run_pipeline`` holds it and calls ``train_model``,
``encode_corpus``... which take it again; threads of the holding process (Prefect's thread task
runner) share it. Work handed to other processes by the holder (encode shards in a process pool,
DDP ranks) does not take it: the stage function that started them does.

flock is advisory and works on local filesystems (and NFSv4 via lock emulation); a run directory
shared between hosts over a filesystem without locks is not protected.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from aepipe.errors import RunLocked
from aepipe.files import remove_in_flight
from aepipe.layout import RunLayout

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.1
_guard = threading.Lock()
# lock path -> [file descriptor, depth]: what this process holds
_held: dict[str, list[int]] = {}


def describe_holder(lock_path: Path) -> str:
    """Who holds ``lock_path``, as written by the holder ("unknown" while it is being written)."""
    try:
        info = json.loads(Path(lock_path).read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process (not yet identified)"
    return (
        f"pid {info.get('pid', '?')} on {info.get('host', '?')} "
        f"({info.get('command', '?')}, since {info.get('since', '?')})"
    )


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise


def _write_holder(fd: int, command: str) -> None:
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)


@contextmanager
def run_lock(run_dir: str | Path, command: str, wait: float = 0.0) -> Iterator[Path]:
    """Hold the run's writer lock for the body; wait up to ``wait`` seconds for another holder,
    then raise :class:`RunLocked` naming it. Re-entrant within this process."""
    path = RunLayout.at(run_dir).lock
    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    with _guard:
        if key in _held:
            _held[key][1] += 1
            acquired_here = False
        else:
            acquired_here = True
    if acquired_here:
        fd = _acquire(path, command, wait)
        with _guard:
            _held[key] = [fd, 1]
        # no other writer can be running now: what killed writers left half-written goes
        swept = remove_in_flight(path.parent)
        if swept:
            log.info("removed %d temporary file(s) that killed writers left in %s", swept, path.parent)
    try:
        yield path
    finally:
        with _guard:
            entry = _held[key]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                # truncate first: a refused writer reading between the two steps sees "not identified"
                os.ftruncate(entry[0], 0)
                os.close(entry[0])  # closing the descriptor releases the flock


def _acquire(path: Path, command: str, wait: float) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    deadline = time.monotonic() + max(wait, 0.0)
    try:
        while not _try_flock(fd):
            if time.monotonic() >= deadline:
                waited = f" after waiting {wait:g}s" if wait > 0 else ""
                raise RunLocked(
                    f"run {path.parent} is being written by {describe_holder(path)}{waited}; "
                    "wait for it to finish or pass --wait SECONDS"
                )
            time.sleep(_POLL_SECONDS)
        _write_holder(fd, command)
    except BaseException:
        os.close(fd)
        raise
    return fd


def holds_lock(run_dir: str | Path) -> bool:
    """Whether this process holds the writer lock of ``run_dir``."""
    with _guard:
        return str(RunLayout.at(run_dir).lock.resolve()) in _held


def command_line() -> str:
    """What this process runs, for the holder record (``aepipe encode --run-dir ...``)."""
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else ["python"]
    text = " ".join(argv)
    return text if len(text) <= 200 else text[:197] + "..."
