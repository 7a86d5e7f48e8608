"""The run remembers: stages start from the run's recorded config, a stage's override persists
where it belongs, relative paths are stored absolute and work from any working directory."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import yaml

from aepipe.cli import main
from aepipe.codes.store import open_store
from aepipe.config import build_config
from aepipe.files import read_json
from aepipe.layout import RunLayout
from aepipe.update import update_run
from tests.conftest import QUICK_OVERRIDES


def _recorded(run) -> dict:
    return yaml.safe_load(RunLayout.at(run).config.read_text())


def test_an_index_override_stays_through_update_from_the_cli(run_copy, capsys):
    run = str(run_copy.run_dir)
    assert main(["index", "--run-dir", run, "--set", "index.metric=cosine"]) == 0
    assert _recorded(run)["index"]["metric"] == "cosine"
    assert yaml.safe_load(RunLayout.at(run).stage_config("index").read_text())["index"]["metric"] == "cosine"
    # 20 more digits: the update adds them to the index, which must stay cosine
    assert main(["update", "--run-dir", run, "--set", "corpus.limit=420"]) == 0
    capsys.readouterr()
    infos = read_json(RunLayout.at(run).index.infos)
    assert infos["metric"] == "cosine" and infos["n_items"] == 420
    assert _recorded(run)["index"]["metric"] == "cosine"
    assert _recorded(run)["corpus"]["limit"] == 420  # update owns the corpus: its override is recorded


def test_library_update_with_a_default_config_keeps_the_runs_index_settings(run_copy, capsys):
    assert main(["index", "--run-dir", str(run_copy.run_dir), "--set", "index.metric=cosine"]) == 0
    capsys.readouterr()
    # a nightly deployment's parameter: the defaults (metric l2) plus run_dir and corpus
    update_run(run_copy.config("corpus.limit=420"))
    assert read_json(RunLayout.at(run_copy.run_dir).index.infos)["metric"] == "cosine"


def test_relative_paths_are_stored_absolute_and_work_from_another_directory(tmp_path, monkeypatch, write_png, capsys):
    rng = np.random.default_rng(0)
    for i in range(40):
        write_png(tmp_path / "data" / f"c{i % 2}" / f"{i:03d}.png", rng.integers(0, 256, (8, 8)))
    monkeypatch.chdir(tmp_path)
    quick = [a for o in QUICK_OVERRIDES for a in ("--set", o)]
    assert main(["train", "--corpus", "data", "--run-dir", "runs/x", *quick]) == 0
    recorded = _recorded(tmp_path / "runs" / "x")
    assert recorded["corpus"]["source"] == str(tmp_path / "data")
    assert recorded["run_dir"] == str(tmp_path / "runs" / "x")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["encode", "--run-dir", "../runs/x"]) == 0, capsys.readouterr().err
    store = open_store(RunLayout.at(tmp_path / "runs" / "x").store)
    assert store.n_items == 40
    sources = pq.read_table(next(iter(sorted(store.root.glob("part-*.parquet")))), columns=["source"])
    assert all(s.startswith(str(tmp_path / "data")) for s in sources.column("source").to_pylist())


def test_a_stage_ignores_sections_it_does_not_own(run_copy, caplog):
    run = str(run_copy.run_dir)
    assert main(["index", "--run-dir", run, "--set", "index.metric=cosine"]) == 0
    # cluster owns cluster.*: its index.metric override is not the run's, and is not recorded
    assert main(["cluster", "--run-dir", run, "--set", "index.metric=l2", "--set", "cluster.n_clusters=5"]) == 0
    assert _recorded(run)["index"]["metric"] == "cosine" and _recorded(run)["cluster"]["n_clusters"] == 5
    assert "cluster: using the run's recorded index" in caplog.text


def test_a_fresh_run_records_the_whole_config(tmp_path):
    from aepipe.runconfig import record_stage_config, stage_config

    cfg = stage_config(build_config(overrides=[f"run_dir={tmp_path / 'r'}", "index.metric=cosine"]), "train")
    record_stage_config(cfg, "train")
    assert _recorded(tmp_path / "r")["index"]["metric"] == "cosine"
