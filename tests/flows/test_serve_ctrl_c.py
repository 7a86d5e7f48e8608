"""Ctrl-C on `aepipe serve` as a terminal delivers it: SIGINT to the whole foreground process
group. The command must stop within seconds, say so in one line, print no traceback and leave no
process behind (the Prefect server it started for the session included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.slow  # starts a Prefect server and the runner: about a minute
def test_ctrl_c_stops_serve_cleanly(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "home"), PREFECT_SERVER_ANALYTICS_ENABLED="false", OMP_NUM_THREADS="1")
    env["TMPDIR"] = str(tmp_path / "tmp")  # where the session's server log goes, to see it removed
    (tmp_path / "tmp").mkdir()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "aepipe"), "serve", "--run-dir", str(tmp_path / "run")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group, as a terminal's foreground job
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # not ignored, as in a terminal
        )
    pgid = proc.pid
    try:
        deadline = time.monotonic() + 240
        while "being served" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(1)
        assert "being served" in log.read_text(), log.read_text()[-3000:]
        # the server for the session runs in a session of its own: find it before the Ctrl-C
        servers = subprocess.run(["pgrep", "-f", "prefect server start"], capture_output=True, text=True).stdout.split()
        t0 = time.monotonic()
        os.killpg(pgid, signal.SIGINT)
        status = proc.wait(60)
        seconds = time.monotonic() - t0
        text = log.read_text()
        assert status == 0, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
        assert text.strip().splitlines()[-1] == "aepipe serve: stopped"
        assert seconds < 30, seconds
        time.sleep(1)
        assert not _group_alive(pgid)
        left = subprocess.run(["pgrep", "-f", "prefect server start"], capture_output=True, text=True).stdout.split()
        assert not set(servers) & set(left), "the session's Prefect server is still running"
        assert not list((tmp_path / "tmp").glob("aepipe-prefect-server-*.log")), "the server's log was left behind"
    finally:
        if _group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)


def test_an_api_url_in_the_environment_or_the_active_profile_counts_as_configured(tmp_path, monkeypatch):
    from aepipe.cli.prefect_server import api_url_configured

    for key in ("PREFECT_API_URL", "PREFECT_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    assert not api_url_configured()  # no profiles file
    (tmp_path / "profiles.toml").write_text(
        'active = "prod"\n[profiles.prod]\nPREFECT_API_URL = "http://prefect:4200/api"\n[profiles.local]\n'
    )
    assert api_url_configured()
    monkeypatch.setenv("PREFECT_PROFILE", "local")
    assert not api_url_configured()
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert api_url_configured()
