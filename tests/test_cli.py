"""The ``aepipe`` command line: stage commands print one JSON object, errors are
one line on stderr with exit status 2 and no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from aepipe.cli import main


def _aepipe(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("aepipe")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "aepipe.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("aepipe: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_wrong_dimension_vectors_exit_2_with_one_line(trained_run, tmp_path):
    """The real console script, in a fresh process."""
    vectors = tmp_path / "q.npy"
    np.save(vectors, np.zeros((3, 7), np.float32))
    proc = _aepipe("search", "--run-dir", str(trained_run.run_dir), "--vectors", str(vectors), cwd=tmp_path)
    assert proc.returncode == 2
    line = _one_line_error(proc.stderr)
    assert "dimension 7" in line and "dimension 10" in line
    assert proc.stdout == ""


def test_wrong_dimension_text_vectors_in_process(trained_run, tmp_path, capsys):
    vectors = tmp_path / "q.txt"
    vectors.write_text("0 1 2\n3 4 5\n")
    assert main(["search", "--run-dir", str(trained_run.run_dir), "--vectors", str(vectors)]) == 2
    out, err = capsys.readouterr()
    assert "dimension 3" in _one_line_error(err) and out == ""


def test_search_by_vectors_prints_json_hits(trained_run, tmp_path, capsys):
    from aepipe.index.search import Searcher

    vectors = tmp_path / "q.npy"
    np.save(vectors, Searcher(trained_run.run_dir).vectors_for_ids(["0005", "0006"]))
    assert (
        main(
            ["search", "--run-dir", str(trained_run.run_dir), "--vectors", str(vectors), "-k", "3", "--format", "json"]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 6
    assert [(r["query"], r["rank"]) for r in rows[:3]] == [("0", 1), ("0", 2), ("0", 3)]
    assert rows[0]["id"] == "0005" and rows[3]["id"] == "0006"


def test_search_by_id_table_and_parquet_output(trained_run, tmp_path, capsys):
    assert main(["search", "--run-dir", str(trained_run.run_dir), "--id", "0011", "-k", "4", "--format", "table"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["query", "rank", "id", "distance", "label", "source"]
    assert len(lines) == 5 and all(ln.split()[0] == "0011" for ln in lines[1:])
    assert all(ln.split()[2] != "0011" for ln in lines[1:])  # the query itself is left out
    out = tmp_path / "hits.parquet"
    assert (
        main(["search", "--run-dir", str(trained_run.run_dir), "--id", "0011", "0012", "-k", "2", "--output", str(out)])
        == 0
    )
    assert pq.read_table(out).num_rows == 4


def test_search_by_image(trained_run, tmp_path, capsys, digits_x):
    from PIL import Image

    path = tmp_path / "seven.png"
    Image.fromarray((digits_x[17, 0] * 255).round().astype(np.uint8)).save(path)
    assert (
        main(["search", "--run-dir", str(trained_run.run_dir), "--image", str(path), "-k", "3", "--format", "json"])
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["id"] == "0017" and rows[0]["query"] == str(path)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--set", "model.bogus=1"], "model.bogus"),
        (["train", "--set", "model.code_size"], "section.key=value"),
        (["index", "--set", "index.metric=manhattan"], "index.metric"),
        (["encode", "-c", "/nonexistent/config.yaml"], "does not exist"),
    ],
)
def test_bad_config_is_a_one_line_error(tmp_path, capsys, argv, needle):
    assert main([*argv, "--run-dir", str(tmp_path / "run")]) == 2
    out, err = capsys.readouterr()
    assert needle in _one_line_error(err)
    assert out == ""


def test_missing_artifacts_are_one_line_errors(tmp_path, capsys):
    assert main(["search", "--run-dir", str(tmp_path), "--id", "x"]) == 2
    assert "aepipe index" in _one_line_error(capsys.readouterr().err)
    assert main(["encode", "--run-dir", str(tmp_path), "--set", "corpus.limit=20"]) == 2
    assert "aepipe train" in _one_line_error(capsys.readouterr().err)
    assert main(["info", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in _one_line_error(capsys.readouterr().err)
    assert main(["info", str(tmp_path)]) == 2
    assert "not an aepipe" in _one_line_error(capsys.readouterr().err)


def test_search_needs_a_query_and_positive_k(trained_run, capsys):
    assert main(["search", "--run-dir", str(trained_run.run_dir)]) == 2
    assert "--image, --id or --vectors" in _one_line_error(capsys.readouterr().err)
    with pytest.raises(SystemExit) as exc:
        main(["search", "--run-dir", str(trained_run.run_dir), "--id", "0001", "-k", "0"])
    assert exc.value.code == 2


def test_info_describes_a_run_directory(trained_run, capsys):
    assert main(["info", str(trained_run.run_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "run"
    assert info["model"]["model_id"] == trained_run.model_id
    assert info["store"]["n_items"] == 400 and info["store"]["model_id"] == trained_run.model_id
    assert info["index"]["index_string"] == "Flat" and info["index"]["n_items"] == 400
    assert "config" not in info["store"]  # the full config is left out of the summary


def test_info_describes_single_artifacts(trained_run, capsys):
    root = Path(trained_run.run_dir)
    for sub, kind in (("model", "model"), ("store", "store"), ("index", "index")):
        assert main(["info", str(root / sub)]) == 0
        assert json.loads(capsys.readouterr().out)["kind"] == kind


def test_stage_commands_chain_and_print_json_lines(tmp_path, capsys):
    run = str(tmp_path / "run")
    common = ["--run-dir", run]
    train_args = [
        "--set",
        "corpus.limit=120",
        "--set",
        "model.n_layers=1",
        "--set",
        "model.nodes_per_layer=[16]",
        "--set",
        "model.code_size=4",
        "--set",
        "training.max_epochs=2",
        "--set",
        "training.batch_size=32",
    ]

    def stage(*argv: str) -> dict:
        assert main([*argv]) == 0
        out = capsys.readouterr().out.strip().splitlines()
        assert len(out) == 1, out
        return json.loads(out[0])

    trained = stage("train", *common, "--corpus", "digits", *train_args)
    assert trained["n_items"] == 120 and trained["model_dir"] == str(Path(run) / "model")
    assert (Path(run) / "config.yaml").is_file()
    encoded = stage("encode", *common)  # settings come from the run's saved config.yaml
    assert encoded["model_id"] == trained["model_id"] and encoded["n_items"] == 120
    indexed = stage("index", *common, "--set", "index.factory=HNSW16")
    assert indexed["index_string"] == "HNSW16" and indexed["n_items"] == 120
    clustered = stage("cluster", *common, "--set", "cluster.n_clusters=3")
    assert clustered["n_clusters"] == 3 and sum(clustered["sizes"]) == 120
    assert main(["info", run]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["index"]["model_id"] == trained["model_id"] and info["clusters"]["n_clusters"] == 3


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("aepipe ")


def test_run_without_prefect_prints_the_report_as_json(tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "--no-prefect",
                "--run-dir",
                str(run),
                "--set",
                "corpus.limit=100",
                "--set",
                "model.n_layers=1",
                "--set",
                "model.nodes_per_layer=[16]",
                "--set",
                "training.max_epochs=1",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((run / "report.json").read_text())
    assert report["counts"]["n_items"] == 100 and report["index"]["type"] == "Flat"
    assert set(report["timings_s"]) == {"train", "encode", "index", "cluster"}
    assert report["html"]["path"] == str(run / "report.html") and (run / "report.html").is_file()


def test_update_prints_what_it_did(run_copy, capsys):
    argv = ["update", "--run-dir", str(run_copy.run_dir), "--set", "corpus.source=digits"]
    assert main([*argv, "--set", "corpus.limit=420"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["n_added"], result["n_removed"], result["index_update"]) == (20, 0, "incremental")
    assert result["n_items"] == result["index_ntotal"] == run_copy.n_items + 20
    assert main([*argv, "--set", "corpus.limit=420"]) == 0
    assert json.loads(capsys.readouterr().out)["index_update"] == "none"


@pytest.mark.slow
def test_run_logs_progress_but_no_third_party_lines(tmp_path):
    """``aepipe -v run`` through Prefect: aepipe's lines and one line per epoch (stderr is not a
    terminal), none of httpx's HTTP requests, faiss's loader or Prefect's own INFO lines."""
    proc = _aepipe(
        "-v",
        "run",
        "--corpus",
        "digits",
        "--run-dir",
        str(tmp_path / "run"),
        "--set",
        "training.max_epochs=2",
        "--set",
        "corpus.limit=300",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert [ln.split("aepipe.progress: ")[1].split(":")[0] for ln in lines if "aepipe.progress: " in ln] == [
        "epoch 1/2",
        "epoch 2/2",
    ]
    noisy = [
        ln for ln in lines if any(s in ln for s in ("httpx", "HTTP Request", "faiss.loader", "prefect", "Prefect"))
    ]
    assert not noisy, noisy


def test_the_demos_run_the_defaults():
    """No hidden recipe: the demos set only the corpus and (documents) the code size."""
    from aepipe.cli.pipeline import DEMO_OVERRIDES, DOC_DEMO_OVERRIDES

    for overrides in (DEMO_OVERRIDES, DOC_DEMO_OVERRIDES):
        keys = [o.split("=")[0] for o in overrides]
        assert all(k.startswith("corpus.") or k == "model.code_size" for k in keys), keys
