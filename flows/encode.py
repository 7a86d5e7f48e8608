"""Sharded encode flow: plan -> one task per shard (fanned out by the configured
task runner) -> finalize. Workers receive the config and a shard (paths and row
ranges), never data; each shard commits its own part, so a crashed run resumes."""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.client.schemas.objects import State
from prefect.futures import as_completed
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from aepipe.codes.encode import (
    EncodePlan,
    EncodeResult,
    ShardResult,
    encode_shard,
    finalize_store,
    plan_encode,
)
from aepipe.config import EncodeConfig, PipelineConfig
from aepipe.corpus import Shard
from aepipe.errors import AepipeError, ConfigError
from aepipe.runlock import command_line, run_lock
from aepipe_flows.stages import FLOW_LOCK_WAIT_S, run_name


@task(name="plan-encode")
def plan_task(config: PipelineConfig) -> EncodePlan:
    return plan_encode(config)


def retry_io_errors(task: object, task_run: object, state: State) -> bool:
    """Retry a shard that failed on I/O (a flaky network filesystem, an object store); a bad config
    or a corpus error fails at once. A failed shard never commits: its marker is written last."""
    try:
        state.result()
    except AepipeError:
        return False
    except OSError:
        return True
    except Exception:  # noqa: BLE001  anything else is not transient
        return False
    return False


@task(
    name="encode-shard",
    task_run_name="encode-shard-{shard.index}",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),  # 2, 4, 8 s
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_io_errors,
)
def shard_task(config: PipelineConfig, plan: EncodePlan, shard: Shard) -> ShardResult:
    return encode_shard(config, plan, shard)


@task(name="finalize-store")
def finalize_task(config: PipelineConfig, plan: EncodePlan, shards: list[ShardResult]) -> EncodeResult:
    return finalize_store(config, plan)


def task_runner(cfg: EncodeConfig) -> TaskRunner:
    if cfg.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=cfg.workers)
    if cfg.task_runner == "processes":
        return ProcessPoolTaskRunner(max_workers=cfg.workers)
    try:
        if cfg.task_runner == "dask":
            from prefect_dask import DaskTaskRunner

            if cfg.dask_address:
                return DaskTaskRunner(address=cfg.dask_address)
            return DaskTaskRunner(
                cluster_kwargs={
                    "n_workers": cfg.workers,
                    "threads_per_worker": 1,
                    "processes": True,
                    "dashboard_address": None,
                }
            )
        from prefect_ray import RayTaskRunner

        return RayTaskRunner()
    except ImportError:
        raise ConfigError(
            f"encode.task_runner={cfg.task_runner} needs pip install 'aepipe[{cfg.task_runner}]'"
        ) from None


@flow(name="aepipe-encode-sharded", flow_run_name=run_name("encode"))
def _encode_sharded(config: PipelineConfig) -> EncodeResult:
    # the flow's process holds the writer lock; shard tasks (threads or worker processes) run under it
    with run_lock(config.run_dir, f"flow aepipe-encode-sharded: {command_line()}", wait=FLOW_LOCK_WAIT_S):
        return _encode_shards(config)


def _encode_shards(config: PipelineConfig) -> EncodeResult:
    plan = plan_task(config)
    n_shards = max(len(plan.shards), 1)
    progress = create_progress_artifact(
        100.0 * len(plan.done) / n_shards,
        key="aepipe-encode-progress",
        description=f"shards of {config.corpus.source} encoded into {config.run_dir}",
    )
    shard = shard_task.with_options(timeout_seconds=config.encode.shard_timeout_s)
    futures = [shard.submit(config, plan, s) for s in plan.pending]
    results = []
    for future in as_completed(futures):  # progress per finished shard, in whatever order they finish
        results.append(future.result())
        update_progress_artifact(progress, 100.0 * (len(plan.done) + len(results)) / n_shards)
    return finalize_task(config, plan, results)


def encode_sharded_flow(config: PipelineConfig) -> EncodeResult:
    """Run the sharded encode flow with the task runner named in ``config.encode``."""
    return _encode_sharded.with_options(task_runner=task_runner(config.encode))(config)
