"""The query API: by stored id, by vector and by image file; clear errors for the
wrong dimension, a missing index and a model that did not build the index."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from aepipe.codes.store import open_store
from aepipe.config import build_config
from aepipe.errors import AepipeError, DimensionMismatch, IndexMismatch, MissingArtifact
from aepipe.features import ImagePreprocessor
from aepipe.index.search import Searcher, hits_table
from aepipe.layout import ModelFiles, RunLayout
from aepipe.model import build_autoencoder, load_model, save_model


@pytest.fixture(scope="module")
def searcher(trained_run) -> Searcher:
    return Searcher(trained_run.run_dir)


def test_search_ids_leaves_the_query_out_and_returns_k_labelled_hits(searcher):
    queries = ["0000", "0123", "0399"]
    results = searcher.search_ids(queries, k=5)
    labels = dict(
        zip(*[open_store(searcher.layout.store).read(["id", "label"]).column(c).to_pylist() for c in ("id", "label")])
    )
    assert len(results) == 3
    for query, hits in zip(queries, results):
        assert len(hits) == 5
        assert query not in [h.id for h in hits]
        assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
        assert all(h.query == query for h in hits)
        assert all(h.label == labels[h.id] for h in hits)
        assert all(h.source == f"digits[{int(h.id)}]" for h in hits)
        distances = [h.distance for h in hits]
        assert distances == sorted(distances) and distances[0] >= 0


def test_neighbours_mostly_share_the_query_label(searcher):
    ids = [f"{i:04d}" for i in range(0, 400, 4)]
    results = searcher.search_ids(ids, k=10)
    assert searcher.vectors_for_ids(ids).shape == (100, 10)  # lookup of many ids at once
    meta = searcher.metadata()
    precision = np.mean([[h.label == meta[q][0] for h in hits] for q, hits in zip(ids, results)])
    assert precision > 0.5  # chance is 0.1 (0.68 when written)


def test_search_by_vector_finds_the_item_itself_at_distance_zero(searcher):
    vectors = searcher.vectors_for_ids(["0042", "0007"])
    results = searcher.search_vectors(vectors, k=3, query_names=["a", "b"])
    assert [hits[0].id for hits in results] == ["0042", "0007"]
    assert results[0][0].distance == pytest.approx(0.0, abs=1e-4)
    assert [h.query for h in results[1]] == ["b", "b", "b"]
    # squared L2 distances, as documented
    other = searcher.vectors_for_ids([results[0][1].id])[0]
    assert results[0][1].distance == pytest.approx(float(((vectors[0] - other) ** 2).sum()), rel=1e-4)
    one = searcher.search_vectors(vectors[0], k=3)  # a single 1-D vector is one query
    assert [h.id for h in one[0]] == [h.id for h in results[0]]


def test_k_larger_than_the_collection_returns_everything_once(searcher):
    (hits,) = searcher.search_ids(["0010"], k=1000)
    assert len(hits) == 399 and len({h.id for h in hits}) == 399


@pytest.mark.parametrize("shape, got", [((2, 9), 9), ((2, 11), 11), ((9,), 9)])
def test_wrong_dimension_is_a_dimension_mismatch(searcher, shape, got):
    with pytest.raises(DimensionMismatch, match=f"dimension {got}, the index has dimension 10"):
        searcher.search_vectors(np.zeros(shape, np.float32))


def test_a_stack_of_matrices_is_not_a_query(searcher):
    with pytest.raises(DimensionMismatch):
        searcher.search_vectors(np.zeros((1, 2, 10), np.float32))


def test_unknown_id_is_a_missing_artifact(searcher):
    with pytest.raises(MissingArtifact, match="not-an-id"):
        searcher.search_ids(["0000", "not-an-id"])


def test_missing_index_is_a_missing_artifact(tmp_path):
    with pytest.raises(MissingArtifact, match="aepipe index"):
        Searcher(tmp_path)


def _digit_png(path, digits_x, i):
    from PIL import Image

    Image.fromarray((digits_x[i, 0] * 255).round().astype(np.uint8)).save(path)
    return path


def test_search_images_finds_the_digit_it_was_made_from(searcher, digits_x, tmp_path):
    paths = [_digit_png(tmp_path / f"q{i}.png", digits_x, i) for i in (3, 250)]
    results = searcher.search_images(paths, k=5)
    assert [hits[0].id for hits in results] == ["0003", "0250"]
    assert results[0][0].query == str(paths[0])
    assert results[0][0].distance < results[0][1].distance


def test_search_images_rejects_a_non_image(searcher, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not a png")
    with pytest.raises(AepipeError, match="cannot use .*bad.png"):
        searcher.search_images([bad])
    with pytest.raises(AepipeError, match="cannot read"):
        searcher.search_images([tmp_path / "missing.png"])


def test_model_with_a_different_id_is_an_index_mismatch(trained_run, tmp_path, digits_x):
    cfg = build_config(overrides=[f"run_dir={tmp_path}", "model.n_layers=2", "model.nodes_per_layer=[64, 32]"])
    torch.manual_seed(123)
    prep = ImagePreprocessor(8, 8, 1)
    other = ModelFiles(tmp_path / "other-model")
    other_id = save_model(other, build_autoencoder(cfg.model, prep.shape), cfg, prep)
    assert other_id != trained_run.model_id
    s = Searcher(trained_run.run_dir, model_dir=other.root)
    with pytest.raises(IndexMismatch, match=other_id):
        s.search_images([_digit_png(tmp_path / "q.png", digits_x, 0)])
    # the run's own model dir still works
    assert (
        Searcher(trained_run.run_dir, model_dir=RunLayout.at(trained_run.run_dir).model.root).model.model_id
        == trained_run.model_id
    )


def test_store_from_another_model_is_an_index_mismatch(run_copy, tmp_path):
    """Index built from model A; the store is then re-encoded by a retrained model B."""
    from aepipe.codes.encode import encode_corpus
    from aepipe.model.train import train_model

    cfg = run_copy.config("training.max_epochs=1", "corpus.limit=50")
    index_backup = tmp_path / "index-backup"
    shutil.copytree(RunLayout.at(run_copy.run_dir).index.root, index_backup)
    new_id = train_model(cfg).model_id
    encode_corpus(cfg)
    # #11: a Searcher reads the published generation, which the re-encode does not touch
    assert Searcher(run_copy.run_dir).search_ids(["0000"], k=3)[0]
    # the working artifacts (what a run without generations reads) are the mismatch
    shutil.rmtree(RunLayout.at(run_copy.run_dir).generations)
    s = Searcher(run_copy.run_dir)
    with pytest.raises(IndexMismatch, match=new_id):
        s.search_ids(["0000"])
    assert load_model(RunLayout.at(run_copy.run_dir).model.root).model_id == new_id


def test_hits_table_has_one_row_per_hit(searcher):
    table = hits_table(searcher.search_ids(["0001", "0002"], k=4))
    assert table.num_rows == 8
    assert table.column_names == ["query", "rank", "id", "distance", "label", "source", "snippet"]
    assert table.column("query").to_pylist() == ["0001"] * 4 + ["0002"] * 4


def test_search_arrays_agree_with_hits(trained_run):
    searcher = Searcher(trained_run.run_dir)
    vectors = searcher.vectors_for_ids(searcher.ids[:5])
    arrays = searcher.search_arrays(vectors, k=4)
    hits = searcher.search_vectors(vectors, k=4)
    assert arrays.ids.shape == arrays.distances.shape == arrays.rows.shape == (5, 4)
    assert arrays.ids.tolist() == [[h.id for h in row] for row in hits]
    np.testing.assert_allclose(arrays.distances, [[h.distance for h in row] for row in hits], rtol=1e-6)
    assert arrays.ids[:, 0].tolist() == searcher.ids[:5]  # each stored vector finds itself first
    assert [searcher.ids[r] for r in arrays.rows[:, 1]] == arrays.ids[:, 1].tolist()


def test_search_arrays_pad_when_fewer_than_k(trained_run):
    searcher = Searcher(trained_run.run_dir)
    n = searcher.index.ntotal
    arrays = searcher.search_arrays(np.zeros((2, searcher.dim), np.float32), k=n + 3)
    assert arrays.ids.shape == (2, n)  # never more columns than stored items
    assert all(i is not None for i in arrays.ids.ravel())
    with pytest.raises(DimensionMismatch):
        searcher.search_arrays(np.zeros((1, searcher.dim + 1), np.float32))


def test_rows_of_maps_positions_and_padding(trained_run):
    searcher = Searcher(trained_run.run_dir)
    assert searcher.rows_of(np.array([0, 3, -1, 10**9])).tolist() == [0, 3, -1, -1]
    assert searcher.id_of(3) == searcher.ids[3] and searcher.id_of(-1) is None
