"""One task and one flow per stage, each a thin wrapper over a library function.

Every flow holds the run's writer lock for its whole length, waiting up to ``FLOW_LOCK_WAIT_S`` for
another writer (a scheduled update behind a long retrain waits, it does not fail); deployments run
one flow run at a time each (flows/deployments.py). Flow-run names say what ran on which run."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.runtime import flow_run

from aepipe.cluster.kmeans import ClusterResult
from aepipe.codes.encode import EncodeResult, encode_corpus
from aepipe.config import PipelineConfig
from aepipe.index.build import IndexResult
from aepipe.model.train import TrainResult, train_model
from aepipe.pipeline import cluster_stage, index_stage
from aepipe.runlock import command_line, run_lock

FLOW_LOCK_WAIT_S = 6 * 3600.0


def flow_lock(config: PipelineConfig, name: str):
    """The run's writer lock for a whole flow run (waits for another writer; see module docstring)."""
    return run_lock(config.run_dir, f"flow {name}: {command_line()}", wait=FLOW_LOCK_WAIT_S)


def run_name(stage: str):
    """A flow-run name generator: "<stage> <run dir name> <corpus>" from the run's parameters."""

    def name() -> str:
        cfg = flow_run.parameters.get("config")
        if isinstance(cfg, dict):
            cfg = PipelineConfig.model_validate(cfg)
        if not isinstance(cfg, PipelineConfig):
            return stage
        return f"{stage} {Path(cfg.run_dir).name} <- {Path(cfg.corpus.source).name}"

    return name


@task(name="train")
def train_task(config: PipelineConfig) -> TrainResult:
    return train_model(config)


def timed_train_task(config: PipelineConfig):
    """The train task with the configured time limit (training.timeout_s)."""
    return train_task.with_options(timeout_seconds=config.training.timeout_s)


@task(name="encode")
def encode_task(config: PipelineConfig) -> EncodeResult:
    return encode_corpus(config)


@task(name="index")
def index_task(config: PipelineConfig) -> IndexResult:
    return index_stage(config)


@task(name="cluster")
def cluster_task(config: PipelineConfig) -> ClusterResult:
    return cluster_stage(config)


@flow(name="aepipe-train", flow_run_name=run_name("train"))
def train_flow(config: PipelineConfig = PipelineConfig()) -> TrainResult:
    with flow_lock(config, "aepipe-train"):
        return timed_train_task(config)(config)


@flow(name="aepipe-encode", flow_run_name=run_name("encode"))
def encode_flow(config: PipelineConfig = PipelineConfig()) -> EncodeResult:
    with flow_lock(config, "aepipe-encode"):
        return encode_task(config)


@flow(name="aepipe-index", flow_run_name=run_name("index"))
def index_flow(config: PipelineConfig = PipelineConfig()) -> IndexResult:
    with flow_lock(config, "aepipe-index"):
        return index_task(config)


@flow(name="aepipe-cluster", flow_run_name=run_name("cluster"))
def cluster_flow(config: PipelineConfig = PipelineConfig()) -> ClusterResult:
    with flow_lock(config, "aepipe-cluster"):
        return cluster_task(config)
