"""A pipeline run of a restoration model reports its held-out scores and links its picture grid."""

from __future__ import annotations

import json

from aepipe.config import build_config
from aepipe.layout import RunLayout
from aepipe.pipeline import run_pipeline
from aepipe.report.summary import format_report, report_markdown


def test_pipeline_report_links_the_restoration_grid(tmp_path):
    cfg = build_config(
        overrides=[
            "corpus.source=digits",
            "corpus.limit=200",
            "model.architecture=conv",
            "model.n_layers=2",
            "model.nodes_per_layer=[8, 16]",
            "model.code_size=8",
            "training.max_epochs=2",
            "training.task=remove_watermark",
            f"run_dir={tmp_path / 'run'}",
        ]
    )
    report = run_pipeline(cfg)
    rs = report["restoration"]
    grid = RunLayout.at(cfg.run_dir).model.restoration_grid
    assert rs["task"] == "remove_watermark" and rs["grid"] == str(grid) and grid.is_file()
    assert rs["grid_rows"][0] == "corrupted" and rs["grid_rows"][-1] == "truth"
    assert json.loads(RunLayout.at(cfg.run_dir).report.read_text())["restoration"] == rs
    assert str(grid) in report_markdown(report) and "## Restoration: remove_watermark" in report_markdown(report)
    assert f"restoration grid: {grid}" in format_report(report)
