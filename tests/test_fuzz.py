"""Fuzzed inputs, CI's form (slow): 300 mutated image files, documents and tables through the real
CLI; nothing crashes, every item is encoded or quarantined with its reason, valid odd-mode images
are encoded and unusable files quarantined. The long form: ``python -m benchmarks.fuzz --files 1000``."""

from __future__ import annotations

import json

import pytest

from benchmarks import fuzz

pytestmark = pytest.mark.slow


def test_fuzzed_files_are_encoded_or_quarantined_and_nothing_crashes(tmp_path):
    status = fuzz.main(["--files", "300", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "fuzz.json").read_text())
    outcomes = result["outcomes"]
    assert result["files"] >= 300
    assert not any(o["crashed"] for o in outcomes), [o["problems"] for o in outcomes if o["crashed"]]
    assert all(not o["problems"] for o in outcomes), [p for o in outcomes for p in o["problems"]]
    folders = outcomes[:2]
    assert all(o["exit_code"] == 0 and o["encoded"] > 0 and o["quarantined"] > 0 for o in folders)
    kinds = {k: v for o in outcomes for k, v in o["by_kind"].items()}
    for odd in ("png-16bit", "jpeg-cmyk", "gif-animated", "jpeg-exif-rotated", "utf16-bom"):
        assert kinds[odd].get("encoded", 0) > 0 and kinds[odd].get("quarantined", 0) == 0, (odd, kinds[odd])
    assert "png-claims-100000x100000" in kinds and kinds["png-claims-100000x100000"].get("encoded", 0) == 0
    assert status == 0
