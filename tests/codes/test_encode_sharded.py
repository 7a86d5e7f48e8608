"""Sharded, resumable encoding: kill -9 mid-run and resume; Prefect task runners."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from aepipe.codes.store import open_store
from aepipe.config import dump_config

SHARDED = ["encode.rows_per_part=25", "encode.batch_size=5"]  # 16 shards of the 400 items


def _store_rows(run_dir: Path) -> tuple[list[str], np.ndarray]:
    ids, codes = open_store(run_dir / "store").read_codes()
    return ids, codes


@pytest.mark.slow  # kill -9 of a real encode subprocess
def test_kill_9_mid_encode_then_resume_gives_the_uninterrupted_store(run_copy, trained_run, tmp_path):
    from aepipe.codes.encode import encode_corpus

    previous_ids, _ = _store_rows(trained_run.run_dir)
    uninterrupted = tmp_path / "uninterrupted"
    shutil.copytree(run_copy.run_dir, uninterrupted)
    encode_corpus(run_copy.config(*SHARDED, run_dir=uninterrupted))
    reference_ids, reference_codes = _store_rows(uninterrupted)
    run = run_copy.run_dir
    cfg = run_copy.config(*SHARDED)
    (run / "config.yaml").write_text(dump_config(cfg))  # `aepipe encode --run-dir` reads it
    staging = run / ".staging"
    cmd = [sys.executable, "-m", "aepipe.cli", "encode", "--run-dir", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = False
    for _ in range(5):  # catch it after some, but not all, shards are committed
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            markers = list(staging.glob("store-*/_shards/*.json"))
            if len(markers) >= 3:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        proc.wait()
        if proc.returncode == -signal.SIGKILL:
            killed = True
            break
    assert killed, "encode finished before it could be killed"
    committed = len(list(staging.glob("store-*/_shards/*.json")))
    assert 3 <= committed < 16
    # The previous store is untouched by the crash.
    ids, _ = _store_rows(run)
    assert ids == previous_ids
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    assert result["n_shards"] == 16 and result["n_shards_skipped"] == committed
    ids, codes = _store_rows(run)
    assert ids == reference_ids and len(set(ids)) == len(ids)  # same ids, same order, no duplicates or gaps
    np.testing.assert_array_equal(codes, reference_codes)
    assert not list(staging.glob("store-*"))  # staging was swapped into place


def test_duplicate_ids_across_shards_keep_the_first(tmp_path):
    import pyarrow as pa

    from aepipe.codes.encode import encode_corpus
    from aepipe.config import build_config
    from aepipe.model.train import train_model
    from tests.conftest import png_bytes

    rng = np.random.default_rng(0)
    images = [png_bytes((rng.random((8, 8)) * 255).astype(np.uint8)) for _ in range(30)]
    ids = [f"img-{i % 20}" for i in range(30)]  # ids 0..9 appear twice, in later shards
    pq.write_table(pa.table({"id": ids, "image": images}), tmp_path / "c.parquet")
    cfg = build_config(
        overrides=[
            f"run_dir={tmp_path / 'run'}",
            f"corpus.source={tmp_path / 'c.parquet'}",
            "model.n_layers=1",
            "model.nodes_per_layer=[8]",
            "model.code_size=3",
            "training.max_epochs=1",
            "encode.rows_per_part=7",
        ]
    )
    train_model(cfg)
    result = encode_corpus(cfg)
    stored = open_store(tmp_path / "run" / "store").read(["id", "position"]).to_pydict()
    assert sorted(stored["id"]) == sorted(f"img-{i}" for i in range(20))
    assert all(p < 20 for p in stored["position"])  # the first occurrence was kept
    q = pq.read_table(tmp_path / "run" / "quarantine" / "encode.parquet").to_pydict()
    assert sorted(q["id"]) == sorted(f"img-{i}" for i in range(10)) and result.n_quarantined == 10
    assert all("duplicate id" in r for r in q["reason"])


@pytest.mark.slow  # Prefect task runners (Dask local cluster)
@pytest.mark.parametrize("runner", ["threads", "dask"])
def test_sharded_encode_flow_with_task_runner_matches_direct_encoding(prefect_harness, run_copy, trained_run, runner):
    from aepipe_flows.encode import encode_sharded_flow

    cfg = run_copy.config(*SHARDED, f"encode.task_runner={runner}", "encode.workers=2")
    result = encode_sharded_flow(cfg)
    assert result.n_shards == 16 and result.n_items == trained_run.n_items
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter

    with get_client(sync_client=True) as client:  # a progress artifact, updated per finished shard up to 100 %
        progress = client.read_artifacts(artifact_filter=ArtifactFilter(key={"any_": ["aepipe-encode-progress"]}))
    assert progress and all(a.type == "progress" and float(a.data) == 100.0 for a in progress)
    ids, codes = _store_rows(run_copy.run_dir)
    ref_ids, ref_codes = _store_rows(trained_run.run_dir)
    assert ids == ref_ids
    np.testing.assert_allclose(codes, ref_codes, rtol=1e-5, atol=1e-6)
