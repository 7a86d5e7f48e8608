"""Every training run says whether it beat the linear baseline (PCA; LSA for documents)."""

from __future__ import annotations

import json
import logging

import numpy as np

from aepipe.config import build_config
from aepipe.layout import RunLayout
from aepipe.model.train import train_model
from aepipe.model.verdict import baseline_summary, baseline_verdict, linear_codes, retrieval_comparison
from aepipe.report.summary import baseline_lines


def _metrics(ae: float, pca: float, epochs: int = 10) -> dict:
    return {
        "ae": {"sse_per_item": ae},
        "pca": {"sse_per_item": pca},
        "epochs": epochs,
        "steps": 90,
        "n_train": 1000,
        "n_test": 50,
    }


def test_a_winning_ae_gets_no_warning_and_no_hints(caplog):
    cfg = build_config()
    retrieval = {"ae_precision_at_10": 0.9, "baseline_precision_at_10": 0.8, "metric": "l2", "n_queries": 50}
    with caplog.at_level(logging.WARNING, logger="aepipe"):
        v = baseline_verdict(cfg, _metrics(1.0, 2.0), "pca", retrieval, 10_000, (1, 8, 8))
    assert v["ae_beats_baseline"] and v["ae_beats_reconstruction"] and v["ae_beats_retrieval"]
    assert v["hints"] == [] and not caplog.records


def test_losing_on_retrieval_alone_is_a_loss_with_a_retrieval_hint(caplog):
    cfg = build_config(overrides=["training.max_epochs=10", "training.knn_target=null"])
    retrieval = {"ae_precision_at_10": 0.45, "baseline_precision_at_10": 0.84, "metric": "l2", "n_queries": 50}
    with caplog.at_level(logging.WARNING, logger="aepipe"):
        v = baseline_verdict(cfg, _metrics(1.0, 2.0, epochs=9), "pca", retrieval, 400_000, (1, 64, 64))
    assert v["ae_beats_reconstruction"] and v["ae_beats_retrieval"] is False and not v["ae_beats_baseline"]
    text = " | ".join(v["hints"])
    assert "training.max_epochs=20" in text and "training.min_steps=180" in text  # stopped at the limit
    assert "model.architecture=conv" in text  # 64x64 dense
    assert "smaller network" in text  # 400k parameters for 1000 items
    assert "training.knn_target" in text
    assert "did not beat PCA: lost on precision@10" in caplog.text
    assert v["outcome"] == {"reconstruction": "won", "precision@10": "lost"}
    lines = baseline_lines(v)
    assert lines[0].startswith("WARNING: AE does not beat the linear baseline")
    assert all(line.startswith("  try: ") for line in lines[1:]) and len(lines) == 1 + len(v["hints"])


def test_a_tie_is_reported_as_a_tie_not_a_loss(caplog):
    """A kept PCA start gives the AE PCA's codes: equal P@10 is a tie (not a win, not a loss)."""
    cfg = build_config()
    retrieval = {"ae_precision_at_10": 0.7, "baseline_precision_at_10": 0.7, "metric": "l2", "n_queries": 50}
    metrics = {**_metrics(1.0, 1.01), "kept_pca_start": True}
    with caplog.at_level(logging.WARNING, logger="aepipe"):
        v = baseline_verdict(cfg, metrics, "pca", retrieval, 1000, (1, 8, 8))
    assert not v["ae_beats_baseline"] and v["ae_beats_retrieval"] is False
    assert v["outcome"] == {"reconstruction": "won", "precision@10": "tied"}
    assert "did not beat PCA: tied on precision@10" in caplog.text and "PCA start, which was kept" in caplog.text
    assert "lost" not in caplog.text
    assert "P@10 0.700 vs PCA 0.700 (tied)" in baseline_summary({**metrics, "baseline": v})
    assert "(tied)" in baseline_lines(v)[0] and "reconstruction vs PCA: won" in baseline_lines(v)[0]


def test_without_labels_only_reconstruction_counts():
    cfg = build_config()
    v = baseline_verdict(cfg, _metrics(1.0, 2.0), "pca", None, 1000, (1, 8, 8))
    assert v["ae_beats_baseline"] and v["ae_beats_retrieval"] is None
    m = {**_metrics(1.0, 2.0), "baseline": v}
    assert baseline_summary(m) == "AE SSE/item 1.000 vs PCA 2.000 (won) on 50 held-out items"


def test_retrieval_needs_labels_on_every_item():
    cfg = build_config()
    z = np.zeros((4, 2), np.float32)
    assert retrieval_comparison(cfg, z, z[:2], z, z[:2], ["a", "b", None, "a"], ["a", "b"]) is None
    assert retrieval_comparison(cfg, z, z[:2], z, z[:2], ["a"] * 4, ["a", "a"]) is None


def test_documents_are_compared_with_lsa():
    cfg = build_config(overrides=["corpus.kind=documents", "model.code_size=3"])
    x = np.random.default_rng(0).random((30, 12)).astype(np.float32)
    name, a, b = linear_codes(cfg, x[:20], x[20:])
    assert name == "lsa" and a.shape == (20, 3) and b.shape == (10, 3)


def test_an_undertrained_run_warns_and_records_the_verdict(tmp_path, caplog):
    from tests.conftest import QUICK_OVERRIDES

    cfg = build_config(
        overrides=[*QUICK_OVERRIDES, "corpus.source=digits", "corpus.limit=300", f"run_dir={tmp_path / 'run'}"]
    )
    with caplog.at_level(logging.WARNING, logger="aepipe"):
        result = train_model(cfg)  # one epoch, 4-d code: PCA wins
    b = json.loads(RunLayout.at(cfg.run_dir).model.metrics.read_text())["baseline"]
    assert b == result.metrics["baseline"]
    assert b["name"] == "pca" and b["ae_beats_baseline"] is False and b["hints"]
    r = b["retrieval"]
    assert r["n_queries"] == 30 and 0 <= r["ae_precision_at_10"] <= 1 and r["baseline_precision_at_10"] > 0.5
    assert "the autoencoder did not beat PCA" in caplog.text


def test_the_smaller_network_hint_counts_the_deep_path_only():
    """A PCA linear path adds a code x inputs matrix that nodes_per_layer does not size: the
    'smaller network' hint counts what its advice changes."""
    from aepipe.model.fit import deep_parameters
    from aepipe.model.networks import DenseAutoencoder

    plain = DenseAutoencoder((1, 32, 32), [16], 4, output_activation="identity")
    with_path = DenseAutoencoder((1, 32, 32), [16], 4, output_activation="identity", linear_path="pca")
    total = sum(p.numel() for p in with_path.parameters())
    assert total == sum(p.numel() for p in plain.parameters()) + 4 * 1024 + 1024
    assert deep_parameters(with_path) == deep_parameters(plain) == sum(p.numel() for p in plain.parameters())
