"""A full disk during encode or index (RLIMIT_FSIZE in a real subprocess): one clear line, exit 2,
and the published generation intact (verify finds nothing, search answers)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from aepipe.index.search import Searcher
from aepipe.verify import verify_run

LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
from aepipe.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    "argv",
    [["encode", "--set", "encode.rows_per_part=100"], ["index", "--set", "index.metric=cosine"]],
    ids=["encode", "index"],
)
def test_a_full_disk_is_one_line_and_leaves_the_generation(argv, run_copy):
    before = Searcher(run_copy.run_dir).generation.name
    proc = subprocess.run(
        [sys.executable, "-c", LIMITED, "4096", argv[0], "--run-dir", str(run_copy.run_dir), *argv[1:]],
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("aepipe: error:")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(errors) == 1 and "no space left" in errors[0] and "Traceback" not in proc.stderr
    assert verify_run(run_copy.run_dir).ok
    s = Searcher(run_copy.run_dir)
    assert s.generation.name == before and len(s.search_ids(["0001"], k=3)[0]) == 3
