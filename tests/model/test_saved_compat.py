"""A model saved by an earlier aepipe (its config.json lacks keys added since) loads as it was
trained: the presets of today do not fill the missing keys."""

from __future__ import annotations

import json

import numpy as np
import torch

from aepipe.layout import RunLayout
from aepipe.model.saved import encode_array, load_model
from aepipe.model.train import train_model


def test_a_config_without_newer_keys_loads_the_network_it_was_saved_with(run_copy):
    files = RunLayout.at(run_copy.run_dir).model
    x = torch.from_numpy(np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32))
    plain = run_copy.config("model.linear_path=none")
    train_model(plain)  # a network without the PCA path, as every model saved before the key was
    before = encode_array(load_model(files).net, x)[0]
    saved = json.loads(files.config.read_text())
    assert saved["model"].pop("linear_path") == "none" and saved["preset"] == "auto"
    files.config.write_text(json.dumps(saved))  # as an older version wrote it
    loaded = load_model(files)
    assert loaded.config.model.linear_path == "none" and loaded.config.preset == "auto"
    torch.testing.assert_close(encode_array(loaded.net, x)[0], before)
