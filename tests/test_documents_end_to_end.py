"""Documents on the shared path: train -> encode (store with snippets) -> index -> search by
text / id -> topics, through the library, the CLI and the newsgroups benchmark's tiny form."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aepipe.config import build_config
from aepipe.errors import AepipeError
from aepipe.layout import RunLayout

TOPICS = {
    "space": "orbit rocket launch nasa moon shuttle planet satellite".split(),
    "hockey": "goal puck season team player ice playoff goalie".split(),
    "crypt": "key encryption clipper chip secure algorithm privacy cipher".split(),
}
COMMON = "people think really good time know make year said".split()

DOC_OVERRIDES = [
    "corpus.kind=documents",
    "model.n_layers=2",
    "model.nodes_per_layer=[64, 32]",
    "model.code_size=6",
    "features.text.max_features=100",
    "training.max_epochs=25",
    "training.batch_size=32",
    "training.lr=0.01",
    "cluster.n_clusters=3",
]


def write_docs(path, n_per: int = 40, seed: int = 0, split: bool = False) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    for label, words in TOPICS.items():
        for i in range(n_per):
            text = " ".join(rng.permutation(rng.choice(words, 10).tolist() + rng.choice(COMMON, 8).tolist()).tolist())
            rows.append(
                {"id": f"{label}-{i:02d}", "text": text, "label": label, "split": "test" if i % 4 == 0 else "train"}
            )
    if str(path).endswith(".jsonl"):
        path.write_text("\n".join(json.dumps({k: r[k] for k in ("id", "text", "label")}) for r in rows) + "\n")
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.fixture(scope="session")
def doc_run(tmp_path_factory):
    from aepipe.cluster.kmeans import cluster_codes
    from aepipe.codes.encode import encode_corpus
    from aepipe.index.build import build_index
    from aepipe.model.train import train_model
    from aepipe.pipeline import save_run_config

    root = tmp_path_factory.mktemp("docs")
    write_docs(root / "docs.jsonl")
    cfg = build_config(overrides=[*DOC_OVERRIDES, f"corpus.source={root / 'docs.jsonl'}", f"run_dir={root / 'run'}"])
    save_run_config(cfg)
    trained = train_model(cfg)
    encode_corpus(cfg)
    build_index(cfg)
    cluster_codes(cfg)
    return cfg, trained


def test_training_reconstructs_word_distributions_better_than_the_mean(doc_run):
    cfg, trained = doc_run
    m = trained.metrics
    assert m["loss"] == "softmax" and 30 < m["input_dim"] <= 100 and m["kinds"] == ["dense", "denoising"]
    store = pq.read_table(RunLayout.at(cfg.run_dir).store / "part-00000.parquet")
    assert store.num_rows == 120 and {"snippet", "text_encoding"} <= set(store.schema.names)
    assert store.column("text_encoding").unique().to_pylist() == ["utf-8"]
    # oracle: the mean word distribution of the corpus reconstructs worse than the model
    from aepipe.model.saved import load_model

    model = load_model(RunLayout.at(cfg.run_dir).model)
    x = model.prep.transform([json.loads(ln)["text"] for ln in open(cfg.corpus.source)])
    p = model.prep.word_distribution(x)
    mean_sse = ((p - p.mean(0)) ** 2).sum(1).mean()
    assert np.mean(store.column("recon_error").to_numpy()) < mean_sse


def test_search_by_text_and_by_id_finds_the_same_topic(doc_run):
    from aepipe.index.search import Searcher

    cfg, _ = doc_run
    s = Searcher(cfg.run_dir)
    hits = s.search_texts(["a rocket launch into orbit", "the goalie stopped the puck"], k=5)
    assert [h.label for h in hits[0]] == ["space"] * 5 and [h.label for h in hits[1]] == ["hockey"] * 5
    assert all(h.snippet and len(h.snippet) <= 200 for h in hits[0])
    by_id = s.search_ids(["crypt-03"], k=5)[0]
    assert "crypt-03" not in [h.id for h in by_id] and sum(h.label == "crypt" for h in by_id) >= 4
    with pytest.raises(AepipeError, match="no term of the model's vocabulary"):
        s.search_texts(["zzz qqq"])


def test_topics_have_top_terms_sizes_and_exemplars(doc_run):
    cfg, _ = doc_run
    files = RunLayout.at(cfg.run_dir).clusters
    summary = json.loads(files.summary.read_text())
    assert summary["topics"] == "topics.json" and summary["nmi"] > 0.8
    topics = json.loads(files.topics.read_text())
    assert topics["n_topics"] == 3 and sum(t["size"] for t in topics["topics"]) == 120
    for t in topics["topics"]:
        label = t["labels"][0]["label"]
        top = [x["term"] for x in t["top_terms"][:5]]
        assert sum(term in TOPICS[label] for term in top) >= 4, (label, top)
        assert len(t["exemplars"]) == 3 and all(ex["snippet"] for ex in t["exemplars"])
    assignments = pq.read_table(files.assignments)
    assert assignments.num_rows == 120 and assignments.column("cluster").to_numpy().max() == 2


def test_cli_search_text_text_file_and_topics(doc_run, tmp_path, capsys):
    from aepipe.cli import main

    cfg, _ = doc_run
    assert (
        main(["search", "--run-dir", cfg.run_dir, "--text", "encryption chip key", "-k", "3", "--format", "json"]) == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and {r["label"] for r in rows} == {"crypt"} and rows[0]["snippet"]
    queries = tmp_path / "q.txt"
    queries.write_text("moon shuttle planet\n\nice season team\n")
    assert main(["search", "--run-dir", cfg.run_dir, "--text-file", str(queries), "-k", "2", "--format", "table"]) == 0
    out = capsys.readouterr().out
    assert "snippet" in out.splitlines()[0] and out.count("space") >= 2 and out.count("hockey") >= 2
    assert main(["topics", "--run-dir", cfg.run_dir, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_topics"] == 3
    assert main(["topics", "--run-dir", cfg.run_dir, "--format", "text"]) == 0
    assert "terms:" in capsys.readouterr().out


def test_text_queries_against_an_image_run_are_a_one_line_error(trained_run, capsys):
    from aepipe.cli import main

    assert main(["search", "--run-dir", str(trained_run.run_dir), "--text", "hello"]) == 2
    assert "trained on images" in capsys.readouterr().err


def test_knn_target_averages_each_item_with_its_neighbours():
    from aepipe.model.fit import nearest_neighbours, smooth_over_neighbours

    x = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)
    assert nearest_neighbours(x, 1).ravel().tolist() == [1, 0, 3, 2]
    t = np.eye(4, dtype=np.float32)
    np.testing.assert_allclose(smooth_over_neighbours(x, t, 1)[0], [0.5, 0.5, 0, 0])


def test_newsgroups_benchmark_tiny(tmp_path):
    from benchmarks import newsgroups

    data = tmp_path / "ng.parquet"
    write_docs(data, n_per=20)
    out = tmp_path / "out"
    assert (
        newsgroups.main(
            ["--tiny", "--data", str(data), "--out", str(out), "--dims", "4", "--epochs", "3", "--knn-k", "3"]
        )
        == 0
    )
    rows = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["dim"]) for r in rows] == [("TF-IDF", 33), ("LSA", 4), ("AE (knn target k=3)", 4)]
    for r in rows:
        assert 0 <= r["p10"] <= 1 and 0 <= r["nmi"] <= 1 and 0 < r["p_at_r0.5"] <= 1
    assert rows[0]["p10"] > 0.9  # the topics are separable by their words
    md = (out / "results.md").read_text()
    assert "| LSA | 4 |" in md and "Machine:" in md and (out / "topics-4.txt").is_file()


def test_report_contact_sheet_and_service_of_a_document_run(doc_run, tmp_path):
    """#14 on documents: the report shows topics (no image grids), the contact sheet snippets, and the
    service answers text queries (thumbnails are a 400: documents have none)."""
    import re

    from fastapi.testclient import TestClient

    from aepipe.index.search import Searcher
    from aepipe.report.contact import write_contact_sheet
    from aepipe.report.html import write_html_report
    from aepipe.serve.app import create_app
    from aepipe.serve.service import SearchService

    cfg, _ = doc_run
    write_html_report(cfg.run_dir, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    sections = set(re.findall(r'<section id="(\w+)">', page))
    assert {"topics", "map", "index", "curves"} <= sections and not {"recon", "clusters"} & sections
    assert "orbit" in page.split('<section id="topics">')[1] or "hockey" in page.split('<section id="topics">')[1]

    results = Searcher(cfg.run_dir).search_texts(["rocket orbit launch"], k=4)
    write_contact_sheet(cfg.run_dir, results, tmp_path / "s.html")
    sheet = (tmp_path / "s.html").read_text()
    assert sheet.count('class="doc"') == 4 and "<img" not in sheet and "[space]" in sheet

    with TestClient(create_app(SearchService(cfg.run_dir)), raise_server_exceptions=False) as client:
        assert client.get("/api/info").json()["kind"] == "documents"
        body = client.post("/api/search/text", json={"texts": ["rocket orbit launch"], "k": 4}).json()
        assert [h["id"] for h in body["results"][0]["hits"]] == [h.id for h in results[0]]
        assert all(h["snippet"] for h in body["results"][0]["hits"])
        r = client.post("/api/search/text", json={"texts": ["zzzz qqqq"]})
        assert r.status_code == 400 and "vocabulary" in r.json()["error"]
        hit = results[0][0].id
        assert client.get(f"/api/items/{hit}/thumbnail.png").status_code == 400
        assert client.get(f"/api/items/{hit}").json()["snippet"]
        r = client.post("/api/search/images", files=[("files", ("x.png", b"abc", "image/png"))])
        assert r.status_code == 400 and "documents" in r.json()["error"]
