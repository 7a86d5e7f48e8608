"""The torture suite's CI form (slow): 3 SIGKILLs per writing stage, each followed by a rerun and
a check of the published generation, and 4 writers started together. The long form:
``python -m benchmarks.torture --kills 20 --writers 10``."""

from __future__ import annotations

import json

import pytest

from benchmarks import torture

pytestmark = pytest.mark.slow


def test_kills_and_concurrent_writers_leave_one_consistent_generation(tmp_path, capsys):
    status = torture.main(["--kills", "3", "--writers", "4", "--max-delay", "10", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "torture.json").read_text())
    assert [r["fault"].split(",")[0] for r in rows[:5]] == [f"SIGKILL during {s}" for s in torture.STAGES]
    for row in rows:
        assert row["cases"] >= 1 and row["survived"] == row["cases"], row["problems"]
        assert row["lost_items"] == 0
    assert status == 0
