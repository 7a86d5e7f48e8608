"""Quality measures shared by training reports, the demo and benchmarks."""

from __future__ import annotations

import faiss
import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.decomposition import PCA
from sklearn.metrics import normalized_mutual_info_score


def sse_per_item(x: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """Summed squared error per item, in float64 (float32 sums over thousands of pixels lose the
    digits that PSNR and AE-vs-PCA comparisons are read at). (N, ...) -> (N,)"""
    a = np.asarray(x, dtype=np.float64).reshape(len(x), -1)  # (N, D)
    b = np.asarray(recon, dtype=np.float64).reshape(len(recon), -1)  # (N, D)
    return ((a - b) ** 2).sum(axis=1)


def reconstruction_scores(sse: np.ndarray, dim: int) -> dict[str, float]:
    """SSE per item, MSE and PSNR (data range 1) from per-item summed squared errors, in float64."""
    mean = float(np.asarray(sse, dtype=np.float64).mean())
    return {"sse_per_item": mean, "mse": mean / dim, "psnr": psnr(mean / dim)}


def fit_pca(train: np.ndarray, n_components: int, seed: int = 0) -> PCA:
    """scikit-learn PCA with at most ``n_components`` (fewer when the data has fewer rows/columns)."""
    a = train.reshape(len(train), -1)
    return PCA(n_components=min(n_components, a.shape[0], a.shape[1]), random_state=seed).fit(a)


# What a document store's recon_error measures (its ``recon_error_target`` metadata): the squared
# error against each document's word distribution (an image store's: against the input).
RECON_TARGET_WORDS = "word distribution"


def pca_baseline(train: np.ndarray, test: np.ndarray, n_components: int, seed: int = 0) -> dict[str, float]:
    """The linear baseline of every AE: PCA at the same code size, fitted on ``train``, its
    reconstruction of ``test`` scored like the AE's."""
    pca = fit_pca(train, n_components, seed)
    b = test.reshape(len(test), -1)
    sse = sse_per_item(b, pca.inverse_transform(pca.transform(b)))
    return {**reconstruction_scores(sse, b.shape[1]), "n_components": int(pca.n_components_)}


def psnr(mse: float, data_range: float = 1.0) -> float:
    return float(10 * np.log10(data_range**2 / mse)) if mse > 0 else float("inf")


def label_retrieval(
    db: np.ndarray,
    queries: np.ndarray,
    db_labels: np.ndarray,
    query_labels: np.ndarray,
    metric: str = "l2",
    k: int = 10,
    map_k: int | None = None,
) -> dict[str, float]:
    """Exact nearest database items of each query (faiss, L2 or cosine), scored by labels:
    precision@k and, with ``map_k``, mAP@map_k. (N, d), (Q, d), (N,), (Q,) -> scores"""
    nl = neighbour_labels(db, queries, db_labels, metric, max(k, map_k or 0))
    out = {f"precision_at_{k}": precision_at_k(nl[:, :k], query_labels)}
    if map_k:
        values, counts = np.unique(db_labels, return_counts=True)
        n_rel = np.array([dict(zip(values, counts)).get(lb, 0) for lb in query_labels])
        out[f"map_at_{map_k}"] = average_precision_at_k(nl[:, :map_k], query_labels, n_rel)
    return out


def neighbour_labels(db: np.ndarray, queries: np.ndarray, db_labels: np.ndarray, metric: str, k: int) -> np.ndarray:
    """Labels of each query's ``k`` exact nearest database items (faiss, L2 or cosine), nearest
    first. (N, d), (Q, d), (N,) -> (Q, min(k, N))"""
    a, b = (np.array(v, dtype=np.float32, order="C") for v in (db, queries))
    if metric == "cosine":
        faiss.normalize_L2(a)
        faiss.normalize_L2(b)
    _, idx = faiss.knn(
        b, a, min(k, len(a)), metric=faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    )
    return db_labels[idx]


def per_query_precision(
    db: np.ndarray,
    queries: np.ndarray,
    db_labels: np.ndarray,
    query_labels: np.ndarray,
    metric: str = "l2",
    k: int = 10,
) -> np.ndarray:
    """Each query's precision@k: the share of its ``k`` nearest database items with its label. -> (Q,)"""
    return (neighbour_labels(db, queries, db_labels, metric, k) == query_labels[:, None]).mean(axis=1)


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict[str, float | bool]:
    """Mean of ``a - b`` over paired per-query scores, its standard error, and whether it is within
    two standard errors of zero (a difference this sample cannot tell from noise). (Q,), (Q,)"""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mean = float(d.mean())
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")
    return {"difference": mean, "standard_error": se, "within_noise": bool(abs(mean) <= 2 * se)}


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


def precision_at_recall(
    db: np.ndarray,
    queries: np.ndarray,
    db_labels: np.ndarray,
    query_labels: np.ndarray,
    recalls: tuple[float, ...] = (0.001, 0.01, 0.1, 0.5),
    chunk: int = 256,
) -> dict[float, float]:
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
