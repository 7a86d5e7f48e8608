"""Decode stored codes, code arrays and images back to PNGs; compress / decompress code files."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from aepipe.cli import main
from aepipe.errors import ConfigError, IndexMismatch
from aepipe.layout import RunLayout
from aepipe.restore.compress import compress_run, decompress_run, dequantise, quantise, read_codes, write_codes
from aepipe.restore.decode import (
    decode_codes,
    decode_run,
    model_for,
    png_name,
    reconstruct,
    stored_codes,
)


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.float32) / 255.0


def test_decoded_stored_codes_are_the_models_reconstructions(trained_run, digits_x, tmp_path):
    cfg = trained_run.config()
    result = decode_run(cfg, tmp_path / "out", ids=["0003", "0010"])
    assert result.model_id == trained_run.model_id and result.n_items == 2
    model = model_for(RunLayout.at(trained_run.run_dir), trained_run.model_id)
    want = reconstruct(model, digits_x[[3, 10]])
    for path, img in zip(result.files, want):
        assert path.endswith(".png")
        assert np.abs(_png(path) - img[0]).max() <= 1 / 255 + 1e-6  # only PNG rounding
    # and they look like the digits: far closer to their own item than to the other one
    got = np.stack([_png(p) for p in result.files])
    own = ((got - digits_x[[3, 10], 0]) ** 2).sum((1, 2))
    swapped = ((got - digits_x[[10, 3], 0]) ** 2).sum((1, 2))
    assert (own < swapped).all()


def test_decode_grid_has_three_rows_original_ae_pca(trained_run, tmp_path):
    result = decode_run(trained_run.config(), tmp_path / "out", ids=["0001", "0002", "0005"], grid=True)
    assert result.grid is not None
    grid = np.asarray(Image.open(result.grid))
    pad = 2
    assert grid.shape[:2] == (3 * (8 + pad) + pad, 3 * (8 + pad) + pad)
    meta = json.loads((tmp_path / "out" / "grid.json").read_text())
    assert meta["rows"][0] == "original" and meta["rows"][2].startswith("pca")


def test_decode_codes_npy_and_wrong_size_is_one_line_error(trained_run, tmp_path, capsys):
    codes = stored_codes(RunLayout.at(trained_run.run_dir), ["0004"]).codes
    np.save(tmp_path / "c.npy", np.repeat(codes, 2, axis=0))
    assert (
        main(
            [
                "decode",
                "--run-dir",
                str(trained_run.run_dir),
                "--codes",
                str(tmp_path / "c.npy"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["n_items"] == 2 and sorted(p.rsplit("/", 1)[1] for p in out["files"]) == ["0.png", "1.png"]
    np.save(tmp_path / "bad.npy", np.zeros((2, 3), np.float32))
    assert (
        main(
            [
                "decode",
                "--run-dir",
                str(trained_run.run_dir),
                "--codes",
                str(tmp_path / "bad.npy"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aepipe: error: ") and "code size 10" in err[0]


def test_decode_images_reconstructs_files(trained_run, digits_x, write_png, tmp_path):
    src = write_png(tmp_path / "in" / "seven.png", np.rint(digits_x[7, 0] * 255))
    result = decode_run(trained_run.config(), tmp_path / "out", images=[src], grid=True)
    assert result.files == [str(tmp_path / "out" / "seven.png")]
    model = model_for(RunLayout.at(trained_run.run_dir))
    assert np.abs(_png(result.files[0]) - reconstruct(model, digits_x[[7]])[0, 0]).max() <= 2 / 255
    with pytest.raises(ConfigError, match="--grid"):
        decode_run(trained_run.config(), tmp_path / "o2", codes=np.zeros((1, 10), np.float32), grid=True)


def test_png_names_keep_subfolders_and_never_escape():
    assert png_name("cats/001.jpg") == "cats/001.png"
    assert png_name("0005") == "0005.png"
    assert png_name("../../etc/passwd") == "etc/passwd.png"
    assert png_name("/abs/x y.png") == "abs/x_y.png"


@pytest.mark.parametrize("dtype, width, tol", [("float32", 4, 0.0), ("float16", 2, 1e-2), ("int8", 1, None)])
def test_quantise_round_trip_within_its_step(dtype, width, tol):
    rng = np.random.default_rng(0)
    codes = (rng.normal(size=(200, 6)) * [1, 10, 0.1, 5, 1, 0]).astype(np.float32)  # one constant dimension
    q = quantise(codes, dtype)
    assert q.values.itemsize == width
    back = dequantise(q)
    if dtype == "int8":
        assert q.scale is not None
        assert (np.abs(back - codes) <= q.scale / 2 + 1e-6).all()  # at most half a step per dimension
        assert np.abs(back[:, 1] - codes[:, 1]).max() > np.abs(back[:, 2] - codes[:, 2]).max()  # per-dimension scale
    else:
        assert np.allclose(back, codes, rtol=tol, atol=tol)


def test_compress_file_holds_ids_model_and_small_codes(trained_run, tmp_path):
    cfg = trained_run.config()
    res = compress_run(cfg, tmp_path / "codes.aec", "int8")
    assert res.n_items == trained_run.n_items and res.bytes_per_item == 10 and res.model_id == trained_run.model_id
    assert res.file_bytes == (tmp_path / "codes.aec").stat().st_size
    f = read_codes(tmp_path / "codes.aec")
    full = stored_codes(RunLayout.at(trained_run.run_dir))
    assert f.ids == full.ids and f.model_id == trained_run.model_id
    assert np.abs(f.codes - full.codes).max() <= (full.codes.max(0) - full.codes.min(0)).max() / 255 / 2 + 1e-5
    f32 = compress_run(cfg, tmp_path / "codes32.aec", "float32")
    assert f32.bytes_per_item == 40 and f32.file_bytes > res.file_bytes
    out = decompress_run(cfg, tmp_path / "codes.aec", tmp_path / "png")
    assert out.n_items == trained_run.n_items and (tmp_path / "png" / "0000.png").is_file()


def test_decompress_refuses_codes_of_an_unknown_model(trained_run, tmp_path, capsys):
    write_codes(tmp_path / "x.aec", ["a"], np.zeros((1, 10), np.float32), "0123456789abcdef", "float16")
    with pytest.raises(IndexMismatch, match="0123456789abcdef"):
        decompress_run(trained_run.config(), tmp_path / "x.aec", tmp_path / "png")
    (tmp_path / "junk.aec").write_bytes(b"not parquet")
    args = [
        "decompress",
        str(tmp_path / "junk.aec"),
        "--run-dir",
        str(trained_run.run_dir),
        "--out",
        str(tmp_path / "p"),
    ]
    assert main(args) == 2
    assert "not an aepipe code file" in capsys.readouterr().err


def test_compress_cli_reports_bytes_per_item(trained_run, tmp_path, capsys):
    path = tmp_path / "two.aec"
    args = ["compress", "--run-dir", str(trained_run.run_dir), "--id", "0001", "0002", "--dtype", "float16"]
    assert main([*args, "--out", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_items"] == 2 and out["bytes_per_item"] == 20 and out["dtype"] == "float16"
    assert pq.read_table(path).column("id").to_pylist() == ["0001", "0002"]


def test_decode_codes_checks_dimension(trained_run):
    model = model_for(RunLayout.at(trained_run.run_dir))
    assert decode_codes(model, np.zeros((3, 10), np.float32)).shape == (3, 1, 8, 8)
    with pytest.raises(ConfigError, match="code size 10"):
        decode_codes(model, np.zeros((3, 9), np.float32))
