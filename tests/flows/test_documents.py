"""The real Prefect pipeline flow on a document corpus (same flow as images)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from aepipe.config import build_config
from aepipe.index.search import Searcher
from tests.test_documents_end_to_end import DOC_OVERRIDES, write_docs


def test_pipeline_flow_on_documents_encodes_indexes_searches_and_finds_topics(prefect_harness, tmp_path):
    from aepipe_flows.pipeline import pipeline_flow

    # a folder corpus in one format, plus one binary file and one empty file to quarantine
    write_docs(tmp_path / "docs.jsonl")
    folder = tmp_path / "folder"
    for row in map(json.loads, (tmp_path / "docs.jsonl").read_text().splitlines()):
        (folder / row["label"]).mkdir(parents=True, exist_ok=True)
        (folder / row["label"] / f"{row['id']}.txt").write_text(row["text"])
    (folder / "space" / "blob.txt").write_bytes(bytes(range(256)) * 4)
    (folder / "space" / "empty.txt").write_text("")
    cfg = build_config(overrides=[*DOC_OVERRIDES, f"corpus.source={folder}", f"run_dir={tmp_path / 'run'}"])
    report = pipeline_flow(cfg)
    assert report["counts"]["n_items"] == 120 and report["counts"]["n_quarantined"] == 2
    assert report["index"]["recall_at_10"] >= 0.95
    q = pq.read_table(tmp_path / "run" / "quarantine" / "encode.parquet").to_pydict()
    assert sorted(q["id"]) == ["space/blob.txt", "space/empty.txt"]
    hits = Searcher(tmp_path / "run").search_texts(["rocket launch orbit nasa"], k=5)[0]
    assert sum(h.label == "space" for h in hits) >= 4
    topics = json.loads((tmp_path / "run" / "clusters" / "topics.json").read_text())
    assert topics["n_topics"] == 3 and sum(t["size"] for t in topics["topics"]) == 120
    space = max(topics["topics"], key=lambda t: sum(lb["count"] for lb in t["labels"] if lb["label"] == "space"))
    assert {t["term"] for t in space["top_terms"]} & {"orbit", "rocket", "launch", "nasa", "moon", "shuttle"}
