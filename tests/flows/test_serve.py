"""Deployments against a REAL Prefect server (not the ephemeral one): `prefect server start`
on loopback with its own SQLite database, `aepipe serve` registering and executing the
deployments, two runs of the pipeline deployment triggered together through the API as
`prefect deployment run` does, then: both completed one after the other (the deployment's
concurrency limit of 1: the later one waited in Scheduled/AwaitingConcurrencySlot, their Running
intervals do not overlap), the result on disk, the library's log lines in the flow-run logs and
the report artifacts. Both processes are stopped (their whole process groups) in teardown.

Prefect 3.9 enforces a deployment's concurrency limit on the server (SecureFlowConcurrencySlots,
on the proposed Scheduled -> Pending transition the runner of `serve` makes before it starts a
run): a run that finds no free slot is rejected into Scheduled named AwaitingConcurrencySlot, due
PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS later (30 s by default; 3 s here, with
the runner polling every 2 s instead of 10, to keep the test short)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from aepipe.config import build_config

pytestmark = pytest.mark.slow  # a real `prefect server` and a served deployment: about a minute

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
SERVE_OVERRIDES = [
    "corpus.source=digits",
    "corpus.limit=200",
    "model.n_layers=1",
    "model.nodes_per_layer=[16]",
    "model.code_size=4",
    "training.max_epochs=2",
    "training.batch_size=32",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group (server and its workers, serve and its flow runs), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            os.killpg(proc.pid, 0)  # the leader is gone; is anything left in its group?
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def _wait_for(check, timeout: float, proc: subprocess.Popen, log: Path, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what}: process exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        result = check()
        if result:
            return result
        time.sleep(0.5)
    pytest.fail(f"{what}: not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", OMP_NUM_THREADS="1", **extra)
    return env


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """`prefect server start` on a free loopback port, SQLite in its own PREFECT_HOME."""
    root = tmp_path_factory.mktemp("prefect-server")
    port, log = _free_port(), root / "server.log"
    env = _env(
        root / "home",
        PREFECT_UI_ENABLED="false",
        PREFECT_SERVER_LOGGING_LEVEL="WARNING",
        PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="3",  # a run refused a slot retries then
    )
    proc = _start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log)
    url = f"http://127.0.0.1:{port}/api"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    try:
        _wait_for(healthy, 150, proc, log, "prefect server")
        yield url
    finally:
        _stop(proc)


@pytest.fixture
def served(prefect_server, tmp_path):
    """`aepipe serve -c CONFIG` against the server; yields the config it serves."""
    cfg = build_config(overrides=[*SERVE_OVERRIDES, f"run_dir={tmp_path / 'run'}"])
    cfg_file = tmp_path / "serve.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    log = tmp_path / "serve.log"
    env = _env(
        tmp_path / "home",
        PREFECT_API_URL=prefect_server,
        PREFECT_LOGGING_EXTRA_LOGGERS="aepipe",
        PREFECT_RUNNER_POLL_FREQUENCY="2",  # how often serve looks for due runs (10 s by default)
    )
    proc = _start([str(BIN / "aepipe"), "serve", "-c", str(cfg_file), "--cron", "train=0 3 * * 0"], env, log)
    try:
        yield cfg, proc, log
    finally:
        _stop(proc)


def test_served_deployment_runs_to_completion_on_a_real_server(prefect_server, served):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    cfg, proc, log = served
    with temporary_settings({PREFECT_API_URL: prefect_server}), get_client(sync_client=True) as client:
        # meanwhile, the work-pool way: the pools (the Kubernetes one with infra's base job template,
        # which the server validates) and `prefect deploy` of infra/prefect.yaml
        client.create_work_pool(WorkPoolCreate(name="aepipe-process", type="process"))
        template = json.loads((ROOT / "infra" / "k8s" / "base-job-template.json").read_text())
        client.create_work_pool(WorkPoolCreate(name="aepipe-k8s", type="kubernetes", base_job_template=template))
        deploy_log = log.with_name("deploy.log")
        deploy = _start(
            [str(BIN / "prefect"), "--no-prompt", "deploy", "--prefect-file", "infra/prefect.yaml", "--all"],
            _env(log.parent / "deploy-home", PREFECT_API_URL=prefect_server),
            deploy_log,
        )
        try:
            _check_served_run(client, cfg, proc, log)
            assert deploy.wait(180) == 0, deploy_log.read_text()[-3000:]
        finally:
            _stop(deploy)
        declared = {
            n: client.read_deployment_by_name(n)
            for n in ("aepipe-pipeline/nightly", "aepipe-train/weekly", "aepipe-encode/nightly", "aepipe-index/nightly")
        }
        assert {n: [(s.schedule.cron, s.active) for s in d.schedules] for n, d in declared.items()} == {
            "aepipe-pipeline/nightly": [("0 2 * * *", True)],
            "aepipe-train/weekly": [("0 1 * * 0", False)],
            "aepipe-encode/nightly": [("0 3 * * *", False)],
            "aepipe-index/nightly": [("0 4 * * *", False)],
        }
        assert all(d.work_pool_name == "aepipe-process" for d in declared.values())
        assert declared["aepipe-pipeline/nightly"].parameters["config"]["run_dir"] == "/runs/nightly"
        assert client.read_work_pool("aepipe-k8s").base_job_template == template


def _check_served_run(client, cfg, proc, log) -> None:
    """The deployments `aepipe serve` registered; two runs of the pipeline, triggered together
    through the API: the deployment's concurrency limit of 1 runs them one after the other."""
    from prefect.client.schemas.filters import ArtifactFilter, LogFilter
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    def registered():
        try:
            return {n: client.read_deployment_by_name(f"aepipe-{n}/default") for n in ("pipeline", "train", "index")}
        except ObjectNotFound:  # serve has not registered them yet
            return None

    deployments = _wait_for(registered, 120, proc, log, "aepipe serve")
    pipeline = deployments["pipeline"]
    assert [s.schedule.cron for s in pipeline.schedules] == ["0 2 * * *"]
    assert [s.schedule.cron for s in deployments["train"].schedules] == ["0 3 * * 0"]
    assert deployments["index"].schedules == []
    assert pipeline.parameters["config"]["run_dir"] == cfg.run_dir  # parameters from the served config file
    assert pipeline.global_concurrency_limit is not None and pipeline.global_concurrency_limit.limit == 1

    t0 = time.monotonic()
    triggered = [run_deployment("aepipe-pipeline/default", timeout=0, as_subflow=False) for _ in range(2)]

    def finished():
        runs = [client.read_flow_run(r.id) for r in triggered]
        return runs if all(r.state is not None and r.state.is_final() for r in runs) else None

    runs = _wait_for(finished, 300, proc, log, "two pipeline runs")
    seconds = time.monotonic() - t0
    for r in runs:
        assert r.state.is_completed(), f"{r.name}: {r.state}\n{log.read_text()[-3000:]}"
    first, second = sorted(runs, key=lambda r: r.start_time)
    states = {r.id: sorted(client.read_flow_run_states(r.id), key=lambda s: s.timestamp) for r in runs}
    histories = {run_id: [s.name for s in history] for run_id, history in states.items()}
    # one at a time: the later run started (entered Running) only after the earlier one ended...
    assert first.end_time <= second.start_time, (
        f"the runs overlap: {first.start_time}..{first.end_time} and {second.start_time}..{second.end_time}; "
        f"states {histories}"
    )
    # ...and got its slot (Pending: before its process is even started) only then
    assert min(s.timestamp for s in states[second.id] if s.is_pending()) >= first.end_time, histories
    # ...because the server refused it a slot (not by luck of the runner's polling)
    assert "AwaitingConcurrencySlot" in histories[second.id], histories
    assert "AwaitingConcurrencySlot" not in histories[first.id], histories
    print(
        f"two served pipeline runs: {seconds:.1f} s from trigger to both Completed; first "
        f"{first.start_time:%H:%M:%S}..{first.end_time:%H:%M:%S} {histories[first.id]}, second "
        f"{second.start_time:%H:%M:%S}..{second.end_time:%H:%M:%S} {histories[second.id]}"
    )
    flow_run = second

    run = Path(cfg.run_dir)
    assert list((run / "store").glob("part-*.parquet")) and (run / "index" / "index.faiss").is_file()
    report = json.loads((run / "report.json").read_text())
    assert report["counts"]["n_items"] == 200 and report["index"]["n_items"] == 200
    from aepipe.verify import verify_run

    assert verify_run(run).problems == []  # two pipelines one after the other leave one consistent run

    def library_logs():  # the run's process ships its logs in batches; wait for the last stage's
        logs = client.read_logs(log_filter=LogFilter(flow_run_id={"any_": [flow_run.id]}))
        lines = [entry for entry in logs if entry.name.startswith("aepipe")]
        return lines if any("k-means" in entry.message and "took" in entry.message for entry in lines) else None

    lines = _wait_for(library_logs, 30, proc, log, "library logs in the flow-run logs")
    assert any("fit dense autoencoder" in entry.message for entry in lines), [e.message for e in lines]
    assert any(entry.name == "aepipe.model.fit" and "AE SSE/item" in entry.message for entry in lines)

    artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id={"any_": [flow_run.id]}))
    by_key = {a.key: a for a in artifacts}
    assert by_key["aepipe-report"].type == "markdown" and "quarantined" in by_key["aepipe-report"].data
    assert by_key["aepipe-metrics"].type == "table"
    rows = by_key["aepipe-metrics"].data
    rows = json.loads(rows) if isinstance(rows, str) else rows
    assert {"metric": "n_items", "value": 200} in rows
