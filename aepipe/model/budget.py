"""Memory the training stage will need, estimated before anything large is allocated: the model
is built on PyTorch's ``meta`` device (shapes, no storage), so a 36-million-input dense layer is
refused with a one-line error instead of running the machine out of memory."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from aepipe.config import PipelineConfig
from aepipe.errors import ConfigError
from aepipe.model.networks import build_autoencoder

log = logging.getLogger(__name__)

# Resident size of the Python process with torch, Lightning, faiss and pyarrow imported, before
# any data: measured peak RSS of a 64-input run is about this much.
RUNTIME_MB = 500.0
_MB = 2**20


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak memory of training, by part (MB)."""

    n_parameters: int
    data_mb: float  # the in-memory training array (and its target copy)
    model_mb: float  # weights, gradients and the two Adam moments; buffers (e.g. a PCA basis) once
    activations_mb: float  # one training batch: kept for the backward pass, and their gradients
    runtime_mb: float = RUNTIME_MB

    @property
    def peak_mb(self) -> float:
        return self.data_mb + self.model_mb + self.activations_mb + self.runtime_mb


def estimate_training_memory(
    cfg: PipelineConfig, input_shape: tuple[int, ...], n_items: int, with_target: bool = False
) -> MemoryEstimate:
    """Peak memory of training ``cfg.model`` on ``n_items`` inputs of ``input_shape`` (float32)."""
    with torch.device("meta"):  # shapes only: nothing is allocated, whatever the input size
        net = build_autoencoder(cfg.model, input_shape)
    n_params = sum(p.numel() for p in net.parameters())
    n_buffers = sum(b.numel() for b in net.buffers())  # model.pca_basis: N x inputs, no gradient or moments
    act_elems = _activation_elements(net, input_shape)
    dim = math.prod(input_shape)
    data_mb = n_items * dim * 4 * (2 if with_target else 1) / _MB
    return MemoryEstimate(
        n_parameters=n_params,
        data_mb=data_mb,
        model_mb=(n_params * 4 * 4 + n_buffers * 4) / _MB,
        activations_mb=cfg.training.batch_size * act_elems * 4 * 2 / _MB,
    )


def _activation_elements(net: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Values every leaf module outputs for one item (a forward pass on the meta device)."""
    total = 0

    def count(_m: nn.Module, _i: object, out: object) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() // 2  # per item of the batch of 2

    hooks = [m.register_forward_hook(count) for m in net.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            # a batch of 2: batch norm refuses a batch of one in training mode
            net(torch.empty(2, *input_shape, device="meta"))  # (2, *input_shape) -> TrainPass
    finally:
        for h in hooks:
            h.remove()
    return total


def check_memory_budget(cfg: PipelineConfig, input_shape: tuple[int, ...], n_items: int, with_target: bool) -> None:
    """Log the input shape, parameter count and estimated peak memory; raise ConfigError (naming the
    overrides) when the estimate exceeds ``training.memory_budget_mb``."""
    est = estimate_training_memory(cfg, input_shape, n_items, with_target)
    shape = "x".join(str(d) for d in input_shape)
    widths = "-".join(str(w) for w in cfg.model.widths(math.prod(input_shape)))
    log.info(
        "model: input %s, %s %s-%d, %s parameters; estimated peak memory %.0f MB "
        "(data %.0f, model+optimizer %.0f, activations %.0f, runtime %.0f; budget %.0f)",
        shape,
        cfg.model.architecture,
        widths,
        cfg.model.code_size,
        f"{est.n_parameters:,}",
        est.peak_mb,
        est.data_mb,
        est.model_mb,
        est.activations_mb,
        est.runtime_mb,
        cfg.training.memory_budget_mb,
    )
    if est.peak_mb > cfg.training.memory_budget_mb:
        smaller = (
            "features.text.max_features=N"
            if cfg.corpus.kind == "documents"
            else f"features.image.size=[H, W] or features.image.max_side.{cfg.model.architecture}=N"
        )
        raise ConfigError(
            f"training would need about {est.peak_mb:,.0f} MB (input {shape}, {est.n_parameters:,} parameters, "
            f"batch {cfg.training.batch_size}), over training.memory_budget_mb={cfg.training.memory_budget_mb:g}; "
            f"use a smaller input ({smaller}), a smaller training.batch_size or model.nodes_per_layer, "
            "or raise training.memory_budget_mb"
        )
