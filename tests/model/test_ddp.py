"""Multi-process training: 2-process DDP on CPU (gloo) through the dedicated entrypoint
(python -m aepipe.model.ddp), compared with single-process training of the same config."""

from __future__ import annotations

import json
import logging

import pytest

from aepipe.config import build_config
from aepipe.errors import TrainingError
from aepipe.layout import RunLayout
from aepipe.model.ddp import devices_per_node, inside_launched_job, needs_launcher
from aepipe.model.train import train_model

DDP_BASE = [
    "corpus.source=digits",
    "corpus.limit=400",
    "model.n_layers=1",
    "model.nodes_per_layer=[32]",
    "model.code_size=6",
    "training.max_epochs=5",
    "training.batch_size=32",
    "training.accelerator=cpu",
]


@pytest.mark.parametrize(
    "settings, n",
    [
        ({}, 1),
        ({"devices": 2, "strategy": "ddp"}, 2),
        ({"devices": 2}, 2),  # strategy auto picks ddp for several devices
        ({"devices": "0,1,2", "accelerator": "gpu"}, 3),
        ({"devices": "auto"}, 1),  # one process on CPU
        ({"devices": "auto", "accelerator": "gpu"}, None),  # all of the machine's GPUs
        ({"devices": -1, "accelerator": "gpu"}, None),
        ({"devices": 4, "strategy": "single_device"}, 1),
    ],
)
def test_devices_per_node(settings, n):
    tc = build_config({"training": settings}).training
    assert devices_per_node(tc) == n
    assert needs_launcher(tc) == (n != 1)


def test_several_nodes_need_the_launcher():
    assert needs_launcher(build_config(overrides=["training.num_nodes=2"]).training)


def test_a_launched_rank_trains_in_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not inside_launched_job()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert inside_launched_job()


@pytest.mark.slow  # two gloo DDP processes
def test_two_process_ddp_matches_single_process_training(tmp_path, caplog):
    ddp_cfg = build_config(
        overrides=[*DDP_BASE, f"run_dir={tmp_path / 'ddp'}", "training.devices=2", "training.strategy=ddp"]
    )
    single_cfg = build_config(overrides=[*DDP_BASE, f"run_dir={tmp_path / 'single'}"])
    with caplog.at_level(logging.INFO, logger="aepipe"):
        ddp = train_model(ddp_cfg)
    single = train_model(single_cfg)

    # both ranks trained, in the dedicated entrypoint, and only rank 0 wrote the model
    lines = [r.getMessage() for r in caplog.records if r.name == "aepipe.model.ddp"]
    assert any("python -m aepipe.model.ddp" in line for line in lines)
    for rank in (0, 1):
        assert any(f"[node 0 rank {rank}]" in line and "fit dense autoencoder" in line for line in lines), lines
    assert sum("model " in line and "AE SSE/item" in line for line in lines) == 1  # rank 0 saved, once

    ddp_files, single_files = RunLayout.at(ddp_cfg.run_dir).model, RunLayout.at(single_cfg.run_dir).model
    ddp_info, single_info = (json.loads(f.info.read_text()) for f in (ddp_files, single_files))
    assert ddp.model_id == ddp_info["model_id"] and ddp.n_items == single.n_items == 400
    assert ddp_info["code_size"] == single_info["code_size"] == 6
    assert ddp_info["input_shape"] == single_info["input_shape"] == [1, 8, 8]
    assert (ddp_files.checkpoints / "best.ckpt").is_file() and (ddp_files.logs / "metrics.csv").is_file()
    assert not list((tmp_path / "ddp" / ".staging").iterdir())  # nothing left behind by any rank

    # same loss scale: DDP takes half the optimiser steps (2 x 32 items per step), so a loose factor
    ddp_m, single_m = (json.loads(f.metrics.read_text()) for f in (ddp_files, single_files))
    assert ddp_m["epochs"] == single_m["epochs"]
    assert 0.5 < ddp_m["best_val_loss"] / single_m["best_val_loss"] < 2.0, (ddp_m, single_m)
    assert 0.5 < ddp_m["ae"]["sse_per_item"] / single_m["ae"]["sse_per_item"] < 2.0
    assert ddp.metrics["best_val_loss"] == ddp_m["best_val_loss"]
    # the PCA start's guard watched every epoch on rank 0, as in one process
    assert ddp_m["start_guard"]["epochs_seen"] == single_m["start_guard"]["epochs_seen"] == ddp_m["epochs"] == 5


@pytest.mark.slow  # two spawned gloo processes
def test_ddp_spawn_trains_and_the_guard_judges_the_checkpoint(tmp_path):
    """ddp_spawn runs rank 0 in a child process and pickles the callbacks: the start guard stays
    out of the fit (it holds closures over the data) and judges the best checkpoint afterwards."""
    cfg = build_config(
        overrides=[*DDP_BASE, f"run_dir={tmp_path / 'spawn'}", "training.devices=2", "training.strategy=ddp_spawn"]
    )
    result = train_model(cfg)
    m = json.loads(RunLayout.at(cfg.run_dir).model.metrics.read_text())
    assert result.model_id and m["start_guard"]["epochs_seen"] == 1  # the checkpoint, once
    assert m["kept_pca_start"] == (m["start_guard"]["chosen"] is None)


@pytest.mark.slow  # a DDP subprocess
def test_ddp_failure_is_one_training_error_with_the_reason(tmp_path):
    cfg = build_config(
        overrides=[
            *DDP_BASE,
            f"run_dir={tmp_path / 'run'}",
            "training.devices=2",
            "training.strategy=ddp",
            "training.precision=no-such-precision",
        ]
    )
    with pytest.raises(TrainingError, match="exited with status 2: aepipe: error: .*precision"):
        train_model(cfg)
    assert not RunLayout.at(cfg.run_dir).model.root.exists()
