"""Stage: build a FAISS index over the code store, tuned on held-out queries.

The index type comes from the number of vectors and a memory budget (exact Flat
for small collections, HNSW or IVF for larger ones) unless the config forces an
``index_factory`` string. ``ids.parquet`` maps index positions back to store ids;
``index_infos.json`` records what was built and how well it searches.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from aepipe.codes.store import open_store
from aepipe.config import PipelineConfig
from aepipe.errors import ConfigError
from aepipe.files import atomic_write_json, fresh_dir, recover_dir, replace_dir
from aepipe.index.choose import Choice, choose_index, training_size, wants_on_disk
from aepipe.index.faissio import METRICS, bulk_adder, ivf_of, normalize, write_index_file
from aepipe.index.ondisk import add_on_disk
from aepipe.index.tune import exact_neighbours, latency_percentiles, load_eval_queries, tune_search
from aepipe.index.vectors import add_all
from aepipe.layout import IndexFiles, RunLayout
from aepipe.logs import timed
from aepipe.runconfig import run_stage

log = logging.getLogger(__name__)


@dataclass
class IndexResult:
    index_dir: str
    index_string: str
    n_items: int
    recall_at_10: float
    params: dict[str, Any]
    seconds: float
    model_id: str = ""


@run_stage("index")
def build_index(cfg: PipelineConfig) -> IndexResult:
    """Build and tune an index over ``RUN/store`` and swap it into ``RUN/index`` when complete.
    Indexing only: publishing the model version that now matches the index is the caller's
    (aepipe.pipeline.index_stage, aepipe.update)."""
    t0 = time.perf_counter()
    layout = RunLayout.at(cfg.run_dir)
    recover_dir(layout.index.root)
    staging = fresh_dir(layout.staging("index"))
    infos = write_index(cfg, layout.store, staging)
    replace_dir(staging, layout.index.root)
    return IndexResult(
        str(layout.index.root),
        infos["index_string"],
        infos["n_items"],
        infos["recall_at_10"],
        infos["params"],
        round(time.perf_counter() - t0, 3),
        infos["model_id"],
    )


def write_index(cfg: PipelineConfig, store_dir: Path, dest: Path) -> dict[str, Any]:
    """Build and tune an index over the store at ``store_dir``; write its files into ``dest``.
    Returns the sidecar (index_infos.json).

    Three streaming passes over the store, so memory holds the index (or, on disk, one partial
    index) plus a batch, never the store: (1) gather the training sample and the held-out eval
    queries, (2) add every vector, writing ids.parquet as it goes, (3) exact neighbours of the
    eval queries, which the search parameters are then tuned against."""
    t0 = time.perf_counter()
    layout = RunLayout.at(cfg.run_dir)
    store = open_store(store_dir)
    n, dim, ic = store.n_items, store.code_size, cfg.index
    external = load_eval_queries(ic, dim)  # checked before the (long) build
    t = time.perf_counter()
    with timed("choose the index"):
        choice = choose_index(store, ic) if ic.factory == "auto" else Choice(ic.factory, "index.factory", [])
    choose_s = time.perf_counter() - t  # the calibration builds: part of what auto costs
    factory = choice.index_string
    on_disk = wants_on_disk(factory, n, dim, ic)
    try:
        index = faiss.index_factory(dim, factory, METRICS[ic.metric])
    except RuntimeError as exc:
        raise ConfigError(
            f"index.factory '{factory}' is not a valid faiss index_factory string for dim {dim}: "
            f"{str(exc).splitlines()[0] if str(exc) else exc}"
        ) from None
    rng = np.random.default_rng(ic.seed)
    k = max(1, min(10, n - 1))  # neighbours of a query other than itself
    n_q = min(ic.n_eval_queries, n)
    query_pos = np.sort(rng.choice(n, n_q, replace=False))
    held = np.zeros(n, bool)
    held[query_pos] = True
    rest = np.flatnonzero(
        ~held
    )  # held out: queries are not used to train the index (a mask: setdiff1d sorts, ~3 s at 1M)
    n_train = training_size(index, n, ic.train_points_per_list) if not index.is_trained else 0
    train_pos = np.sort(rng.choice(rest if len(rest) >= n_train else np.arange(n), n_train, replace=False))

    files = IndexFiles(dest)
    dest.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {"choose": choose_s}  # where the build time goes (sidecar)
    with timed(f"index {n} vectors of dim {dim} as '{factory}' ({ic.metric}){' on disk' if on_disk else ''}"):
        t = time.perf_counter()
        queries, train = (normalize(x, ic.metric) for x in store.gather([query_pos, train_pos]))
        seconds["gather_sample"] = time.perf_counter() - t
        if n_train:
            with timed(f"train on {n_train} vectors"):
                t = time.perf_counter()
                index.train(train)
                seconds["train"] = time.perf_counter() - t
        del train
        t = time.perf_counter()
        if on_disk:
            add_on_disk(index, store, ic, files)
        else:
            add = bulk_adder(index)
            add_all(store, ic, files, lambda x, _: add(x, None))
        seconds["add"] = time.perf_counter() - t
        if not on_disk:
            t = time.perf_counter()
            write_index_file(index, files.index)
            seconds["write"] = time.perf_counter() - t
        eval_pos: np.ndarray | None = query_pos
        if external is not None:  # the user's own queries: not stored items, nothing to leave out
            queries, eval_pos, k = external, None, min(10, n)
        t = time.perf_counter()
        truth, excluded = exact_neighbours(store, queries, eval_pos, k, ic)
        seconds["eval_exact_knn"] = time.perf_counter() - t
        t = time.perf_counter()
        params, recall, latency, curve = tune_search(index, queries, excluded, truth, k, ic.recall_target)
        seconds["tune"] = time.perf_counter() - t
        p50, p99 = latency_percentiles(index, queries, k)
    size = files.index.stat().st_size + (files.ivfdata.stat().st_size if on_disk else 0)
    ivf = ivf_of(index)
    infos = {
        "index_string": factory,
        "index_class": type(faiss.downcast_index(index)).__name__,
        "on_disk": on_disk,  # inverted lists in index.ivfdata, memory-mapped when searched
        "metric": ic.metric,
        "params": params,
        "n_items": int(index.ntotal),
        "labels": "positions",  # faiss labels are store positions (ids.parquet row); "explicit": its label column
        "n_items_at_build": int(index.ntotal),
        "dim": dim,
        "model_id": store.model_id,
        "store_dir": str(layout.store),
        "code_dtype": store.meta.get("code_dtype"),
        "recall_at_10": recall,
        "recall_target": ic.recall_target,
        "recall_target_met": recall >= ic.recall_target,
        "eval_queries": ic.eval_queries
        or "held-out stored items",  # for these: each itself and its exact copies left out
        "n_eval_queries": len(queries),
        "n_eval_queries_with_copies": int(((excluded >= 0).sum(1) > 1).sum()),
        "latency_ms_per_query": latency,
        "tuning": curve,  # recall and latency of each setting tried, smallest first
        "imbalance_factor": round(float(ivf.invlists.imbalance_factor()), 4) if ivf is not None else None,
        "seconds": {name: round(v, 3) for name, v in seconds.items()},
        "latency_ms_p50": p50,  # one query at a time, at the tuned setting
        "latency_ms_p99": p99,
        "candidates": measured_winner(choice, seconds, latency),  # what 'auto' weighed, estimates and measures
        "choice": choice.reason,
        "bytes": size,
        "bytes_per_vector": size / max(index.ntotal, 1),
        "build_seconds": round(time.perf_counter() - t0, 3),
        "faiss_version": faiss.__version__,
    }
    atomic_write_json(files.infos, infos)
    if recall < ic.recall_target:
        log.warning("index recall@10 %.3f is below the target %.3f even at %s", recall, ic.recall_target, params)
    return infos


def measured_winner(choice: Choice, seconds: dict[str, float], latency_ms: float) -> list[dict[str, Any]]:
    """The candidates weighed, the winner's entry with its measured build (train + add) and query
    cost next to the estimates it was chosen by."""
    for c in choice.candidates:
        if c["index_string"] == choice.index_string and "estimated_build_s" in c:
            c["measured_build_s"] = round(seconds.get("train", 0.0) + seconds["add"], 3)
            c["measured_query_ms"] = latency_ms
    return choice.candidates
