"""Pipeline flow: train -> encode -> index -> cluster -> report. Tasks pass
paths and small results, never arrays."""

from __future__ import annotations

import time

from prefect import flow

from aepipe.config import PipelineConfig
from aepipe.pipeline import save_run_config
from aepipe.report import build_report
from flows.stages import cluster_task, encode_task, index_task, train_task


@flow(name="aepipe-pipeline", log_prints=True)
def pipeline_flow(config: PipelineConfig = PipelineConfig()) -> dict:
    save_run_config(config)
    timings: dict[str, float] = {}
    results = []
    for name, task in (("train", train_task), ("encode", encode_task), ("index", index_task), ("cluster", cluster_task)):
        t = time.perf_counter()
        results.append(task(config))
        timings[name] = time.perf_counter() - t
    return build_report(config, *results, timings)
