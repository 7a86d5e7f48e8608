"""One task and one flow per stage, each a thin wrapper over a library function."""

from __future__ import annotations

from prefect import flow, task

from aepipe.cluster.kmeans import ClusterResult, cluster_codes
from aepipe.codes.encode import EncodeResult, encode_corpus
from aepipe.config import PipelineConfig
from aepipe.index.build import IndexResult
from aepipe.model.train import TrainResult, train_model
from aepipe.pipeline import index_stage


@task(name="train")
def train_task(config: PipelineConfig) -> TrainResult:
    return train_model(config)


@task(name="encode")
def encode_task(config: PipelineConfig) -> EncodeResult:
    return encode_corpus(config)


@task(name="index")
def index_task(config: PipelineConfig) -> IndexResult:
    return index_stage(config)


@task(name="cluster")
def cluster_task(config: PipelineConfig) -> ClusterResult:
    return cluster_codes(config)


@flow(name="aepipe-train")
def train_flow(config: PipelineConfig = PipelineConfig()) -> TrainResult:
    return train_task(config)


@flow(name="aepipe-encode")
def encode_flow(config: PipelineConfig = PipelineConfig()) -> EncodeResult:
    return encode_task(config)


@flow(name="aepipe-index")
def index_flow(config: PipelineConfig = PipelineConfig()) -> IndexResult:
    return index_task(config)


@flow(name="aepipe-cluster")
def cluster_flow(config: PipelineConfig = PipelineConfig()) -> ClusterResult:
    return cluster_task(config)
