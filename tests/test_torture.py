"""The torture suite's CI form (slow): 3 SIGKILLs per writing stage, each landing while the stage
holds the run's lock (after a calibration run of it; every other kill aimed at the writes),
followed by a rerun and a check of the published generation, and 4 writers started together. The long form:
``python -m benchmarks.torture --kills 20 --writers 10``."""

from __future__ import annotations

import json

import pytest

from benchmarks import torture

pytestmark = pytest.mark.slow


def test_kills_and_concurrent_writers_leave_one_consistent_generation(tmp_path, capsys):
    status = torture.main(["--kills", "3", "--writers", "4", "--calibrations", "1", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "torture.json").read_text())
    assert [r["fault"].split(",")[0] for r in rows[:5]] == [f"SIGKILL during {s}" for s in torture.STAGES]
    for row in rows:
        assert row["cases"] >= 1 and row["survived"] == row["cases"], row["problems"]
        assert row["lost_items"] == 0
    for row in rows[:5]:  # each kill waited for the lock and says where it landed
        assert 0 < row["calibrated_s"] <= row["calibrated_exit_s"]
        assert row["kills"] + row["after_release"] + row["misses"] == row["cases"] == len(row["landed"])
        for kill in row["landed"]:
            assert 0 <= kill["u"] < torture.U_MAX and kill["after_lock_s"] is not None
            assert kill["missed"] == (kill["exit_code"] != -9) and not (kill["missed"] and kill["holding"])
        if row["calibrated_writes_s"] is not None:  # case 1 is aimed at the writing window
            assert (
                row["landed"][1]["aimed"] and row["landed"][1]["u"] >= row["calibrated_writes_s"] / row["calibrated_s"]
            )
    assert sum(row["kills"] for row in rows[:5]) >= 5  # most land while the stage holds the lock
    assert "Where the kills landed" in (tmp_path / "RESULTS-torture.md").read_text()
    assert status == 0
