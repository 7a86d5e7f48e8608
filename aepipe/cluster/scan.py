"""Clustering by neighbour consistency (SCAN's clustering step: Van Gansbeke et al. 2020), on the
stored codes; unlabelled by design (labels, when the store has them, only score the result).

k-means asks for round clusters of similar spread; autoencoder codes rarely give them, while
their nearest neighbours mostly share a class (precision@10 of 0.96 on MNIST where k-means on the
same codes reaches ACC ~0.7). So each code's ``scan_neighbours`` nearest codes are mined once (exact
faiss search, under the index metric), and small classifier heads (code -> hidden -> k softmax)
learn to give a code and a random one of its neighbours the same cluster, while the entropy of the
mean assignment (weight ``scan_entropy_weight``) keeps every cluster in use:

    loss = -mean log <p(x), p(neighbour of x)>  -  w * H(mean p)

Several heads train at once from different random starts; the one with the lowest loss over the
whole sample (no labels) wins. Its clusters are then refined pair by pair: some random starts cut a
region holding two classes through both rather than between them (measured on MNIST: two
clusters of about half the 4s and half the 9s each), a cut that severs more neighbour pairs than
the class boundary does. So the ``scan_refine_pairs`` pairs of clusters with the most neighbour
pairs between them (per item of the smaller) are re-split, each on its own with fresh two-way
heads, and the new split is kept when it severs fewer neighbour pairs. A last head is fitted to
the refined clusters (cross-entropy) and assigns the items, so one head describes the result.
The encoder is not changed, so the store and the index stay as they are. The head is saved
(``clusters/head.safetensors``) and assigns new codes with ``ClusterHead.assign``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from aepipe.config import ClusterConfig
from aepipe.files import atomic_write_bytes
from aepipe.index.faissio import normalize
from aepipe.logs import timed

log = logging.getLogger(__name__)


def mine_neighbours(x: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` nearest other rows by exact L2 search (rows already normalised under
    cosine, where L2 ranks as cosine does). (n, dim) -> (n, k) int64 positions."""
    k = min(k, len(x) - 1)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    _, nearest = index.search(x, k + 1)
    # drop each row itself; a duplicate code may come first in its place, so drop by identity
    rows = np.arange(len(x))[:, None]
    own = nearest == rows
    keep = ~own
    keep[own.sum(1) == 0, -1] = False  # the row itself was not among k + 1 (duplicates): drop the last
    return nearest[keep].reshape(len(x), k)


class Heads(torch.nn.Module):
    """``n_heads`` independent two-layer classifiers evaluated as one batched product.
    (B, dim) -> (n_heads, B, k) logits."""

    def __init__(self, dim: int, k: int, n_heads: int, hidden: int) -> None:
        super().__init__()
        self.w1 = torch.nn.Parameter(torch.randn(n_heads, dim, hidden) / dim**0.5)
        self.b1 = torch.nn.Parameter(torch.zeros(n_heads, 1, hidden))
        self.w2 = torch.nn.Parameter(torch.randn(n_heads, hidden, k) / hidden**0.5)
        self.b2 = torch.nn.Parameter(torch.zeros(n_heads, 1, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(torch.matmul(x, self.w1) + self.b1) @ self.w2 + self.b2


def scan_loss(p: torch.Tensor, p_neighbour: torch.Tensor, entropy_weight: float) -> torch.Tensor:
    """Per head: -mean log <p, p_neighbour> - entropy_weight x H(mean p).
    p, p_neighbour: (heads, B, k) probabilities -> (heads,)"""
    consistency = -torch.log((p * p_neighbour).sum(-1).clamp_min(1e-8)).mean(-1)
    mean = p.mean(-2)
    entropy = -(mean * torch.log(mean.clamp_min(1e-8))).sum(-1)
    return consistency - entropy_weight * entropy


@dataclass
class ClusterHead:
    """The chosen head with the standardisation it was trained under; assigns codes to clusters."""

    w1: torch.Tensor  # (dim, hidden)
    b1: torch.Tensor  # (hidden,)
    w2: torch.Tensor  # (hidden, k)
    b2: torch.Tensor  # (k,)
    mean: torch.Tensor  # (dim,) of the normalised training codes
    scale: torch.Tensor  # (dim,)
    metric: str

    @property
    def n_clusters(self) -> int:
        return int(self.w2.shape[1])

    def probabilities(self, codes: np.ndarray) -> np.ndarray:
        """(n, dim) stored codes -> (n, k) cluster probabilities."""
        x = torch.from_numpy(np.ascontiguousarray(normalize(np.asarray(codes, np.float32), self.metric)))
        with torch.no_grad():
            h = torch.relu(((x - self.mean) / self.scale) @ self.w1 + self.b1)
            return F.softmax(h @ self.w2 + self.b2, -1).numpy()

    def assign(self, codes: np.ndarray) -> np.ndarray:
        """(n, dim) stored codes -> (n,) int32 cluster of each."""
        return self.probabilities(codes).argmax(1).astype(np.int32)

    def save(self, path: Path) -> None:
        tensors = {name: getattr(self, name).contiguous() for name in ("w1", "b1", "w2", "b2", "mean", "scale")}
        atomic_write_bytes(path, safetensors_bytes(tensors, metadata={"metric": self.metric}))

    @classmethod
    def load(cls, path: Path) -> ClusterHead:
        with safe_open(str(path), "pt") as f:
            metric = (f.metadata() or {}).get("metric", "l2")
            t = {name: f.get_tensor(name) for name in f.keys()}
        return cls(t["w1"], t["b1"], t["w2"], t["b2"], t["mean"], t["scale"], metric)


def train_head(x: np.ndarray, k: int, cc: ClusterConfig, metric: str) -> tuple[ClusterHead, dict]:
    """Mine neighbours in ``x`` (n, dim) stored codes, train ``cc.scan_heads`` heads for
    ``cc.scan_steps`` steps and keep the one with the lowest loss on the whole sample; re-split
    its ``cc.scan_refine_pairs`` most entangled pairs of clusters (``refine_pairs``) and, when that
    changed anything, fit one head to the refined clusters (``distil``). Returns the head and a
    summary (each head's final loss, the chosen one, the re-split pairs, neighbour agreement)."""
    xn = np.ascontiguousarray(normalize(np.asarray(x, np.float32), metric))
    n = len(xn)
    with timed(f"scan: {cc.scan_neighbours} nearest neighbours of {n} codes"):
        nearest = torch.from_numpy(mine_neighbours(xn, cc.scan_neighbours))
    mean = xn.mean(0)
    scale = np.maximum(xn.std(0), 1e-6)  # a constant code dimension stays 0, not NaN
    z = torch.from_numpy((xn - mean) / scale)
    torch.manual_seed(cc.seed)
    gen = torch.Generator().manual_seed(cc.seed)
    with timed(
        f"scan: {cc.scan_heads} heads, {cc.scan_steps} steps of {min(cc.scan_batch_size, n)} codes, {k} clusters"
    ):
        heads = fit_heads(z, nearest, k, cc.scan_steps, cc, gen)
    with torch.no_grad():
        p_all = F.softmax(_logits(heads, z), -1)  # (H, n, k)
        final = torch.stack(
            [scan_loss(p_all, p_all[:, nearest[:, j]], cc.scan_entropy_weight) for j in range(nearest.shape[1])]
        ).mean(0)  # every (item, neighbour) pair
    best = int(final.argmin())
    chosen = p_all[best].argmax(-1).numpy()
    log.info(
        "scan: head %d of %d chosen (loss %.4f; the others %.4f to %.4f)",
        best,
        len(final),
        float(final[best]),
        float(final.min()),
        float(final.max()),
    )
    nn_np = nearest.numpy()
    info: dict = {
        "n_train": n,
        "neighbours": int(nearest.shape[1]),
        "head": best,
        "head_losses": [round(float(v), 5) for v in final],
        "neighbour_agreement_head": _agreement(chosen, nn_np),
    }
    params = [t[best].detach().clone() for t in (heads.w1, heads.b1, heads.w2, heads.b2)]
    if cc.scan_refine_pairs > 0 and k > 2:
        with timed(f"scan: re-split the {cc.scan_refine_pairs} most entangled pairs of clusters"):
            refined, info["refined_pairs"] = refine_pairs(z, nn_np, chosen, k, cc, gen)
        if (refined != chosen).any():
            with timed("scan: fit one head to the refined clusters"):
                params, info["distilled_agreement"] = distil(z, refined, k, cc, gen)
    head = ClusterHead(
        params[0],
        params[1].reshape(-1),
        params[2],
        params[3].reshape(-1),
        torch.from_numpy(mean),
        torch.from_numpy(scale),
        metric,
    )
    info["neighbour_agreement"] = _agreement(head.assign(x), nn_np)
    return head, info


def cut_pairs(assign: np.ndarray, nearest: np.ndarray, k: int) -> np.ndarray:
    """(k, k) symmetric counts of (item, neighbour) pairs that lie in two different clusters."""
    counts = np.zeros((k, k), np.int64)
    np.add.at(counts, (np.repeat(assign, nearest.shape[1]), assign[nearest].ravel()), 1)
    np.fill_diagonal(counts, 0)
    return counts + counts.T


def refine_pairs(
    z: torch.Tensor, nearest: np.ndarray, assign: np.ndarray, k: int, cc: ClusterConfig, gen: torch.Generator
) -> tuple[np.ndarray, list[dict]]:
    """Re-split the ``cc.scan_refine_pairs`` most entangled pairs of clusters (most neighbour pairs
    between them per item of the smaller), one after the other: fresh two-way heads on the pair's
    items and their neighbours among them; the split that severs the fewest neighbour pairs replaces
    the pair's when it severs fewer than it and keeps at least half of the smaller side's share."""
    assign = assign.copy()
    sizes = np.bincount(assign, minlength=k)
    cut = cut_pairs(assign, nearest, k) / np.maximum(np.minimum(sizes[:, None], sizes[None]), 1)
    order = np.dstack(np.unravel_index(np.argsort(-np.triu(cut, 1), axis=None), cut.shape))[0]
    log_rows = []
    for a, b in order[: cc.scan_refine_pairs]:
        members = np.flatnonzero((assign == a) | (assign == b))
        if len(members) < 4:
            continue
        local = np.full(len(assign), -1, np.int64)
        local[members] = np.arange(len(members))
        nb = local[nearest[members]]  # (m, K); -1: neighbour outside the pair
        nb = np.where(nb >= 0, nb, np.arange(len(members))[:, None])  # outside -> itself (agrees trivially)
        side = (assign[members] == b).astype(np.int64)
        before = int((side[nb] != side[:, None]).sum())
        zp = z[torch.from_numpy(members)]
        two_way = fit_heads(zp, torch.from_numpy(nb), 2, max(1, cc.scan_steps // 4), cc, gen)
        splits = _logits(two_way, zp).argmax(-1).numpy()  # (H, m) 0/1
        severed = (splits[:, nb] != splits[:, :, None]).sum((1, 2))
        smaller = np.minimum(splits.sum(1), len(members) - splits.sum(1))
        ok = smaller >= 0.5 * min(side.sum(), len(members) - side.sum())
        row: dict = {"clusters": [int(a), int(b)], "items": len(members), "severed_before": before, "kept": False}
        if ok.any():
            best = int(np.flatnonzero(ok)[np.argmin(severed[ok])])
            row["severed_after"] = int(severed[best])
            if severed[best] < before:
                assign[members] = np.where(splits[best] == 1, b, a)
                row["kept"] = True
        log_rows.append(row)
        log.info("scan: pair %s", row)
    return assign, log_rows


def fit_heads(
    z: torch.Tensor, nearest: torch.Tensor, k: int, steps: int, cc: ClusterConfig, gen: torch.Generator
) -> Heads:
    """``cc.scan_heads`` heads of ``k`` clusters trained by ``scan_loss`` for ``steps`` steps, each
    on a batch of items and one random neighbour of each. z: (n, dim); nearest: (n, K) positions."""
    n = len(z)
    heads = Heads(z.shape[1], k, cc.scan_heads, cc.scan_hidden)
    opt = torch.optim.Adam(heads.parameters(), lr=cc.scan_lr)
    batch = min(cc.scan_batch_size, n)
    for _ in range(steps):
        rows = torch.randint(0, n, (batch,), generator=gen)
        pick = nearest[rows, torch.randint(0, nearest.shape[1], (batch,), generator=gen)]
        loss = scan_loss(F.softmax(heads(z[rows]), -1), F.softmax(heads(z[pick]), -1), cc.scan_entropy_weight)
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
    return heads


def _logits(heads: Heads, z: torch.Tensor) -> torch.Tensor:
    """Every head's logits for every row, in chunks. (n, dim) -> (heads, n, k)"""
    with torch.no_grad():
        return torch.cat([heads(z[i : i + 8192]) for i in range(0, len(z), 8192)], 1)


def distil(
    z: torch.Tensor, assign: np.ndarray, k: int, cc: ClusterConfig, gen: torch.Generator
) -> tuple[list[torch.Tensor], float]:
    """One head fitted to ``assign`` by cross-entropy; its parameters and its agreement with it."""
    head = Heads(z.shape[1], k, 1, cc.scan_hidden)
    opt = torch.optim.Adam(head.parameters(), lr=cc.scan_lr)
    target = torch.from_numpy(assign.astype(np.int64))
    batch = min(cc.scan_batch_size, len(z))
    for _ in range(cc.scan_steps // 2):
        rows = torch.randint(0, len(z), (batch,), generator=gen)
        loss = F.cross_entropy(head(z[rows])[0], target[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
    fitted = _logits(head, z)[0].argmax(-1).numpy()
    params = [t[0].detach().clone() for t in (head.w1, head.b1, head.w2, head.b2)]
    return params, round(float((fitted == assign).mean()), 5)


def _agreement(assign: np.ndarray, nearest: np.ndarray) -> float:
    """Share of (item, neighbour) pairs the head puts in one cluster (no labels needed)."""
    return round(float((assign[nearest] == assign[:, None]).mean()), 5)
