"""Every training run says whether it beat the linear baseline (PCA; LSA for documents)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

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


def test_a_retrieval_loss_within_noise_says_so(caplog):
    cfg = build_config()
    noise = {"difference": -0.0038, "standard_error": 0.0051, "within_noise": True}
    retrieval = {"ae_precision_at_10": 0.152, "baseline_precision_at_10": 0.155, "metric": "l2", "n_queries": 240}
    with caplog.at_level(logging.WARNING, logger="aepipe"):
        baseline_verdict(cfg, _metrics(1.0, 2.0), "pca", {**retrieval, "noise": noise}, 1000, (1, 8, 8))
    assert (
        "lost on precision@10 of held-out items (precision@10 within noise: -0.0038 ± 0.0051 over 240 queries)"
        in caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="aepipe"):
        baseline_verdict(
            cfg, _metrics(1.0, 2.0), "pca", {**retrieval, "noise": {**noise, "within_noise": False}}, 1000, (1, 8, 8)
        )
    assert "lost on precision@10 of held-out items; try" in caplog.text and "within noise" not in caplog.text


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


def _codes_with_neighbours(rng: np.random.Generator, n_db: int, n_q: int, spread: float):
    """Two labelled blobs in 2-d; ``spread`` sets how often a query's neighbours cross over."""
    y_db = np.array(["a", "b"] * (n_db // 2), dtype=object)
    y_q = np.array(["a", "b"] * (n_q // 2), dtype=object)
    centre = {"a": (0.0, 0.0), "b": (1.0, 0.0)}

    def place(y):
        return (np.array([centre[v] for v in y]) + rng.normal(0, spread, (len(y), 2))).astype(np.float32)

    return place(y_db), place(y_q), list(y_db), list(y_q)


def test_retrieval_comparison_reports_the_paired_noise_of_the_difference():
    """Per-query precisions are paired (same queries, same database); the standard error of their
    difference says whether a P@10 win on a small held-out set is more than noise."""
    from sklearn.neighbors import NearestNeighbors

    cfg = build_config()
    rng = np.random.default_rng(0)
    db, q, y_db, y_q = _codes_with_neighbours(rng, 400, 60, 0.6)
    jitter = (q + rng.normal(0, 0.05, q.shape)).astype(np.float32)  # nearly the same codes: a few neighbours move
    r = retrieval_comparison(cfg, db, jitter, db, q, y_db, y_q)
    # independent per-query precision (scikit-learn's exact neighbours)
    nn = NearestNeighbors(n_neighbors=10).fit(db)
    lab = np.array(y_db, dtype=object)

    def per_query(x):
        return (lab[nn.kneighbors(x, return_distance=False)] == np.array(y_q, dtype=object)[:, None]).mean(1)

    d = per_query(jitter) - per_query(q)
    assert np.any(d != 0)  # some neighbours did move
    assert r["ae_precision_at_10"] == pytest.approx(per_query(jitter).mean())
    assert r["noise"]["difference"] == pytest.approx(d.mean())
    assert r["noise"]["standard_error"] == pytest.approx(d.std(ddof=1) / np.sqrt(60))
    assert r["noise"]["within_noise"]
    # clean codes against noisy ones: a real difference
    far = (q + rng.normal(0, 5.0, q.shape)).astype(np.float32)  # neighbours at random
    r = retrieval_comparison(cfg, db, q, db, far, y_db, y_q)
    assert r["noise"]["difference"] > 0 and not r["noise"]["within_noise"]


def test_a_win_within_noise_says_so_in_the_summary():
    cfg = build_config()
    noise = {"difference": 0.005, "standard_error": 0.012, "within_noise": True}
    r = {"ae_precision_at_10": 0.19, "baseline_precision_at_10": 0.185, "metric": "l2", "n_queries": 60, "noise": noise}
    metrics = {**_metrics(1.0, 2.0), "n_test": 60}
    metrics["baseline"] = baseline_verdict(cfg, metrics, "pca", r, 10_000, (1, 8, 8))
    assert "(won, within noise: +0.0050 ± 0.0120 over 60 queries)" in baseline_summary(metrics)
    assert "within noise" in baseline_lines(metrics["baseline"])[0]
    metrics["baseline"]["retrieval"]["noise"] = {**noise, "within_noise": False}
    assert "within noise" not in baseline_summary(metrics)
    del metrics["baseline"]["retrieval"]["noise"]  # a verdict saved before the estimate
    assert "P@10 0.190 vs PCA 0.185 (won)" in baseline_summary(metrics)
