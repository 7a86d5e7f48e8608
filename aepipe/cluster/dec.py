"""Stage: clustering-oriented refinement of the encoder (IDEC: Guo et al. 2017, after DEC: Xie et
al. 2016), unlabelled by design (labels, when the store has them, only score the result).

The pretrained encoder's codes are clustered with k-means; the centroids become parameters; then
encoder, decoder and centroids are trained together on reconstruction + ``dec_gamma`` x KL(P || Q),
where Q is the Student-t soft assignment of each code to the centroids and P the sharpened target
(q^2 / cluster frequency, renormalised), recomputed every epoch. The reconstruction term keeps the
codes a representation of the items (IDEC), not only of their clusters. The refined model replaces
the run's model, the store is re-encoded with it, and every item is assigned to its nearest
centroid (the argmax of Q) by the same pass that writes ``cluster`` assignments
(``aepipe.cluster.kmeans.cluster_codes`` drives the stage). The index is rebuilt over the new
codes by ``aepipe.pipeline.cluster_stage`` (what the pipeline, the CLI and the flows call).
"""

from __future__ import annotations

import logging
import shutil
from typing import Any

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from aepipe.codes.store import open_store
from aepipe.config import PipelineConfig
from aepipe.corpus import Quarantine, open_corpus
from aepipe.features import TextPreprocessor
from aepipe.files import fresh_dir, recover_dir, replace_dir
from aepipe.layout import ModelFiles, RunLayout
from aepipe.logs import timed
from aepipe.model.module import reconstruction_loss
from aepipe.model.saved import LoadedModel, load_model, save_model

log = logging.getLogger(__name__)


def soft_assign(z: torch.Tensor, centroids: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Student-t kernel between codes and centroids, rows normalised. (B, code), (K, code) -> (B, K)"""
    d2 = torch.cdist(z, centroids).pow(2)  # (B, K)
    q = (1.0 + d2 / alpha).pow(-(alpha + 1.0) / 2.0)
    return q / q.sum(1, keepdim=True)


def target_distribution(q: torch.Tensor) -> torch.Tensor:
    """DEC's sharpened target: q^2 / frequency of each cluster, rows normalised. (N, K) -> (N, K)"""
    w = q.pow(2) / q.sum(0)
    return w / w.sum(1, keepdim=True)


def read_inputs(cfg: PipelineConfig, model: LoadedModel) -> np.ndarray:
    """Model inputs of a seeded sample of at most ``cluster.max_train_items`` corpus items
    (bad ones skipped, as encode quarantines them)."""
    corpus = open_corpus(cfg.corpus)
    n = corpus.n_items
    limit = min(n, cfg.cluster.max_train_items)
    keep = None
    if limit < n:
        keep = set(np.random.default_rng(cfg.cluster.seed).choice(n, limit, replace=False).tolist())
    batches = corpus.iter_batches(model.prep, 1024, Quarantine("cluster"), keep=keep)  # type: ignore[arg-type]
    return np.concatenate([b.x for b in batches])


def refine_encoder(cfg: PipelineConfig) -> dict[str, Any]:
    """IDEC on the run's model; writes the refined model in place of it. Returns the centroids
    (K, code) in the refined code space and a summary of the training."""
    cc = cfg.cluster
    layout = RunLayout.at(cfg.run_dir)
    model = load_model(layout.model)
    torch.manual_seed(cc.seed)
    x_np = read_inputs(cfg, model)
    x = torch.from_numpy(x_np)
    loss_name = model.config.model.loss
    if loss_name == "auto":
        loss_name = (
            "softmax"
            if isinstance(model.prep, TextPreprocessor)
            else ("bce" if x_np.min() >= 0 and x_np.max() <= 1 else "mse")
        )
    target = (
        torch.from_numpy(model.prep.word_distribution(x_np))
        if loss_name == "softmax" and isinstance(model.prep, TextPreprocessor)
        else x
    )
    net = model.net
    labels = open_store(layout.store).read(["label"]).column("label").drop_null()
    k = cc.n_clusters or (len(labels.unique()) if len(labels) else 10)  # as cluster does: labels only count
    with torch.no_grad():
        z0 = torch.cat([net.encode(x[i : i + 4096]) for i in range(0, len(x), 4096)]).numpy()  # (N, code)
    with timed(f"dec: k-means with {k} clusters on {len(z0)} pretrained codes"):
        km = faiss.Kmeans(z0.shape[1], k, niter=cc.niter, nredo=cc.n_redo, seed=cc.seed, verbose=False)
        km.train(np.ascontiguousarray(z0, np.float32))
    centroids = torch.nn.Parameter(torch.from_numpy(np.asarray(km.centroids).copy()))
    opt = torch.optim.Adam([*net.parameters(), centroids], lr=cc.dec_lr)
    previous = np.asarray(km.index.search(np.ascontiguousarray(z0, np.float32), 1)[1]).ravel()
    rng = np.random.default_rng(cc.seed)
    changed = 1.0
    epoch = 0
    with timed(f"dec: refine the encoder, up to {cc.dec_epochs} epochs (gamma {cc.dec_gamma})"):
        for epoch in range(1, cc.dec_epochs + 1):
            net.eval()  # the target: the whole sample's soft assignments, from the current encoder
            with torch.no_grad():
                q_all = torch.cat([soft_assign(net.encode(x[i : i + 4096]), centroids) for i in range(0, len(x), 4096)])
            p_all = target_distribution(q_all)  # (N, K)
            assign = q_all.argmax(1).numpy()
            changed = float((assign != previous).mean())
            previous = assign
            if epoch > 1 and changed < cc.dec_tol:
                break
            net.train()
            for idx in np.array_split(rng.permutation(len(x)), max(1, len(x) // cc.dec_batch_size)):
                xb = x[idx]
                z = net.encode(xb)  # (B, ...) -> (B, code)
                out = net.decode(z)  # (B, code) -> (B, *input)
                kl = F.kl_div(soft_assign(z, centroids).log(), p_all[idx], reduction="batchmean")
                loss = reconstruction_loss(out, target[idx], loss_name, net) + cc.dec_gamma * kl
                opt.zero_grad()
                loss.backward()
                opt.step()
    net.eval()
    staging = fresh_dir(layout.staging("model-dec"))
    recover_dir(layout.model.root)
    # The training record stays with the refined model: its split (which items `aepipe eval` holds
    # out), its metrics and quarantine. Without the split, eval on a refined run had nothing to read.
    for name in ("split", "metrics", "quarantine"):
        source = getattr(layout.model, name)
        if source.is_file():
            shutil.copy2(source, getattr(ModelFiles(staging), name))
    model_id = save_model(
        ModelFiles(staging),
        net,
        model.config,
        model.prep,
        {**{k_: v for k_, v in model.info.items() if k_ != "model_id"}, "refined_by": "dec", "parent": model.model_id},
    )
    replace_dir(staging, layout.model.root)
    return {
        "centroids": centroids.detach().numpy().astype(np.float32),
        "model_id": model_id,
        "parent_model_id": model.model_id,
        "epochs": epoch,
        "changed_last_epoch": changed,
        "n_train": len(x),
    }
