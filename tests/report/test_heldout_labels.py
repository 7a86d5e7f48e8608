"""Figures are called held-out only when they are: without a test split, reconstruction and
precision are measured on validation / training items and the report says so."""

from __future__ import annotations

from aepipe.config import build_config
from aepipe.pipeline import run_pipeline
from aepipe.report.summary import format_report
from tests.conftest import QUICK_OVERRIDES


def test_a_run_without_test_split_does_not_call_its_figures_held_out(tmp_path):
    cfg = build_config(
        overrides=[
            *QUICK_OVERRIDES,
            "corpus.source=digits",
            "corpus.limit=120",
            "training.test_fraction=0",
            f"run_dir={tmp_path / 'run'}",
        ]
    )
    report = run_pipeline(cfg)
    assert report["reconstruction"]["evaluated_on"] == "val"
    assert report["retrieval"]["held_out"] is False
    text = format_report(report)
    assert "validation items, not held-out" in text and "training-item queries, not held-out" in text
    assert "(held-out" not in text and " held-out queries" not in text


def test_a_run_with_a_test_split_reports_held_out_figures(run_copy):
    from aepipe.files import read_json
    from aepipe.layout import RunLayout
    from aepipe.report.summary import heldout_precision

    metrics = read_json(RunLayout.at(run_copy.run_dir).model.metrics)
    assert metrics.get("evaluated_on", "test") == "test"
    assert heldout_precision(run_copy.config())["held_out"] is True
