"""The defaults benchmark's corpora and arguments (its full run is by hand: benchmarks/RESULTS-defaults.md)."""

from __future__ import annotations

import pytest
from PIL import Image

from benchmarks import defaults


def test_png400_is_a_labelled_folder_of_400_digit_pngs(tmp_path):
    overrides = defaults.prepare("png400", tmp_path, tmp_path)
    root = tmp_path / "png400"
    assert overrides == [f"corpus.source={root}"]
    files = sorted(root.rglob("*.png"))
    assert len(files) == 400 and {f.parent.name for f in files} == {str(d) for d in range(10)}
    with Image.open(files[0]) as img:
        assert img.size == (32, 32) and img.mode == "L"


def test_unknown_rows_are_an_argument_error(tmp_path):
    with pytest.raises(SystemExit) as exc:
        defaults.main(["--rows", "digits,imagenet", "--out", str(tmp_path)])
    assert exc.value.code == 2
