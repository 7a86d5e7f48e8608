"""The autoencoder family: each kind trains, encodes and indexes, and its regulariser
changes what it should compared with the same model without it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aepipe.codes.encode import encode_corpus
from aepipe.codes.store import open_store
from aepipe.config import ModelConfig, build_config
from aepipe.corpus import Quarantine
from aepipe.errors import ConfigError
from aepipe.index.build import build_index
from aepipe.model.fit import read_items
from aepipe.model.networks import build_autoencoder
from aepipe.model.regularizers import (
    corrupt,
    jacobian_frobenius_estimate,
    jacobian_frobenius_exact,
)
from aepipe.model.saved import load_model
from aepipe.model.train import train_model

BASE = [
    "corpus.limit=400",
    "model.n_layers=2",
    "model.nodes_per_layer=[64, 32]",
    "model.code_size=8",
    "training.batch_size=64",
    "training.lr=0.005",
    "training.max_epochs=12",
    "training.early_stopping_patience=50",
    "training.knn_target=null",  # each kind alone: the image preset's neighbour-smoothed targets would blur them
]

KINDS = {
    "dense": [],
    "conv": ["model.architecture=conv", "model.nodes_per_layer=[8, 16]"],
    "sparse": ["model.sparsity={l1: 0.001}"],
    "denoising": ["model.denoising={noise: salt_pepper, level: 0.2}"],
    "contractive": ["model.contractive={weight: 0.01}"],
    "variational": ["model.variational=true"],
}


def _cfg(tmp_path, name, extra):
    return build_config(overrides=BASE + extra + [f"run_dir={tmp_path / name}"])


def _digits(n=400):
    cfg = build_config(overrides=[f"corpus.limit={n}"])
    data, _ = read_items(cfg.corpus, None, None, 0, Quarantine("t"))
    return torch.from_numpy(data.x)


@pytest.mark.parametrize("kind", list(KINDS))
def test_kind_trains_encodes_and_indexes(tmp_path, kind):
    cfg = _cfg(tmp_path, kind, KINDS[kind] + ["training.max_epochs=2"])
    trained = train_model(cfg)
    assert trained.metrics["kinds"][-1] == (kind if kind not in ("dense", "conv") else kind)
    encode_corpus(cfg)
    store = open_store(cfg.run_dir + "/store")
    ids, codes = store.read_codes()
    assert codes.shape == (400, 8) and np.isfinite(codes).all()
    res = build_index(cfg)
    assert res.n_items == 400 and res.recall_at_10 >= 0.95
    model = load_model(cfg.run_dir + "/model")
    x = _digits(16)
    with torch.inference_mode():
        assert torch.equal(model.net.encode(x), model.net.encode(x))  # deterministic, VAE included
        assert model.net.reconstruct(x).shape == x.shape


def _mean_abs_code(cfg) -> float:
    train_model(cfg)
    return float(np.abs(open_store_codes(cfg)).mean())


def open_store_codes(cfg):
    encode_corpus(cfg)
    return open_store(cfg.run_dir + "/store").read_codes()[1]


def test_sparse_penalty_lowers_activity(tmp_path):
    plain = _mean_abs_code(_cfg(tmp_path, "plain", ["model.code_activation=relu"]))
    sparse = _mean_abs_code(_cfg(tmp_path, "sparse", ["model.code_activation=relu", "model.sparsity={l1: 0.01}"]))
    assert sparse < 0.5 * plain


def test_overcomplete_kl_sparse_code_moves_mean_activation_towards_rho(tmp_path):
    over = ["model.code_size=100", "model.code_activation=sigmoid"]  # 100 > 64 inputs
    plain = open_store_codes_trained(_cfg(tmp_path, "plain", over))
    sparse = open_store_codes_trained(_cfg(tmp_path, "kl", over + ["model.sparsity={kl: 0.5, rho: 0.05}"]))
    assert sparse.shape[1] == 100
    assert abs(sparse.mean() - 0.05) < abs(plain.mean() - 0.05)
    assert sparse.mean() < 0.6 * plain.mean()


def open_store_codes_trained(cfg):
    train_model(cfg)
    return open_store_codes(cfg)


def _jacobian_norm(net, x):
    net.eval()
    jac = torch.autograd.functional.jacobian(lambda v: net.encode(v), x)  # (B, code, B, ...)
    per_item = [jac[i, :, i].pow(2).sum() for i in range(len(x))]
    return float(torch.stack(per_item).mean())


def test_contractive_penalty_shrinks_encoder_jacobian(tmp_path):
    x = _digits(32)
    norms = {}
    # The images preset's PCA start is left out for other kinds: compare with the plain network without it.
    for name, extra in (("plain", ["model.linear_path=none"]), ("cae", ["model.contractive={weight: 0.05}"])):
        cfg = _cfg(tmp_path, name, extra)
        train_model(cfg)
        norms[name] = _jacobian_norm(load_model(cfg.run_dir + "/model").net, x)
    assert norms["cae"] < 0.5 * norms["plain"]


def test_exact_contractive_formula_matches_autograd_and_projection_estimate_is_unbiased():
    cfg = ModelConfig(n_layers=0, code_size=6, code_activation="sigmoid")
    torch.manual_seed(0)
    net = build_autoencoder(cfg, (1, 4, 4))
    x = torch.rand(5, 1, 4, 4)
    exact = jacobian_frobenius_exact(net, x)
    auto = torch.tensor([torch.autograd.functional.jacobian(net.encode, x[i : i + 1]).pow(2).sum() for i in range(5)])
    torch.testing.assert_close(exact, auto, rtol=1e-4, atol=1e-6)
    est = torch.stack([jacobian_frobenius_estimate(net, x, 1) for _ in range(3000)]).mean(0)
    torch.testing.assert_close(est, exact.detach(), rtol=0.1, atol=1e-4)


def test_denoising_model_reconstructs_corrupted_inputs_better(tmp_path):
    from aepipe.config import DenoisingConfig

    x = _digits(1797)  # needs the whole set: on 400 items 20 epochs are too few steps to tell them apart
    torch.manual_seed(1)
    noisy = corrupt(x, DenoisingConfig(noise="gaussian", level=0.4))
    errors = {}
    # The same network both times: the images preset's PCA start is left out for a denoising model.
    plain = ["model.linear_path=none"]
    for name, extra in (("plain", plain), ("dae", ["model.denoising={noise: gaussian, level: 0.4}"])):
        cfg = _cfg(tmp_path, name, extra + ["training.max_epochs=15", "corpus.limit=1797"])
        train_model(cfg)
        net = load_model(cfg.run_dir + "/model").net
        with torch.inference_mode():
            errors[name] = float((net.reconstruct(noisy) - x).pow(2).sum((1, 2, 3)).mean())
    assert errors["dae"] < 0.9 * errors["plain"]


def test_variational_codes_are_posterior_means():
    net = build_autoencoder(ModelConfig(variational=True, n_layers=1, nodes_per_layer=[16], code_size=4), (1, 8, 8))
    x = torch.rand(3, 1, 8, 8)
    net.train()
    mu, logvar = net.encode_stats(x)
    assert logvar is not None and logvar.shape == mu.shape
    sampled = net(x).code
    assert not torch.equal(sampled, mu)  # training samples around the mean
    net.eval()
    assert torch.equal(net.encode(x), mu.detach()) or torch.allclose(net.encode(x), mu)


def test_transfer_copies_and_freezes_encoder_layers(tmp_path):
    src = _cfg(tmp_path, "src", ["training.max_epochs=2"])
    train_model(src)
    dst = _cfg(
        tmp_path,
        "dst",
        [f"model.transfer={{init_from: {src.run_dir}/model, freeze: true, n_layers: 2}}", "training.max_epochs=2"],
    )
    trained = train_model(dst)
    assert trained.metrics["transferred_layers"] == 2
    a = load_model(src.run_dir + "/model").net.encoder_layers()
    b = load_model(dst.run_dir + "/model").net.encoder_layers()
    for i in range(2):  # frozen: unchanged by training
        assert torch.equal(a[i].weight, b[i].weight)
    assert not torch.equal(a[2].weight, b[2].weight)  # the code layer was trained


def test_transfer_shape_mismatch_is_a_clear_error(tmp_path):
    src = _cfg(tmp_path, "src", ["training.max_epochs=1"])
    train_model(src)
    dst = _cfg(
        tmp_path, "dst", [f"model.transfer={{init_from: {src.run_dir}/model}}", "model.nodes_per_layer=[48, 32]"]
    )
    with pytest.raises(ConfigError, match="cannot transfer encoder layer 0"):
        train_model(dst)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.sparsity={kl: 0.1}"], "code_activation: sigmoid"),
        (["model.variational=true", "model.sparsity={l1: 0.1}"], "variational and sparsity"),
        (["model.contractive={method: exact}"], "one sigmoid layer"),
        (["model.architecture=conv", "model.n_layers=0"], "n_layers >= 1"),
    ],
)
def test_impossible_combinations_are_rejected(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config(overrides=overrides)
