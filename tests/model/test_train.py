"""Training: the model directory, loading it back, an oracle check that the model
learned something, and that a failed run leaves the previous model in place."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from aepipe.config import PipelineConfig, build_config
from aepipe.errors import CorpusError
from aepipe.layout import RunLayout
from aepipe.model import load_model
from aepipe.model.fit import drop_single_last_batch, resolve_loss, split_indices
from aepipe.model.saved import model_id_for
from aepipe.model.train import train_model


def _digest(root) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_model_directory_holds_every_artifact(trained_run):
    files = RunLayout.at(trained_run.run_dir).model
    for path in (files.weights, files.info, files.config, files.preprocess, files.metrics):
        assert path.is_file(), path
    info = json.loads(files.info.read_text())
    assert info["model_id"] == trained_run.model_id
    assert info["code_size"] == 10 and info["input_shape"] == [1, 8, 8] and info["architecture"] == "dense"
    cfg = PipelineConfig.model_validate(json.loads(files.config.read_text()))
    assert cfg.model.widths() == [64, 32] and cfg.corpus.limit == 400
    assert json.loads(files.preprocess.read_text()) == {
        "height": 8,
        "width": 8,
        "channels": 1,
        "kind": "image",
        "resize": "pad",
    }
    metrics = json.loads(files.metrics.read_text())
    assert metrics["ae"]["sse_per_item"] > 0 and metrics["pca"]["sse_per_item"] > 0
    assert metrics["n_train"] + metrics["n_val"] + metrics["n_test"] == 400
    assert metrics["n_test"] == 40 and metrics["loss"] == "mse"  # the images preset's PCA start needs MSE
    assert cfg.model.linear_path == "pca" and info["output_activation"] == "clamp"
    assert not (RunLayout.at(trained_run.run_dir).root / ".staging" / "model").exists()  # swapped into place


def test_model_id_is_the_content_hash_and_weights_are_safetensors(trained_run):
    model = load_model(RunLayout.at(trained_run.run_dir).model.root)
    files = RunLayout.at(trained_run.run_dir).model
    assert model.model_id == trained_run.model_id == model_id_for(files.weights, model.config, model.prep)
    weights = load_file(str(files.weights))  # safetensors: no unpickling
    state = model.net.state_dict()
    assert set(weights) == set(state)
    for name, tensor in weights.items():
        assert torch.equal(tensor, state[name]), name


def test_split_file_records_a_disjoint_split(trained_run):
    split = pq.read_table(RunLayout.at(trained_run.run_dir).model.root / "split.parquet").to_pydict()
    assert len(split["id"]) == len(set(split["id"])) == 400
    counts = {s: split["split"].count(s) for s in ("train", "val", "test")}
    assert counts == {"train": 320, "val": 40, "test": 40}


def test_trained_model_beats_the_mean_image_on_held_out_items(trained_run, digits_x):
    """Oracle: the mean training image is the best constant guess; a trained
    autoencoder must reconstruct unseen digits clearly better than it."""
    layout = RunLayout.at(trained_run.run_dir)
    split = pq.read_table(layout.model.root / "split.parquet").to_pydict()
    pos = {s: np.array([int(i) for i, t in zip(split["id"], split["split"]) if t == s]) for s in ("train", "test")}
    x_test = digits_x[pos["test"]]
    mean_image = digits_x[pos["train"]].mean(0, keepdims=True)
    mean_sse = float(((x_test - mean_image) ** 2).sum(axis=(1, 2, 3)).mean())

    model = load_model(layout.model.root)
    with torch.inference_mode():
        recon = model.net.reconstruct(torch.from_numpy(x_test)).numpy()
    ae_sse = float(((x_test - recon) ** 2).sum(axis=(1, 2, 3)).mean())
    assert ae_sse < 0.7 * mean_sse, (ae_sse, mean_sse)
    # metrics.json reports the same held-out error
    metrics = json.loads(layout.model.metrics.read_text())
    assert metrics["ae"]["sse_per_item"] == pytest.approx(ae_sse, rel=1e-4)
    assert metrics["ae"]["mse"] == pytest.approx(ae_sse / 64, rel=1e-4)


def test_failed_training_leaves_the_previous_model_intact(run_copy, tmp_path, write_png):
    folder = tmp_path / "few"
    for i in range(5):  # 5 good items (< 10 needed) and some bad ones
        write_png(folder / "a" / f"{i}.png", np.full((8, 8), 30 * i, np.uint8))
    (folder / "a" / "bad.png").write_bytes(b"")
    model_root = RunLayout.at(run_copy.run_dir).model.root
    before = _digest(model_root)
    cfg = run_copy.config(f"corpus.source={folder}", "training.max_epochs=1")
    with pytest.raises(CorpusError, match="need at least 10"):
        train_model(cfg)
    assert _digest(model_root) == before
    # a failure after the new model's staging directory exists (Lightning rejects the strategy)
    with pytest.raises(Exception, match="no-such-strategy"):
        train_model(run_copy.config("training.strategy=no-such-strategy", "training.max_epochs=1"))
    assert _digest(model_root) == before
    assert load_model(model_root).model_id == run_copy.model_id


def test_retraining_replaces_the_model_atomically(run_copy):
    model_root = RunLayout.at(run_copy.run_dir).model.root
    cfg = run_copy.config("corpus.limit=60", "training.max_epochs=1", "model.code_size=3")
    result = train_model(cfg)
    assert result.model_id != run_copy.model_id
    loaded = load_model(model_root)
    assert loaded.model_id == result.model_id and loaded.code_size == 3
    assert not list(model_root.parent.glob("model.old-*"))


def test_training_is_reproducible_with_a_seed(tmp_path):
    overrides = [
        "corpus.limit=60",
        "model.n_layers=1",
        "model.nodes_per_layer=[8]",
        "model.code_size=3",
        "training.max_epochs=2",
        "training.batch_size=16",
    ]
    a = train_model(build_config(overrides=[*overrides, f"run_dir={tmp_path / 'a'}"]))
    b = train_model(build_config(overrides=[*overrides, f"run_dir={tmp_path / 'b'}"]))
    assert a.model_id == b.model_id


def test_a_last_training_batch_of_one_item_is_dropped(tmp_path):
    """Batch norm cannot train on one item: 2,401 photos at the default batch size ended in a batch
    of one and the run crashed. That batch is dropped (per process under DDP), no other."""
    overrides = ["corpus.limit=60", "model.n_layers=1", "model.nodes_per_layer=[8]", "model.code_size=3"]
    tc = build_config(overrides=overrides).training
    n_train = len(split_indices(60, tc.val_fraction, tc.test_fraction, tc.seed)["train"])
    result = train_model(
        build_config(
            overrides=[*overrides, "training.max_epochs=1", f"training.batch_size={n_train - 1}", f"run_dir={tmp_path}"]
        )
    )
    assert result.model_id
    assert drop_single_last_batch(n_train, n_train - 1, 1)
    assert not drop_single_last_batch(n_train, n_train - 2, 1) and not drop_single_last_batch(n_train, n_train, 1)
    assert drop_single_last_batch(10, 4, 2) and not drop_single_last_batch(10, 4, 1)  # 5 items a process under DDP
    assert not drop_single_last_batch(1, 4, 1)  # one item in all: nothing else to train on


def test_split_indices_partition_all_items():
    split = split_indices(101, 0.1, 0.2, seed=3)
    sizes = {k: len(v) for k, v in split.items()}
    assert sizes == {"test": 20, "val": 10, "train": 71}
    assert sorted(np.concatenate(list(split.values())).tolist()) == list(range(101))
    assert all((np.diff(v) > 0).all() for v in split.values())
    assert np.array_equal(split["test"], split_indices(101, 0.1, 0.2, seed=3)["test"])
    assert not np.array_equal(split["test"], split_indices(101, 0.1, 0.2, seed=4)["test"])


def test_auto_loss_is_bce_only_for_unit_range_inputs():
    cfg = build_config(overrides=["model.linear_path=none"])  # the images preset's linear path asks for MSE
    assert resolve_loss(cfg, np.array([0.0, 0.5, 1.0])) == "bce"
    assert resolve_loss(cfg, np.array([-0.1, 0.5])) == "mse"
    assert resolve_loss(build_config(overrides=["model.loss=mse"]), np.array([0.5])) == "mse"


def test_encoding_does_not_switch_off_autograd_for_the_caller(run_copy):
    """Regression: encode_corpus called torch.set_grad_enabled(False) and left it off
    for the rest of the calling thread."""
    from aepipe.codes.encode import encode_corpus

    assert torch.is_grad_enabled()
    encode_corpus(run_copy.config())
    assert torch.is_grad_enabled()


def test_training_sample_is_capped_by_max_memory_mb(run_copy, caplog):
    # 0.01 MiB = 10,485 bytes: 40 digits of 64 float32 inputs
    result = train_model(run_copy.config("training.max_memory_mb=0.01", "training.max_epochs=2"))
    assert result.n_items == 40
    metrics = json.loads(RunLayout.at(run_copy.run_dir).model.metrics.read_text())
    assert metrics["n_train"] + metrics["n_val"] + metrics["n_test"] == 40
    assert any("training.max_memory_mb" in r.getMessage() for r in caplog.records)
    split = pq.read_table(RunLayout.at(run_copy.run_dir).model.split).column("id").to_pylist()
    assert len(split) == len(set(split)) == 40 and int(max(split)) > 100  # a random sample, not the first 40
