"""A Prefect server for the length of ``aepipe serve`` when none is configured.

Prefect's own temporary server is a child process in the terminal's process group: Ctrl-C reached it
too, it died first, and the runner then hung on shutdown retrying to pause its schedules on a dead
API (with a websocket traceback). This one is ``prefect server start`` (which also runs the
scheduler, so cron schedules fire) in a session of its own; ``aepipe serve`` stops it after the
runner. No Prefect import here: the server is a subprocess, and PREFECT_API_URL is set in the
environment before the flows (and Prefect) are imported.
"""

from __future__ import annotations

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
from pathlib import Path

import tomllib

from aepipe.errors import ConfigError


def api_url_configured() -> bool:
    """PREFECT_API_URL in the environment or in the active Prefect profile."""
    if os.environ.get("PREFECT_API_URL"):
        return True
    home = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")).expanduser()
    try:
        profiles = tomllib.loads((home / "profiles.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active", "ephemeral")
    return bool(profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL"))


@contextmanager
def session_server(startup_timeout_s: float = 180) -> Iterator[str]:
    """Start ``prefect server start`` on a free loopback port in its own session, wait until it is
    healthy, set PREFECT_API_URL for this process (and the flow runs it starts), yield the URL; stop
    the server's whole session afterwards. Its log goes to a temporary file, named in errors and
    kept when the server failed to start or died on its own; removed after a clean stop."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fd, log_name = tempfile.mkstemp(prefix="aepipe-prefect-server-", suffix=".log")
    env = {**os.environ, "PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with os.fdopen(fd, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    healthy = False
    try:
        _wait_until_healthy(url, proc, log_name, startup_timeout_s)
        healthy = True
        os.environ["PREFECT_API_URL"] = url
        yield url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        died = proc.poll() is not None
        _stop_session(proc)
        if healthy and died:
            print(f"the Prefect server of this session stopped on its own; its log: {log_name}", file=sys.stderr)
        elif healthy:
            Path(log_name).unlink(missing_ok=True)


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
