"""Autoencoder networks: shapes for odd input sizes, determinism, and the model
directory format (safetensors weights, no pickle)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from aepipe.config import ModelConfig, build_config
from aepipe.errors import MissingArtifact
from aepipe.features import ImagePreprocessor
from aepipe.layout import ModelFiles
from aepipe.model import build_autoencoder, load_model, save_model
from aepipe.model.saved import encode_array, model_id_for

SHAPES = [(1, 28, 28), (3, 17, 13), (1, 8, 8), (1, 5, 9)]
ARCHS = {
    "dense": ModelConfig(architecture="dense", code_size=6, n_layers=2, nodes_per_layer=[32, 16]),
    "conv": ModelConfig(architecture="conv", code_size=6, n_layers=3, nodes_per_layer=[4, 8, 8], batch_norm=True),
}


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_encode_and_reconstruct_shapes(arch, shape):
    torch.manual_seed(0)
    net = build_autoencoder(ARCHS[arch], shape).eval()
    x = torch.rand(5, *shape)
    with torch.inference_mode():
        z = net.encode(x)
        logits = net.decode(z)
        recon = net.reconstruct(x)
    assert z.shape == (5, 6)
    assert logits.shape == x.shape and recon.shape == x.shape
    torch.testing.assert_close(recon, net.activate(logits))
    assert 0.0 <= float(recon.min()) and float(recon.max()) <= 1.0  # sigmoid output
    assert net.code_size == 6 and net.input_shape == shape


@pytest.mark.parametrize("arch", list(ARCHS))
def test_encoding_is_deterministic_and_independent_of_batch_in_eval_mode(arch):
    torch.manual_seed(0)
    net = build_autoencoder(ARCHS[arch], (3, 17, 13)).eval()
    x = torch.rand(8, 3, 17, 13)
    with torch.inference_mode():
        a, b = net.encode(x), net.encode(x.clone())
        alone = net.encode(x[:1])
    assert torch.equal(a, b)
    torch.testing.assert_close(alone[0], a[0], rtol=1e-5, atol=1e-6)  # batch norm uses running stats


def test_gradients_reach_every_parameter():
    net = build_autoencoder(ARCHS["conv"], (1, 9, 7))
    net.decode(net.encode(torch.rand(4, 1, 9, 7))).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_dense_layer_widths_follow_the_config():
    net = build_autoencoder(ModelConfig(code_size=3, n_layers=3, nodes_per_layer=[20, 10, 5]), (1, 4, 4))
    linear = sorted((m.in_features, m.out_features) for m in net.modules() if isinstance(m, torch.nn.Linear))
    encoder = [(16, 20), (20, 10), (10, 5), (5, 3)]
    decoder = [(3, 5), (5, 10), (10, 20), (20, 16)]  # mirrors the encoder
    assert linear == sorted(encoder + decoder)


def test_identity_output_for_unbounded_inputs():
    net = build_autoencoder(ARCHS["dense"], (1, 4, 4), output_activation="identity").eval()
    x = torch.rand(2, 1, 4, 4)
    with torch.inference_mode():
        assert torch.equal(net.reconstruct(x), net.decode(net.encode(x)))


def test_encode_array_returns_codes_and_summed_squared_error():
    torch.manual_seed(1)
    net = build_autoencoder(ARCHS["dense"], (1, 8, 8)).eval()
    x = torch.rand(3, 1, 8, 8)
    z, sse = encode_array(net, x)
    with torch.inference_mode():
        expected = (net.reconstruct(x) - x).pow(2).sum(dim=(1, 2, 3))
    assert z.shape == (3, 6)
    torch.testing.assert_close(sse, expected)


def _saved(tmp_path, arch="conv", seed=0):
    torch.manual_seed(seed)
    cfg = build_config(
        overrides=[
            f"run_dir={tmp_path}",
            f"model.architecture={arch}",
            "model.code_size=6",
            "model.n_layers=2",
            "model.nodes_per_layer=[4, 8]",
            "model.batch_norm=true",
        ]
    )
    prep = ImagePreprocessor(11, 7, 3)
    net = build_autoencoder(cfg.model, prep.shape)
    # give batch norm non-default running statistics, so loading must restore buffers too
    net.train()
    with torch.no_grad():
        net(torch.rand(16, *prep.shape))
    net.eval()
    files = ModelFiles(tmp_path / "model")
    return files, net, cfg, prep, save_model(files, net, cfg, prep, {"epochs": 3})


def test_save_and_load_round_trip_without_pickle(tmp_path):
    files, net, cfg, prep, model_id = _saved(tmp_path)
    for path in (files.weights, files.info, files.config, files.preprocess):
        assert path.is_file()
    # safetensors: 8-byte little-endian header length, then a JSON header (no pickle opcodes)
    raw = files.weights.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    assert set(header) - {"__metadata__"} == set(net.state_dict())
    info = json.loads(files.info.read_text())
    assert info["model_id"] == model_id == model_id_for(files.weights, cfg, prep)
    assert info["input_shape"] == [3, 11, 7] and info["code_size"] == 6 and info["epochs"] == 3

    loaded = load_model(files.root)
    assert loaded.model_id == model_id and loaded.prep == prep and loaded.config == cfg
    assert not loaded.net.training
    x = torch.rand(4, 3, 11, 7)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.net.encode(x), net.encode(x), rtol=0, atol=0)
        torch.testing.assert_close(loaded.net.reconstruct(x), net.reconstruct(x), rtol=0, atol=0)


def test_model_id_depends_on_weights(tmp_path):
    _, _, _, _, id_a = _saved(tmp_path / "a", seed=0)
    _, _, _, _, id_a2 = _saved(tmp_path / "a2", seed=0)
    _, _, _, _, id_b = _saved(tmp_path / "b", seed=1)
    assert id_a == id_a2  # content hash, not a random id
    assert id_a != id_b


def test_load_model_from_missing_dir_is_a_missing_artifact(tmp_path):
    with pytest.raises(MissingArtifact, match="aepipe train"):
        load_model(tmp_path / "nothing")


def test_codes_are_finite_numbers(tmp_path):
    files, *_ = _saved(tmp_path, arch="dense")
    loaded = load_model(files.root)
    z, sse = encode_array(loaded.net, torch.from_numpy(np.random.default_rng(0).random((5, 3, 11, 7), np.float32)))
    assert torch.isfinite(z).all() and (sse >= 0).all()
