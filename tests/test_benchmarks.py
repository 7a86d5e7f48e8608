"""The benchmark commands run end to end in their tiny form (the full runs are by hand)."""

from __future__ import annotations

import json

import pytest

from aepipe.benchmarks import mnist_kinds


def test_mnist_kinds_tiny_writes_a_table_for_each_kind(tmp_path, capsys):
    assert mnist_kinds.main(["--tiny", "--kinds", "dense,variational", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["kind"] for r in rows] == ["dense", "variational"]
    for r in rows:
        assert r["sse"] > 0 and r["pca_sse"] > 0
        assert 0 <= r["p10"] <= 1 and 0 <= r["acc"] <= 1 and 0 <= r["nmi"] <= 1
    table = (tmp_path / "results.md").read_text()
    assert "| dense+variational |" in table and "Machine:" in table and "--tiny" in table


def test_mnist_kinds_rejects_unknown_kinds(tmp_path):
    with pytest.raises(SystemExit) as exc:
        mnist_kinds.main(["--tiny", "--kinds", "dense,fancy", "--out", str(tmp_path)])
    assert exc.value.code == 2
