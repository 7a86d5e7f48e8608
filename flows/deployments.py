"""Deployments of aepipe's flows: one per flow, all with the same config as their parameter,
cron schedules, served by one long-running process (``aepipe serve``; no work pool).

The work-pool way (``prefect deploy`` + ``prefect worker start``) declares the same
deployments in infra/prefect.yaml."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from aepipe.config import PipelineConfig
from aepipe.errors import ConfigError
from aepipe_flows.pipeline import pipeline_flow
from aepipe_flows.stages import cluster_flow, encode_flow, index_flow, train_flow
from aepipe_flows.update import update_flow

log = logging.getLogger(__name__)

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
    deployments = build_deployments(config, schedules, name, timezone)
    with _api_that_outlives_ctrl_c():
        serve(*deployments, limit=limit)


@contextmanager
def _api_that_outlives_ctrl_c(startup_timeout_s: float = 180) -> Iterator[None]:
    """Without PREFECT_API_URL, a Prefect server for the length of ``aepipe serve``, in a session of
    its own. (Prefect's own temporary server is a child in the terminal's process group: Ctrl-C
    reached it too, it died first, and the runner then hung on shutdown retrying to pause its
    schedules on a dead API, printing a websocket traceback.) ``prefect server start`` also runs the
    scheduler, so cron schedules fire. Its log goes to a temporary file named in the log."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fd, log_name = tempfile.mkstemp(prefix="aepipe-prefect-server-", suffix=".log")
    env = {**os.environ, "PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with os.fdopen(fd, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        _wait_until_healthy(url, proc, log_name, startup_timeout_s)
        log.info("Prefect server for this session on %s (log: %s)", url, log_name)
        with temporary_settings({PREFECT_API_URL: url}):
            yield
    finally:
        _stop_session(proc)


def _wait_until_healthy(url: str, proc: subprocess.Popen, log_name: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ConfigError(f"prefect server start exited with status {proc.returncode}; see {log_name}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise ConfigError(f"the Prefect server did not answer within {timeout_s:.0f} s; see {log_name}")


def _stop_session(proc: subprocess.Popen) -> None:
    """SIGTERM the server's session (server and its workers), SIGKILL what is left after 20 s."""
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait_s)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue
