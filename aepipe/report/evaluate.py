"""Stage: ``aepipe eval`` — how good are the codes, next to PCA at the same size?

Queries are held-out items (the run's test split, or a separate query corpus);
the database is the rest. Reconstruction needs no labels; retrieval (precision@10,
mAP@100) and clustering (k-means ACC with Hungarian matching, NMI) use labels
when the corpus has them; so does the run's own cluster stage (``aepipe cluster``, any method)
applied to the query codes, when the run has clusters of its model.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faiss
import numpy as np
import pyarrow.parquet as pq
import torch

from aepipe.cluster.scan import ClusterHead
from aepipe.codes.encode import codes_of
from aepipe.config import PipelineConfig
from aepipe.corpus import Quarantine
from aepipe.errors import MissingArtifact, missing_extra
from aepipe.features import TextPreprocessor
from aepipe.files import atomic_write_bytes, atomic_write_json, read_json
from aepipe.index.faissio import normalize
from aepipe.layout import RunLayout
from aepipe.logs import timed
from aepipe.model.fit import Dataset, read_items
from aepipe.model.saved import LoadedModel, load_model, reconstruction_target
from aepipe.quality.metrics import (
    RECON_TARGET_WORDS,
    cluster_scores,
    fit_pca,
    label_retrieval,
    reconstruction_scores,
    sse_per_item,
)
from aepipe.runconfig import run_stage

log = logging.getLogger(__name__)


def _split(cfg: PipelineConfig, model: LoadedModel) -> tuple[Dataset, Dataset]:
    """(database, queries) as in-memory arrays."""
    ec = cfg.evaluation
    quarantine = Quarantine("eval")
    db, _ = read_items(cfg.corpus, model.prep, ec.max_items, ec.seed, quarantine)
    if ec.queries:
        images = cfg.corpus.images.model_copy(update={"array_key": ec.queries_array_key})
        qcfg = cfg.corpus.model_copy(update={"source": ec.queries, "images": images, "limit": None})
        queries, _ = read_items(qcfg, model.prep, ec.max_items, ec.seed, quarantine)
        return db, queries
    split = pq.read_table(RunLayout.at(cfg.run_dir).model.split).to_pydict()
    held = {i for i, s in zip(split["id"], split["split"]) if s == "test"}
    mask = np.array([i in held for i in db.ids])
    if not mask.any() or mask.all():
        raise MissingArtifact(
            "the run's model has no held-out test split (training.test_fraction is 0 or the corpus "
            "changed since training); set evaluation.queries to a query corpus"
        )
    pick = lambda m: Dataset(db.x[m], [i for i, k in zip(db.ids, m) if k], [lb for lb, k in zip(db.labels, m) if k])  # noqa: E731
    return pick(~mask), pick(mask)


def _reconstruct(model: LoadedModel, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate(
            [model.net.reconstruct(torch.from_numpy(x[i : i + 2048])).numpy() for i in range(0, len(x), 2048)]
        )


def _kmeans(codes: np.ndarray, labels: np.ndarray, k: int, seed: int) -> dict[str, float]:
    x = np.ascontiguousarray(codes, np.float32)
    km = faiss.Kmeans(x.shape[1], k, niter=50, nredo=3, seed=seed, verbose=False)
    km.train(x)
    return cluster_scores(labels, km.index.search(x, 1)[1][:, 0])


def _cluster_stage_scores(layout: RunLayout, model_id: str, codes: np.ndarray, labels: np.ndarray) -> dict | None:
    """How the run's cluster stage (``aepipe cluster``, any method) assigns the query codes: its
    saved head (scan) or its nearest centroid (k-means, DEC's learned centroids), fitted on the
    store's codes without labels. None when the run has no clusters of this model."""
    files = layout.clusters
    try:
        summary = read_json(files.summary)
        if summary.get("model_id") != model_id:
            return None
        if summary.get("head"):
            assign = ClusterHead.load(files.head).assign(codes)
        else:
            centroids = np.ascontiguousarray(np.load(files.centroids), np.float32)
            nearest = faiss.IndexFlatL2(centroids.shape[1])
            nearest.add(centroids)
            assign = nearest.search(normalize(np.asarray(codes, np.float32), summary.get("metric", "l2")), 1)[1][:, 0]
    except FileNotFoundError:  # no clusters, or a concurrent cluster run replaced them mid-read
        return None
    return {
        "method": summary.get("method", "kmeans"),
        "n_clusters": summary["n_clusters"],
        "fitted_on_store_items": summary.get("n_train"),
        **cluster_scores(labels, assign),
    }


def _umap(codes: np.ndarray, dim: int, seed: int) -> np.ndarray:
    try:
        import umap
    except ImportError:
        raise missing_extra("umap-learn", "umap", "evaluation.umap") from None
    return umap.UMAP(n_components=dim, n_neighbors=20, min_dist=0.0, random_state=seed).fit_transform(codes)


@run_stage("eval")
def evaluate_run(cfg: PipelineConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    layout = RunLayout.at(cfg.run_dir)
    model = load_model(layout.model)
    ec = cfg.evaluation
    with timed("read evaluation items"):
        db, queries = _split(cfg, model)
    d = model.code_size
    with timed(f"encode {len(db.ids)} database and {len(queries.ids)} query items"):
        db_codes, q_codes = codes_of(model, db.x), codes_of(model, queries.x)
        recon = _reconstruct(model, queries.x)
    flat_db, flat_q = db.x.reshape(len(db.x), -1), queries.x.reshape(len(queries.x), -1)
    target, ref_db, ref_q = "input", flat_db, flat_q
    if model.net.output_activation == "softmax":
        # documents: PCA codes of the TF-IDF inputs normalised to sum 1 are the (LSA) retrieval
        # baseline; the decoder outputs a word distribution, so the AE and a PCA of the word
        # distributions are both scored on reconstructing the word distributions (as in training and encode)
        flat_db, flat_q = (a / np.maximum(a.sum(1, keepdims=True), 1e-12) for a in (flat_db, flat_q))
        text = isinstance(model.prep, TextPreprocessor)
        target = RECON_TARGET_WORDS if text else "inputs normalised to sum 1"
        ref_db, ref_q = (reconstruction_target(model.prep, a) for a in (db.x, queries.x)) if text else (flat_db, flat_q)
    with timed(f"PCA-{d} baseline"):
        pca = fit_pca(flat_db, d, ec.seed)
        pca_db, pca_q = pca.transform(flat_db), pca.transform(flat_q)
        recon_pca = pca if ref_q is flat_q else fit_pca(ref_db, d, ec.seed)
        pca_recon = recon_pca.inverse_transform(recon_pca.transform(ref_q))
    dim = flat_q.shape[1]
    report: dict[str, Any] = {
        "model_id": model.model_id,
        "kinds": model.config.model.kinds,
        "code_size": d,
        "n_database": len(db.ids),
        "n_queries": len(queries.ids),
        "reconstruction": {
            "target": target,
            "ae": reconstruction_scores(sse_per_item(ref_q, recon), dim),
            "pca": reconstruction_scores(sse_per_item(ref_q, pca_recon), dim),
        },
        "bytes_per_item": {"code_float32": 4 * d, "code_float16": 2 * d, "raw_uint8": dim, "raw_float32": 4 * dim},
    }
    labelled = all(lb is not None for lb in db.labels + queries.labels)
    if labelled:
        dbl, ql = np.array(db.labels, dtype=object), np.array(queries.labels, dtype=object)
        with timed("retrieval: queries against the database (exact search)"):
            report["retrieval"] = {
                "ae": label_retrieval(db_codes, q_codes, dbl, ql, cfg.index.metric, 10, ec.map_k),
                "pca": label_retrieval(pca_db, pca_q, dbl, ql, cfg.index.metric, 10, ec.map_k),
            }
        k = len(set(ql))
        with timed(f"k-means (k={k}) on the query codes"):
            report["clustering"] = {
                "k": k,
                "ae": _kmeans(q_codes, ql, k, ec.seed),
                "pca": _kmeans(pca_q, ql, k, ec.seed),
            }
            if ec.umap:
                report["clustering"]["ae_umap"] = _kmeans(_umap(q_codes, ec.umap_dim, ec.seed), ql, k, ec.seed)
            stage = _cluster_stage_scores(layout, model.model_id, q_codes, ql)
            if stage is not None:
                report["clustering"]["cluster_stage"] = stage
    else:
        report["note"] = "corpus has no labels: retrieval and clustering scores need labels"
    report["seconds"] = round(time.perf_counter() - t0, 2)
    atomic_write_json(layout.eval_json, report)
    atomic_write_bytes(layout.eval_markdown, (markdown_table(report) + "\n").encode())
    return report


def markdown_table(report: dict[str, Any]) -> str:
    rec = report["reconstruction"]
    rows = [
        ("SSE per item", rec["ae"]["sse_per_item"], rec["pca"]["sse_per_item"]),
        ("MSE", rec["ae"]["mse"], rec["pca"]["mse"]),
        ("PSNR (dB)", rec["ae"]["psnr"], rec["pca"]["psnr"]),
    ]
    if "retrieval" in report:
        for key in report["retrieval"]["ae"]:
            rows.append((key.replace("_", " "), report["retrieval"]["ae"][key], report["retrieval"]["pca"][key]))
        for key in ("acc", "nmi"):
            rows.append((f"k-means {key.upper()}", report["clustering"]["ae"][key], report["clustering"]["pca"][key]))
        if "ae_umap" in report["clustering"]:
            for key in ("acc", "nmi"):
                rows.append((f"UMAP + k-means {key.upper()}", report["clustering"]["ae_umap"][key], float("nan")))
        if "cluster_stage" in report["clustering"]:
            stage = report["clustering"]["cluster_stage"]
            for key in ("acc", "nmi"):
                rows.append((f"cluster stage ({stage['method']}) {key.upper()}", stage[key], float("nan")))
    d = report["code_size"]
    what = f"{report['n_queries']} queries, {report['n_database']} database items"
    lines = [
        f"| measure ({what}) | AE ({'+'.join(report['kinds'])}, {d}-d) | PCA-{d} |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {a:.4f} | {b:.4f} |" for name, a, b in rows]
    b = report["bytes_per_item"]
    codes = f"{b['code_float32']} (float32) / {b['code_float16']} (float16)"
    lines.append(f"| bytes per item | {codes} | raw {b['raw_uint8']} (uint8) |")
    return "\n".join(lines)
