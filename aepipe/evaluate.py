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


def precision_at_recall(db: np.ndarray, queries: np.ndarray, db_labels: np.ndarray, query_labels: np.ndarray,
                        recalls: tuple[float, ...] = (0.001, 0.01, 0.1, 0.5), chunk: int = 256) -> dict[float, float]:
    """Mean over queries of the precision at the rank where a share ``r`` of the query's relevant
    database items (same label) has been retrieved, ranking the whole database by cosine
    (Hinton & Salakhutdinov's document-retrieval curve). (N, d), (Q, d) -> {r: precision}"""
    a = db / np.maximum(np.linalg.norm(db, axis=1, keepdims=True), 1e-12)
    b = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    values, counts = np.unique(db_labels, return_counts=True)
    n_rel = dict(zip(values.tolist(), counts.tolist()))
    out: dict[float, list[float]] = {r: [] for r in recalls}
    for s in range(0, len(b), chunk):
        order = np.argsort(-(b[s : s + chunk] @ a.T), axis=1, kind="stable")  # (q, N)
        hits = np.cumsum(db_labels[order] == query_labels[s : s + chunk, None], axis=1)  # relevant retrieved so far
        for i, label in enumerate(query_labels[s : s + chunk]):
            n = n_rel.get(label, 0)
            if n == 0:
                continue
            for r in recalls:
                need = max(1, int(np.ceil(r * n)))
                rank = int(np.searchsorted(hits[i], need)) + 1  # items retrieved when ``need`` are found
                out[r].append(need / rank)
    return {r: float(np.mean(v)) if v else float("nan") for r, v in out.items()}
