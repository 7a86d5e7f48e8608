"""infra/: the deployments file names real flows with valid configs and cron schedules, the
compose file validates with docker-compose (when installed), the Kubernetes base job template
defines every variable it uses, and the Dockerfile copies what exists. (No Docker engine here:
images are not built. `prefect deploy` and the template against a real server: test_serve.py.)"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from aepipe.config import PipelineConfig

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"


def _deployments() -> list[dict]:
    return yaml.safe_load((INFRA / "prefect.yaml").read_text())["deployments"]


def test_prefect_yaml_declares_one_deployment_per_flow():
    entries = {d["entrypoint"] for d in _deployments()}
    assert entries == {
        "flows/pipeline.py:pipeline_flow",
        "flows/update.py:update_flow",
        "flows/stages.py:train_flow",
        "flows/stages.py:encode_flow",
        "flows/stages.py:index_flow",
    }


@pytest.mark.parametrize("deployment", _deployments(), ids=lambda d: d["entrypoint"].split(":")[1])
def test_prefect_yaml_deployment_is_valid(deployment):
    from prefect.client.schemas.schedules import CronSchedule

    path, func = deployment["entrypoint"].split(":")
    assert (ROOT / path).is_file()
    flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), func)
    assert flow.name.startswith("aepipe-")
    config = PipelineConfig.model_validate(deployment["parameters"]["config"])  # as Prefect will, per run
    assert config.run_dir.startswith("/runs/") and config.corpus.source.startswith("/data/")
    for schedule in deployment["schedules"]:
        CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])  # raises on a bad expression
    assert deployment["work_pool"]["name"] == "aepipe-process"
    assert deployment["work_pool"]["job_variables"]["env"]["PREFECT_LOGGING_EXTRA_LOGGERS"] == "aepipe"


def test_only_the_pipeline_schedule_is_on_by_default():
    active = {d["entrypoint"].split(":")[1]: [s.get("active", True) for s in d["schedules"]] for d in _deployments()}
    assert active == {
        "pipeline_flow": [True],
        "update_flow": [False],
        "train_flow": [False],
        "encode_flow": [False],
        "index_flow": [False],
    }


def test_kubernetes_base_job_template_defines_every_variable_it_uses():
    template = json.loads((INFRA / "k8s" / "base-job-template.json").read_text())
    used = set(re.findall(r"\{\{\s*([a-z_]+)\s*\}\}", json.dumps(template["job_configuration"])))
    defined = set(template["variables"]["properties"])
    assert used <= defined, used - defined
    assert {"data_claim", "runs_claim", "gpu_limit", "image"} <= used
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/data", "/runs", "/dev/shm"}


def test_dockerfile_copies_files_that_exist():
    text = (INFRA / "Dockerfile").read_text()
    sources = [src for line in text.splitlines() if line.startswith("COPY ") for src in line.split()[1:-1]]
    assert sources and all((ROOT / src).exists() for src in sources), sources
    assert "ARG BASE_IMAGE=python:3.11-slim" in text  # CPU by default, CUDA by build argument


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_compose_file_validates():
    proc = subprocess.run(
        [
            "docker-compose",
            "-f",
            str(INFRA / "docker-compose.yml"),
            "--profile",
            "dask",
            "--profile",
            "tools",
            "config",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout)
    assert set(config["services"]) == {
        "postgres",
        "prefect-server",
        "worker",
        "deploy",
        "dask-scheduler",
        "dask-worker",
    }
    server = config["services"]["prefect-server"]["environment"]
    assert server["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert config["services"]["worker"]["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"


def test_gpu_check_skips_cleanly_without_cuda(tmp_path):
    """infra/gpu-check.sh on a machine without CUDA (here: no device visible): one line saying it
    skipped, exit 0, nothing trained or written."""
    import os
    import sys

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(INFRA / "gpu-check.sh"), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "gpu-check: skipped: no CUDA device (torch.cuda.is_available() is False)"
    assert not (tmp_path / "out").exists()
