"""Document corpora: decoding with fallback, quarantine of bad documents, every format, and the
fitted bag-of-words preprocessor saved as plain JSON."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aepipe.config import TextFeaturesConfig, build_config
from aepipe.corpus import BadItem, DocumentCorpus, Quarantine, open_corpus
from aepipe.corpus import text as text_mod
from aepipe.corpus.text import decode_text
from aepipe.errors import ConfigError, CorpusError
from aepipe.features import TextPreprocessor, preprocessor_from_dict
from aepipe.features.text import fit_text_preprocessor

DOCS = [
    "the rocket reached orbit around the moon",
    "the goalie stopped the puck in the playoff game",
    "encryption keys keep the chip secure",
    "another rocket launch to the moon and orbit",
]


def corpus_cfg(source, *extra):
    return build_config(overrides=["corpus.kind=documents", f"corpus.source={source}", *extra]).corpus


def test_decode_utf8_bom_declared_detected_and_latin1_fallback(monkeypatch):
    assert decode_text("café au lait".encode()).encoding == "utf-8"
    assert decode_text(b"\xef\xbb\xbfhello world").text == "hello world"
    assert decode_text("hello wörld".encode("utf-16")).text == "hello wörld"
    cp1252 = "smart \u201cquotes\u201d and caf\u00e9".encode("cp1252")
    assert decode_text(cp1252, declared="cp1252").text == "smart \u201cquotes\u201d and caf\u00e9"
    declared = b'<meta charset="koi8-r"> ' + "привет мир".encode("koi8_r")
    assert decode_text(declared).text.endswith("привет мир") and decode_text(declared).encoding == "koi8-r"
    monkeypatch.setattr(text_mod, "_detect", lambda data: None)
    doc = decode_text(b"caf\xe9 cr\xe8me")
    assert doc.text == "café crème" and doc.encoding == "latin-1 (fallback)"


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty document"),
        (b"  \n\t ", "empty document"),
        (b"PK\x03\x04\x00\x00binary", "binary file"),
        (bytes(range(1, 32)) * 3, "undecodable bytes"),
        (b"x" * 101, "exceeds corpus.documents.max_doc_bytes"),
        (b"\xff\xfe" + b"\xd8", "undecodable bytes"),
    ],
)
def test_bad_documents_raise_baditem_with_the_reason(data, reason):
    with pytest.raises(BadItem, match=reason):
        decode_text(data, max_bytes=100)


def test_folder_corpus_quarantines_bad_files_and_labels_by_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(text_mod, "_detect", lambda data: None)
    (tmp_path / "space").mkdir()
    (tmp_path / "space" / "a.txt").write_text(DOCS[0])
    (tmp_path / "space" / "b.md").write_text(DOCS[3])
    (tmp_path / "crypt").mkdir()
    (tmp_path / "crypt" / "c.txt").write_bytes("caf\u00e9 encryption chip".encode("latin-1"))
    (tmp_path / "empty.txt").write_text("   ")
    (tmp_path / "blob.txt").write_bytes(b"\x00\x01\x02" * 50)
    (tmp_path / "huge.txt").write_text("rocket " * 200)
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    corpus = open_corpus(corpus_cfg(tmp_path, "corpus.documents.max_doc_bytes=1000"))
    assert isinstance(corpus, DocumentCorpus) and corpus.n_items == 7 and corpus.has_labels
    prep = corpus.infer_preprocessor(build_config().features)
    q = Quarantine("test")
    batches = list(corpus.iter_batches(prep, 2, q))
    ids = [i for b in batches for i in b.ids]
    assert ids == ["crypt/c.txt", "space/a.txt", "space/b.md"]
    assert [lb for b in batches for lb in b.labels] == ["crypt", "space", "space"]
    assert batches[0].meta["text_encoding"][0] == "latin-1 (fallback)"
    assert batches[0].meta["snippet"][0] == "café encryption chip"
    assert batches[0].x.shape == (2, prep.dim) and batches[0].x.dtype == np.float32
    reasons = {i: r for i, _, r in q.items}
    assert set(reasons) == {"empty.txt", "blob.txt", "huge.txt", "image.png"}
    assert "empty" in reasons["empty.txt"] and "binary" in reasons["blob.txt"]
    assert "max_doc_bytes" in reasons["huge.txt"] and "not a text file" in reasons["image.png"]


def test_jsonl_corpus_with_bad_lines_and_shards(tmp_path):
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"id": f"d{i}", "text": t, "label": "x"}) for i, t in enumerate(DOCS)]
    lines += ["{not json", json.dumps({"id": "d9", "text": None}), "", json.dumps(["a list"])]
    path.write_text("\n".join(lines) + "\n")
    corpus = open_corpus(corpus_cfg(path))
    assert corpus.n_items == 7 and corpus.has_labels
    prep = corpus.infer_preprocessor(build_config().features)
    q = Quarantine("test")
    got = [i for s in corpus.shards(3) for b in corpus.iter_batches(prep, 10, q, shard=s) for i in b.ids]
    assert got == ["d0", "d1", "d2", "d3"]
    reasons = [r for _, _, r in q.items]
    assert any("invalid JSON on line 5" in r for r in reasons) and any("missing text" in r for r in reasons)
    assert any("not a JSON object" in r for r in reasons)


def test_csv_and_parquet_corpora_with_configurable_columns(tmp_path):
    csv_path = tmp_path / "docs.csv"
    csv_path.write_text('doc,body,topic\n1,"multi-line\nrocket orbit",space\n2,,space\n3,puck goalie,hockey\n')
    corpus = open_corpus(
        corpus_cfg(csv_path, "corpus.id_column=doc", "corpus.documents.text_column=body", "corpus.label_column=topic")
    )
    prep = corpus.infer_preprocessor(build_config().features)
    q = Quarantine("test")
    batch = next(corpus.iter_batches(prep, 10, q))
    assert (
        batch.ids == ["1", "3"]
        and batch.labels == ["space", "hockey"]
        and batch.meta["snippet"][0] == "multi-line rocket orbit"
    )
    assert [i for i, _, _ in q.items] == ["2"]

    pq_path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": [DOCS[0], None, DOCS[1]]}), pq_path)
    corpus = open_corpus(corpus_cfg(pq_path))
    assert not corpus.has_labels
    q = Quarantine("test")
    assert next(corpus.iter_batches(prep, 10, q)).ids == ["a", "c"] and q.items[0][0] == "b"
    with pytest.raises(CorpusError, match="no column 'body'"):
        open_corpus(corpus_cfg(pq_path, "corpus.documents.text_column=body"))


def test_a_nul_byte_in_one_csv_cell_quarantines_that_row_not_the_file(tmp_path):
    csv_path = tmp_path / "docs.csv"
    rows = [f"{i},{DOCS[i % len(DOCS)]}" for i in range(4)]
    rows[2] = "2,rocket\0orbit"  # one row of a real export with a stray NUL
    csv_path.write_bytes(("id,text\n" + "\n".join(rows) + "\n").encode())
    corpus = open_corpus(corpus_cfg(csv_path))
    prep = corpus.infer_preprocessor(build_config().features)
    q = Quarantine("test")
    assert next(corpus.iter_batches(prep, 10, q)).ids == ["0", "1", "3"]
    assert [(i, r) for i, _, r in q.items] == [("2", "binary data (NUL characters)")]


def test_python_docs_is_a_real_labelled_corpus():
    corpus = open_corpus(corpus_cfg("python-docs"))
    assert corpus.n_items > 500 and corpus.has_labels
    labels = {r.label for r in corpus.iter_raw()}
    assert {"email", "asyncio", "logging"} <= labels


@pytest.mark.parametrize("weighting", ["counts", "log", "tfidf"])
def test_preprocessor_round_trips_through_json_and_inverts_its_weighting(weighting):
    prep = fit_text_preprocessor(DOCS, TextFeaturesConfig(weighting=weighting, max_features=12))
    assert prep.dim == 12 and "the" not in prep.vocabulary  # english stop words
    saved = json.loads(json.dumps(prep.to_dict()))
    again = preprocessor_from_dict(saved)
    assert isinstance(again, TextPreprocessor)
    np.testing.assert_allclose(again.transform(DOCS), prep.transform(DOCS), rtol=1e-5)
    counts = prep.counts(DOCS).toarray()
    np.testing.assert_allclose(
        prep.word_distribution(prep.transform(DOCS)), counts / counts.sum(1, keepdims=True), atol=1e-5
    )


def test_empty_vocabulary_is_a_corpus_error():
    with pytest.raises(CorpusError, match="cannot fit a vocabulary"):
        fit_text_preprocessor(["the and of", "a an the"], TextFeaturesConfig())


def test_document_defaults_give_way_to_explicit_settings():
    cfg = build_config(overrides=["corpus.kind=documents"])
    assert cfg.model.decoder == "linear" and cfg.model.loss == "softmax" and cfg.index.metric == "cosine"
    assert cfg.model.widths() == [500, 250, 125] and cfg.model.denoising.level == 0.25
    cfg = build_config(
        overrides=["corpus.kind=documents", "model.n_layers=2", "model.denoising=null", "index.metric=l2"]
    )
    assert cfg.model.widths() == [512, 256] and cfg.model.denoising is None and cfg.index.metric == "l2"
    assert build_config().model.decoder == "mirror" and build_config().index.metric == "l2"  # images unchanged
    with pytest.raises(ConfigError, match="decoder: linear is for dense"):
        build_config(overrides=["model.architecture=conv", "model.decoder=linear"])
    with pytest.raises(CorpusError, match="corpus.kind=documents"):
        open_corpus(build_config(overrides=["corpus.source=python-docs", "corpus.format=jsonl"]).corpus)
