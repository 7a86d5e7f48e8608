"""Deployments of aepipe's flows: one per flow, all with the same config as their parameter,
cron schedules, served by one long-running process (``aepipe serve``; no work pool).

The work-pool way (``prefect deploy`` + ``prefect worker start``) declares the same
deployments in infra/prefect.yaml."""

from __future__ import annotations

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from aepipe.config import PipelineConfig
from aepipe.errors import ConfigError
from aepipe_flows.pipeline import pipeline_flow
from aepipe_flows.stages import cluster_flow, encode_flow, index_flow, train_flow
from aepipe_flows.update import update_flow

FLOWS = {
    "pipeline": pipeline_flow,
    "update": update_flow,
    "train": train_flow,
    "encode": encode_flow,
    "index": index_flow,
    "cluster": cluster_flow,
}
# Nightly full pipeline; the single stages and the incremental update run on demand (or on a schedule
# given with --cron, e.g. `--cron 'update=0 2 * * *' --cron pipeline=none` for nightly updates instead).
DEFAULT_SCHEDULES: dict[str, str | None] = {
    "pipeline": "0 2 * * *",
    "update": None,
    "train": None,
    "encode": None,
    "index": None,
    "cluster": None,
}


def parse_schedules(items: list[str], base: dict[str, str | None] | None = None) -> dict[str, str | None]:
    """``["train=0 3 * * 0", "pipeline=none"]`` over the defaults -> {flow: cron or None}."""
    schedules = dict(DEFAULT_SCHEDULES if base is None else base)
    for item in items:
        name, sep, cron = item.partition("=")
        if not sep or name.strip() not in FLOWS:
            raise ConfigError(f"schedule '{item}' is not FLOW=CRON with FLOW one of {', '.join(FLOWS)}")
        cron = cron.strip().strip("'\"")
        schedules[name.strip()] = None if cron.lower() in ("", "none", "off") else cron
    return schedules


def build_deployments(
    config: PipelineConfig, schedules: dict[str, str | None], name: str = "default", timezone: str = "UTC"
) -> list[RunnerDeployment]:
    """One deployment per flow, named ``<flow name>/<name>``, with ``config`` as its parameter."""
    deployments = []
    for key, flow in FLOWS.items():
        cron = schedules.get(key)
        try:
            deployments.append(
                flow.to_deployment(
                    name=name,
                    schedules=[Cron(cron, timezone=timezone)] if cron else None,
                    parameters={"config": config.model_dump(mode="json")},
                    tags=["aepipe"],
                    # one flow run of a deployment at a time (more wait in the queue); different
                    # deployments of the same run are serialised by the run's writer lock
                    concurrency_limit=1,
                    description=f"aepipe {key} on {config.corpus.source} into {config.run_dir}",
                )
            )
        except ValueError as exc:
            raise ConfigError(
                f"schedule of {key} ({cron!r}, timezone {timezone}): {str(exc).splitlines()[-1]}"
            ) from None
    return deployments


def serve_deployments(
    config: PipelineConfig,
    schedules: dict[str, str | None],
    name: str = "default",
    timezone: str = "UTC",
    limit: int | None = None,
) -> None:
    """Register the deployments with the Prefect API and run their flow runs here until stopped
    (Ctrl-C or SIGTERM: the runner pauses the schedules and returns)."""
    serve(*build_deployments(config, schedules, name, timezone), limit=limit)
