"""benchmarks.encode_vs_issue: the verdict is on the median round, per run of this tree, against
the reference of its own round; a reference that is not a checkout of 3c74c6b is refused."""

import argparse

import pytest

from benchmarks.encode_vs_issue import main, table


def _row(tree: str, items_per_s: float, rss_mb: float = 1000.0, workers_mb: float = 300.0) -> dict:
    return {
        "tree": tree,
        "n_items": 1000,
        "n_quarantined": 0,
        "encode_s": 1000 / items_per_s,
        "encode_items_per_s": items_per_s,
        "peak_rss_mb": rss_mb,
        "workers_peak_rss_mb": workers_mb if tree != "reference" else 0.0,
        "decode_workers": 2 if tree != "reference" else 0,
        "autocast": "bf16" if "bf16" in tree else "off",
    }


def test_each_run_is_divided_by_its_own_rounds_reference_and_judged_on_the_median():
    rows = []
    for ref, this, bf16 in [(10_000, 14_200, 19_400), (20_000, 29_800, 43_400), (10_000, 14_500, 19_500)]:
        rows += [_row("reference", ref), _row("this", this), _row("this, bf16", bf16, rss_mb=1900)]
    text = table(rows, argparse.Namespace(items=1000, threads=1), ["--reference", "X"], "3c74c6b")
    assert "| 2 | this | 2 worker processes | fp32 |" in text and "| 1.49x |" in text  # 29,800 / 20,000
    assert "this / reference: median 1.45x, rounds 1.42x to 1.49x (target >= 1.6x: missed by 0.15)" in text
    assert "this, bf16 / reference: median 1.95x" in text and "(target >= 1.6x: met)" in text
    assert "peak RSS at most 1.27 GiB (target < 2.0 GiB: met)" in text
    assert "peak RSS at most 2.15 GiB (target < 2.0 GiB: missed by 0.15 GiB)" in text


def test_a_reference_that_is_not_the_issues_checkout_is_one_line_and_exit_2(tmp_path, capsys):
    data = tmp_path / "mnist.npz"
    data.write_bytes(b"x")
    with pytest.raises(SystemExit) as exc:
        main(["--reference", str(tmp_path), "--data", str(data)])
    assert exc.value.code == 2
    assert "is not a checkout of 3c74c6b" in capsys.readouterr().err.strip().splitlines()[-1]
