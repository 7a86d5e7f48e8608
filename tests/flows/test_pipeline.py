"""Prefect flows: the real pipeline flow end to end against a temporary Prefect
server, and the stage tasks' logic called directly."""

from __future__ import annotations

import json
import os

from aepipe.config import build_config
from aepipe.layout import RunLayout

FLOW_OVERRIDES = [
    "corpus.source=digits",
    "corpus.limit=300",
    "model.n_layers=2",
    "model.nodes_per_layer=[64, 32]",
    "training.max_epochs=8",
    "training.batch_size=64",
    "training.lr=0.01",
]


def test_prefect_home_is_isolated_for_the_tests():
    import prefect.settings

    home = str(prefect.settings.get_current_settings().home)
    assert home == os.environ["PREFECT_HOME"]
    assert "aepipe-tests-prefect-" in home


def test_pipeline_flow_end_to_end(prefect_harness, tmp_path):
    from aepipe_flows.pipeline import pipeline_flow

    cfg = build_config(overrides=[*FLOW_OVERRIDES, f"run_dir={tmp_path / 'run'}"])
    state = pipeline_flow(cfg, return_state=True)
    assert state.is_completed(), state
    report = state.result()

    layout = RunLayout.at(cfg.run_dir)
    on_disk = json.loads(layout.report.read_text())
    assert on_disk == json.loads(json.dumps(report))
    rec, ret, ix, cl = report["reconstruction"], report["retrieval"], report["index"], report["clusters"]
    assert rec["ae_sse_per_item"] > 0 and rec["pca_sse_per_item"] > 0
    assert rec["n_heldout"] == 30 and rec["code_size"] == 10
    assert 0.0 <= ret["precision_at_10"] <= 1.0 and ret["n_queries"] == 30
    assert ix["type"] == "Flat" and ix["recall_at_10"] == 1.0 and ix["n_items"] == 300
    assert 0.0 <= cl["acc"] <= 1.0 and 0.0 <= cl["nmi"] <= 1.0 and sum(cl["sizes"]) == 300
    assert set(report["timings_s"]) == {"train", "encode", "index", "cluster"}
    assert all(v >= 0 for v in report["timings_s"].values())
    assert report["counts"] == {"n_items": 300, "n_quarantined": 0, "n_quarantined_train": 0}
    # every stage left its artifacts, all from the same model
    assert report["model_id"] == json.loads(layout.model.info.read_text())["model_id"]
    assert json.loads(layout.index.infos.read_text())["model_id"] == report["model_id"]
    assert layout.clusters.assignments.is_file() and layout.config.is_file()

    # the run's report as Prefect artifacts: Markdown (counts incl. quarantined, timings) and a metrics table
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id={"any_": [state.state_details.flow_run_id]})
        )
    by_key = {a.key: a for a in artifacts}
    assert set(by_key) >= {"aepipe-report", "aepipe-metrics", "aepipe-report-html"}
    # the visual report: written beside report.json, linked from the flow run
    assert report["html"]["path"] == str(layout.report_html) and layout.report_html.is_file()
    # Prefect stores a link artifact as Markdown: [report.html](file:///...)
    assert layout.report_html.resolve().as_uri() in str(by_key["aepipe-report-html"].data)
    markdown = by_key["aepipe-report"].data
    assert by_key["aepipe-report"].type == "markdown" and report["model_id"] in markdown
    assert "| 300 | 0 | 0 |" in markdown and "| train |" in markdown and "prototypes.png" in markdown
    rows = by_key["aepipe-metrics"].data
    rows = json.loads(rows) if isinstance(rows, str) else rows
    assert by_key["aepipe-metrics"].type == "table"
    assert {"metric": "n_items", "value": 300} in rows and {"metric": "n_quarantined", "value": 0} in rows
    assert {r["metric"] for r in rows} >= {"ae_sse_per_item", "index_recall_at_10", "cluster_nmi", "seconds_train"}


def test_stage_task_logic_runs_without_an_orchestrator(tmp_path):
    from aepipe_flows.stages import cluster_task, encode_task, index_task, train_task

    cfg = build_config(
        overrides=[
            f"run_dir={tmp_path / 'run'}",
            "corpus.limit=80",
            "model.n_layers=1",
            "model.nodes_per_layer=[16]",
            "model.code_size=4",
            "training.max_epochs=1",
        ]
    )
    trained = train_task.fn(cfg)
    encoded = encode_task.fn(cfg)
    indexed = index_task.fn(cfg)
    clustered = cluster_task.fn(cfg)
    assert trained.model_id == encoded.model_id and encoded.n_items == 80
    assert indexed.n_items == 80 and indexed.index_string == "Flat"
    assert sum(clustered.sizes) == 80 and clustered.n_clusters == 10


def test_flow_and_task_names():
    from aepipe_flows.pipeline import pipeline_flow
    from aepipe_flows.stages import cluster_task, encode_task, index_task, train_task

    assert pipeline_flow.name == "aepipe-pipeline"
    assert [t.name for t in (train_task, encode_task, index_task, cluster_task)] == [
        "train",
        "encode",
        "index",
        "cluster",
    ]


def test_update_flow_reports_counts_as_an_artifact(prefect_harness, run_copy):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter

    from aepipe_flows.update import update_flow

    state = update_flow(run_copy.config("corpus.limit=430"), return_state=True)
    assert state.is_completed(), state
    result = state.result()
    assert (result.n_added, result.index_update, result.index_ntotal) == (30, "incremental", run_copy.n_items + 30)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id={"any_": [state.state_details.flow_run_id]}, key={"any_": ["aepipe-update"]}
            )
        )
    assert (
        len(artifacts) == 1
        and f"| 30 | 0 | 0 | {run_copy.n_items} | 0 | {run_copy.n_items + 30} |" in artifacts[0].data
    )
