"""Training sized to the corpus: a budget in optimizer steps (max_steps, min_steps) and the widths
saved with the model."""

from __future__ import annotations

import json

import pytest

from aepipe.config import ModelConfig, build_config
from aepipe.layout import RunLayout
from aepipe.model import load_model
from aepipe.model.train import train_model


@pytest.mark.parametrize("dim", [12, 64, 784, 3072])
def test_dense_widths_are_512_halving_for_any_input(dim):
    assert ModelConfig().widths(dim) == ModelConfig().widths() == [512, 256, 128]
    assert ModelConfig(nodes_per_layer=[8, 4], n_layers=2).widths(dim) == [8, 4]


def test_max_steps_bounds_training_and_widths_are_saved(tmp_path):
    from tests.conftest import QUICK_OVERRIDES

    cfg = build_config(
        overrides=[
            *QUICK_OVERRIDES,
            "corpus.source=digits",
            "corpus.limit=200",
            "training.batch_size=16",
            "training.max_epochs=50",
            "training.max_steps=25",  # 160 training items / 16 = 10 steps per epoch
            f"run_dir={tmp_path / 'run'}",
        ]
    )
    result = train_model(cfg)
    assert result.metrics["steps"] == 25 and result.metrics["epochs"] < 5  # stopped by steps, not epochs
    files = RunLayout.at(cfg.run_dir).model
    info = json.loads(files.info.read_text())
    assert info["widths"] == [16]
    assert load_model(files.root).net.widths == [16]


def test_min_steps_raises_the_epochs_of_small_corpora_only():
    from aepipe.config import TrainingConfig
    from aepipe.model.fit import epochs_for

    tc = TrainingConfig(max_epochs=60, min_steps=1500, batch_size=128)
    assert epochs_for(tc, 300) == 500  # 3 steps an epoch
    assert epochs_for(tc, 60_000) == 60  # 469 steps an epoch: the epoch limit binds
    assert epochs_for(TrainingConfig(max_epochs=60, min_steps=None), 300) == 60


def test_early_stopping_waits_for_min_steps(tmp_path):
    from tests.conftest import QUICK_OVERRIDES

    cfg = build_config(
        overrides=[
            *QUICK_OVERRIDES,
            "corpus.source=digits",
            "corpus.limit=200",
            "training.batch_size=16",  # 10 steps an epoch
            "training.max_epochs=1",
            "training.min_steps=45",
            "training.early_stopping_patience=1",
            "training.lr=1e-12",  # no progress at all: patience 1 would stop after the second epoch (20 steps)
            f"run_dir={tmp_path / 'run'}",
        ]
    )
    assert train_model(cfg).metrics["steps"] >= 45
