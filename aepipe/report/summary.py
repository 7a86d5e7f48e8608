"""The run report: what a person wants to know after a pipeline run."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.parquet as pq

from aepipe.cluster.kmeans import ClusterResult
from aepipe.codes.encode import EncodeResult
from aepipe.config import PipelineConfig
from aepipe.files import atomic_write_json, read_json
from aepipe.index.build import IndexResult
from aepipe.index.search import Searcher
from aepipe.layout import RunLayout
from aepipe.model.train import TrainResult
from aepipe.model.verdict import outcome_word, retrieval_outcome
from aepipe.quality.metrics import precision_at_k


def heldout_precision(cfg: PipelineConfig, k: int = 10) -> dict[str, Any]:
    """Items held out from training query the index (leaving themselves out); P@k by label."""
    layout = RunLayout.at(cfg.run_dir)
    split = pq.read_table(layout.model.split).to_pydict()
    heldout = [i for i, s in zip(split["id"], split["split"]) if s == "test"]
    held_out = bool(heldout)  # without a test split every stored item queries: not held-out, and said so
    heldout = heldout or list(split["id"])
    searcher = Searcher(cfg.run_dir)
    meta = searcher.metadata()
    heldout = [i for i in heldout if i in meta and meta[i][0] is not None][:2000]
    if not heldout:
        return {"precision_at_10": None, "n_queries": 0, "note": "no labels: precision needs labels"}
    results = searcher.search_ids(heldout, k)
    neighbor_labels = np.array([[h.label for h in hits] + [None] * (k - len(hits)) for hits in results], dtype=object)
    query_labels = np.array([meta[i][0] for i in heldout], dtype=object)
    return {
        "precision_at_10": precision_at_k(neighbor_labels, query_labels),
        "n_queries": len(heldout),
        "held_out": held_out,
        "protocol": "held-out items (test split) query the index, themselves excluded"
        if held_out
        else "no test split: training items query the index, themselves excluded (NOT held-out)",
    }


def build_report(
    cfg: PipelineConfig,
    train: TrainResult,
    encode: EncodeResult,
    index: IndexResult,
    cluster: ClusterResult,
    timings: dict[str, float],
) -> dict[str, Any]:
    layout = RunLayout.at(cfg.run_dir)
    m = train.metrics
    infos = read_json(layout.index.infos)
    bytes_per_code = cfg.model.code_size * (2 if cfg.encode.code_dtype == "float16" else 4)
    report = {
        "run_dir": str(layout.root),
        "model_id": train.model_id,
        "corpus": cfg.corpus.source,
        "reconstruction": {
            "ae_sse_per_item": m["ae"]["sse_per_item"],
            "pca_sse_per_item": m["pca"]["sse_per_item"],
            "ae_mse": m["ae"]["mse"],
            "pca_mse": m["pca"]["mse"],
            "ae_psnr": m["ae"]["psnr"],
            "pca_psnr": m["pca"]["psnr"],
            "code_size": m["code_size"],
            "n_heldout": m["n_test"],
            "evaluated_on": m.get("evaluated_on", "test"),  # test: held-out; val / train: not
            "n_evaluated": m.get("n_evaluated", m["n_test"]),
            "bytes_per_code": bytes_per_code,
            "raw_bytes_per_item_float32": m["input_dim"] * 4,
        },
        "retrieval": heldout_precision(cfg),
        "baseline": m.get("baseline"),  # AE vs PCA / LSA (aepipe.model.verdict); absent for older models
        "index": {
            "type": index.index_string,
            "recall_at_10": index.recall_at_10,
            "params": index.params,
            "latency_ms_per_query": infos["latency_ms_per_query"],
            "n_items": index.n_items,
        },
        "clusters": {"acc": cluster.acc, "nmi": cluster.nmi, "n_clusters": cluster.n_clusters, "sizes": cluster.sizes},
        "counts": {
            "n_items": encode.n_items,
            "n_quarantined": encode.n_quarantined,
            "n_quarantined_train": train.n_quarantined,
        },
        "epochs": m["epochs"],
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    if "restoration" in m:  # a restoration task: its held-out scores and the picture grid
        report["restoration"] = {**m["restoration"], "grid": str(layout.model.restoration_grid)}
    atomic_write_json(layout.report, report)
    return report


def _split_label(r: dict[str, Any]) -> str:
    on = r.get("evaluated_on", "test")
    return "held-out" if on == "test" else f"{'validation' if on == 'val' else 'training'} items, not held-out"


def _queries_label(ret: dict[str, Any]) -> str:
    return "held-out queries" if ret.get("held_out", True) else "training-item queries, not held-out"


def format_report(report: dict[str, Any]) -> str:
    r, ret, ix, cl = report["reconstruction"], report["retrieval"], report["index"], report["clusters"]
    p10 = (
        "n/a (no labels)"
        if ret["precision_at_10"] is None
        else f"{ret['precision_at_10']:.3f} ({ret['n_queries']} {_queries_label(ret)})"
    )
    acc = "n/a" if cl["acc"] is None else f"{cl['acc']:.3f}"
    nmi = "n/a" if cl["nmi"] is None else f"{cl['nmi']:.3f}"
    times = ", ".join(f"{k} {v:.1f}s" for k, v in report["timings_s"].items())
    return "\n".join(
        [
            f"run {report['run_dir']}  model {report['model_id']}  items {report['counts']['n_items']}"
            f"  quarantined {report['counts']['n_quarantined']}",
            f"reconstruction ({_split_label(r)}, {r['code_size']}-d code): AE SSE/item {r['ae_sse_per_item']:.3f}"
            f"  vs PCA {r['pca_sse_per_item']:.3f}  (PSNR {r['ae_psnr']:.1f} vs {r['pca_psnr']:.1f} dB)",
            f"retrieval precision@10: {p10}",
            *baseline_lines(report.get("baseline")),
            f"index {ix['type']} {ix['params'] or ''}: recall@10 {ix['recall_at_10']:.3f},"
            f" {ix['latency_ms_per_query']:.3f} ms/query",
            f"clusters k={cl['n_clusters']}: ACC {acc}  NMI {nmi}",
            *_restoration_lines(report),
            f"time: {times}",
        ]
    )


def baseline_lines(b: dict[str, Any] | None) -> list[str]:
    """The verdict against the linear baseline, and what to try when the AE lost."""
    if not b:
        return []
    r = b["retrieval"]
    vs = (
        ""
        if r is None
        else f"; P@10 of {'held-out' if b.get('held_out', True) else 'non-held-out'} queries vs training items "
        f"{r['ae_precision_at_10']:.3f}"
        f" vs {b['name'].upper()} {r['baseline_precision_at_10']:.3f}"
    )
    head = "AE beats the linear baseline" if b["ae_beats_baseline"] else "WARNING: AE does not beat the linear baseline"
    if r is not None:
        vs += f" ({retrieval_outcome(b)})"
    lines = [f"{head} (reconstruction vs PCA: {outcome_word(b, 'reconstruction')}{vs})"]
    lines += [f"  try: {h}" for h in b["hints"]]
    return lines


def _restoration_lines(report: dict[str, Any]) -> list[str]:
    rs = report.get("restoration")
    if not rs:
        return []
    return [
        f"{rs['task']} (held-out, {rs['n_items']} items): PSNR input {rs['input']['psnr']:.2f}, autoencoder "
        f"{rs['autoencoder']['psnr']:.2f}, {rs['baseline']['method']} {rs['baseline']['psnr']:.2f} dB",
        f"restoration grid: {rs['grid']}",
    ]


def report_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's numbers as (metric, value) rows: one table, e.g. a Prefect table artifact."""
    r, ret, ix, cl, counts = (report[k] for k in ("reconstruction", "retrieval", "index", "clusters", "counts"))
    rows = [
        ("ae_sse_per_item", r["ae_sse_per_item"]),
        ("pca_sse_per_item", r["pca_sse_per_item"]),
        ("ae_psnr_db", r["ae_psnr"]),
        ("pca_psnr_db", r["pca_psnr"]),
        ("code_size", r["code_size"]),
        ("bytes_per_code", r["bytes_per_code"]),
        ("precision_at_10", ret["precision_at_10"]),
        *_baseline_rows(report.get("baseline")),
        ("index_recall_at_10", ix["recall_at_10"]),
        ("index_latency_ms_per_query", ix["latency_ms_per_query"]),
        ("cluster_acc", cl["acc"]),
        ("cluster_nmi", cl["nmi"]),
        ("n_items", counts["n_items"]),
        ("n_quarantined", counts["n_quarantined"]),
        ("n_quarantined_train", counts["n_quarantined_train"]),
        ("epochs", report["epochs"]),
        *((f"seconds_{stage}", s) for stage, s in report["timings_s"].items()),
    ]
    return [{"metric": k, "value": None if v is None else round(v, 6) if isinstance(v, float) else v} for k, v in rows]


def _baseline_rows(b: dict[str, Any] | None) -> list[tuple[str, Any]]:
    if not b:
        return []
    rows: list[tuple[str, Any]] = [("ae_beats_baseline", b["ae_beats_baseline"])]
    if b["retrieval"] is not None:
        rows += [
            ("ae_precision_at_10_vs_train", b["retrieval"]["ae_precision_at_10"]),
            (f"{b['name']}_precision_at_10_vs_train", b["retrieval"]["baseline_precision_at_10"]),
        ]
    return rows


def report_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: a Prefect report artifact, or a page in a wiki."""
    layout = RunLayout.at(report["run_dir"])
    r, ix, counts = report["reconstruction"], report["index"], report["counts"]

    def cell(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = [
        "# aepipe run report",
        "",
        f"Run `{report['run_dir']}`, model `{report['model_id']}`, corpus `{report['corpus']}`.",
        "",
        "## Counts",
        "",
        "| items encoded | quarantined (encode) | quarantined (train) |",
        "|---:|---:|---:|",
        f"| {counts['n_items']} | {counts['n_quarantined']} | {counts['n_quarantined_train']} |",
        "",
        f"## Reconstruction ({_split_label(r)}, {r['code_size']}-d code, {r.get('n_evaluated', r['n_heldout'])} items)",
        "",
        "| | SSE/item | MSE | PSNR (dB) |",
        "|---|---:|---:|---:|",
        f"| autoencoder | {cell(r['ae_sse_per_item'])} | {cell(r['ae_mse'])} | {cell(r['ae_psnr'])} |",
        f"| PCA | {cell(r['pca_sse_per_item'])} | {cell(r['pca_mse'])} | {cell(r['pca_psnr'])} |",
        "",
        *_baseline_markdown(report.get("baseline")),
        "## Search and clusters",
        "",
        "| metric | value |",
        "|---|---:|",
        f"| precision@10 ({_queries_label(report['retrieval'])}) | {cell(report['retrieval']['precision_at_10'])} |",
        f"| index | {ix['type']} {ix['params'] or ''} |",
        f"| index recall@10 | {cell(ix['recall_at_10'])} |",
        f"| latency (ms/query) | {cell(ix['latency_ms_per_query'])} |",
        f"| clusters k | {report['clusters']['n_clusters']} |",
        f"| cluster ACC / NMI | {cell(report['clusters']['acc'])} / {cell(report['clusters']['nmi'])} |",
        "",
        "## Time per stage",
        "",
        "| stage | seconds |",
        "|---|---:|",
        *(f"| {stage} | {s:.1f} |" for stage, s in report["timings_s"].items()),
        "",
        *_restoration_markdown(report),
        "## Files",
        "",
        f"- cluster prototypes (decoded centroids): `{layout.clusters.prototypes}`",
        f"- model metrics: `{layout.model.metrics}`, training curve: `{layout.model.logs / 'metrics.csv'}`",
        f"- report: `{layout.report}`",
    ]
    return "\n".join(lines) + "\n"


def _baseline_markdown(b: dict[str, Any] | None) -> list[str]:
    if not b:
        return []
    lines = ["## Against the linear baseline", ""]
    lines += [f"- {line.strip()}" for line in baseline_lines(b)]
    return lines + [""]


def _restoration_markdown(report: dict[str, Any]) -> list[str]:
    rs = report.get("restoration")
    if not rs:
        return []
    return [
        f"## Restoration: {rs['task']} (held-out, {rs['n_items']} items)",
        "",
        "| | PSNR (dB) | SSIM |",
        "|---|---:|---:|",
        *(
            f"| {name} | {rs[key]['psnr']:.2f} | {rs[key]['ssim']:.3f} |"
            for name, key in (
                ("corrupted input", "input"),
                ("autoencoder", "autoencoder"),
                (rs["baseline"]["method"], "baseline"),
            )
        ),
        "",
        f"Grid ({' / '.join(rs['grid_rows'])}): `{rs['grid']}`",
        "",
    ]
