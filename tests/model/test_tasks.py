"""Training for a task: restoration inputs derived from the target, paired targets by id, U-Net
skips, and the held-out measure and grid each restoration run writes."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from aepipe.config import ModelConfig, build_config
from aepipe.errors import ConfigError
from aepipe.layout import RunLayout
from aepipe.model import load_model
from aepipe.model.networks import build_autoencoder
from aepipe.model.tasks import pair_key
from aepipe.model.train import train_model
from aepipe.restore.decode import decode_codes, reconstruct

CONV = [
    "model.architecture=conv",
    "model.n_layers=2",
    "model.nodes_per_layer=[16, 32]",
    "model.code_size=16",
    "training.batch_size=32",
    "training.lr=0.01",
]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["training.task=paired"], "target_source"),
        (["corpus.target_source=clean/"], "target_source"),
        (["training.task=colorize", "features.image.channels=1"], "colour"),
        (["model.skip_connections=true"], "conv"),
        (["training.task=denoise", "training.noise=[{kind: gaussian, levels: [300]}]"], "gaussian levels"),
        (["training.task=denoise", "corpus.kind=documents"], "for images"),
        (["training.task=denoise", "model.denoising={noise: masking}"], "model.denoising"),
        (["model.residual=true"], "restoration task"),
        (["training.task=denoise", "model.residual=true", "model.loss=bce"], "identity output"),
        (["training.task=denoise", "model.residual=true", "model.linear_path=pca"], "linear_path"),
    ],
)
def test_impossible_task_configs_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config(overrides=overrides)


def test_unet_skips_carry_detail_and_forbid_decoding_codes_alone():
    cfg = ModelConfig(architecture="conv", n_layers=3, code_size=8, skip_connections=True)
    net = build_autoencoder(cfg, (3, 16, 16)).eval()
    x = torch.rand(2, 3, 16, 16)
    z, out = net.code_and_output(x)  # (2, 8), (2, 3, 16, 16)
    assert z.shape == (2, 8) and out.shape == (2, 3, 16, 16)
    _, maps = net.feature_maps(x)
    assert not torch.allclose(net.decode(z, maps), net.decode(z, [m * 0 for m in maps]))  # the skips are used
    with pytest.raises(ValueError, match="feature maps"):
        net.decode(z)
    assert not net.decodes_codes


def test_residual_is_on_for_restoration_tasks_and_off_for_reconstruction():
    assert build_config(overrides=["training.task=denoise"]).residual_output()
    assert build_config(overrides=["training.task=remove_watermark"]).residual_output()
    assert not build_config(overrides=["training.task=denoise", "model.residual=false"]).residual_output()
    assert not build_config(overrides=[]).residual_output()
    # a PCA start the user asked for is the other start: auto leaves it alone
    assert not build_config(overrides=["training.task=denoise", "model.linear_path=pca"]).residual_output()


@pytest.mark.parametrize("arch", ["dense", "conv", "dense+refiner"])
def test_an_untrained_residual_network_returns_its_input_and_learns_a_correction(arch):
    refine = 8 if arch == "dense+refiner" else 0
    arch = arch.split("+")[0]
    cfg = ModelConfig(architecture=arch, n_layers=2, code_size=8, skip_connections=arch == "conv")
    cfg = cfg.model_copy(update={"refine_channels": refine})
    net = build_autoencoder(cfg, (3, 16, 16), "clamp", residual=True).eval()
    x = torch.rand(4, 3, 16, 16)
    assert torch.equal(net.reconstruct(x), x)  # the last layer starts at zero: output = input
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1)  # trained away from the start ...
    net.make_residual()  # ... and put back (the kept-input guard): the identity again
    assert torch.equal(net.reconstruct(x), x)
    assert not net.decodes_codes
    net.train()
    loss = ((net(x).out - x.mean()) ** 2).mean()  # any target other than the input
    loss.backward()
    last = [m for m in net.modules() if isinstance(m, (torch.nn.Linear, torch.nn.ConvTranspose2d))][-1]
    assert last.weight.grad is not None and last.weight.grad.abs().sum() > 0  # training moves the correction
    plain = build_autoencoder(cfg, (3, 16, 16), "clamp").eval()
    assert not torch.allclose(plain.reconstruct(x), x, atol=1e-3)  # without it, an untrained net is noise


def test_denoise_model_beats_the_noisy_input_and_writes_its_grid(tmp_path):
    cfg = build_config(
        overrides=[
            *CONV,
            "corpus.source=digits",
            "corpus.limit=600",
            "training.max_epochs=25",
            "training.task=denoise",
            "training.noise=[{kind: gaussian, levels: [50]}]",
            "model.skip_connections=true",
            f"run_dir={tmp_path / 'run'}",
        ]
    )
    result = train_model(cfg)
    files = RunLayout.at(cfg.run_dir).model
    r = result.metrics["restoration"]
    assert r["task"] == "denoise" and r["n_items"] == 60
    assert r["autoencoder"]["psnr"] > r["input"]["psnr"] + 3  # an oracle: it removed noise
    assert r["baseline"]["method"] == "median 3x3"
    assert json.loads(files.metrics.read_text())["restoration"] == r
    grid = np.asarray(Image.open(files.restoration_grid))
    assert grid.shape[:2] == ((4 * (8 + 2) + 2) * 8, (8 * (8 + 2) + 2) * 8)  # 4 rows, 8 columns of 8x8, enlarged 8x
    assert result.metrics["loss"] == "mse"  # residual (auto for a restoration task): an identity output
    model = load_model(files.root)  # a residual U-Net: it restores, but codes alone do not decode
    assert model.net.residual and model.net.output_activation == "clamp"
    with pytest.raises(ConfigError, match="skip connections"):
        decode_codes(model, np.zeros((1, 16), np.float32))
    # the reloaded model is the trained one, residual included (without it the output is the correction alone)
    from sklearn.datasets import load_digits

    clean = (load_digits().images[-100:, None] / 16.0).astype(np.float32)  # (100, 1, 8, 8)
    noisy = np.clip(clean + np.random.default_rng(1).normal(0, 50 / 255, clean.shape), 0, 1).astype(np.float32)
    mse_in, mse_out = ((noisy - clean) ** 2).mean(), ((reconstruct(model, noisy) - clean) ** 2).mean()
    assert 10 * np.log10(mse_in / mse_out) > 1  # dB better than the noisy input (the correction alone: far worse)
    # the run's HTML report shows the task's scores and embeds its grid
    from aepipe.report.html import write_html_report

    page = RunLayout.at(cfg.run_dir).report_html
    write_html_report(cfg.run_dir)
    section = page.read_text().split('<section id="restoration">')[1].split("</section>")[0]
    assert "median 3x3" in section and f"{r['autoencoder']['psnr']:.4g}" in section
    assert section.count('<img src="data:image/png;base64,') == 1 and "corrupted / restored" in section


def test_colorize_trains_on_gray_inputs_of_colour_targets(tmp_path):
    rng = np.random.default_rng(0)
    # colour images whose hue follows their brightness pattern: learnable from the gray version
    yy, xx = np.mgrid[0:16, 0:16] / 15.0
    base = np.stack([xx, yy, 1 - xx], -1)  # (16, 16, 3)
    imgs = np.clip(base[None] * rng.uniform(0.3, 1.0, (300, 1, 1, 3)), 0, 1)
    np.save(tmp_path / "colour.npy", (imgs * 255).astype(np.uint8))
    cfg = build_config(
        overrides=[
            *CONV,
            f"corpus.source={tmp_path / 'colour.npy'}",
            "training.max_epochs=15",
            "training.task=colorize",
            f"run_dir={tmp_path / 'run'}",
        ]
    )
    r = train_model(cfg).metrics["restoration"]
    assert r["baseline"]["method"] == "input as is"
    assert r["autoencoder"]["psnr"] > r["input"]["psnr"]  # better than the gray image


def test_paired_targets_match_by_id_and_unmatched_inputs_are_quarantined(tmp_path, digits_x, write_png):
    rng = np.random.default_rng(1)
    for i in range(120):
        clean = np.rint(digits_x[i, 0] * 255)
        noisy = np.clip(clean + rng.normal(0, 40, clean.shape), 0, 255)
        write_png(tmp_path / "clean" / f"{i:03d}.png", clean)
        write_png(tmp_path / "noisy" / f"{i:03d}.png", noisy)
    write_png(tmp_path / "noisy" / "orphan.png", np.zeros((8, 8)))
    cfg = build_config(
        overrides=[
            *CONV,
            f"corpus.source={tmp_path / 'noisy'}",
            f"corpus.target_source={tmp_path / 'clean'}",
            "training.task=paired",
            "training.max_epochs=3",
            f"run_dir={tmp_path / 'run'}",
        ]
    )
    result = train_model(cfg)
    assert result.metrics["restoration"]["task"] == "paired" and result.n_items == 120
    q = pq.read_table(RunLayout.at(cfg.run_dir).model.root / "quarantine.parquet").to_pylist()
    assert [(row["id"], row["reason"]) for row in q] == [
        ("orphan.png", "no target with this id in corpus.target_source")
    ]


def test_pair_key_ignores_the_extension_only():
    assert pair_key("scans/a.jpg") == pair_key("scans/a.png") == "scans/a"
    assert pair_key("0005") == "0005"
    assert pair_key("a.b/c") == "a.b/c"


def test_encoding_a_unet_measures_its_own_reconstruction():
    from aepipe.model.saved import encode_array

    torch.manual_seed(0)
    net = build_autoencoder(ModelConfig(architecture="conv", n_layers=2, code_size=4, skip_connections=True), (1, 8, 8))
    net.eval()
    x = torch.rand(5, 1, 8, 8)
    z, sse = encode_array(net, x)  # (5, 4), (5,)
    assert torch.allclose(z, net.encode(x))
    assert torch.allclose(sse, (net.reconstruct(x) - x).pow(2).flatten(1).sum(1), atol=1e-5)


def test_a_correction_that_makes_validation_images_worse_is_dropped():
    """A residual model never hands back worse than the input: the start (identity) is put back."""
    from aepipe.model.fit import keep_better_than_input

    cfg = build_config(overrides=[*CONV, "training.task=denoise", "training.noise=[{kind: gaussian, levels: [25]}]"])
    clean = np.random.default_rng(0).random((20, 1, 8, 8), dtype=np.float32) * 0.5 + 0.25
    net = build_autoencoder(cfg.model, (1, 8, 8), "clamp", residual=True).eval()
    assert not keep_better_than_input(net, cfg, clean, None)  # the untrained start ties with the input: kept
    last = [m for m in net.modules() if isinstance(m, torch.nn.ConvTranspose2d)][-1]
    with torch.no_grad():
        last.bias.fill_(0.3)  # a correction that brightens everything: worse than the noisy input
    assert keep_better_than_input(net, cfg, clean, None)
    x = torch.from_numpy(clean)
    with torch.inference_mode():
        assert torch.equal(net.reconstruct(x), x)  # back to the identity


def test_a_colorize_model_changes_colour_only_and_keeps_that_after_reloading(tmp_path):
    from aepipe.features import ImagePreprocessor
    from aepipe.features.degrade import LUMA, grayscale
    from aepipe.layout import ModelFiles
    from aepipe.model import save_model

    cfg = build_config(overrides=[*CONV, "training.task=colorize"])
    net = build_autoencoder(cfg.model, (3, 16, 16), "clamp", residual=True, keep_luma=True).eval()
    last = [m for m in net.modules() if isinstance(m, torch.nn.ConvTranspose2d)][-1]
    with torch.no_grad():
        last.weight.normal_(0, 0.05)  # some correction
    gray = torch.from_numpy(grayscale(np.random.default_rng(0).random((4, 3, 16, 16), dtype=np.float32) * 0.6 + 0.2))
    with torch.inference_mode():
        out = net.code_and_output(gray)[1]
    luma = torch.from_numpy(LUMA)
    assert not torch.allclose(out, gray, atol=1e-3)  # colour was added
    torch.testing.assert_close(torch.einsum("bchw,c->bhw", out, luma), gray[:, 0], atol=1e-5, rtol=0)
    save_model(ModelFiles(tmp_path / "m"), net, cfg, ImagePreprocessor(height=16, width=16, channels=3))
    loaded = load_model(tmp_path / "m").net
    assert loaded.keep_luma and loaded.residual
    with torch.inference_mode():
        torch.testing.assert_close(loaded.code_and_output(gray)[1], out)
