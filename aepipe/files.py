"""Atomic writes: write to a temporary name in the same directory, then rename.

A reader never sees a half-written file, and a failed run leaves the previous
artifact in place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def tmp_path_for(path: Path) -> Path:
    """A hidden, unique temporary name beside ``path`` (same directory, so a rename is atomic)."""
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def is_in_flight(name: str) -> bool:
    """A temporary name of an atomic write (``tmp_path_for``, ``temp_dir_beside``): left behind only
    by a writer that was killed, never part of a finished artifact. (``replace_dir``'s ``*.old-*``
    directories are not: ``recover_dir`` may need them.)"""
    return name.startswith(".") and ".tmp-" in name


def remove_in_flight(root: Path) -> int:
    """Delete the leftovers of killed writers under ``root``; the number removed. Only for a caller
    that holds the run's writer lock (no live writer can own them)."""
    found = [p for p in root.rglob(".*") if is_in_flight(p.name)] if root.is_dir() else []
    for p in found:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return len(found)


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data to disk (before it is renamed into place: a rename that survives a
    power cut must not point at data that did not)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (renames, new files) to disk: the commit point of a rename."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (deepest first), then ``root``."""
    root = Path(root)
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fsync_file(Path(dirpath) / name)
        fsync_dir(Path(dirpath))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode())


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_table(path: Path, table: pa.Table, **kwargs: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    try:
        pq.write_table(table, tmp, **kwargs)
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def replace_dir(staging: Path, final: Path) -> None:
    """Move a completed ``staging`` directory to ``final``, replacing what was there.

    The old directory is first renamed aside, so at every moment either the old
    or the new complete directory exists under ``final`` (or, for an instant,
    under ``final.old-*``, which :func:`recover_dir` puts back).
    """
    staging, final = Path(staging), Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fsync_tree(staging)  # files written in place (faiss indexes, Parquet writers) reach the disk first
    old = None
    if final.exists():
        old = final.with_name(f"{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(staging, final)
    fsync_dir(final.parent)  # the commit point: both renames on disk before the old copy goes
    if staging.parent != final.parent:
        fsync_dir(staging.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def recover_dir(final: Path) -> None:
    """Undo an interrupted :func:`replace_dir` (old moved aside, new not yet in place)."""
    final = Path(final)
    if final.exists():
        for stale in final.parent.glob(f"{final.name}.old-*"):
            shutil.rmtree(stale, ignore_errors=True)
        return
    olds = sorted(final.parent.glob(f"{final.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds:
        os.replace(olds[-1], final)


def fresh_dir(path: Path) -> Path:
    """An empty directory at ``path`` (removing a leftover from a failed attempt)."""
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def temp_dir_near(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Hard-link ``src`` to ``dst`` (artifacts are replaced, never modified in place, so sharing a
    file is safe), or copy it where links cannot be made (another filesystem)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
