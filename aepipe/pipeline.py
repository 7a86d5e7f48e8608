"""The whole pipeline as plain function calls (no orchestrator): train -> encode -> index (+ publish
the model version that matches it) -> cluster -> report. The Prefect pipeline flow in
flows/pipeline.py composes the same functions."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from aepipe.cluster.kmeans import cluster_codes
from aepipe.codes.encode import encode_corpus
from aepipe.config import PipelineConfig
from aepipe.generations import publish_generation
from aepipe.index.build import IndexResult, build_index
from aepipe.layout import RunLayout
from aepipe.model.registry import publish_model_version
from aepipe.model.train import train_model
from aepipe.report.summary import build_report
from aepipe.runconfig import run_stage, save_run_config

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
    clustered = timed_stage("cluster", cluster_codes)
    return build_report(cfg, trained, encoded, indexed, clustered, timings)
