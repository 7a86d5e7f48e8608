"""Stage: k-means (faiss.Kmeans) on the stored codes; assignments, scores and
prototype images decoded from the cluster means, or for documents topics (top terms
decoded from the cluster means, sizes, exemplars; see topics.py)."""

from __future__ import annotations

import io
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image

from aepipe.cluster.dec import refine_encoder
from aepipe.cluster.scan import ClusterHead, train_head
from aepipe.cluster.topics import topics_report
from aepipe.codes.encode import encode_corpus
from aepipe.codes.store import open_store
from aepipe.config import PipelineConfig
from aepipe.features import TextPreprocessor
from aepipe.files import (
    atomic_write_bytes,
    atomic_write_json,
    fresh_dir,
    recover_dir,
    replace_dir,
)
from aepipe.generations import attach_clusters
from aepipe.index.faissio import normalize
from aepipe.layout import ClusterFiles, RunLayout
from aepipe.logs import timed
from aepipe.model.saved import load_model
from aepipe.quality.metrics import cluster_scores
from aepipe.runconfig import run_stage

log = logging.getLogger(__name__)


@dataclass
class ClusterResult:
    cluster_dir: str
    n_clusters: int
    sizes: list[int]
    acc: float | None
    nmi: float | None
    seconds: float


@dataclass
class _Assigned:
    """What the assignment pass keeps: one int per item (its cluster) and per-cluster summaries;
    the ids, codes and snippets themselves only pass through."""

    assign: np.ndarray  # (n,) int32
    sums: np.ndarray  # (k, dim) float64: sum of the clustered vectors per cluster
    inertia: float
    exemplars: (
        pa.Table | None
    )  # each cluster's n_exemplars nearest items: cluster, distance, position, id, label, snippet


@run_stage("cluster")
def cluster_codes(cfg: PipelineConfig, centroids: np.ndarray | None = None, extra: dict | None = None) -> ClusterResult:
    """k-means in memory that does not grow with the store (beyond two ints per item): train on a
    seeded sample of at most ``cluster.max_train_items`` codes, then assign every item in one
    streaming pass that writes assignments.parquet batch by batch. ``cluster.method=dec`` refines
    the encoder first (aepipe.cluster.dec), which comes back here with its ``centroids`` (L2).
    ``cluster.method=scan`` trains a classifier head on the sample instead of k-means
    (aepipe.cluster.scan); the head assigns, and each item's distance is to its cluster's mean."""
    if cfg.cluster.method == "dec" and centroids is None:
        refined = refine_encoder(cfg)
        encode_corpus(cfg)  # the store now holds the refined encoder's codes
        info = {key: value for key, value in refined.items() if key != "centroids"}
        return cluster_codes(cfg, centroids=refined["centroids"], extra={"dec": info})
    t0 = time.perf_counter()
    cc, metric = cfg.cluster, "l2" if centroids is not None else cfg.index.metric
    layout = RunLayout.at(cfg.run_dir)
    recover_dir(layout.clusters.root)
    store = open_store(layout.store)
    n = store.n_items
    has_snippets = "snippet" in store.dataset.schema.names
    label_codes, label_names = _label_codes(store)
    head: ClusterHead | None = None
    wanted = max(2, min(cc.n_clusters or (len(label_names) if label_names else 10), n))
    if centroids is None and cc.method == "scan":
        k = wanted
        (x,) = store.gather([_training_positions(n, max(min(cc.max_train_items, cc.scan_max_items), k), cc.seed)])
        head, scan_info = train_head(x, k, cc, metric)
        x = normalize(x, metric)
        assigned = head.assign(x)
        sizes0 = np.bincount(assigned, minlength=k)
        centroids = np.where(sizes0[:, None] > 0, _cluster_sums(assigned, x, k) / np.maximum(sizes0, 1)[:, None], 0)
        centroids = centroids.astype(np.float32)
        n_train = len(x)
        extra = {**(extra or {}), "scan": scan_info}
        del x
        nearest: faiss.Index | _HeadAssigner = _HeadAssigner(head, centroids)
    elif centroids is None:
        k = wanted
        (x,) = store.gather([_training_positions(n, max(cc.max_train_items, k), cc.seed)])
        x = normalize(x, metric)
        n_train = len(x)
        with timed(f"k-means with {k} clusters on {len(x)} of {n} codes"):
            km = faiss.Kmeans(
                x.shape[1],
                k,
                niter=cc.niter,
                nredo=cc.n_redo,
                seed=cc.seed,
                spherical=metric == "cosine",
                verbose=False,
            )
            km.train(x)
        del x  # the sample is not needed to assign
        centroids, nearest = np.asarray(km.centroids), km.index
    else:  # given (DEC): nearest centroid = the argmax of the Student-t soft assignment
        k, n_train = len(centroids), (extra or {}).get("dec", {}).get("n_train", 0)
        flat = faiss.IndexFlatL2(centroids.shape[1])
        flat.add(np.ascontiguousarray(centroids, np.float32))
        nearest = flat
    staging = fresh_dir(layout.staging("clusters"))
    files = ClusterFiles(staging)
    with timed(f"assign {n} codes to {k} clusters"):
        done = _assign_all(store, nearest, metric, files.assignments, k, cc.n_exemplars, has_snippets)
    assign = done.assign
    sizes = np.bincount(assign, minlength=k)
    # mean of the vectors k-means clustered (L2-normalised under cosine); an empty cluster keeps its centroid
    means = np.where(sizes[:, None] > 0, done.sums / np.maximum(sizes, 1)[:, None], centroids).astype(np.float32)
    if extra and "dec" in extra:  # DEC's learned centroids, which assigned the items, not their means
        means = np.asarray(centroids, np.float32)
    summary: dict = {
        "n_clusters": k,
        "n_items": n,
        "n_train": n_train,
        "sizes": sizes.tolist(),
        "metric": metric,
        "model_id": store.model_id,
        "inertia": done.inertia,
        "method": cc.method,
        **(extra or {}),
    }
    if label_names:
        mask = label_codes >= 0
        summary.update(cluster_scores(label_codes[mask], assign[mask]))
    np.save(files.centroids, means)
    if head is not None:
        head.save(files.head)
        summary["head"] = files.head.name
    try:
        model = load_model(layout.model)
        if model.model_id == store.model_id and isinstance(model.prep, TextPreprocessor):
            topics = topics_report(
                model,
                means,
                sizes,
                _top_labels(assign, label_codes, label_names, k),
                _exemplars_by_cluster(done.exemplars, k),
                cc.n_top_terms,
            )
            atomic_write_json(files.topics, topics)
            summary["topics"] = files.topics.name
        elif model.model_id == store.model_id and model.net.decodes_codes:  # a U-Net / residual net cannot
            write_prototypes(files.prototypes, model, means)
            summary["prototypes"] = files.prototypes.name
    except Exception as exc:  # prototypes and topics are for people; never fail the stage for them
        log.warning("could not describe the clusters (prototypes / topics): %s", exc)
    atomic_write_json(files.summary, summary)
    replace_dir(staging, layout.clusters.root)
    attach_clusters(layout)  # join the published generation of the same model
    return ClusterResult(
        str(layout.clusters.root),
        k,
        sizes.tolist(),
        summary.get("acc"),
        summary.get("nmi"),
        round(time.perf_counter() - t0, 3),
    )


class _HeadAssigner:
    """What ``_assign_all`` needs of a faiss index (``search(x, 1)``), for a SCAN head: the head's
    cluster of each (normalised) code and the squared L2 distance to that cluster's mean."""

    def __init__(self, head: ClusterHead, means: np.ndarray) -> None:
        self.head, self.means = head, means

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        cluster = self.head.assign(x)  # x is normalised already; normalising twice is a no-op
        dist = ((x - self.means[cluster]) ** 2).sum(1).astype(np.float32)
        return dist[:, None], cluster[:, None].astype(np.int64)


def _training_positions(n: int, limit: int, seed: int) -> np.ndarray:
    """Sorted store positions to train k-means on: all of them (in store order, so a store within
    the limit clusters exactly as when k-means saw the whole store), else a seeded sample."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def _label_codes(store) -> tuple[np.ndarray, list[str]]:
    """Every item's label as an int32 (-1: none) and the distinct labels, sorted: the scores need
    only the partition, and codes in sorted-name order give the same contingency table as the
    strings did, without a Python string per item."""
    seen: dict[str, int] = {}
    parts = []
    for batch in store.iter_batches(columns=["label"]):
        enc = pc.dictionary_encode(batch.column(0))
        lut = np.array([seen.setdefault(v, len(seen)) for v in enc.dictionary.to_pylist()] + [-1], np.int32)
        parts.append(lut[pc.fill_null(enc.indices, -1).to_numpy()])
    names = sorted(seen)
    rank = np.full(len(seen) + 1, -1, np.int32)  # first-seen code -> sorted code; the last slot keeps -1
    rank[[seen[name] for name in names]] = np.arange(len(names))
    codes = rank[np.concatenate(parts)] if parts else np.zeros(0, np.int32)
    return codes, names


ASSIGNMENT_SCHEMA = pa.schema(
    [("id", pa.string()), ("cluster", pa.int32()), ("distance", pa.float32()), ("label", pa.string())]
)


def _assign_all(
    store, index: faiss.Index | _HeadAssigner, metric: str, path: Path, k: int, n_exemplars: int, has_snippets: bool
) -> _Assigned:
    """Nearest centroid of every item, batch by batch: writes (id, cluster, distance, label) rows to
    ``path`` and keeps per-cluster sums, the inertia and each cluster's nearest items so far."""
    columns = ["id", "code", "label"] + (["snippet"] if has_snippets else [])
    assign, inertia, offset = [], 0.0, 0
    sums = np.zeros((k, store.code_size), np.float64)
    exemplars = None
    with pq.ParquetWriter(path, ASSIGNMENT_SCHEMA) as writer:
        for batch in store.iter_batches(columns=columns):
            x = normalize(store.codes(batch.column("code")), metric)
            dist, nearest = index.search(x, 1)
            cluster, dist = nearest[:, 0].astype(np.int32), dist[:, 0]
            writer.write_batch(
                pa.record_batch(
                    [batch.column("id"), pa.array(cluster), pa.array(dist), batch.column("label")],
                    schema=ASSIGNMENT_SCHEMA,
                )
            )
            sums += _cluster_sums(cluster, x, k)
            inertia += float(dist.sum(dtype=np.float64))
            assign.append(cluster)
            exemplars = _merge_exemplars(exemplars, batch, cluster, dist, offset, n_exemplars)
            offset += len(x)
    return _Assigned(np.concatenate(assign) if assign else np.zeros(0, np.int32), sums, inertia, exemplars)


def _cluster_sums(cluster: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    """(k, dim) float64 sums of the rows of ``x`` in each cluster: one weighted bincount per
    dimension (np.add.at over rows is several times slower)."""
    return np.stack([np.bincount(cluster, weights=col, minlength=k) for col in x.T], axis=1)


def _merge_exemplars(
    kept: pa.Table | None, batch: pa.RecordBatch, cluster: np.ndarray, distance: np.ndarray, offset: int, n: int
) -> pa.Table:
    """The ``n`` nearest items of each cluster among those ``kept`` so far and this ``batch``
    (whose first row is store position ``offset``): at most k * n rows, whatever the store size."""
    position = np.arange(offset, offset + len(cluster))
    keep = _nearest_per_cluster(cluster, distance, position, n)
    names = batch.schema.names
    found = pa.table(
        {
            "cluster": cluster[keep],
            "distance": distance[keep],
            "position": position[keep],
            "id": batch.column("id").take(keep),
            "label": batch.column("label").take(keep),
            "snippet": (batch.column("snippet").take(keep) if "snippet" in names else pa.nulls(len(keep), pa.string())),
        }
    )
    both = found if kept is None else pa.concat_tables([kept, found])
    cluster, distance, position = (both.column(c).to_numpy() for c in ("cluster", "distance", "position"))
    return both.take(_nearest_per_cluster(cluster, distance, position, n))


def _nearest_per_cluster(cluster: np.ndarray, distance: np.ndarray, position: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` smallest distances of each cluster (ties: the earlier store position),
    grouped by cluster, nearest first: an exemplar candidate list that stays k * n long."""
    order = np.lexsort((position, distance, cluster))
    grouped = cluster[order]
    rank = np.arange(len(order)) - np.searchsorted(grouped, grouped)  # rank within its cluster
    return order[rank < n]


def _exemplars_by_cluster(exemplars: pa.Table | None, k: int) -> list[list[dict]]:
    """Per cluster, its exemplars (id, label, snippet), nearest first."""
    out: list[list[dict]] = [[] for _ in range(k)]
    for row in exemplars.to_pylist() if exemplars is not None else []:
        out[row["cluster"]].append({"id": row["id"], "label": row["label"], "snippet": row["snippet"]})
    return out


def _top_labels(
    assign: np.ndarray, label_codes: np.ndarray, names: list[str], k: int, top: int = 3
) -> list[list[tuple[str, int]]]:
    """Per cluster its ``top`` most common labels with their counts, ties in order of first
    appearance: what Counter.most_common gave over the members in store order."""
    has = label_codes >= 0
    key = assign[has].astype(np.int64) * max(len(names), 1) + label_codes[has]
    pairs, first, counts = np.unique(key, return_index=True, return_counts=True)
    cluster, label = np.divmod(pairs, max(len(names), 1))
    out: list[list[tuple[str, int]]] = [[] for _ in range(k)]
    for i in np.lexsort((first, -counts, cluster)):
        if len(out[cluster[i]]) < top:
            out[cluster[i]].append((names[label[i]], int(counts[i])))
    return out


def write_prototypes(path: Path, model, means: np.ndarray, cell: int = 48) -> None:
    """Decode cluster means through the decoder and tile them into a PNG grid."""
    with torch.inference_mode():
        imgs = model.net.activate(model.net.decode(torch.from_numpy(means))).numpy()  # (k, C, H, W)
    k = len(imgs)
    cols = min(k, 10)
    rows = math.ceil(k / cols)
    mode = "L" if imgs.shape[1] == 1 else "RGB"
    grid = Image.new(mode, (cols * cell, rows * cell), 0)
    for i, img in enumerate(imgs):
        arr = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        tile = Image.fromarray(arr[0] if mode == "L" else arr.transpose(1, 2, 0), mode)
        grid.paste(tile.resize((cell, cell), Image.Resampling.NEAREST), ((i % cols) * cell, (i // cols) * cell))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
