"""model.linear_path: a dense autoencoder that starts as exactly PCA (sklearn's, fitted on the
training items) or LSA (an uncentred truncated SVD: documents), keeps that start unless training
beats it on the validation items, and saves / reloads like any other."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from sklearn.decomposition import PCA, TruncatedSVD

from aepipe.config import ModelConfig, build_config
from aepipe.errors import ConfigError
from aepipe.features import ImagePreprocessor
from aepipe.layout import ModelFiles, RunLayout
from aepipe.model import build_autoencoder, load_model, save_model
from aepipe.model.fit import init_linear_path, resolve_loss
from aepipe.model.guard import Criterion, StartGuard, start_criterion, validation_loss
from aepipe.model.networks import DenseAutoencoder
from aepipe.model.saved import encode_array
from aepipe.model.train import train_model
from tests.conftest import QUICK_OVERRIDES

CFG = ModelConfig(code_size=5, n_layers=2, nodes_per_layer=[32, 16], linear_path="pca")


def _pca_net(digits_x: np.ndarray, cfg: ModelConfig = CFG) -> tuple[DenseAutoencoder, PCA]:
    torch.manual_seed(0)
    net = build_autoencoder(cfg, (1, 8, 8), "clamp")
    assert isinstance(net, DenseAutoencoder)
    pca = PCA(n_components=cfg.code_size, random_state=0).fit(digits_x[:300].reshape(300, -1))
    net.init_linear_path(torch.from_numpy(pca.components_).float(), torch.from_numpy(pca.mean_).float())
    return net.eval(), pca


def test_network_starts_as_exactly_the_fitted_pca(digits_x):
    net, pca = _pca_net(digits_x)
    x = digits_x[300:400]  # held out from the PCA fit
    flat = x.reshape(len(x), -1)
    with torch.inference_mode():
        z, out = net.code_and_output(torch.from_numpy(x))
        recon = net.reconstruct(torch.from_numpy(x))
    np.testing.assert_allclose(z.numpy(), pca.transform(flat), atol=1e-4)
    pca_recon = pca.inverse_transform(pca.transform(flat))
    np.testing.assert_allclose(out.reshape(len(x), -1).numpy(), pca_recon, atol=1e-4)
    # Clamping to [0, 1] only moves outputs towards inputs in [0, 1]: never worse than PCA.
    assert float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0
    ae_sse = ((recon.reshape(len(x), -1).numpy() - flat) ** 2).sum(1).mean()
    pca_sse = ((pca_recon - flat) ** 2).sum(1).mean()
    assert ae_sse <= pca_sse + 1e-5 and ae_sse > 0


def _train_steps(net: DenseAutoencoder, x: torch.Tensor, steps: int) -> None:
    """A few AdamW steps (lr 1e-2) of MSE reconstruction of ``x``, the network in training mode."""
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x).out, x).backward()
        opt.step()


@pytest.mark.parametrize("mode", ["pca", "pca-frozen"])
def test_deep_path_learns_and_frozen_pca_stays(digits_x, mode):
    net, pca = _pca_net(digits_x, CFG.model_copy(update={"linear_path": mode}))
    before = net.pca_components.detach().clone()
    _train_steps(net, torch.from_numpy(digits_x[:64]), 3)
    assert float(net.code_head.weight.detach().abs().sum()) > 0  # the zero-initialised deep path moved
    assert float(net.decoder[-1].weight.detach().abs().sum()) > 0
    assert torch.equal(net.pca_components, before) == (mode == "pca-frozen")


def _state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


def _same(net: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


def test_guard_restores_the_pca_start_when_training_made_it_worse(digits_x):
    net, _ = _pca_net(digits_x)
    start = _state(net)
    guard = StartGuard(net, Criterion(validation_loss(digits_x[300:400], None, "mse")))
    with torch.no_grad():
        net.decoder[-1].bias.add_(0.3)  # "training" that hurts every pixel
    guard.consider(net, 0)
    assert guard.restore(net) and _same(net, start)
    assert guard.summary()["chosen"] is None and guard.summary()["epochs_seen"] == 1
    with torch.no_grad():
        net.pca_mean.add_(0.3)  # a worse start for a second guard: now "training" (back to PCA) beats it
    guard = StartGuard(net, Criterion(validation_loss(digits_x[300:400], None, "mse")))
    net.load_state_dict(start)
    guard.consider(net, 3)
    with torch.no_grad():
        net.decoder[-1].bias.add_(0.3)
    assert not guard.restore(net) and _same(net, start)
    assert guard.summary()["chosen"]["epoch"] == 3


class _Scripted:
    """Measures read from the network's decoder bias (its first entry names the "epoch"), so a
    test scripts what every state scores; counts the precision calls."""

    def __init__(self, table: dict[int, tuple[float, float]]):
        self.table, self.precision_calls = table, 0

    def key(self, net: DenseAutoencoder) -> int:
        return round(float(net.decoder[-1].bias.detach()[0]) * 100)

    def criterion(self) -> Criterion:
        def precision(net: DenseAutoencoder) -> float:
            self.precision_calls += 1
            return self.table[self.key(net)][0]

        return Criterion(lambda net: self.table[self.key(net)][1], precision)


def _set_epoch(net: DenseAutoencoder, epoch: int) -> None:
    with torch.no_grad():
        net.decoder[-1].bias[0] = epoch / 100


def test_guard_keeps_the_lowest_loss_state_that_beats_the_start_on_every_measure(digits_x):
    """With labels the guard holds every epoch to the verdict's two measures: better retrieval
    bought with worse reconstruction does not count (the user's PCA tie, not a loss), and among
    the states that beat the start the lowest validation loss wins, wherever it came in training."""
    net, _ = _pca_net(digits_x)
    # key: (P@10, loss); 0 is the start
    scripted = _Scripted(
        {0: (0.80, 0.40), 1: (0.90, 0.50), 2: (0.80, 0.39), 3: (0.79, 0.30), 4: (0.85, 0.35), 5: (0.95, 0.36)}
    )
    _set_epoch(net, 0)
    guard = StartGuard(net, scripted.criterion())
    states = {}
    for epoch in (1, 2, 3, 4, 5):
        _set_epoch(net, epoch)
        states[epoch] = _state(net)
        guard.consider(net, epoch)
    # 1: better retrieval, worse loss; 2: same retrieval, lower loss (beats the start); 3: lowest loss,
    # worse retrieval; 4: beats the start with a lower loss than 2; 5: beats the start, loss above 4's
    assert not guard.restore(net) and _same(net, states[4])
    assert guard.summary()["chosen"] == {"epoch": 4, "val_loss": 0.35, "val_precision_at_10": 0.85}
    assert guard.summary()["start"] == {"val_loss": 0.4, "val_precision_at_10": 0.8}
    # precision, the costly measure, only for the start and states whose loss could be chosen (2, 3, 4)
    assert scripted.precision_calls == 4
    assert not net.training  # restore leaves the network as it found it (eval)


def test_guard_keeps_the_start_when_no_epoch_beats_it_on_both_measures(digits_x):
    net, _ = _pca_net(digits_x)
    scripted = _Scripted({0: (0.80, 0.40), 1: (0.90, 0.41), 2: (0.79, 0.30)})
    _set_epoch(net, 0)
    start = _state(net)
    guard = StartGuard(net, scripted.criterion())
    for epoch in (1, 2):
        _set_epoch(net, epoch)
        guard.consider(net, epoch)
    assert guard.restore(net) and _same(net, start)


def test_guard_precision_runs_on_bounded_seeded_samples(digits_x):
    """precision@10 runs after every epoch, so it encodes at most max_database training and
    max_queries validation items, the same ones for every state scored."""
    net, _ = _pca_net(digits_x)
    labels = [str(i % 10) for i in range(len(digits_x))]
    split = {"train": np.arange(0, 300), "val": np.arange(300, 400)}
    encoded: list[int] = []
    forward = net.code_and_output
    net.code_and_output = lambda x: (encoded.append(len(x)), forward(x))[1]  # type: ignore[method-assign]
    full = start_criterion(digits_x, split, None, "mse", labels, "l2")
    capped = start_criterion(digits_x, split, None, "mse", labels, "l2", seed=0, max_database=50, max_queries=20)
    full.precision_at_10(net)
    assert sum(encoded) == 400
    encoded.clear()
    first = capped.precision_at_10(net)
    assert sum(encoded) == 70
    assert capped.precision_at_10(net) == first  # the same sample each time
    assert 0.0 <= first <= 1.0


def test_guard_watches_every_epoch_of_a_real_trainer(digits_x):
    """In a Lightning fit the guard scores each validation epoch (not the sanity check) and the
    chosen state is one the network passed through."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from aepipe.config import TrainingConfig
    from aepipe.model.module import AutoencoderModule

    net, _ = _pca_net(digits_x)
    net.train()
    guard = StartGuard(net, Criterion(validation_loss(digits_x[300:400], None, "mse")))
    seen: list[dict[str, torch.Tensor]] = []

    class Record(L.Callback):
        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                seen.append(_state(pl_module.net))

    module = AutoencoderModule(net, "mse", 1e-2, 0.0, "constant", CFG, TrainingConfig())
    x = torch.from_numpy(digits_x)
    trainer = L.Trainer(
        max_epochs=4,
        callbacks=[guard, Record()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
    )
    trainer.fit(
        module, DataLoader(TensorDataset(x[:300]), batch_size=64), DataLoader(TensorDataset(x[300:400]), batch_size=100)
    )
    assert guard.epochs_seen == 4
    assert not guard.restore(net)  # from PCA, 300 digits lower the validation loss within four epochs
    assert any(_same(net, s) for s in seen)


def test_saved_model_with_a_linear_path_reloads_and_encodes_identically(digits_x, tmp_path):
    net, _ = _pca_net(digits_x)
    with torch.no_grad():
        net.code_head.weight.normal_()  # not the start: every weight must round-trip
    prep = ImagePreprocessor(height=8, width=8, channels=1)
    cfg = build_config(
        overrides=["model.code_size=5", "model.n_layers=2", "model.nodes_per_layer=[32, 16]", "model.linear_path=pca"]
    )
    save_model(ModelFiles(tmp_path / "m"), net, cfg, prep)
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded.net, DenseAutoencoder) and loaded.net.linear_path == "pca"
    assert loaded.net.output_activation == "clamp"
    x = torch.from_numpy(digits_x[:50])
    (z1, e1), (z2, e2) = encode_array(net, x), encode_array(loaded.net, x)
    assert torch.equal(z1, z2) and torch.equal(e1, e2)


def test_training_with_a_linear_path_starts_from_pca_and_is_not_worse_on_held_out_items(tmp_path):
    cfg = build_config(
        overrides=[
            *QUICK_OVERRIDES,
            "corpus.source=digits",
            "corpus.limit=300",
            "model.linear_path=pca",
            f"run_dir={tmp_path / 'run'}",
        ]
    )
    result = train_model(cfg)
    m = result.metrics
    assert m["loss"] == "mse"
    assert m["ae"]["sse_per_item"] <= m["pca"]["sse_per_item"] * 1.05  # one epoch: about PCA, not far worse
    files = RunLayout.at(cfg.run_dir).model
    assert json.loads(files.info.read_text())["output_activation"] == "clamp"
    model = load_model(files.root)
    assert model.config.model.linear_path == "pca" and model.model_id == result.model_id


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"architecture": "conv"}, "architecture: dense"),
        ({"variational": True}, "variational"),
        ({"code_activation": "sigmoid"}, "code_activation: linear"),
        ({"loss": "bce"}, "needs loss: mse"),
    ],
)
def test_linear_path_refuses_what_cannot_start_as_pca(fields, message):
    with pytest.raises(ValidationError, match=message):
        ModelConfig(linear_path="pca", **fields)


def test_auto_loss_is_mse_with_a_linear_path():
    cfg = build_config(overrides=["model.linear_path=pca-frozen"])
    assert resolve_loss(cfg, np.array([0.0, 0.5, 1.0])) == "mse"


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ([], "pca"),  # the images preset
        (["model.architecture=conv"], "none"),
        (["model.variational=true"], "none"),
        (["model.contractive={weight: 0.05}"], "none"),  # other kinds keep the plain network
        (["model.denoising={noise: gaussian, level: 0.4}"], "none"),
        (["model.code_activation=sigmoid"], "none"),
        (["model.loss=bce"], "none"),
        (["training.task=denoise"], "none"),  # restoration keeps its sigmoid output
        (["corpus.kind=documents"], "none"),
        (["preset=none"], "none"),
        (["model.architecture=conv", "model.linear_path=pca"], None),  # set by the user: refused, not dropped
    ],
)
def test_images_preset_starts_dense_models_as_pca_only_where_it_can(overrides, expected):
    if expected is None:
        with pytest.raises(Exception, match="architecture: dense"):
            build_config(overrides=overrides)
        return
    assert build_config(overrides=overrides).model.linear_path == expected


def _documents(n: int = 120, vocab: int = 40, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Seeded word-count rows of two topics (the first and second half of the vocabulary)."""
    rng = np.random.default_rng(seed)
    labels = [("a", "b")[i % 2] for i in range(n)]
    x = np.zeros((n, vocab), np.float32)
    for i, lb in enumerate(labels):
        half = np.arange(vocab // 2) + (0 if lb == "a" else vocab // 2)
        x[i, rng.choice(half, 8)] += 1.0
        x[i, rng.choice(vocab, 2)] += 1.0  # a few words off topic
    return x, labels


def _lsa_config():
    return build_config(
        overrides=[
            "corpus.kind=documents",
            "model.code_size=4",
            "model.nodes_per_layer=[16, 8, 8]",
            "model.linear_path=lsa",
        ]
    )


def test_lsa_path_starts_with_the_verdicts_lsa_codes_and_a_unigram_softmax_decoder():
    x, _ = _documents()
    cfg = _lsa_config()
    assert cfg.model.loss == "softmax" and resolve_loss(cfg, x) == "softmax"  # the preset's loss is kept
    torch.manual_seed(0)
    net = build_autoencoder(cfg.model, (x.shape[1],), "softmax")
    target = x / x.sum(1, keepdims=True)
    init_linear_path(net, x[:100], cfg, target[:100])
    net.eval()
    svd = TruncatedSVD(n_components=4, random_state=cfg.training.seed).fit(x[:100])  # as verdict.linear_codes
    with torch.inference_mode():
        z, out = net.code_and_output(torch.from_numpy(x[100:]))
    np.testing.assert_allclose(z.numpy(), svd.transform(x[100:]), atol=1e-4)
    # The decoder adds no P'code to word logits: every document starts at the training unigram model.
    unigram = np.log(target[:100].mean(0))
    np.testing.assert_allclose(out.numpy(), np.broadcast_to(unigram, out.shape), atol=1e-5)


def test_start_criterion_is_validation_precision_with_labels_else_loss():
    x, labels = _documents()
    cfg = _lsa_config()
    split = {"train": np.arange(0, 100), "val": np.arange(100, 120), "test": np.arange(0)}
    target = x / x.sum(1, keepdims=True)
    torch.manual_seed(0)
    net = build_autoencoder(cfg.model, (x.shape[1],), "softmax")
    init_linear_path(net, x[split["train"]], cfg, target[split["train"]])
    start = {k: v.clone() for k, v in net.state_dict().items()}

    criterion = start_criterion(x, split, target, "softmax", labels, cfg.index.metric)
    assert criterion.name == "precision@10 and loss"
    guard = StartGuard(net.eval(), criterion)
    assert guard.start[0] == pytest.approx(-1.0)  # two clean topics: LSA codes retrieve perfectly
    unigram_loss = float(-(target[100:] * np.log(target[:100].mean(0))).sum(1).mean())
    assert guard.start[1] == pytest.approx(unigram_loss, rel=1e-4)
    with torch.no_grad():
        net.pca_components.normal_()  # "training" that scrambles the codes
    guard.consider(net, 0)
    assert guard.restore(net) and _same(net, start)

    criterion = start_criterion(x, split, target, "softmax", [None] * len(x), cfg.index.metric)
    assert criterion.name == "loss" and criterion.precision_at_10 is None  # no labels
    assert criterion.loss(net) == pytest.approx(unigram_loss, rel=1e-4)  # against the word distributions


def test_lsa_path_takes_softmax_and_pca_path_does_not():
    assert ModelConfig(linear_path="lsa", loss="softmax").loss == "softmax"
    with pytest.raises(ValidationError, match="lsa also takes softmax"):
        ModelConfig(linear_path="pca", loss="softmax")
    cfg = build_config(overrides=["corpus.kind=documents", "model.linear_path=lsa-frozen"])
    assert cfg.model.linear_path == "lsa-frozen" and cfg.model.denoising is not None  # the preset's, measured with it
    with pytest.raises(ConfigError, match="needs loss: mse"):
        build_config(overrides=["corpus.kind=documents", "model.linear_path=pca"])


def test_documents_preset_smooths_targets_over_neighbours():
    assert build_config(overrides=["corpus.kind=documents"]).training.knn_target.k == 10
    assert build_config(overrides=["corpus.kind=documents", "training.knn_target=null"]).training.knn_target is None


def test_a_refiner_starts_as_the_pca_decoder_learns_and_still_decodes_codes_alone(digits_x, tmp_path):
    """model.refine_channels: a conv correction of the decoded image, inside the decoder."""
    cfg = CFG.model_copy(update={"refine_channels": 8})
    net, pca = _pca_net(digits_x, cfg)
    x = torch.from_numpy(digits_x[300:400])
    with torch.inference_mode():
        out = net.code_and_output(x)[1].reshape(100, -1).numpy()
    np.testing.assert_allclose(out, pca.inverse_transform(pca.transform(x.reshape(100, -1).numpy())), atol=1e-4)
    assert net.decodes_codes  # the refiner is part of the decoder: a code is still the whole image
    net.train()
    opt = torch.optim.Adam(net.refiner.parameters(), lr=1e-2)
    before = float(((net(x).out - x) ** 2).mean().detach())
    for _ in range(30):  # only the refiner learns: it improves on the PCA reconstruction
        loss = ((net(x).out - x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.95 * before
    prep = ImagePreprocessor(height=8, width=8, channels=1)
    overrides = ["model.code_size=5", "model.n_layers=2", "model.nodes_per_layer=[32, 16]", "model.linear_path=pca"]
    save_model(
        ModelFiles(tmp_path / "m"), net.eval(), build_config(overrides=[*overrides, "model.refine_channels=8"]), prep
    )
    loaded = load_model(tmp_path / "m").net
    with torch.inference_mode():
        z = net.encode(x)
        assert torch.equal(net.decode(z), loaded.decode(z))  # the refiner's weights round-trip


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.architecture=conv", "model.refine_channels=8"], "dense"),
        (["corpus.kind=documents", "model.refine_channels=8"], "documents"),
    ],
)
def test_refiner_refuses_what_has_no_image(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config(overrides=overrides)


# model.pca_basis: the deep path reads and writes the first N principal components.
BASIS_CFG = CFG.model_copy(update={"pca_basis": 12})


def test_a_deep_path_on_a_pca_basis_starts_as_pca_and_has_fewer_weights(digits_x):
    cfg = build_config(overrides=["model.code_size=5", "model.n_layers=2", "model.nodes_per_layer=[32, 16]"])
    cfg = cfg.model_copy(update={"model": BASIS_CFG})
    torch.manual_seed(0)
    net = build_autoencoder(BASIS_CFG, (1, 8, 8), "clamp")
    raw = build_autoencoder(CFG, (1, 8, 8), "clamp")
    assert isinstance(net, DenseAutoencoder) and net.pca_basis == 12
    assert net.body[1].in_features == 12 and net.decoder[-1].out_features == 12  # not the 64 pixels
    assert raw.body[1].in_features == 64
    train = digits_x[:300]
    init_linear_path(net, train, cfg)
    basis = PCA(n_components=12, random_state=0).fit(train.reshape(300, -1))
    np.testing.assert_allclose(net.basis_components.numpy(), basis.components_, atol=1e-5)
    pca = PCA(n_components=5, random_state=0).fit(train.reshape(300, -1))
    x = digits_x[300:400]
    flat = x.reshape(len(x), -1)
    with torch.inference_mode():
        z, out = net.eval().code_and_output(torch.from_numpy(x))
    np.testing.assert_allclose(z.numpy(), pca.transform(flat), atol=1e-4)
    np.testing.assert_allclose(out.reshape(len(x), -1).numpy(), pca.inverse_transform(pca.transform(flat)), atol=1e-4)
    # What the deep path reads: the held-out items' first 12 components, scaled by the first one's spread.
    scale = np.sqrt(basis.explained_variance_[0])
    with torch.inference_mode():
        read = net.deep_input(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(read, basis.transform(flat) / scale, atol=1e-4)


def test_the_deep_path_on_a_basis_can_only_change_the_output_within_it(digits_x):
    """Its correction is a combination of the N basis directions: whatever it learns, the output
    minus PCA's reconstruction has no part outside them."""
    cfg = build_config(overrides=["model.code_size=5"]).model_copy(update={"model": BASIS_CFG})
    net = build_autoencoder(BASIS_CFG, (1, 8, 8), "clamp")
    init_linear_path(net, digits_x[:300], cfg)
    x = torch.from_numpy(digits_x[:64])
    _train_steps(net, x, 5)
    assert float(net.decoder[-1].weight.detach().abs().sum()) > 0  # the deep path moved
    with torch.inference_mode():
        z = net.eval().encode(x)
        deep = net.decode(z).flatten(1) - (net.pca_mean + z @ net.pca_components)  # (B, D)
        q = net.basis_components  # (N, D), orthonormal rows
        outside = deep - (deep @ q.T) @ q
    assert float(deep.abs().max()) > 1e-4 and float(outside.abs().max()) < 1e-4


def test_a_model_with_a_pca_basis_reloads_and_encodes_identically(digits_x, tmp_path):
    cfg = build_config(
        overrides=[
            "model.code_size=5",
            "model.n_layers=2",
            "model.nodes_per_layer=[32, 16]",
            "model.linear_path=pca",
            "model.pca_basis=12",
        ]
    )
    net = build_autoencoder(cfg.model, (1, 8, 8), "clamp")
    init_linear_path(net, digits_x[:300], cfg)
    with torch.no_grad():
        net.code_head.weight.normal_()
    save_model(ModelFiles(tmp_path / "m"), net, cfg, ImagePreprocessor(height=8, width=8, channels=1))
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded.net, DenseAutoencoder) and loaded.net.pca_basis == 12
    x = torch.from_numpy(digits_x[:50])
    torch.testing.assert_close(encode_array(loaded.net, x)[0], encode_array(net.eval(), x)[0], rtol=0, atol=0)


def test_a_model_saved_before_pca_basis_loads_with_raw_inputs(tmp_path):
    """A 3x48x48 model (6,912 inputs: auto would mean 128 components) saved without the key
    was trained on raw values; it must load as that network, not as auto's."""
    cfg = build_config(overrides=["model.code_size=4", "model.n_layers=1", "model.nodes_per_layer=[8]"])
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"linear_path": "pca", "pca_basis": 0})})
    net = build_autoencoder(cfg.model, (3, 48, 48), "clamp")
    files = ModelFiles(tmp_path / "m")
    save_model(files, net, cfg, ImagePreprocessor(height=48, width=48, channels=3))
    saved = json.loads(files.config.read_text())
    assert saved["model"].pop("pca_basis") == 0
    files.config.write_text(json.dumps(saved))  # as an older version wrote it
    loaded = load_model(files)
    assert isinstance(loaded.net, DenseAutoencoder) and loaded.net.pca_basis == 0
    assert ModelConfig(linear_path="pca").pca_basis_size(3 * 48 * 48) == 128  # what the default would build


@pytest.mark.parametrize(
    ("fields", "inputs", "expected"),
    [
        ({"linear_path": "pca"}, 3 * 32 * 32, 128),  # colour 32x32: auto reads 128 components
        ({"linear_path": "pca"}, 28 * 28, 0),  # grayscale up to 45x45: raw values
        ({"linear_path": "pca-frozen"}, 3 * 64 * 64, 128),
        ({"linear_path": "pca", "pca_basis": 300}, 64, 64),  # never more than the inputs
        ({"linear_path": "lsa"}, 5000, 0),  # documents: no basis
        ({}, 3 * 32 * 32, 0),  # no linear path: nothing to fit it beside
    ],
)
def test_pca_basis_size(fields, inputs, expected):
    assert ModelConfig(**fields).pca_basis_size(inputs) == expected


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"pca_basis": 64}, "needs model.linear_path"), ({"linear_path": "pca", "pca_basis": -1}, "auto or a number")],
)
def test_pca_basis_refuses_what_it_cannot_do(fields, message):
    with pytest.raises(ValidationError, match=message):
        ModelConfig(**fields)


def test_batch_norm_auto_comes_with_a_pca_basis():
    assert ModelConfig(linear_path="pca").uses_batch_norm(3 * 32 * 32)  # basis 128: normalised deep path
    assert not ModelConfig(linear_path="pca").uses_batch_norm(28 * 28)  # raw values: as before
    assert not ModelConfig(linear_path="pca", batch_norm=False).uses_batch_norm(3 * 32 * 32)  # the user's word
    assert ModelConfig(batch_norm=True).uses_batch_norm(64)
    net = build_autoencoder(
        ModelConfig(linear_path="pca", code_size=4, n_layers=1, nodes_per_layer=[8]), (3, 32, 32), "clamp"
    )
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in net.modules())


@pytest.mark.parametrize(("side", "smoothed"), [(16, True), (32, False)])  # 3x16x16 = 768 values; 3x32x32 = 3,072
def test_knn_target_is_left_out_for_images_above_max_image_inputs(side, smoothed):
    from aepipe.model.fit import training_target

    cfg = build_config(overrides=["training.knn_target={k: 3}"])
    assert cfg.training.knn_target is not None and cfg.training.knn_target.max_image_inputs == 2048
    x = np.random.default_rng(0).random((40, 3, side, side), dtype=np.float32)
    prep = ImagePreprocessor(height=side, width=side, channels=3)
    target = training_target(cfg, prep, "mse", x, np.arange(30))
    assert (target is not None) == smoothed
    if target is not None:
        assert not np.allclose(target[:30], x[:30]) and np.array_equal(target[30:], x[30:])  # training items only
