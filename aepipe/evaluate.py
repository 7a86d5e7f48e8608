"""Quality measures shared by training reports, the demo and benchmarks."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.decomposition import PCA
from sklearn.metrics import normalized_mutual_info_score


def sse_per_item(x: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """Summed squared error per item. (N, ...) -> (N,)"""
    return ((x.reshape(len(x), -1) - recon.reshape(len(recon), -1)) ** 2).sum(axis=1)


def pca_baseline(train: np.ndarray, test: np.ndarray, n_components: int, seed: int = 0) -> dict[str, float]:
    """scikit-learn PCA at the given code size, fitted on ``train``, measured on ``test``."""
    a = train.reshape(len(train), -1)
    b = test.reshape(len(test), -1)
    k = min(n_components, a.shape[0], a.shape[1])
    pca = PCA(n_components=k, random_state=seed).fit(a)
    recon = pca.inverse_transform(pca.transform(b))
    sse = sse_per_item(b, recon)
    return {"sse_per_item": float(sse.mean()), "mse": float(sse.mean() / b.shape[1]), "n_components": k}


def psnr(mse: float, data_range: float = 1.0) -> float:
    return float(10 * np.log10(data_range**2 / mse)) if mse > 0 else float("inf")


def precision_at_k(neighbor_labels: np.ndarray, query_labels: np.ndarray) -> float:
    """Share of retrieved items with the query's label. (Q, k), (Q,) -> scalar"""
    return float((neighbor_labels == query_labels[:, None]).mean())


def cluster_accuracy(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Accuracy under the best one-to-one matching of clusters to labels (Hungarian)."""
    _, t = np.unique(labels_true, return_inverse=True)
    _, p = np.unique(labels_pred, return_inverse=True)
    counts = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(counts, (p, t), 1)
    rows, cols = linear_sum_assignment(-counts)
    return float(counts[rows, cols].sum() / len(t))


def cluster_scores(labels_true: np.ndarray, labels_pred: np.ndarray) -> dict[str, float]:
    return {
        "acc": cluster_accuracy(labels_true, labels_pred),
        "nmi": float(normalized_mutual_info_score(labels_true, labels_pred)),
    }


def average_precision_at_k(neighbor_labels: np.ndarray, query_labels: np.ndarray, n_relevant: np.ndarray) -> float:
    """Mean over queries of AP@k = (1 / min(k, R)) * sum_i P@i * rel_i, R = relevant items in the database."""
    rel = (neighbor_labels == query_labels[:, None]).astype(np.float64)  # (Q, k)
    k = rel.shape[1]
    prec_at_i = np.cumsum(rel, axis=1) / np.arange(1, k + 1)
    denom = np.minimum(k, np.maximum(n_relevant, 1))
    return float(((prec_at_i * rel).sum(1) / denom).mean())
