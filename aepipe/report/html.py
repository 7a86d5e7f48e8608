"""``RUN/report.html``: the run as pictures and tables, one self-contained file (images embedded as
data: URIs), made from the run directory's artifacts alone, so the pipeline, the Prefect flow and
``aepipe report RUN`` all write the same page.

Each section reads what it needs; a section whose artifacts are missing (a run that was never
clustered, a corpus that moved) says so in its place instead of failing the report.
"""

from __future__ import annotations

import csv
import html
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aepipe.codes.store import CodeStore, open_store
from aepipe.config import PipelineConfig, load_config
from aepipe.errors import AepipeError, MissingArtifact
from aepipe.features import ImagePreprocessor
from aepipe.files import atomic_write_bytes, read_json
from aepipe.layout import RunLayout
from aepipe.model.saved import LoadedModel, load_model
from aepipe.quality.metrics import fit_pca
from aepipe.report.figures import code_map_png, data_uri, thumbnail_png, training_curves_png, tuning_curve_png
from aepipe.report.items import ItemImages, read_inputs, stored_rows

log = logging.getLogger(__name__)

N_RECON = 10  # held-out items in the reconstruction grid
N_PCA_FIT = 1000  # training items the grid's PCA baseline is fitted on
N_MEMBERS = 12  # member thumbnails per cluster sheet
METHOD_NAMES = {"kmeans": "k-means", "dec": "IDEC", "scan": "scan: neighbour-consistency heads"}
MAX_SHEETS = 40  # cluster sheets shown (the largest clusters)
N_MAP = 5000  # codes drawn on the 2-D map

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;font-size:.9em}
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
.sheet{display:inline-block;vertical-align:top;border:1px solid #ddd;margin:4px;padding:6px;width:330px}
.sheet img,.grid img{image-rendering:pixelated;margin:1px;border:1px solid #eee}
.proto{border:2px solid #c33!important}.note{color:#777;font-style:italic}
.row{display:flex;align-items:center;gap:6px}.row b{width:110px}.small{font-size:.8em;color:#555}
"""


@dataclass
class _Run:
    """What several sections share, loaded once."""

    layout: RunLayout
    cfg: PipelineConfig
    model: LoadedModel | None
    store: CodeStore | None

    @property
    def is_image(self) -> bool:
        return self.model is not None and isinstance(self.model.prep, ImagePreprocessor)


def write_html_report(run_dir: str | Path, path: str | Path | None = None) -> dict[str, Any]:
    """Write the report (default ``RUN/report.html``); returns its path, size and the seconds it took."""
    t0 = time.perf_counter()
    layout = RunLayout.at(run_dir)
    if not layout.root.is_dir():
        raise MissingArtifact(f"run directory {layout.root} does not exist")
    page = render_report(layout)
    out = Path(path) if path else layout.report_html
    atomic_write_bytes(out, page.encode())
    seconds = round(time.perf_counter() - t0, 3)
    log.info("wrote %s (%.1f KiB) in %.2f s", out, len(page) / 1024, seconds)
    return {"path": str(out), "bytes": len(page), "seconds": seconds}


def open_run(layout: RunLayout) -> _Run:
    """The run's store, the model whose codes it holds, and its config, loaded once."""
    store = open_store(layout.store) if layout.store.is_dir() else None
    model = None
    # the model whose codes are in the store: RUN/model, or its published version after a retraining
    candidates = [layout.model] + ([layout.model_version(store.model_id)] if store is not None else [])
    for files in candidates:
        if files.weights.is_file():
            loaded = load_model(files)
            if store is None or loaded.model_id == store.model_id:
                model = loaded
                break
    # the run's saved config (stage commands and the pipeline write it), else the one the model was trained with
    if layout.config.is_file():
        cfg = load_config(layout.config, [f"run_dir={layout.root}"])
    elif model is not None:
        cfg = model.config.model_copy(update={"run_dir": str(layout.root)})
    else:
        cfg = load_config(None, [f"run_dir={layout.root}"])
    return _Run(layout, cfg, model, store)


SECTIONS: list[tuple[str, str]] = [
    ("summary", "Summary"),
    ("curves", "Training curves"),
    ("recon", "Reconstructions of held-out items"),
    ("restoration", "Restoration"),
    ("eval", "Evaluation"),
    ("clusters", "Clusters"),
    ("topics", "Topics"),
    ("map", "Map of the codes"),
    ("index", "Index: recall and latency"),
    ("quarantine", "Quarantine"),
    ("timings", "Timings"),
]


def render_report(layout: RunLayout) -> str:
    run = open_run(layout)
    body = []
    for key, title in SECTIONS:
        section: Callable[[_Run], str | None] = globals()[f"_section_{key}"]
        t = time.perf_counter()
        try:
            content = section(run)
        except (AepipeError, OSError, KeyError, ValueError) as exc:  # a report never fails a run
            log.warning("report section %r skipped: %s", key, exc)
            content = f'<p class="note">not available: {html.escape(str(exc))}</p>'
        log.debug("report section %s: %.2f s", key, time.perf_counter() - t)
        if content is not None:
            body.append(f'<section id="{key}"><h2>{title}</h2>\n{content}\n</section>')
    head = f"aepipe run report: {html.escape(str(layout.root))}"
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{head}</title>'
        f"<style>{CSS}</style></head><body>\n<h1>{head}</h1>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f'<td class="n">{"n/a" if math.isnan(v) else f"{v:.4g}"}</td>'
        if isinstance(v, int):
            return f'<td class="n">{v}</td>'
        return f"<td>{html.escape('n/a' if v is None else str(v))}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    return f"<table><tr>{head}</tr>" + "".join("<tr>" + "".join(map(cell, r)) + "</tr>" for r in rows) + "</table>"


def img_tag(png: bytes, title: str = "", cls: str = "") -> str:
    return f'<img src="{data_uri(png)}" title="{html.escape(title)}" alt="{html.escape(title)}" class="{cls}">'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _section_summary(run: _Run) -> str:
    rows: list[list[Any]] = [["run directory", str(run.layout.root)], ["corpus", str(run.cfg.corpus.source)]]
    if run.store is not None:
        rows += [["model", run.store.model_id], ["items in the store", run.store.n_items]]
        rows.append(["code", f"{run.store.code_size}-d {run.store.code_dtype}"])
    if run.layout.report.is_file():
        rep = read_json(run.layout.report)
        ret = rep.get("retrieval", {})
        rows.append(["precision@10 (held-out queries)", ret.get("precision_at_10")])
        cl = rep.get("clusters", {})
        rows.append(["clusters: ACC / NMI", f"{_fmt(cl.get('acc'))} / {_fmt(cl.get('nmi'))}"])
    return _table(["", ""], rows)


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def read_training_curves(path: Path) -> dict[str, tuple[list[int], list[float]]]:
    """Per-epoch series of the Lightning CSV log: ``train_loss`` and ``val_loss`` (the last value
    logged in each epoch; rows carry either the train or the val columns)."""
    series: dict[str, dict[int, float]] = {"train_loss": {}, "val_loss": {}}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            for name, values in series.items():
                if row.get(name) not in (None, "") and row.get("epoch") not in (None, ""):
                    values[int(row["epoch"])] = float(row[name])
    return {name: (sorted(v), [v[e] for e in sorted(v)]) for name, v in series.items() if v}


def _section_curves(run: _Run) -> str:
    path = run.layout.model.logs / "metrics.csv"
    if not path.is_file():
        return _note(f"no training log at {path}")
    curves = read_training_curves(path)
    if not curves:
        return _note("the training log holds no loss values")
    return img_tag(training_curves_png(curves), "training and validation loss per epoch")


def _split_ids(run: _Run) -> dict[str, list[str]]:
    t = pq.read_table(run.layout.model.split).to_pydict()
    out: dict[str, list[str]] = {}
    for i, s in zip(t["id"], t["split"]):
        out.setdefault(s, []).append(i)
    return out


def _section_recon(run: _Run) -> str | None:
    if run.model is None or run.store is None:
        return _note("no model whose codes are in the store")
    if not run.is_image:
        return None  # documents: the topics section shows what the codes mean
    split = _split_ids(run)
    held = split.get("test", [])[:N_RECON]
    train = split.get("train", [])
    rng = np.random.default_rng(0)
    train = [train[i] for i in sorted(rng.choice(len(train), min(N_PCA_FIT, len(train)), replace=False))]
    rows = stored_rows(run.store, held + train)
    inputs = read_inputs(run.cfg, run.model.prep, [r.position for r in rows.values()])  # type: ignore[arg-type]
    x_held = [(i, inputs[rows[i].position]) for i in held if i in rows and rows[i].position in inputs]
    x_train = [inputs[rows[i].position] for i in train if i in rows and rows[i].position in inputs]
    if not x_held:
        return _note("the held-out items could not be read from the corpus")
    x = np.stack([a for _, a in x_held])  # (N, C, H, W)
    ae = ItemImages(run.cfg, run.model, run.store).reconstruct(x)
    lines = [("original", x), ("autoencoder", ae)]
    code_size = run.store.code_size
    if len(x_train) > code_size:
        pca = fit_pca(np.stack(x_train).reshape(len(x_train), -1), code_size)
        flat = x.reshape(len(x), -1)  # (N, C, H, W) -> (N, C*H*W)
        lines.append((f"PCA-{code_size}", pca.inverse_transform(pca.transform(flat)).reshape(x.shape)))
    grid = "".join(
        f'<div class="row"><b>{name}</b>'
        + "".join(img_tag(thumbnail_png(a), i) for (i, _), a in zip(x_held, imgs))
        + "</div>"
        for name, imgs in lines
    )
    sse = ((ae - x) ** 2).reshape(len(x), -1).sum(1)
    note = f"{len(x_held)} items of the held-out test split; autoencoder SSE/item on these {sse.mean():.3f}."
    return f'<div class="grid">{grid}</div><p class="small">{html.escape(note)}</p>'


def _section_restoration(run: _Run) -> str | None:
    """A restoration model's held-out scores (metrics.json) and its picture grid; None otherwise."""
    files = run.layout.model  # as the evaluation section: the run's trained model
    if not files.metrics.is_file():
        return None
    rs = read_json(files.metrics).get("restoration")
    if not rs:
        return None
    rows = [
        ["corrupted input", rs["input"]["psnr"], rs["input"]["ssim"]],
        ["autoencoder", rs["autoencoder"]["psnr"], rs["autoencoder"]["ssim"]],
        [rs["baseline"]["method"], rs["baseline"]["psnr"], rs["baseline"]["ssim"]],
    ]
    out = [
        _note(f"task {rs['task']}, {rs['n_items']} held-out items; PSNR in dB, SSIM (torchmetrics)"),
        _table(["", "PSNR", "SSIM"], rows),
    ]
    if rs.get("kept_input"):
        out.append(_note("the trained correction made validation images worse: the model returns its input"))
    if files.restoration_grid.is_file():
        rows_named = " / ".join(rs.get("grid_rows", []))
        out.append(img_tag(files.restoration_grid.read_bytes(), f"rows: {rows_named}"))
        out.append(_note(f"rows: {rows_named}"))
    return "\n".join(out)


def _section_eval(run: _Run) -> str:
    parts = []
    if run.layout.model.metrics.is_file():
        m = read_json(run.layout.model.metrics)
        rows = [
            [name, m["ae"][key], m["pca"][key]]
            for name, key in (("SSE/item", "sse_per_item"), ("MSE", "mse"), ("PSNR (dB)", "psnr"))
        ]
        what = f"held-out items ({m.get('n_test')}), {m.get('code_size')}-d code, {'+'.join(m.get('kinds', []))}"
        parts.append(f"<p>Reconstruction on {html.escape(what)}:</p>" + _table(["", "autoencoder", "PCA"], rows))
    eval_json = run.layout.root / "eval" / "eval.json"
    if eval_json.is_file():
        from aepipe.report.evaluate import markdown_table

        md = markdown_table(read_json(eval_json)).splitlines()
        cells = [[c.strip() for c in line.strip("|").split("|")] for line in md if not line.startswith("|---")]
        parts.append("<p>aepipe eval:</p>" + _table(cells[0], cells[1:]))
    else:
        parts.append(
            _note("no aepipe eval results (run `aepipe eval --run-dir RUN` for retrieval and clustering scores)")
        )
    return "\n".join(parts)


def _cluster_members(assignments: Path, n: int) -> tuple[pa.Table, dict[int, list[str]]]:
    """Per cluster, the ids of its ``n`` members nearest its centre; and the whole (cluster, label) table."""
    t = pq.read_table(assignments, columns=["id", "cluster", "distance", "label"])
    order = pc.sort_indices(t, [("cluster", "ascending"), ("distance", "ascending")])
    cluster = t.column("cluster").to_numpy()[order.to_numpy()]
    rank = np.arange(len(cluster)) - np.searchsorted(cluster, cluster)  # rank within the cluster
    keep = order.to_numpy()[rank < n]
    near = t.take(pa.array(keep))
    members: dict[int, list[str]] = {}
    for c, i in zip(near.column("cluster").to_pylist(), near.column("id").to_pylist()):
        members.setdefault(c, []).append(i)
    return t.select(["cluster", "label"]), members


def _section_clusters(run: _Run) -> str | None:
    files = run.layout.clusters
    if not files.summary.is_file():
        return _note("no clusters (run `aepipe cluster`)")
    if not run.is_image:
        return None  # document runs: the topics section
    summary = read_json(files.summary)
    labels, members = _cluster_members(files.assignments, N_MEMBERS)
    counts = labels.group_by(["cluster", "label"]).aggregate([("label", "count")]).to_pydict()
    by_cluster: dict[int, list[tuple[int, str | None]]] = {}
    for c, lb, n in zip(counts["cluster"], counts["label"], counts["label_count"]):
        by_cluster.setdefault(c, []).append((n, lb))
    sizes = summary["sizes"]
    shown = sorted(range(len(sizes)), key=lambda c: -sizes[c])[:MAX_SHEETS]
    assert run.model is not None and run.store is not None  # is_image
    items = ItemImages(run.cfg, run.model, run.store)
    images = items.images([i for c in shown for i in members.get(c, [])])
    protos = (
        items.decode(np.load(files.centroids).astype(np.float32))
        if files.centroids.is_file() and run.model.net.decodes_codes
        else None
    )
    sheets = []
    for c in shown:
        labelled = [(n, lb) for n, lb in by_cluster.get(c, []) if lb is not None]
        head = f"cluster {c}: {sizes[c]} items"
        if labelled:
            n, lb = max(labelled)
            head += f"; majority label {lb}, purity {n / max(sizes[c], 1):.2f}"
        thumbs = "".join(
            img_tag(thumbnail_png(images[i][0], 44), f"{i}" + (" (decoded: corpus unreadable)" if images[i][1] else ""))
            for i in members.get(c, [])
            if i in images
        )
        proto = (
            "" if protos is None else img_tag(thumbnail_png(protos[c], 44), "decoded prototype (cluster mean)", "proto")
        )
        sheets.append(f'<div class="sheet"><div><b>{html.escape(head)}</b></div>{proto}{thumbs}</div>')
    acc = summary.get("acc")
    note = (
        f"{summary['n_clusters']} clusters ({METHOD_NAMES.get(summary.get('method', 'kmeans'), summary.get('method'))})"
        f" of {summary['n_items']} items"
        + (f"; ACC {acc:.3f}, NMI {summary.get('nmi', float('nan')):.3f} against the labels" if acc is not None else "")
        + f". Per cluster: the decoded cluster mean (red frame), then the {N_MEMBERS} members nearest the centre."
    )
    more = f" Showing the {MAX_SHEETS} largest." if len(sizes) > MAX_SHEETS else ""
    return f'<p class="small">{html.escape(note + more)}</p>' + "".join(sheets)


def _section_topics(run: _Run) -> str | None:
    path = run.layout.clusters.topics
    if not path.is_file():
        return None
    topics = read_json(path)
    rows = []
    for t in topics["topics"]:
        terms = ", ".join(x["term"] for x in t["top_terms"])
        labels = ", ".join(f"{x['label']} ({x['count']})" for x in t["labels"])
        snippets = " | ".join(f"{ex['id']}: {(ex.get('snippet') or '')[:120]}" for ex in t["exemplars"][:3])
        rows.append([t["topic"], t["size"], terms, labels, snippets])
    return f'<p class="small">{html.escape(topics["method"])}</p>' + _table(
        ["topic", "size", "top terms", "labels", "exemplars"], rows
    )


def _section_map(run: _Run) -> str:
    if run.store is None or run.store.n_items < 3:
        return _note("no store (or fewer than 3 items)")
    n = run.store.n_items
    rng = np.random.default_rng(0)
    pos = np.sort(rng.choice(n, min(N_MAP, n), replace=False))
    (codes,) = run.store.gather([pos])
    ids = pc.take(run.store.read(["id"]).column("id"), pa.array(pos)).to_pylist()
    meta = stored_rows(run.store, ids)
    groups = [meta[i].label if i in meta else None for i in ids]
    what = "label"
    if any(g is None for g in groups) and run.layout.clusters.assignments.is_file():
        a = pq.read_table(run.layout.clusters.assignments, columns=["id", "cluster"]).to_pydict()
        cl = dict(zip(a["id"], a["cluster"]))
        groups, what = [str(cl.get(i, "?")) for i in ids], "cluster"
    xy, method = _project_2d(codes)
    title = f"{len(ids)} of {n} codes, {method}, coloured by {what}"
    return img_tag(code_map_png(xy, [str(g) for g in groups], title), title)


def _project_2d(codes: np.ndarray) -> tuple[np.ndarray, str]:
    """UMAP when umap-learn is installed, else PCA (scikit-learn)."""
    try:
        import umap
    except ImportError:
        from sklearn.decomposition import PCA

        return PCA(2, random_state=0).fit_transform(codes), "PCA"
    return umap.UMAP(n_components=2, random_state=0).fit_transform(codes), "UMAP"


def _section_index(run: _Run) -> str:
    files = run.layout.index
    if not files.infos.is_file():
        return _note("no index (run `aepipe index`)")
    infos = read_json(files.infos)
    rows = [
        ["index", infos["index_string"]],
        ["vectors", infos["n_items"]],
        ["metric", infos["metric"]],
        ["operating point", ", ".join(f"{k}={v}" for k, v in infos["params"].items()) or "exact"],
        ["recall@10 vs exact search", infos["recall_at_10"]],
        ["latency (ms per query)", infos["latency_ms_per_query"]],
        ["bytes per vector", infos.get("bytes_per_vector")],
        ["evaluated on", f"{infos.get('n_eval_queries')} {infos.get('eval_queries')}"],
    ]
    tuning = infos.get("tuning") or []
    plot = (
        img_tag(tuning_curve_png(tuning, infos["params"], infos.get("recall_target")), "recall vs latency")
        if tuning
        else ""
    )
    return _table(["", ""], rows) + plot


def _section_quarantine(run: _Run) -> str:
    folder = run.layout.quarantine("encode").parent
    paths = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    tables = [pq.read_table(p) for p in paths]
    rows = []
    for p, t in zip(paths, tables):
        if t.num_rows == 0:
            continue
        counts = t.group_by("reason").aggregate([("id", "count")]).sort_by([("id_count", "descending")]).to_pylist()
        for c in counts[:10]:
            example = t.filter(pc.equal(t.column("reason"), c["reason"])).column("id")[0].as_py()
            rows.append([p.stem, c["reason"], c["id_count"], example])
    if not rows:
        return "<p>No item was quarantined.</p>"
    return _table(["stage", "reason", "items", "example id"], rows)


def _section_timings(run: _Run) -> str:
    if not run.layout.report.is_file():
        return _note("no pipeline report (report.json): stages were run one at a time")
    rep = read_json(run.layout.report)
    t = rep.get("timings_s", {})
    rows = [[stage, float(s)] for stage, s in t.items()] + [["total", float(sum(t.values()))]]
    return _table(["stage", "seconds"], rows)
