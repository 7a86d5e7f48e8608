"""cluster.method=scan: classifier heads trained to put each code and its nearest codes in one
cluster (SCAN's clustering step). Where clusters are not round (k-means' assumption) but their
neighbours agree, it finds them; on a run it assigns every item through the saved head."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from aepipe.cluster.kmeans import cluster_codes
from aepipe.cluster.scan import ClusterHead, cut_pairs, mine_neighbours, refine_pairs, scan_loss, train_head
from aepipe.codes.store import open_store
from aepipe.config import ClusterConfig
from aepipe.layout import RunLayout
from aepipe.model.saved import load_model
from aepipe.quality.metrics import cluster_scores


def _bands(n: int = 900) -> tuple[np.ndarray, np.ndarray]:
    """Three Gaussian blobs sheared into long slanted ellipses (scikit-learn's example of where
    k-means fails): k-means' round clusters cut across them; their neighbours lie within one."""
    from sklearn.datasets import make_blobs

    x, y = make_blobs(n_samples=n, random_state=170)
    return (x @ np.array([[0.6, -0.6], [-0.4, 0.8]])).astype(np.float32), y


def test_mine_neighbours_is_exact_and_never_the_item_itself():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 5)).astype(np.float32)
    x[7] = x[3]  # a duplicate: its twin is its nearest, never itself
    nearest = mine_neighbours(x, 4)
    assert nearest.shape == (200, 4)
    assert not (nearest == np.arange(200)[:, None]).any()
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    brute = np.argsort(d, 1)[:, :4]
    assert (
        np.sort(d[np.arange(200)[:, None], nearest], 1) <= np.sort(d[np.arange(200)[:, None], brute], 1) + 1e-4
    ).all()
    assert nearest[7, 0] == 3 and nearest[3, 0] == 7


def test_loss_rewards_agreeing_neighbours_and_balanced_clusters():
    agree = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (heads, B, k): two items in two clusters
    same = scan_loss(agree, agree, 1.0)
    swapped = scan_loss(agree, agree.flip(-1), 1.0)  # each neighbour in the other cluster
    assert same.item() < swapped.item()
    lumped = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # agreeing, but one cluster for everything
    assert same.item() < scan_loss(lumped, lumped, 1.0).item()


def test_scan_finds_elongated_clusters_that_kmeans_cuts_across():
    import faiss

    x, y = _bands()
    km = faiss.Kmeans(2, 3, niter=50, nredo=3, seed=0)
    km.train(x)
    kmeans = cluster_scores(y, km.index.search(x, 1)[1][:, 0])
    torch.set_num_threads(1)
    head, info = train_head(x, 3, ClusterConfig(scan_neighbours=10, scan_steps=400, scan_heads=4), "l2")
    scan = cluster_scores(y, head.assign(x))
    # measured: k-means ACC 0.814, scan 0.987
    assert kmeans["acc"] < 0.85 and scan["acc"] > 0.95, (kmeans, scan)
    assert info["head"] == int(np.argmin(info["head_losses"])) and len(info["head_losses"]) == 4
    assert info["neighbour_agreement"] > 0.95
    # new points near each blob's centre go to that blob's cluster
    centres = np.stack([x[y == c].mean(0) for c in range(3)])
    majority = [np.bincount(head.assign(x[y == c])).argmax() for c in range(3)]
    assert head.assign(centres + 0.05).tolist() == majority


def test_refinement_replaces_a_cut_through_two_blobs_by_the_gap_between_them():
    """Blobs A and B side by side (a gap between them along x) and C far away. A cut of A u B
    along y (through both blobs, as some random starts cut MNIST's 4s and 9s by slant) severs
    more neighbour pairs than the gap does: re-splitting the pair finds the gap."""
    rng = np.random.default_rng(0)
    centres = np.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 12.0]])
    x = np.concatenate([c + rng.normal(0, [0.6, 1.5], (300, 2)) for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(3), 300)
    by_style = np.where(y == 2, 2, (x[:, 1] > 0).astype(int))  # A u B cut along y
    nearest = mine_neighbours(x, 10)
    z = torch.from_numpy((x - x.mean(0)) / x.std(0))
    cc = ClusterConfig(scan_neighbours=10, scan_steps=400, scan_heads=4, scan_refine_pairs=3)
    torch.manual_seed(0)
    refined, rows = refine_pairs(z, nearest, by_style, 3, cc, torch.Generator().manual_seed(0))
    assert cluster_scores(y, by_style)["acc"] < 0.8
    assert cluster_scores(y, refined)["acc"] > 0.97, rows
    first = rows[0]
    assert sorted(first["clusters"]) == [0, 1] and first["kept"] and first["severed_after"] < first["severed_before"]
    assert (refined[y == 2] == 2).all()  # C untouched
    # a split is only kept when it severs fewer pairs: the right clusters stay as they are
    again, rows = refine_pairs(z, nearest, refined, 3, cc, torch.Generator().manual_seed(1))
    assert (again == refined).all() and not any(r["kept"] for r in rows)
    counts = cut_pairs(refined, nearest, 3)
    assert (counts == counts.T).all() and (np.diag(counts) == 0).all()


def test_head_round_trips_through_safetensors(tmp_path):
    x, _ = _bands(180)
    head, _ = train_head(x, 3, ClusterConfig(scan_neighbours=5, scan_steps=50, scan_heads=2), "cosine")
    head.save(tmp_path / "head.safetensors")
    back = ClusterHead.load(tmp_path / "head.safetensors")
    assert back.metric == "cosine" and back.n_clusters == 3
    np.testing.assert_allclose(back.probabilities(x), head.probabilities(x), atol=1e-6)


@pytest.fixture
def scanned(run_copy):
    cfg = run_copy.config("cluster.method=scan", "cluster.scan_steps=300", "cluster.scan_heads=4")
    return cfg, cluster_codes(cfg)


def test_scan_stage_assigns_every_item_through_the_saved_head(scanned):
    cfg, result = scanned
    layout = RunLayout.at(cfg.run_dir)
    store = open_store(layout.store)
    ids, codes = store.read_codes()
    table = pq.read_table(layout.clusters.assignments)
    assert table.column("id").to_pylist() == ids
    head = ClusterHead.load(layout.clusters.head)
    assigned = np.asarray(table.column("cluster"))
    assert (assigned == head.assign(codes)).all()
    summary = json.loads(layout.clusters.summary.read_text())
    assert summary["method"] == "scan" and summary["head"] == "head.safetensors"
    assert summary["scan"]["n_train"] == len(ids) and len(summary["scan"]["head_losses"]) == 4
    assert all({"clusters", "severed_before", "kept"} <= set(r) for r in summary["scan"]["refined_pairs"])
    assert sum(summary["sizes"]) == len(ids) and summary["sizes"] == result.sizes
    # distance: to the mean code of the item's cluster, which centroids.npy holds
    means = np.load(layout.clusters.centroids)
    dist = ((codes - means[assigned]) ** 2).sum(1)
    np.testing.assert_allclose(np.asarray(table.column("distance")), dist, rtol=1e-3, atol=1e-4)
    # the encoder and store are untouched (unlike dec)
    assert load_model(layout.model).model_id == store.model_id
    assert result.acc is not None and result.nmi is not None
    # `aepipe eval` scores the head's assignments of the held-out items
    from aepipe.report.evaluate import evaluate_run

    stage = evaluate_run(cfg)["clustering"]["cluster_stage"]
    split = pq.read_table(layout.model.split).to_pydict()
    held = {i for i, s in zip(split["id"], split["split"]) if s == "test"}
    rows = [n for n, i in enumerate(ids) if i in held]
    labels = np.asarray(store.read(["label"]).column("label").to_pylist(), dtype=object)[rows]
    expected = cluster_scores(labels, head.assign(codes[rows]))
    assert stage["method"] == "scan" and stage["n_clusters"] == result.n_clusters
    assert stage["acc"] == pytest.approx(expected["acc"], abs=0.02), (stage, expected)


def test_eval_scores_kmeans_clusters_by_nearest_centroid_and_ignores_another_models(run_copy):
    from aepipe.files import atomic_write_json
    from aepipe.report.evaluate import evaluate_run

    cfg = run_copy.config()
    cluster_codes(cfg)
    layout = RunLayout.at(cfg.run_dir)
    stage = evaluate_run(cfg)["clustering"]["cluster_stage"]
    ids, codes = open_store(layout.store).read_codes()
    split = pq.read_table(layout.model.split).to_pydict()
    held = {i for i, s in zip(split["id"], split["split"]) if s == "test"}
    rows = [n for n, i in enumerate(ids) if i in held]
    means = np.load(layout.clusters.centroids)
    nearest = ((codes[rows][:, None] - means[None]) ** 2).sum(-1).argmin(1)
    labels = np.asarray(open_store(layout.store).read(["label"]).column("label").to_pylist(), dtype=object)[rows]
    assert stage["method"] == "kmeans"
    assert stage["acc"] == pytest.approx(cluster_scores(labels, nearest)["acc"], abs=0.02)
    # clusters of another model (e.g. before a retrain) are not scored as this model's
    summary = json.loads(layout.clusters.summary.read_text())
    atomic_write_json(layout.clusters.summary, {**summary, "model_id": "another"})
    assert "cluster_stage" not in evaluate_run(cfg)["clustering"]
