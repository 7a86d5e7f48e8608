"""Pipeline flow: train -> encode -> index -> cluster -> report. Tasks pass
paths and small results, never arrays."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from aepipe.config import PipelineConfig
from aepipe.pipeline import html_report_stage, save_run_config
from aepipe.report.summary import build_report, report_markdown, report_rows
from aepipe_flows.encode import encode_sharded_flow
from aepipe_flows.stages import cluster_task, flow_lock, index_task, run_name, timed_train_task


@flow(name="aepipe-pipeline", log_prints=True, flow_run_name=run_name("pipeline"))
def pipeline_flow(config: PipelineConfig = PipelineConfig()) -> dict:
    # one writer for the whole flow: no other writer slips in between two stages
    with flow_lock(config, "aepipe-pipeline"):
        return _pipeline(config)


def _pipeline(config: PipelineConfig) -> dict:
    save_run_config(config)
    timings: dict[str, float] = {}
    results = []
    # encode is a subflow: one task per shard, fanned out by config.encode.task_runner
    for name, task in (
        ("train", timed_train_task(config)),
        ("encode", encode_sharded_flow),
        ("index", index_task),
        ("cluster", cluster_task),
    ):
        t = time.perf_counter()
        results.append(task(config))
        timings[name] = time.perf_counter() - t
    report = build_report(config, *results, timings)
    create_markdown_artifact(report_markdown(report), key="aepipe-report", description=f"aepipe run {config.run_dir}")
    create_table_artifact(report_rows(report), key="aepipe-metrics", description=f"aepipe metrics, {config.run_dir}")
    report = html_report_stage(config, report)
    if report["html"]["path"]:
        create_link_artifact(
            Path(report["html"]["path"]).resolve().as_uri(),
            link_text="report.html",
            key="aepipe-report-html",
            description=f"aepipe visual run report, {config.run_dir}",
        )
    return report
