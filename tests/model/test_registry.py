"""Model versions: RUN/models/<id>/ and the `current` pointer, switched only when an index over a
store of the new model is complete; queries use the current version meanwhile; old ones pruned."""

from __future__ import annotations

from aepipe.codes.encode import encode_corpus
from aepipe.files import read_json
from aepipe.index.search import Searcher
from aepipe.layout import RunLayout
from aepipe.model.train import train_model
from aepipe.pipeline import index_stage as build_index


def _digit_query(tmp_path, digits_x):
    from tests.conftest import png_bytes

    path = tmp_path / "q.png"
    path.write_bytes(png_bytes(digits_x[7, 0] * 255))
    return path


def test_current_switches_only_after_store_and_index_of_the_new_model(run_copy, tmp_path, digits_x):
    layout = RunLayout.at(run_copy.run_dir)
    old = run_copy.model_id
    cfg = run_copy.config("training.max_epochs=1", "training.seed=1", "training.keep_versions=2")
    assert read_json(layout.current_model) == {"model_id": old} and layout.model_version(old).weights.is_file()
    query = _digit_query(tmp_path, digits_x)

    new = train_model(cfg).model_id
    assert new != old and read_json(layout.current_model)["model_id"] == old
    assert Searcher(run_copy.run_dir).model.model_id == old  # image queries still match the live index
    assert Searcher(run_copy.run_dir).search_images([query], k=1)[0][0].distance >= 0
    encode_corpus(cfg)
    assert read_json(layout.current_model)["model_id"] == old  # store is new, index not yet
    build_index(cfg)
    assert read_json(layout.current_model)["model_id"] == new
    assert Searcher(run_copy.run_dir).model.model_id == new
    assert Searcher(run_copy.run_dir).search_images([query], k=1)[0][0].distance >= 0

    third = train_model(run_copy.config("training.max_epochs=1", "training.seed=2", "training.keep_versions=2"))
    encode_corpus(cfg)
    build_index(cfg)
    kept = sorted(p.name for p in layout.models.iterdir() if p.is_dir())
    assert kept == sorted([new, third.model_id])  # keep_versions=2: the oldest is pruned
    assert read_json(layout.current_model)["model_id"] == third.model_id


def test_a_run_without_versions_queries_its_model_dir(run_copy):
    import shutil

    layout = RunLayout.at(run_copy.run_dir)
    shutil.rmtree(layout.models)  # as a run directory made before model versions (and generations)
    shutil.rmtree(layout.generations)
    searcher = Searcher(run_copy.run_dir)
    assert searcher.model.model_id == run_copy.model_id and searcher._model_dir == layout.model.root
