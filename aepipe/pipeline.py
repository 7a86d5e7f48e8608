"""The whole pipeline as plain function calls (no orchestrator): train -> encode -> index (+ publish
the model version that matches it) -> cluster (and, after DEC re-encoded the store, index again)
-> report (report.json, then report.html). The Prefect pipeline flow in
flows/pipeline.py composes the same functions."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from aepipe.cluster.kmeans import ClusterResult, cluster_codes
from aepipe.codes.encode import encode_corpus
from aepipe.config import PipelineConfig
from aepipe.errors import AepipeError
from aepipe.files import atomic_write_json
from aepipe.generations import publish_generation
from aepipe.index.build import IndexResult, build_index
from aepipe.layout import RunLayout
from aepipe.model.registry import publish_model_version
from aepipe.model.train import train_model
from aepipe.report.html import write_html_report
from aepipe.report.summary import build_report
from aepipe.runconfig import run_stage, save_run_config

log = logging.getLogger(__name__)

R = TypeVar("R")


@run_stage("index")
def index_stage(cfg: PipelineConfig) -> IndexResult:
    """Build the index, then publish the model version whose store and index are now complete
    (``RUN/models/current.json``), so queries switch to it."""
    result = build_index(cfg)
    layout = RunLayout.at(cfg.run_dir)
    publish_model_version(layout, result.model_id, cfg.training.keep_versions)
    publish_generation(layout, cfg.training.keep_versions, cfg.training.generation_grace_s)
    return result


def cluster_stage(cfg: PipelineConfig) -> ClusterResult:
    """Cluster the stored codes. ``cluster.method=dec`` replaces the model and re-encodes the store
    with the refined encoder: the index is then rebuilt over the new codes and a generation
    published, so searches never mix the refined store with the old index."""
    result = cluster_codes(cfg)
    if cfg.cluster.method == "dec":
        log.info("cluster.method=dec re-encoded the store: rebuilding the index over the refined codes")
        index_stage(cfg)
    return result


def html_report_stage(cfg: PipelineConfig, report: dict[str, Any]) -> dict[str, Any]:
    """Write RUN/report.html after report.json, and record its path and time in both. The page is
    for people: a failure to draw it is logged, never fails the run."""
    try:
        report["html"] = write_html_report(cfg.run_dir)
    except (AepipeError, OSError) as exc:
        log.warning("could not write the HTML report: %s", exc)
        report["html"] = {"path": None, "error": str(exc)}
    atomic_write_json(RunLayout.at(cfg.run_dir).report, report)
    return report


@run_stage("pipeline")
def run_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    save_run_config(cfg)
    timings: dict[str, float] = {}

    def timed_stage(name: str, stage: Callable[[PipelineConfig], R]) -> R:
        t = time.perf_counter()
        result = stage(cfg)
        timings[name] = time.perf_counter() - t
        return result

    trained = timed_stage("train", train_model)
    encoded = timed_stage("encode", encode_corpus)
    indexed = timed_stage("index", index_stage)
    clustered = timed_stage("cluster", cluster_stage)
    report = build_report(cfg, trained, encoded, indexed, clustered, timings)
    return html_report_stage(cfg, report)
