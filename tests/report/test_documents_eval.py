"""Documents: the vocabulary and idf come from the training split only, and eval scores the AE and
PCA (LSA) on the same target, the normalised word distribution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from aepipe.codes.encode import encode_corpus
from aepipe.config import build_config
from aepipe.files import read_json
from aepipe.layout import RunLayout
from aepipe.model.train import train_model
from aepipe.report.evaluate import evaluate_run

TOPICS = [
    "ocean wave ship sail harbor anchor tide storm",
    "guitar drum melody chord rhythm concert band song",
    "wheat harvest tractor barn field farmer crop soil",
]


@pytest.fixture(scope="module")
def doc_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs")
    rng = np.random.default_rng(0)
    for i in range(90):
        words = TOPICS[i % 3].split()
        body = " ".join(rng.choice(words, 12).tolist())
        # one word only this document has: it must be in the vocabulary only if the document trains
        (root / "corpus" / f"t{i % 3}").mkdir(parents=True, exist_ok=True)
        (root / "corpus" / f"t{i % 3}" / f"{i:03d}.txt").write_text(f"{body} uniq{i:03d}x\n")
    cfg = build_config(
        overrides=[
            "corpus.kind=documents",
            f"corpus.source={root / 'corpus'}",
            f"run_dir={root / 'run'}",
            "features.text.min_df=1",
            "features.text.max_df=1.0",
            "model.n_layers=1",
            "model.nodes_per_layer=[16]",
            "model.code_size=4",
            "training.max_epochs=2",
            "training.batch_size=32",
            "training.test_fraction=0.2",
        ]
    )
    train_model(cfg)
    encode_corpus(cfg)
    return cfg


def test_vocabulary_and_idf_come_from_training_documents_only(doc_run):
    files = RunLayout.at(doc_run.run_dir).model
    vocab = set(read_json(files.preprocess)["vocabulary"])
    split = pq.read_table(files.split).to_pydict()
    by_split: dict[str, set[str]] = {}
    for item_id, name in zip(split["id"], split["split"]):
        by_split.setdefault(name, set()).add(f"uniq{item_id.split('/')[-1][:3]}x")
    assert by_split["test"] and by_split["train"]
    assert not (by_split["test"] | by_split["val"]) & vocab  # before the fix: every document's word was in it
    assert by_split["train"] <= vocab


def test_document_eval_compares_word_distributions_for_both_methods(doc_run):
    report = evaluate_run(doc_run)
    rec = report["reconstruction"]
    assert rec["target"].startswith("word distribution")
    # two distributions differ by at most 2 in summed squared error; raw TF-IDF inputs are far larger
    assert 0 < rec["ae"]["sse_per_item"] <= 2 and 0 < rec["pca"]["sse_per_item"] <= 2


def test_reconstruction_is_scored_against_word_distributions_not_normalised_tfidf(doc_run):
    """The softmax decoder is trained to output each document's word distribution (term counts
    normalised to sum 1). Training's verdict, the store's per-item errors and eval score exactly that
    target, for the AE and for PCA alike; the TF-IDF inputs normalised to sum 1 are a different
    distribution (log counts times idf), which the AE was scored against before."""
    import torch

    from aepipe.model.saved import load_model
    from aepipe.quality.metrics import pca_baseline

    layout = RunLayout.at(doc_run.run_dir)
    model = load_model(layout.model)
    split = dict(zip(*pq.read_table(layout.model.split).to_pydict().values()))
    root = Path(doc_run.corpus.source)
    docs = sorted(root.rglob("*.txt"))
    ids = [str(p.relative_to(root)) for p in docs]
    x = model.prep.transform([p.read_text() for p in docs])  # (N, V) TF-IDF
    words = model.prep.word_distribution(x)  # (N, V) rows sum to 1
    tfidf_sum1 = x / x.sum(1, keepdims=True)
    assert np.abs(words - tfidf_sum1).sum(1).mean() > 0.05  # the two targets differ on this corpus
    with torch.no_grad():
        out = model.net.reconstruct(torch.from_numpy(x)).numpy()
    want = ((out - words) ** 2).sum(1)

    store = pq.read_table(layout.store).to_pydict()
    errors = dict(zip(store["id"], store["recon_error"]))
    np.testing.assert_allclose([errors[i] for i in ids], want, rtol=1e-4, atol=1e-7)

    metrics = read_json(layout.model.metrics)
    test = np.array([split[i] == "test" for i in ids])
    train = np.array([split[i] == "train" for i in ids])
    assert metrics["ae"]["sse_per_item"] == pytest.approx(want[test].mean(), rel=1e-4)
    pca = pca_baseline(words[train], words[test], model.code_size, seed=doc_run.training.seed)
    assert metrics["pca"]["sse_per_item"] == pytest.approx(pca["sse_per_item"], rel=1e-3)


def test_drift_is_not_measured_against_errors_an_earlier_version_measured_differently(doc_run, tmp_path, caplog):
    """A document store encoded before errors were scored on word distributions carries no
    ``recon_error_target``: drift against it would compare two different measures, so it is
    skipped with a warning naming the fix (re-encode); a store written now is measured."""
    import json
    import shutil

    import pyarrow as pa

    from aepipe.codes.store import META_KEY, open_store
    from aepipe.quality.drift import measure_drift

    layout = RunLayout.at(doc_run.run_dir)
    store = open_store(layout.store)
    assert store.meta["recon_error_target"] == "word distribution"
    new_errors = store.read(["recon_error"]).column("recon_error").to_numpy()[:30] * 3
    report = measure_drift(doc_run, layout, store, pa.array([], pa.string()), new_errors)
    assert report is not None and report.n_new == 30

    old = tmp_path / "old-store"
    shutil.copytree(layout.store, old)
    for part in sorted(old.glob("part-*.parquet")):  # as an earlier aepipe wrote them: no marker
        table = pq.read_table(part)
        meta = json.loads(table.schema.metadata[META_KEY])
        del meta["recon_error_target"]
        pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()}), part)
    assert measure_drift(doc_run, layout, open_store(old), pa.array([], pa.string()), new_errors) is None
    assert any("drift not measured" in r.getMessage() and "aepipe encode" in r.getMessage() for r in caplog.records)
