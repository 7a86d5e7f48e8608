"""LightningModule around a pure autoencoder network: one shared ``_step`` for
train / val / test."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from aepipe.config import ModelConfig, TrainingConfig
from aepipe.features.degrade import task_input
from aepipe.model.networks import Autoencoder
from aepipe.model.regularizers import (
    contractive_penalty,
    corrupt,
    gaussian_kl,
    sparsity_penalty,
)


def reconstruction_loss(out: torch.Tensor, x: torch.Tensor, loss: str, net: Autoencoder) -> torch.Tensor:
    """Mean over items of the per-element loss (BCE on logits, or MSE on activated outputs; on raw
    outputs for the "clamp" activation), or for
    ``softmax`` the multinomial cross-entropy -sum_v x_v log softmax(out)_v per item (x: a distribution)."""
    if loss == "softmax":
        return -(x * F.log_softmax(out, dim=-1)).sum(-1).mean()  # (B, V) -> scalar
    if net.output_activation == "clamp":
        # The linear path: MSE on the raw output, so no pixel loses its gradient; also when a caller
        # infers "bce" from inputs in [0, 1] (DEC does), as BCE needs logits this output does not give.
        return F.mse_loss(out, x)
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(out, x)
    return F.mse_loss(net.activate(out), x)


LINEAR_PATH_PARAMS = ("pca_components", "pca_mean")  # DenseAutoencoder's P and mean (model.linear_path)


def linear_path_lr_factor(cfg: ModelConfig, net: Autoencoder) -> float:
    """model.linear_path_lr as a multiple of training.lr; auto: min(1, sqrt(1024 / inputs)).

    Adam moves every entry by about lr a step, so a unit row of P over D inputs moves by about
    lr x sqrt(D) of its length: 6 % a step at lr 2e-3 on 32x32 inputs, 22 % on 64x64 RGB ones."""
    if cfg.linear_path_lr != "auto":
        return float(cfg.linear_path_lr)
    d = int(np.prod(getattr(net, "input_shape", (1024,))))
    return min(1.0, (1024 / max(d, 1)) ** 0.5)


class AutoencoderModule(L.LightningModule):
    def __init__(
        self,
        net: Autoencoder,
        loss: str,
        lr: float,
        weight_decay: float,
        lr_schedule: str,
        model_cfg: ModelConfig | None = None,
        training: TrainingConfig | None = None,
    ):
        super().__init__()
        self.net = net
        self.kind = model_cfg or ModelConfig()
        self.training_cfg = training or TrainingConfig()
        self._rngs: dict[str, np.random.Generator] = {}
        contractive = self.kind.contractive
        self.exact_contractive = contractive is not None and (
            contractive.method == "exact" or (contractive.method == "auto" and self.kind.exact_contractive_possible())
        )
        self.loss = loss
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_schedule = lr_schedule
        self.save_hyperparameters(ignore=["net", "model_cfg", "training"])

    def _rng(self, stage: str) -> np.random.Generator:
        """The degradations' random numbers: one stream per rank for training; validation and
        test restart from a fixed seed each epoch, so their losses compare across epochs."""
        if stage not in self._rngs:
            seed = self.training_cfg.seed
            self._rngs[stage] = np.random.default_rng(
                [seed, self.global_rank] if stage == "train" else [seed, 1 + ("val", "test").index(stage)]
            )
        return self._rngs[stage]

    def on_validation_epoch_start(self) -> None:
        self._rngs.pop("val", None)

    def on_test_epoch_start(self) -> None:
        self._rngs.pop("test", None)

    def task_input(self, x: torch.Tensor, stage: str) -> torch.Tensor:
        """``training.task``'s input made from the clean target ``x`` (numpy / Pillow, on the CPU).
        (B, C, H, W) -> (B, C, H, W)"""
        made = task_input(x.detach().cpu().numpy(), self.training_cfg, self._rng(stage)).x
        return torch.from_numpy(made).to(x.device, x.dtype)

    def _step(self, batch: tuple[torch.Tensor, ...], stage: str) -> torch.Tensor:
        x_in = batch[0]  # (B, C, H, W) images or (B, V) documents
        x = batch[1] if len(batch) > 1 else x_in  # the clean target: the input, or e.g. a word distribution
        kind = self.kind
        if self.training_cfg.task in ("denoise", "colorize", "remove_watermark"):
            x_in = self.task_input(x, stage)  # restoration: the input is derived from the target, in every stage
        if kind.denoising and stage == "train":
            x_in = corrupt(x_in, kind.denoising)
        z, out, mu, logvar = self.net(x_in)
        recon = reconstruction_loss(out, x, self.loss, self.net)
        loss = recon
        if logvar is not None:  # VAE: KL per item, scaled like the per-element reconstruction loss
            kl = gaussian_kl(mu, logvar).mean() / x[0].numel()
            loss = loss + kind.kl_weight * kl
            self.log(f"{stage}_kl", kl, on_epoch=True, on_step=False, batch_size=len(x), sync_dist=True)
        if kind.sparsity:
            loss = loss + sparsity_penalty(z, kind.sparsity)
        if kind.contractive and stage == "train":
            loss = loss + contractive_penalty(self.net, x_in, kind.contractive, self.exact_contractive)
        with torch.no_grad():
            sse = (self.net.activate(out) - x).pow(2).flatten(1).sum(1).mean()  # summed squared error per item
        self.log(
            f"{stage}_loss",
            loss,
            prog_bar=stage != "test",
            on_epoch=True,
            on_step=False,
            batch_size=len(x),
            sync_dist=True,
        )
        self.log(f"{stage}_recon", recon, on_epoch=True, on_step=False, batch_size=len(x), sync_dist=True)
        self.log(f"{stage}_sse", sse, on_epoch=True, on_step=False, batch_size=len(x), sync_dist=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    def param_groups(self) -> list[dict[str, Any]]:
        """The parameters in optimizer groups: the linear path's P and mean (model.linear_path) at
        ``linear_path_lr_factor`` x lr, the rest at lr."""
        named = list(self.net.named_parameters())
        linear = [p for n, p in named if n in LINEAR_PATH_PARAMS and p.requires_grad]
        rest = [p for n, p in named if n not in LINEAR_PATH_PARAMS]
        groups: list[dict[str, Any]] = [{"params": rest, "lr": self.lr}]
        if linear:
            groups.append({"params": linear, "lr": self.lr * linear_path_lr_factor(self.kind, self.net)})
        return groups

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.param_groups(), lr=self.lr, weight_decay=self.weight_decay)
        if self.lr_schedule == "constant":
            return opt
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        sched: torch.optim.lr_scheduler.LRScheduler
        if self.lr_schedule == "onecycle":
            peaks = [g["lr"] for g in opt.param_groups]
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peaks, total_steps=total, pct_start=0.15)
        else:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
