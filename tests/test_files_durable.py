"""Commit points reach the disk: files are fsynced before they are renamed into place, and the
directory holding the rename after it."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from aepipe.files import atomic_write_json, atomic_write_table, replace_dir


def _record_fsyncs(monkeypatch) -> list[str]:
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def test_atomic_writes_fsync_the_file_and_its_directory(tmp_path, monkeypatch):
    synced = _record_fsyncs(monkeypatch)
    atomic_write_table(tmp_path / "t.parquet", pa.table({"a": [1, 2]}))
    assert any(Path(p).name.startswith(".t.parquet.tmp-") for p in synced)  # data before the rename
    assert synced[-1] == str(tmp_path)  # the rename itself
    synced.clear()
    atomic_write_json(tmp_path / "j.json", {"a": 1})
    assert synced[-1] == str(tmp_path)


def test_replace_dir_fsyncs_the_staged_files_then_the_parent(tmp_path, monkeypatch):
    staging = tmp_path / ".staging" / "index"
    staging.mkdir(parents=True)
    (staging / "index.faiss").write_bytes(b"written in place by faiss")
    synced = _record_fsyncs(monkeypatch)
    replace_dir(staging, tmp_path / "index")
    assert str(staging / "index.faiss") in synced
    assert synced.index(str(staging / "index.faiss")) < synced.index(str(tmp_path))
    assert (tmp_path / "index" / "index.faiss").read_bytes() == b"written in place by faiss"
