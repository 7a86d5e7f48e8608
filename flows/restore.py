"""Restore flow: a restoration model applied to folders of images (e.g. a bucket of scans on a
schedule); a thin wrapper over aepipe.restore.apply.restore_files."""

from __future__ import annotations

from prefect import flow, task

from aepipe.config import PipelineConfig
from aepipe.restore.apply import RestoreResult, restore_files


@task(name="restore")
def restore_task(config: PipelineConfig, inputs: list[str], out_dir: str, overwrite: bool = False) -> RestoreResult:
    return restore_files(config, list(inputs), out_dir, overwrite=overwrite)


@flow(name="aepipe-restore")
def restore_flow(
    inputs: list[str], out_dir: str, config: PipelineConfig = PipelineConfig(), overwrite: bool = False
) -> RestoreResult:
    """Every image under ``inputs`` through the run's model into ``out_dir`` (same relative paths);
    reruns skip outputs already written."""
    return restore_task(config, inputs, out_dir, overwrite)
