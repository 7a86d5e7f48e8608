"""aepipe update: incremental runs on a folder of digit PNGs (size + mtime fingerprints) and a
NumPy array (content hashes): add, change, delete, no-op, interruption (SIGKILL), index types,
drift on out-of-distribution items."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from aepipe.codes.encode import encode_corpus
from aepipe.codes.store import open_store
from aepipe.config import build_config
from aepipe.files import read_json
from aepipe.generations import publish_generation
from aepipe.index.build import build_index
from aepipe.index.search import Searcher
from aepipe.layout import RunLayout
from aepipe.model.train import train_model
from aepipe.update import update_run
from aepipe.verify import verify_run
from tests.conftest import png_bytes

MODEL = [
    "model.n_layers=1",
    "model.nodes_per_layer=[32]",
    "model.code_size=6",
    "training.max_epochs=10",
    "training.batch_size=32",
    "training.lr=0.01",
    "encode.rows_per_part=40",
    "index.n_eval_queries=50",
]


def _digit_png(x: np.ndarray) -> bytes:
    return png_bytes(np.round(x * 255))  # (8, 8) in [0, 1] -> grayscale PNG


def _write_digits(root: Path, images: np.ndarray, labels: np.ndarray, numbers) -> None:
    for i in numbers:
        path = root / f"d{labels[i]}" / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_digit_png(images[i]))


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, digits):
    """120 digit PNGs, a model trained on them, store (3 parts of 40) and Flat index. Copy to mutate."""
    base = tmp_path_factory.mktemp("update")
    _write_digits(base / "corpus", *digits, range(120))
    cfg = build_config(overrides=[*MODEL, f"corpus.source={base / 'corpus'}", f"run_dir={base / 'run'}"])
    train_model(cfg)
    encode_corpus(cfg)
    build_index(cfg)
    return base


@pytest.fixture
def folder_copy(folder_run, tmp_path):
    shutil.copytree(folder_run, tmp_path, dirs_exist_ok=True)
    return tmp_path, lambda *extra: build_config(
        overrides=[*MODEL, f"corpus.source={tmp_path / 'corpus'}", f"run_dir={tmp_path / 'run'}", *extra]
    )


def _corpus_ids(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*.png")}


def _check_consistent(run_dir: Path, expected_ids: set[str]) -> Searcher:
    """Store ids == corpus ids, the index holds exactly the store's rows, search answers."""
    store = open_store(RunLayout.at(run_dir).store)
    ids = store.read(["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) and set(ids) == expected_ids
    searcher = Searcher(run_dir)
    assert searcher.index.ntotal == store.n_items == len(searcher.ids)
    assert set(searcher.ids) == expected_ids
    probe = sorted(expected_ids)[-1]
    assert searcher.search_ids([probe], k=3)[0][0].id != probe
    return searcher


def _tree_digest(*dirs: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for d in dirs
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }


def test_update_adds_changes_and_removes_items(folder_copy, digits):
    root, cfg = folder_copy
    corpus, run = root / "corpus", root / "run"
    untouched_part = RunLayout.at(run).store / "part-00002.parquet"  # the last 40 files in path order (d7..d9)
    inode = untouched_part.stat().st_ino
    _write_digits(corpus, *digits, range(300, 310))  # 10 new
    changed = corpus / "d0" / "0000.png"
    changed.write_bytes(_digit_png(digits[0][500]))  # new content for an existing id
    os.utime(changed, ns=(1_000_000_000, 1_000_000_000))
    removed = sorted((corpus / "d0").glob("*.png"))[1:4]  # three more of part 0 (files in path order, 40 a part)
    for p in removed:
        p.unlink()

    result = update_run(cfg())

    assert (result.n_added, result.n_changed, result.n_removed) == (10, 1, 3)
    assert result.n_unchanged == 120 - 1 - 3 and result.index_update == "incremental"
    assert result.parts_rewritten == ["part-00000.parquet"]  # only the part of the changed and removed ones
    assert untouched_part.stat().st_ino == inode  # carried over by hard link, not rewritten
    searcher = _check_consistent(run, _corpus_ids(corpus))
    assert result.n_items == result.index_ntotal == 127
    hit = searcher.search_images([changed], k=1)[0][0]  # the stored code is that of the new content
    assert hit.id == "d0/0000.png" and hit.distance < 1e-6
    assert read_json(RunLayout.at(run).index.infos)["n_added_since_build"] == 11


def test_update_without_new_data_changes_nothing(folder_copy, digits):
    root, cfg = folder_copy
    layout = RunLayout.at(root / "run")
    first = update_run(cfg())  # right after encode + index: the store already reflects the corpus
    assert (first.n_added, first.n_changed, first.n_removed, first.index_update) == (0, 0, 0, "none")
    _write_digits(root / "corpus", *digits, range(300, 305))
    assert update_run(cfg()).n_added == 5
    before = _tree_digest(layout.store, layout.index.root)
    again = update_run(cfg())
    assert (again.n_added, again.n_changed, again.n_removed, again.index_update) == (0, 0, 0, "none")
    assert _tree_digest(layout.store, layout.index.root) == before  # same bytes, same mtimes
    assert again.n_items == again.index_ntotal == 125


@pytest.mark.parametrize("new_items", [5, 0])
def test_update_after_encoding_another_corpus_rebuilds_the_index(folder_copy, digits, new_items):
    """`aepipe encode` of a different corpus (no `aepipe index`) left the index with the previous
    store's items; update added only the new ones in place and published an index that missed the
    rest (found trying it on a folder of my own: 9,009 stored items, 1,806 indexed). Now it rebuilds."""
    root, cfg = folder_copy
    corpus, run = root / "corpus", root / "run"
    for p in sorted(corpus.rglob("*.png"))[::2]:  # half the corpus goes
        p.unlink()
    encode_corpus(cfg())  # the store now holds 60 items; the index still 120
    _write_digits(corpus, *digits, range(300, 300 + new_items))

    result = update_run(cfg())

    assert result.index_update == "rebuilt"
    assert result.n_items == result.index_ntotal == 60 + new_items
    _check_consistent(run, _corpus_ids(corpus))
    assert verify_run(run).problems == []
    assert update_run(cfg()).index_update == "none"  # and the next one has nothing to do


CRASH = """
import os, signal, sys
import aepipe.update as u
from aepipe.config import build_config

where, overrides = sys.argv[1], sys.argv[2:]
die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
if where == "before-commit":  # new store version encoded in staging, index not yet updated
    u.update_index = die
elif where == "before-publish":  # both swaps done and the staging gone, nothing published yet
    u.publish_generation = die
else:  # between the two swaps: the new store is live, the old index still in place
    real, done = u.replace_dir, []
    def replace_then_die(src, dst):
        real(src, dst)
        done.append(dst)
        die()
    u.replace_dir = replace_then_die
u.update_run(build_config(overrides=overrides))
"""


@pytest.mark.slow  # kill -9 of a real update subprocess
@pytest.mark.parametrize("where", ["before-commit", "between-swaps", "before-publish"])
def test_update_killed_half_way_is_completed_by_the_next_run(folder_copy, digits, where):
    root, cfg = folder_copy
    corpus, run = root / "corpus", root / "run"
    old_ids = _corpus_ids(corpus)
    _write_digits(corpus, *digits, range(300, 345))  # 45 new: two new parts
    (corpus / "d1" / "0001.png").unlink()
    c = cfg()
    published = publish_generation(RunLayout.at(run), keep=3, grace_s=600)  # readers see this one
    assert published is not None
    overrides = [*MODEL, f"corpus.source={c.corpus.source}", f"run_dir={c.run_dir}"]
    proc = subprocess.run(
        [sys.executable, "-c", CRASH, where, *overrides],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    staging = RunLayout.at(run).staging("update")
    if where == "before-commit":
        assert not (staging / "COMMIT").exists()
        _check_consistent(run, old_ids)  # the live store and index are the old ones, untouched
    elif where == "between-swaps":
        assert (staging / "COMMIT").is_file()
    else:  # found by the torture suite in CI: the rerun saw nothing new and published nothing
        assert not staging.exists()

    result = update_run(c)

    assert not staging.exists()
    _check_consistent(run, _corpus_ids(corpus))
    # what was rolled forward is published too (found by the torture suite: it stayed unpublished,
    # readers kept the old items and verify saw working files unlike the generation's)
    assert RunLayout.at(run).current_generation_name() != published
    assert verify_run(run).problems == []
    if where == "before-commit":  # redone from the start
        assert (result.n_added, result.n_removed) == (45, 1)
    else:  # rolled forward; then nothing is left to do
        assert (result.n_added, result.n_removed, result.index_update) == (0, 0, "none")


@pytest.mark.parametrize("factory,how", [("IVF2,Flat", "incremental"), ("HNSW16", "rebuilt")])
def test_update_index_types(folder_copy, digits, factory, how):
    root, cfg = folder_copy
    build_index(cfg(f"index.factory={factory}"))
    _write_digits(root / "corpus", *digits, range(300, 310))
    for p in list((root / "corpus").rglob("001*.png")):
        p.unlink()
    result = update_run(cfg(f"index.factory={factory}"))
    assert result.index_update == how
    infos = read_json(RunLayout.at(root / "run").index.infos)
    assert infos["labels"] == ("explicit" if how == "incremental" else "positions")
    searcher = _check_consistent(root / "run", _corpus_ids(root / "corpus"))
    new = f"d{digits[1][300]}/0300.png"
    assert searcher.search_vectors(searcher.vectors_for_ids([new]), k=1)[0][0].id == new
    probe = searcher.vectors_for_ids(searcher.ids[::50])  # the array path maps explicit labels the same way
    assert searcher.search_arrays(probe, k=5).ids.tolist() == [
        [h.id for h in r] for r in searcher.search_vectors(probe, k=5)
    ]
    assert searcher.id_of(-1) is None
    if how == "incremental":
        assert pq.read_table(RunLayout.at(root / "run").index.ids).column_names == ["id", "label"]


# Drift: a model of 300 digits (held-out: 60), then 60 new digits, plain or inverted. The digits in a
# seeded random order, so that "plain" new items come from the training items' population: in file
# order, x[1000:1060] were 33 % above the 95th percentile of the held-out x[:300] for the
# PCA-started default (the file is not in random order, and that model is good enough to tell).
def _mixed(digits) -> np.ndarray:
    x = (digits[0] * 255).astype(np.uint8)
    return x[np.random.default_rng(0).permutation(len(x))]


@pytest.fixture(scope="module")
def array_run(tmp_path_factory, digits):
    base = tmp_path_factory.mktemp("drift")
    np.save(base / "x.npy", _mixed(digits)[:300])
    cfg = build_config(
        overrides=[
            *MODEL,
            "training.val_fraction=0.1",
            "training.test_fraction=0.1",
            f"corpus.source={base / 'x.npy'}",
            f"run_dir={base / 'run'}",
        ]
    )
    train_model(cfg)
    encode_corpus(cfg)
    build_index(cfg)
    return base


@pytest.mark.parametrize("new_items", ["digits", "inverted"])
def test_drift_on_out_of_distribution_items_only(array_run, digits, tmp_path, new_items):
    shutil.copytree(array_run, tmp_path, dirs_exist_ok=True)
    x = _mixed(digits)
    new = x[1000:1060] if new_items == "digits" else 255 - x[1000:1060]
    changed = x[:300].copy()
    changed[3] = x[1500]  # same id (position), new content: found by its hash
    np.save(tmp_path / "x.npy", np.concatenate([changed, new]))
    cfg = build_config(overrides=[*MODEL, f"corpus.source={tmp_path / 'x.npy'}", f"run_dir={tmp_path / 'run'}"])

    result = update_run(cfg)

    assert (result.n_added, result.n_changed, result.n_removed) == (60, 1, 0)
    drift = result.drift
    assert drift["reference"] == "held-out" and drift["n_reference"] >= 55 and drift["n_new"] == 61
    if new_items == "digits":
        assert not drift["drifted"] and drift["share_above"] < 0.25 and drift["action"] == "none"
    else:
        assert drift["drifted"] and drift["share_above"] > 0.9 and drift["ks_statistic"] > 0.8
        assert drift["action"] == "recommend" and not result.retrained
    assert result.n_items == result.index_ntotal == 360


def test_drift_action_retrain_retrains_reencodes_and_reindexes(array_run, digits, tmp_path):
    shutil.copytree(array_run, tmp_path, dirs_exist_ok=True)
    x = _mixed(digits)
    np.save(tmp_path / "x.npy", np.concatenate([x[:300], 255 - x[1000:1060]]))
    run = tmp_path / "run"
    old_model = read_json(RunLayout.at(run).model.info)["model_id"]
    cfg = build_config(
        overrides=[*MODEL, f"corpus.source={tmp_path / 'x.npy'}", f"run_dir={run}", "drift.action=retrain"]
    )

    result = update_run(cfg)

    assert result.drift["drifted"] and result.retrained and result.model_id != old_model
    searcher = Searcher(run)
    assert searcher.model_id == result.model_id == open_store(RunLayout.at(run).store).model_id
    assert searcher.index.ntotal == 360
    assert update_run(cfg).index_update == "none"  # the re-encoded store recorded the fingerprints
