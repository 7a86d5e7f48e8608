"""Atomic writes and directory swaps: a reader sees the old or the new artifact, never half of one."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aepipe.files import (
    atomic_write_json,
    atomic_write_table,
    fresh_dir,
    read_json,
    recover_dir,
    replace_dir,
)


def test_atomic_json_and_table_leave_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "a" / "x.json", {"v": np.float32(1.5), "arr": np.arange(3), "p": tmp_path})
    assert read_json(tmp_path / "a" / "x.json") == {"v": 1.5, "arr": [0, 1, 2], "p": str(tmp_path)}
    atomic_write_table(tmp_path / "t.parquet", pa.table({"a": [1, 2]}))
    assert pq.read_table(tmp_path / "t.parquet").column("a").to_pylist() == [1, 2]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["t.parquet", "x.json"]


def test_failed_json_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "x.json"
    atomic_write_json(path, {"old": True})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"old": True}


def test_failed_table_write_keeps_the_old_file_and_cleans_up(tmp_path):
    path = tmp_path / "t.parquet"
    atomic_write_table(path, pa.table({"a": [1]}))
    with pytest.raises((ValueError, OSError, pa.ArrowException)):
        atomic_write_table(path, pa.table({"a": [1]}), compression="no-such-codec")
    assert pq.read_table(path).column("a").to_pylist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_replace_dir_swaps_and_recover_dir_undoes_an_interrupted_swap(tmp_path):
    final = tmp_path / "store"
    final.mkdir()
    (final / "v").write_text("1")
    staging = fresh_dir(tmp_path / ".staging" / "store")
    (staging / "v").write_text("2")
    replace_dir(staging, final)
    assert (final / "v").read_text() == "2" and not staging.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("store")] == ["store"]

    # crash between "old moved aside" and "new moved in": recover puts the old one back
    final.rename(tmp_path / "store.old-deadbeef")
    recover_dir(final)
    assert (final / "v").read_text() == "2"
    # a leftover old copy next to a complete directory is removed
    (tmp_path / "store.old-cafe").mkdir()
    recover_dir(final)
    assert not (tmp_path / "store.old-cafe").exists()


def test_fresh_dir_empties_a_leftover(tmp_path):
    d = tmp_path / "w"
    d.mkdir()
    (d / "junk").write_text("x")
    assert list(fresh_dir(d).iterdir()) == []
