"""aepipe eval: AE codes next to PCA, with and without labels."""

from __future__ import annotations

import json

import numpy as np

from aepipe.cli import main
from aepipe.config import build_config
from aepipe.model.train import train_model
from aepipe.quality.metrics import average_precision_at_k, cluster_accuracy
from aepipe.report.evaluate import evaluate_run


def test_eval_with_labels_reports_reconstruction_retrieval_and_clustering(run_copy):
    report = evaluate_run(run_copy.config())
    rec = report["reconstruction"]
    assert rec["ae"]["sse_per_item"] > 0 and rec["pca"]["sse_per_item"] > 0
    assert abs(rec["ae"]["psnr"] - 10 * np.log10(1 / rec["ae"]["mse"])) < 1e-6
    assert report["n_queries"] + report["n_database"] == run_copy.n_items
    for method in ("ae", "pca"):
        assert 0.3 < report["retrieval"][method]["precision_at_10"] <= 1  # well above chance (0.1)
        assert 0 < report["retrieval"][method]["map_at_100"] <= 1
        assert 0 <= report["clustering"][method]["acc"] <= 1
    assert report["bytes_per_item"] == {"code_float32": 40, "code_float16": 20, "raw_uint8": 64, "raw_float32": 256}
    md = (run_copy.run_dir / "eval" / "eval.md").read_text()
    assert "precision at 10" in md and "PCA-10" in md
    assert json.loads((run_copy.run_dir / "eval" / "eval.json").read_text())["model_id"] == run_copy.model_id


def test_eval_without_labels_reports_reconstruction_only(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "imgs.npy", rng.integers(0, 256, size=(120, 8, 8), dtype=np.uint8))
    cfg = build_config(
        overrides=[
            f"run_dir={tmp_path / 'run'}",
            f"corpus.source={tmp_path / 'imgs.npy'}",
            "model.n_layers=1",
            "model.nodes_per_layer=[16]",
            "model.code_size=4",
            "training.max_epochs=1",
        ]
    )
    train_model(cfg)
    assert main(["eval", "--run-dir", str(tmp_path / "run"), "--corpus", str(tmp_path / "imgs.npy")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "retrieval" not in report and "clustering" not in report
    assert "no labels" in report["note"]
    assert report["reconstruction"]["pca"]["sse_per_item"] > 0


def test_average_precision_and_cluster_accuracy_oracles():
    labels = np.array([[1, 0, 1], [0, 0, 0]])
    # query 0 (label 1): hits at ranks 1 and 3 -> (1/1 + 2/3) / min(3, 2 relevant) ; query 1: no hits -> 0
    ap = average_precision_at_k(labels, np.array([1, 1]), np.array([2, 2]))
    assert abs(ap - ((1 + 2 / 3) / 2) / 2) < 1e-12
    assert cluster_accuracy(np.array([0, 0, 1, 1, 2]), np.array([5, 5, 7, 7, 7])) == 0.8
