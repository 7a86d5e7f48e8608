"""Training sized to the corpus: widths that follow the input dimension (saved with the model, so
older models still load) and a budget in optimizer steps."""

from __future__ import annotations

import json

import pytest

from aepipe.config import ModelConfig, build_config
from aepipe.layout import RunLayout
from aepipe.model import load_model
from aepipe.model.train import train_model


@pytest.mark.parametrize(
    "dim, widths",
    [(64, [256, 128, 64]), (784, [512, 256, 128]), (12, [64, 32, 32]), (3072, [512, 256, 128]), (100, [512, 256, 128])],
)
def test_dense_widths_follow_the_input_dimension(dim, widths):
    assert ModelConfig().widths(dim) == widths
    assert ModelConfig().widths() == [512, 256, 128]  # no input: the rule of models saved before
    assert ModelConfig(nodes_per_layer=[8, 4], n_layers=2).widths(dim) == [8, 4]


def test_max_steps_bounds_training_and_widths_are_saved(tmp_path):
    from tests.conftest import QUICK_OVERRIDES

    cfg = build_config(
        overrides=[
            *QUICK_OVERRIDES,
            "model.nodes_per_layer=null",
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
    assert info["widths"] == [256]
    # a model saved before info.json had widths loads with the old input-independent rule
    del info["widths"]
    files.info.write_text(json.dumps(info))
    with pytest.raises(Exception, match="do not match"):
        load_model(files.root)  # 512 != 256: the old rule cannot rebuild this one, and says so


def test_min_steps_raises_the_epochs_of_small_corpora_only():
    from aepipe.config import TrainingConfig
    from aepipe.model.fit import epochs_for

    tc = TrainingConfig(max_epochs=60, min_steps=1500, batch_size=128)
    assert epochs_for(tc, 300) == 500  # 3 steps an epoch
    assert epochs_for(tc, 60_000) == 60  # 469 steps an epoch: the epoch limit binds
    assert epochs_for(TrainingConfig(max_epochs=60, min_steps=None), 300) == 60
