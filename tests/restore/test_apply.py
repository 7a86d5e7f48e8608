"""``aepipe restore``: folders in, folders out (same relative paths), any image size by
overlapping tiles, bad files quarantined, atomic and resumable; and the Prefect flow."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from aepipe.cli import main
from aepipe.config import build_config
from aepipe.layout import RunLayout
from aepipe.model.train import train_model
from aepipe.restore.apply import restore_files, stitch, tile_image
from aepipe.restore.decode import model_for, reconstruct

DENOISE = [
    "corpus.source=digits",
    "corpus.limit=300",
    "model.architecture=conv",
    "model.n_layers=2",
    "model.nodes_per_layer=[8, 16]",
    "model.code_size=8",
    "model.skip_connections=true",
    "training.max_epochs=3",
    "training.batch_size=32",
    "training.task=denoise",
    "training.noise=[{kind: salt_pepper, levels: [0.1]}]",
]


@pytest.fixture(scope="module")
def denoise_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("denoise") / "run"
    cfg = build_config(overrides=[*DENOISE, f"run_dir={run_dir}"])
    train_model(cfg)
    return cfg


@pytest.fixture
def scans(tmp_path, digits_x, write_png):
    root = tmp_path / "scans"
    write_png(root / "a" / "one.png", np.rint(digits_x[1, 0] * 255))  # the model's size
    write_png(root / "a" / "b" / "big.png", np.rint(np.kron(digits_x[2, 0], np.ones((3, 2))) * 255)[:21, :13])
    write_png(root / "small.png", np.rint(digits_x[3, 0, :5, :6] * 255))  # smaller than the model
    rgb = np.stack([digits_x[4, 0]] * 3, -1) * 255
    write_png(root / "colour.png", np.rint(rgb))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 21, 13), (1, 5, 6), (3, 40, 9)])
def test_tiles_blend_back_to_the_image(shape):
    img = np.random.default_rng(0).random(shape).astype(np.float32)
    tiles, offsets, padded = tile_image(img, 8, 8)
    assert tiles.shape[1:] == (shape[0], 8, 8)
    assert np.allclose(stitch(tiles, offsets, padded, shape[1:]), img, atol=1e-6)
    if shape[1] > 8:
        assert len(offsets) > 1 and len({y for y, _ in offsets}) > 1  # overlapping tiles, not one resize


def test_restore_folders_keep_paths_sizes_and_quarantine_bad_files(denoise_run, scans, digits_x, tmp_path):
    out = tmp_path / "clean"
    r = restore_files(denoise_run, [scans], out)
    assert (r.n_files, r.n_written, r.n_skipped, r.n_quarantined) == (6, 4, 0, 2)
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["a/b/big.png", "a/one.png", "colour.png", "small.png"]
    assert Image.open(out / "a" / "b" / "big.png").size == (13, 21)  # (W, H): the input's own size
    assert Image.open(out / "small.png").size == (6, 5)
    assert Image.open(out / "colour.png").mode == "L"  # a grayscale model writes grayscale
    # an image of the model's size is exactly one tile: the model's own output
    model = model_for(RunLayout.at(denoise_run.run_dir))
    want = reconstruct(model, (np.asarray(Image.open(scans / "a" / "one.png"), np.float32) / 255)[None, None])[0, 0]
    assert np.abs(np.asarray(Image.open(out / "a" / "one.png"), np.float32) / 255 - want).max() <= 0.5 / 255 + 1e-6
    q = {row["id"]: row["reason"] for row in pq.read_table(r.quarantine).to_pylist()}
    assert set(q) == {"broken.png", "notes.txt"}
    assert "truncated or corrupt" in q["broken.png"] and "extension '.txt'" in q["notes.txt"]
    assert not list(out.rglob(".*tmp*"))  # atomic writes leave no temporary files


def test_restore_resumes_and_overwrites_on_request(denoise_run, scans, tmp_path):
    out = tmp_path / "clean"
    restore_files(denoise_run, [scans], out)
    kept = (out / "a" / "one.png").stat().st_mtime_ns
    (out / "small.png").unlink()  # as if the run had stopped before this file
    again = restore_files(denoise_run, [scans], out)
    assert (again.n_written, again.n_skipped) == (1, 3) and (out / "small.png").is_file()
    assert (out / "a" / "one.png").stat().st_mtime_ns == kept
    assert restore_files(denoise_run, [scans], out, overwrite=True).n_written == 4


def test_restore_cli_prints_the_result_and_rejects_bad_arguments(denoise_run, scans, tmp_path, capsys):
    args = ["restore", "--run-dir", denoise_run.run_dir, str(scans / "small.png"), "--out", str(tmp_path / "o")]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_written"] == 1 and (tmp_path / "o" / "small.png").is_file()
    assert main([*args, "--batch-size", "0"]) == 2
    assert main(["restore", "--run-dir", denoise_run.run_dir, str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("aepipe: error: ") for line in err)


def test_restore_flow_runs_the_library_stage(prefect_harness, denoise_run, scans, tmp_path):
    from aepipe_flows.restore import restore_flow

    state = restore_flow([str(scans)], str(tmp_path / "flow-out"), denoise_run, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    assert result.n_written == 4 and result.n_quarantined == 2
    assert (tmp_path / "flow-out" / "a" / "b" / "big.png").is_file()
