"""aepipe verify: damage to any published artifact is reported with the file's name, exit 2."""

from __future__ import annotations

import json

import pytest

from aepipe.cli import main
from aepipe.layout import RunLayout


def _flip(path, offset=-100):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_infos(path):
    infos = json.loads(path.read_text())
    infos["recall_at_10"] = 1.0 if infos["recall_at_10"] != 1.0 else 0.5
    path.write_text(json.dumps(infos))


DAMAGE = {
    "truncated-parquet-part": (lambda L: L.store / "part-00000.parquet", _truncate),
    "flipped-index-bytes": (lambda L: L.index.index, _flip),
    "flipped-weights-in-the-generation": (lambda L: L.current().model.weights, _flip),
    "deleted-ids": (lambda L: L.index.ids, lambda p: p.unlink()),
    "edited-sidecar": (lambda L: L.index.infos, _edit_infos),
    "edited-checksum-list": (lambda L: L.current().root / "checksums.json", lambda p: p.write_text('{"files": {}}')),
}


def test_an_intact_run_verifies(run_copy, capsys):
    assert main(["verify", str(run_copy.run_dir)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["n_files"] > 5 and out["generation"]


@pytest.mark.parametrize("damage", sorted(DAMAGE), ids=str)
def test_damage_is_detected_and_names_the_file(damage, run_copy, capsys):
    layout = RunLayout.at(run_copy.run_dir)
    where, how = DAMAGE[damage]
    path = where(layout)
    how(path)
    assert main(["verify", str(run_copy.run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aepipe: error: ") and str(path) in err[0]


def test_a_run_without_generation_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["verify", str(tmp_path / "run")]) == 2
    assert "no published generation" in capsys.readouterr().err
