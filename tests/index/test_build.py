"""The FAISS index stage: the index type, the recall it records (checked against an
exact search computed here), the id mapping, metrics and errors."""

from __future__ import annotations

import hashlib
import json

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest

from aepipe.codes.store import open_store
from aepipe.config import IndexConfig
from aepipe.errors import ConfigError, MissingArtifact
from aepipe.index.build import build_index
from aepipe.index.choose import choose_factory, estimate_bytes, ivf_nlist, wants_on_disk
from aepipe.index.faissio import set_search_params
from aepipe.index.tune import recall_at_k
from aepipe.layout import RunLayout


def _exact_recall(layout: RunLayout, metric: str, k: int = 10) -> float:
    """recall@k of the saved index (at its saved search parameters) for every stored
    vector as a query, against exact brute-force search with faiss.IndexFlat; each
    query's own entry is left out of both (it would be a free hit)."""
    infos = json.loads(layout.index.infos.read_text())
    index = faiss.read_index(str(layout.index.index))
    set_search_params(index, infos["params"])
    _, codes = open_store(layout.store).read_codes()
    x = np.ascontiguousarray(codes, dtype=np.float32)
    if metric == "cosine":
        faiss.normalize_L2(x)
    flat = faiss.IndexFlatIP(x.shape[1]) if metric == "cosine" else faiss.IndexFlatL2(x.shape[1])
    flat.add(x)
    _, truth = flat.search(x, k + 1)
    _, found = index.search(x, k + 1)
    own = np.arange(len(x))
    return float(
        np.mean([len(set(_others(f, q, k)) & set(_others(t, q, k))) for f, t, q in zip(found, truth, own)]) / k
    )


def _others(row: np.ndarray, own: int, k: int) -> list[int]:
    rest = [int(i) for i in row if i != own]
    return rest[:k]


def test_small_store_gets_an_exact_flat_index(trained_run):
    layout = RunLayout.at(trained_run.run_dir)
    infos = json.loads(layout.index.infos.read_text())
    assert infos["index_string"] == "Flat" and infos["index_class"] == "IndexFlat"
    assert infos["n_items"] == 400 and infos["dim"] == 10 and infos["metric"] == "l2"
    assert infos["model_id"] == trained_run.model_id
    assert infos["recall_at_10"] == 1.0 and infos["recall_target_met"] is True
    assert infos["n_eval_queries"] == 400
    assert faiss.read_index(str(layout.index.index)).ntotal == 400


def test_ids_parquet_maps_index_positions_to_store_ids(trained_run):
    layout = RunLayout.at(trained_run.run_dir)
    ids = pq.read_table(layout.index.ids).column("id").to_pylist()
    store_ids, codes = open_store(layout.store).read_codes()
    assert ids == store_ids
    index = faiss.read_index(str(layout.index.index))
    _, found = index.search(np.ascontiguousarray(codes[[17, 321]]), 1)
    assert [ids[i] for i in found[:, 0]] == [store_ids[17], store_ids[321]]


@pytest.mark.parametrize(
    "factory, index_class, param",
    [
        ("IVF16,Flat", "IndexIVFFlat", "nprobe"),
        ("HNSW16", "IndexHNSWFlat", "efSearch"),
    ],
)
def test_forced_factory_records_true_recall(run_copy, factory, index_class, param):
    result = build_index(run_copy.config(f"index.factory={factory}"))
    layout = RunLayout.at(run_copy.run_dir)
    infos = json.loads(layout.index.infos.read_text())
    assert infos["index_string"] == factory and infos["index_class"] == index_class
    assert result.index_string == factory and result.n_items == 400
    assert set(infos["params"]) == {param}
    assert infos["recall_at_10"] >= 0.95 and infos["recall_target_met"]
    assert infos["recall_at_10"] == pytest.approx(_exact_recall(layout, "l2"), abs=1e-4)
    assert result.recall_at_10 == infos["recall_at_10"]


def test_ivf_tuning_picks_the_smallest_nprobe_meeting_the_target(run_copy):
    build_index(run_copy.config("index.factory=IVF16,Flat", "index.recall_target=0.5"))
    layout = RunLayout.at(run_copy.run_dir)
    infos = json.loads(layout.index.infos.read_text())
    nprobe = infos["params"]["nprobe"]
    assert infos["recall_at_10"] >= 0.5
    if nprobe > 1:  # the next smaller setting must have missed the target
        index = faiss.read_index(str(layout.index.index))
        set_search_params(index, {"nprobe": nprobe // 2})
        _, codes = open_store(layout.store).read_codes()
        flat = faiss.IndexFlatL2(codes.shape[1])
        flat.add(codes)
        _, truth = flat.search(codes, 10)
        _, found = index.search(codes, 10)
        assert recall_at_k(found, truth) < 0.5


def test_cosine_metric_uses_inner_product_on_normalised_codes(run_copy):
    build_index(run_copy.config("index.metric=cosine"))
    layout = RunLayout.at(run_copy.run_dir)
    infos = json.loads(layout.index.infos.read_text())
    assert infos["metric"] == "cosine" and infos["recall_at_10"] == 1.0
    index = faiss.read_index(str(layout.index.index))
    assert index.metric_type == faiss.METRIC_INNER_PRODUCT
    _, codes = open_store(layout.store).read_codes()
    stored = faiss.rev_swig_ptr(faiss.downcast_index(index).get_xb(), index.ntotal * index.d).reshape(index.ntotal, -1)
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(stored, codes / np.linalg.norm(codes, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    assert _exact_recall(layout, "cosine") == 1.0


def _digest(root):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


def test_invalid_factory_is_a_config_error_and_keeps_the_old_index(run_copy):
    layout = RunLayout.at(run_copy.run_dir)
    before = _digest(layout.index.root)
    with pytest.raises(ConfigError, match="IVF16,Bogus") as exc:
        build_index(run_copy.config("index.factory=IVF16,Bogus"))
    assert "\n" not in str(exc.value)
    assert _digest(layout.index.root) == before


def test_index_without_store_is_a_missing_artifact(tmp_path, trained_run):
    with pytest.raises(MissingArtifact, match="aepipe encode"):
        build_index(trained_run.config(run_dir=tmp_path / "empty"))


def test_choose_factory_by_size_and_memory_budget():
    cfg = IndexConfig()
    assert choose_factory(1_000, 16, cfg) == "Flat"
    assert choose_factory(100_000, 16, cfg) == "HNSW32"
    assert choose_factory(100_000, 16, IndexConfig(flat_max_items=200_000)) == "Flat"
    assert choose_factory(3_000_000, 16, cfg) == f"IVF{ivf_nlist(3_000_000)},Flat"
    # 100 MB in RAM only: IVF-Flat (~790 MB), IVF-SQ8 (~216 MB) and PQ32 do not fit; OPQ + PQ16 is the finest
    # code that does
    in_ram = IndexConfig(memory_budget_mb=100, on_disk="never")
    pq_choice = choose_factory(3_000_000, 64, in_ram)
    assert pq_choice == f"OPQ16,IVF{ivf_nlist(3_000_000)},PQ16" and not wants_on_disk(pq_choice, 3_000_000, 64, in_ram)
    assert choose_factory(3_000_000, 64, IndexConfig(memory_budget_mb=300)) == f"IVF{ivf_nlist(3_000_000)},SQ8"
    assert estimate_bytes(pq_choice, 3_000_000, 64) <= 100 * 2**20
    with pytest.raises(ConfigError, match="memory_budget_mb"):
        choose_factory(10_000_000, 64, IndexConfig(memory_budget_mb=1, on_disk="never"))
    # the default (on_disk=auto) keeps exact IVF-Flat codes, on disk, rather than lossy PQ codes in RAM
    auto = IndexConfig(memory_budget_mb=100)
    on_disk_choice = choose_factory(3_000_000, 64, auto)
    assert on_disk_choice == f"IVF{ivf_nlist(3_000_000)},Flat" and wants_on_disk(on_disk_choice, 3_000_000, 64, auto)
    assert not wants_on_disk(f"IVF{ivf_nlist(3_000_000)},Flat", 3_000_000, 64, IndexConfig())  # fits the default 2 GB
    assert wants_on_disk("IVF64,Flat", 1_000, 8, IndexConfig(on_disk="always"))
    with pytest.raises(ConfigError, match="needs an IVF index"):
        wants_on_disk("HNSW32", 1_000, 8, IndexConfig(on_disk="always"))


def test_ivf_nlist_is_a_power_of_two_with_enough_points_per_list():
    for n in (100, 1_000, 50_000, 10_000_000):
        nlist = ivf_nlist(n)
        assert nlist & (nlist - 1) == 0 or nlist == n // 39
        assert n // nlist >= 39 or nlist == 1


def test_recall_at_k():
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    assert recall_at_k(truth, truth, 3) == 1.0
    assert recall_at_k(np.array([[3, 2, 9], [7, 8, 9]]), truth, 3) == pytest.approx(2 / 6)


def test_training_sample_has_39_to_256_points_per_list():
    from aepipe.index.choose import training_size

    many_lists = faiss.index_factory(8, "IVF65536,Flat")
    assert training_size(many_lists, 10**8) == 39 * 65536  # more than the 1M cap: faiss's minimum wins
    few_lists = faiss.index_factory(8, "IVF1024,Flat")
    assert training_size(few_lists, 10**8) == 256 * 1024
    assert training_size(few_lists, 50_000) == 50_000
    assert training_size(faiss.index_factory(16, "OPQ4,IVF16,PQ4"), 10**6) == 256 * 64  # PQ codebooks


def test_sidecar_records_the_tuning_curve_and_the_candidates_weighed(run_copy):
    build_index(run_copy.config("index.factory=IVF16,Flat", "index.recall_target=0.99"))
    infos = json.loads(RunLayout.at(run_copy.run_dir).index.infos.read_text())
    curve = infos["tuning"]
    probes = [c["params"]["nprobe"] for c in curve]
    assert probes == sorted(probes) and curve[-1]["params"] == infos["params"]
    assert curve[-1]["recall_at_10"] == infos["recall_at_10"]
    assert all(c["recall_at_10"] < 0.99 for c in curve[:-1])  # stopped at the first setting meeting the target
    assert infos["candidates"] == []  # forced factory: nothing weighed
    build_index(run_copy.config())
    infos = json.loads(RunLayout.at(run_copy.run_dir).index.infos.read_text())
    assert infos["candidates"][0] == {"index_string": "Flat", "estimated_bytes": 400 * 10 * 4, "fits": True}
    assert any(c["index_string"].startswith("OPQ") for c in infos["candidates"])


def test_on_disk_index_is_built_in_shards_and_searches_like_the_in_ram_one(run_copy, tmp_path, capfd):
    import shutil

    from aepipe.index.search import Searcher
    from aepipe.update import update_run

    layout = RunLayout.at(run_copy.run_dir)
    build_index(run_copy.config("index.factory=IVF4,Flat", "index.on_disk=never"))
    in_ram = Searcher(run_copy.run_dir)
    probe = in_ram.vectors_for_ids(in_ram.ids[::40])
    expected = in_ram.search_arrays(probe, k=5)

    # 400 vectors in partial indexes of 150: three shards merged into one memory-mapped index.ivfdata
    cfg = run_copy.config(
        "index.factory=IVF4,Flat", "index.on_disk=always", "index.on_disk_shard_items=150", "index.add_batch_size=50"
    )
    result = build_index(cfg)
    infos = json.loads(layout.index.infos.read_text())
    assert infos["on_disk"] is True and result.n_items == 400 == infos["n_items"]
    assert sorted(p.name for p in layout.index.root.iterdir()) == [
        "ids.parquet",
        "index.faiss",
        "index.ivfdata",
        "index_infos.json",
    ]
    assert layout.index.ivfdata.stat().st_size >= 400 * 10 * 4  # the vectors live in the .ivfdata file
    assert layout.index.index.stat().st_size < layout.index.ivfdata.stat().st_size

    # the run directory moves (copy, then the original is deleted): the lists are found next to index.faiss
    moved = tmp_path / "moved-run"
    shutil.copytree(run_copy.run_dir, moved)
    shutil.rmtree(run_copy.run_dir)
    capfd.readouterr()
    searcher = Searcher(moved)
    got = searcher.search_arrays(probe, k=5)
    assert capfd.readouterr().out == ""  # faiss's C-level message stays off stdout (it may carry JSON)
    assert searcher.infos["params"] == in_ram.infos["params"]
    assert got.ids.tolist() == expected.ids.tolist()  # same training sample, same lists: the same results
    np.testing.assert_allclose(got.distances, expected.distances, rtol=1e-5)

    # an update never writes into the live, memory-mapped lists: it rebuilds (a searcher opened
    # before the update keeps answering from the old, untouched file)
    update = update_run(
        run_copy.config("index.factory=IVF4,Flat", "index.on_disk=always", "corpus.limit=380", run_dir=moved)
    )
    assert (update.n_removed, update.index_update) == (20, "rebuilt")
    assert json.loads((moved / "index" / "index_infos.json").read_text())["on_disk"] is True
    assert Searcher(moved).index.ntotal == 380
    assert searcher.search_arrays(probe, k=5).ids.tolist() == expected.ids.tolist()


def test_recall_leaves_out_exact_copies_of_each_eval_query(tmp_path):
    """Half the vectors have an exact copy in the store. A copy is always found (it sits in the
    query's own IVF list), so counting it would inflate recall; the sidecar's figure leaves it out,
    as for a query that is not in the store."""
    from aepipe.codes.store import PartWriter, store_schema
    from aepipe.config import build_config

    rng = np.random.default_rng(5)
    base = rng.standard_normal((1500, 16)).astype(np.float32)
    codes = np.concatenate([base, base[:1500:2]])  # 750 copies
    run = tmp_path / "run"
    writer = PartWriter(
        run / "store" / "part-00000.parquet", store_schema(16, "float32", {"model_id": "m", "config": {}})
    )
    writer.write(
        [f"v{i}" for i in range(len(codes))],
        codes,
        np.zeros(len(codes), np.float32),
        [None] * len(codes),
        ["s"] * len(codes),
        list(range(len(codes))),
    )
    writer.close()
    cfg = build_config(
        overrides=[f"run_dir={run}", "index.factory=IVF32,Flat", "index.recall_target=0.6", "index.n_eval_queries=300"]
    )
    build_index(cfg)
    infos = json.loads(RunLayout.at(run).index.infos.read_text())
    assert infos["n_eval_queries_with_copies"] > 100  # about half of 300

    # independently: the same seeded eval queries, exact distances in numpy, copies by equality
    n, k = len(codes), 10
    query_pos = np.sort(np.random.default_rng(0).choice(n, 300, replace=False))
    index = faiss.read_index(str(RunLayout.at(run).index.index))
    set_search_params(index, infos["params"])
    _, found = index.search(codes[query_pos], 40)
    new_style, self_only = [], []
    for q, row in zip(query_pos, found):
        d = ((codes - codes[q]) ** 2).sum(1)
        same = set(np.flatnonzero((codes == codes[q]).all(1)).tolist())  # itself and its copy
        order = np.argsort(d, kind="stable")
        truth = [int(i) for i in order if i not in same][:k]
        got = [int(i) for i in row if i >= 0 and i not in same][:k]
        new_style.append(len(set(truth) & set(got)) / k)
        truth_self = [int(i) for i in order if i != q][:k]
        got_self = [int(i) for i in row if i >= 0 and i != q][:k]
        self_only.append(len(set(truth_self) & set(got_self)) / k)
    assert infos["recall_at_10"] == pytest.approx(np.mean(new_style), abs=0.01)
    assert np.mean(self_only) > np.mean(new_style) + 0.02  # what leaving out only the query itself would claim


def test_tuning_on_user_supplied_query_codes(run_copy, tmp_path):
    layout = RunLayout.at(run_copy.run_dir)
    _, codes = open_store(layout.store).read_codes()
    queries = codes[:60] + np.random.default_rng(3).normal(0, 0.05, (60, codes.shape[1])).astype(np.float32)
    np.save(tmp_path / "q.npy", queries)
    build_index(
        run_copy.config(
            "index.factory=IVF8,Flat",
            f"index.eval_queries={tmp_path / 'q.npy'}",
            "index.n_eval_queries=50",
            "index.recall_target=0.9",
        )
    )
    infos = json.loads(layout.index.infos.read_text())
    assert infos["eval_queries"] == str(tmp_path / "q.npy") and infos["n_eval_queries"] == 50
    # independently: these 50 queries, exact neighbours over every stored code (nothing left out)
    index = faiss.read_index(str(layout.index.index))
    set_search_params(index, infos["params"])
    _, found = index.search(np.ascontiguousarray(queries[:50]), 10)
    _, truth = faiss.knn(np.ascontiguousarray(queries[:50]), np.ascontiguousarray(codes), 10)
    assert infos["recall_at_10"] == pytest.approx(recall_at_k(found, truth), abs=1e-4)

    np.save(tmp_path / "bad.npy", queries[:, :3])
    with pytest.raises(ConfigError, match=r"need \(n, 10\)"):
        build_index(run_copy.config(f"index.eval_queries={tmp_path / 'bad.npy'}"))
    assert json.loads(layout.index.infos.read_text())["eval_queries"] == str(tmp_path / "q.npy")  # index kept


def test_normalize_never_touches_the_callers_array():
    from aepipe.index.faissio import normalize

    x = np.array([[3.0, 4.0], [0.0, 2.0]], np.float32)
    x.setflags(write=False)  # e.g. a memory-mapped .npy of eval queries
    y = normalize(x, "cosine")
    np.testing.assert_allclose(y, [[0.6, 0.8], [0.0, 1.0]], rtol=1e-6)
    np.testing.assert_array_equal(x, [[3.0, 4.0], [0.0, 2.0]])
    assert normalize(x, "l2") is x  # already float32 and contiguous: no copy needed for l2


@pytest.mark.parametrize("codes", ["Flat", "SQfp16"])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_ivf_with_an_hnsw_quantizer_puts_every_item_in_its_exact_nearest_list(run_copy, metric, codes):
    """Bulk adds into IVF…_HNSW32 assign by an exact search over the centroids (faster in bulk than
    one HNSW search per item, and exact): each stored vector sits in the list of its nearest
    centroid under the index's metric, and each finds itself."""
    from aepipe.index.faissio import normalize

    build_index(run_copy.config(f"index.factory=IVF16_HNSW32,{codes}", f"index.metric={metric}"))
    layout = RunLayout.at(run_copy.run_dir)
    index = faiss.read_index(str(layout.index.index))
    ivf = faiss.extract_index_ivf(index)
    assert isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSWFlat)
    _, codes = open_store(layout.store).read_codes()
    x = normalize(codes, metric)
    centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    scores = x @ centroids.T if metric == "cosine" else -((x[:, None, :] - centroids[None]) ** 2).sum(-1)
    want = np.bincount(scores.argmax(1), minlength=ivf.nlist)
    got = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)])
    assert got.sum() == len(codes) == index.ntotal
    np.testing.assert_array_equal(got, want)
    set_search_params(index, {"nprobe": ivf.nlist})
    _, found = index.search(x[:50], 1)
    assert (found[:, 0] == np.arange(50)).mean() >= 0.9  # exact duplicates in the store may come first


@pytest.mark.parametrize("codes_kind", ["Flat", "SQfp16"])
def test_on_disk_ivf_with_an_hnsw_quantizer_keeps_store_positions_as_labels(run_copy, codes_kind):
    """The on-disk build fills partial indexes through the same exact assignment, with explicit ids:
    every stored vector comes back under its own store position (half-precision lists too)."""
    build_index(
        run_copy.config(
            f"index.factory=IVF16_HNSW32,{codes_kind}", "index.on_disk=always", "index.on_disk_shard_items=128"
        )
    )
    layout = RunLayout.at(run_copy.run_dir)
    assert layout.index.ivfdata.is_file()
    from aepipe.index.faissio import read_index_file

    index = read_index_file(layout.index, json.loads(layout.index.infos.read_text()))  # lists in index.ivfdata
    _, codes = open_store(layout.store).read_codes()
    assert index.ntotal == len(codes)
    set_search_params(index, {"nprobe": 16})
    distances, found = index.search(np.ascontiguousarray(codes), 1)
    scale = float((codes**2).sum(1).mean())  # fp16 keeps ~3 significant digits of each value
    tolerance = 1e-4 if codes_kind == "Flat" else 1e-5 * scale
    assert np.allclose(distances[:, 0], 0, atol=tolerance)  # each finds itself (or an exact copy), at ~0
    assert (found[:, 0] == np.arange(len(codes))).mean() >= 0.9
