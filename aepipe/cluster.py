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
import torch
from PIL import Image

from aepipe.config import PipelineConfig
from aepipe.corpus import TextPreprocessor
from aepipe.evaluate import cluster_scores
from aepipe.io import atomic_write_bytes, atomic_write_json, atomic_write_table, fresh_dir, recover_dir, replace_dir
from aepipe.layout import ClusterFiles, RunLayout
from aepipe.models.saved import load_model
from aepipe.store import arrow_to_codes, open_store
from aepipe.timing import timed
from aepipe.topics import describe_topics

log = logging.getLogger(__name__)


@dataclass
class ClusterResult:
    cluster_dir: str
    n_clusters: int
    sizes: list[int]
    acc: float | None
    nmi: float | None
    seconds: float


def cluster_codes(cfg: PipelineConfig) -> ClusterResult:
    t0 = time.perf_counter()
    layout = RunLayout.at(cfg.run_dir)
    recover_dir(layout.clusters.root)
    store = open_store(layout.store)
    has_snippets = "snippet" in store.dataset.schema.names
    table = store.read(["id", "code", "label"] + (["snippet"] if has_snippets else []))
    ids = table.column("id").to_pylist()
    codes = arrow_to_codes(table.column("code"))
    labels = np.array(table.column("label").to_pylist(), dtype=object)
    has_labels = any(lbl is not None for lbl in labels)
    k = cfg.cluster.n_clusters or (len({lbl for lbl in labels if lbl is not None}) if has_labels else 10)
    k = max(2, min(k, len(ids)))
    x = np.ascontiguousarray(codes)
    if cfg.index.metric == "cosine":
        faiss.normalize_L2(x)
    with timed(f"k-means with {k} clusters on {len(ids)} codes"):
        km = faiss.Kmeans(x.shape[1], k, niter=cfg.cluster.niter, nredo=cfg.cluster.n_redo, seed=cfg.cluster.seed,
                          spherical=cfg.index.metric == "cosine", verbose=False)
        km.train(x)
        dist, assign = km.index.search(x, 1)
    assign = assign[:, 0]
    sizes = np.bincount(assign, minlength=k)
    means = np.stack([codes[assign == c].mean(0) if sizes[c] else km.centroids[c] for c in range(k)])
    summary: dict = {"n_clusters": k, "n_items": len(ids), "sizes": sizes.tolist(), "metric": cfg.index.metric,
                     "model_id": store.model_id, "inertia": float(dist.sum())}
    if has_labels:
        mask = np.array([lbl is not None for lbl in labels])
        summary.update(cluster_scores(labels[mask].astype(str), assign[mask]))
    staging = fresh_dir(layout.staging("clusters"))
    files = ClusterFiles(staging)
    atomic_write_table(files.assignments, pa.table({
        "id": pa.array(ids, pa.string()), "cluster": pa.array(assign.astype(np.int32)),
        "distance": pa.array(dist[:, 0].astype(np.float32)), "label": table.column("label")}))
    np.save(files.centroids, means.astype(np.float32))
    try:
        model = load_model(layout.model)
        if model.model_id == store.model_id and isinstance(model.prep, TextPreprocessor):
            snippets = table.column("snippet").to_pylist() if has_snippets else [None] * len(ids)
            topics = describe_topics(model, means.astype(np.float32), assign, dist[:, 0], ids, labels.tolist(), snippets,
                                     cfg.cluster.n_top_terms, cfg.cluster.n_exemplars)
            atomic_write_json(files.topics, topics)
            summary["topics"] = files.topics.name
        elif model.model_id == store.model_id:
            write_prototypes(files.prototypes, model, means)
            summary["prototypes"] = files.prototypes.name
    except Exception as exc:  # prototypes and topics are for people; never fail the stage for them
        log.warning("could not describe the clusters (prototypes / topics): %s", exc)
    atomic_write_json(files.summary, summary)
    replace_dir(staging, layout.clusters.root)
    return ClusterResult(str(layout.clusters.root), k, sizes.tolist(), summary.get("acc"), summary.get("nmi"),
                         round(time.perf_counter() - t0, 3))


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
