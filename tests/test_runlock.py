"""One writer per run: the writer lock between real processes, the CLI's --wait, a SIGKILLed holder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from aepipe.cli import main
from aepipe.config import build_config
from aepipe.errors import RunLocked
from aepipe.index.build import build_index
from aepipe.runlock import holds_lock, run_lock

HOLDER = """
import sys
from aepipe.runlock import run_lock
with run_lock(sys.argv[1], "test holder"):
    print("held", flush=True)
    sys.stdin.read()  # hold until the test closes our stdin (or kills us)
"""


@pytest.fixture
def holder(tmp_path):
    """A real process holding the writer lock of tmp_path/run until its stdin is closed."""
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    yield run, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_a_second_writer_is_refused_with_one_line_naming_the_holder(holder, capsys):
    run, proc = holder
    status = main(["index", "--run-dir", str(run)])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1
    assert err.startswith("aepipe: error: run ")
    assert f"pid {proc.pid} on " in err and "test holder" in err and "since 20" in err
    assert "--wait" in err


def test_library_stage_functions_take_the_lock(holder):
    run, proc = holder
    with pytest.raises(RunLocked, match=f"pid {proc.pid}"):
        build_index(build_config({"run_dir": str(run)}))


def test_wait_gets_the_lock_when_the_holder_finishes(holder, capsys):
    run, proc = holder
    threading.Timer(1.0, proc.stdin.close).start()
    t = time.monotonic()
    # past the lock, index finds no store: the command got the lock and ran (a missing artifact, exit 2)
    status = main(["index", "--run-dir", str(run), "--wait", "60"])
    err = capsys.readouterr().err
    assert time.monotonic() - t < 60
    assert status == 2 and "is being written" not in err and "store" in err


def test_wait_gives_up_after_its_time(holder):
    run, proc = holder
    with pytest.raises(RunLocked, match="after waiting 0.3s"):
        with run_lock(run, "second", wait=0.3):
            pass


def test_a_sigkilled_holder_does_not_block_the_next_writer(holder):
    run, proc = holder
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with run_lock(run, "next writer", wait=0):
        assert holds_lock(run)
    assert not holds_lock(run)


def test_the_lock_is_reentrant_in_one_process_and_released_at_the_end(tmp_path):
    run = tmp_path / "run"
    with run_lock(run, "outer"):
        with run_lock(run, "inner"):  # run_pipeline -> train_model: the same writer
            assert holds_lock(run)
        assert holds_lock(run)
    assert not holds_lock(run)
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from aepipe.runlock import run_lock\nwith run_lock(sys.argv[1], 'p'): pass",
            str(run),
        ],
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 0, probe.stderr


def test_readers_take_no_lock(holder, capsys):
    run, proc = holder
    assert main(["config", "show", "--run-dir", str(run)]) == 0  # prints the resolved config while a writer runs
    assert "is being written" not in capsys.readouterr().err


def test_taking_the_lock_removes_what_killed_writers_left(tmp_path):
    """Found by the torture long form: a SIGKILL mid-write left quarantine/.encode.parquet.tmp-*,
    which stayed for good. The next writer to take the lock removes such files anywhere in the run
    (no other writer can own them then); finished files and replace_dir's *.old-* are kept."""
    run = tmp_path / "run"
    stray = [run / "quarantine" / ".encode.parquet.tmp-1a2b3c4d", run / "generations" / ".tmp-g000002-4242" / "x"]
    kept = [run / "quarantine" / "encode.parquet", run / "store.old-5e6f7a8b" / "part-00000.parquet"]
    for p in stray + kept:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"data")
    with run_lock(run, "test"):
        assert not any(p.exists() for p in stray) and not stray[1].parent.exists()
        assert all(p.is_file() for p in kept)
        stray[0].write_bytes(b"written under the lock")
        with run_lock(run, "test"):  # re-entrant: an inner stage does not sweep its own writer's files
            assert stray[0].is_file()
