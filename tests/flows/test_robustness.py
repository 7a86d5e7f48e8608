"""Prefect robustness: shard retries only on I/O errors with backoff, time limits from the config,
one flow run per deployment at a time, flow-run names that say what ran."""

from __future__ import annotations

from aepipe.config import build_config
from aepipe.errors import CorpusError
from aepipe_flows import stages
from aepipe_flows.deployments import build_deployments, parse_schedules
from aepipe_flows.encode import retry_io_errors, shard_task


class _Failed:
    def __init__(self, exc: Exception):
        self.exc = exc

    def result(self):
        raise self.exc


def test_shards_retry_io_errors_with_backoff_and_nothing_else():
    assert shard_task.retries == 3
    delays = shard_task.retry_delay_seconds
    assert list(delays) == [2, 4, 8]
    assert retry_io_errors(None, None, _Failed(OSError(5, "Input/output error")))
    assert not retry_io_errors(None, None, _Failed(CorpusError("no readable items")))
    assert not retry_io_errors(None, None, _Failed(ValueError("a bug")))


def test_time_limits_come_from_the_config():
    cfg = build_config(overrides=["training.timeout_s=3600", "encode.shard_timeout_s=600"])
    assert stages.timed_train_task(cfg).timeout_seconds == 3600
    assert shard_task.with_options(timeout_seconds=cfg.encode.shard_timeout_s).timeout_seconds == 600


def test_every_deployment_runs_one_flow_run_at_a_time(tmp_path):
    cfg = build_config(overrides=[f"run_dir={tmp_path / 'run'}"])
    deployments = build_deployments(cfg, parse_schedules([]))
    assert deployments and all(d.concurrency_limit == 1 for d in deployments)


def test_flow_run_names_say_what_ran(monkeypatch, tmp_path):
    from prefect.runtime import flow_run

    cfg = build_config(overrides=[f"run_dir={tmp_path / 'photos'}", f"corpus.source={tmp_path / 'cats'}"])
    monkeypatch.setattr(flow_run, "parameters", {"config": cfg.model_dump(mode="json")}, raising=False)
    assert stages.run_name("update")() == "update photos <- cats"
