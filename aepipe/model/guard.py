"""The start guard: a network whose linear path starts as PCA (LSA) keeps that start unless training
beat it on the validation items, on every measure the verdict holds against the linear baseline.

Training is watched, not only its end: the guard scores the start before the first step and the
network at the end of every validation epoch, and keeps the state with the lowest validation loss
among those at least as good as the start on every measure and better on one. On a few hundred
large photos the network beats PCA on both measures for a few epochs and then overfits; the best
checkpoint by loss alone had given back the retrieval it gained (RESULTS-defaults.md)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch

from aepipe.model.module import reconstruction_loss
from aepipe.model.networks import Autoencoder
from aepipe.model.saved import encode_all
from aepipe.quality.metrics import label_retrieval

log = logging.getLogger(__name__)

Measure = Callable[[Autoencoder], float]

# precision@10 runs after every epoch: on a seeded sample of at most this many training items (the
# database) and validation items (the queries). On all 54,000 + 6,000 MNIST items it added 2 s an
# epoch on 2 cores (478 s of training instead of about 350); with the samples one evaluation took
# 0.63 s instead of 3.8 s (one thread, the machine busy).
GUARD_DATABASE_ITEMS = 10_000
GUARD_QUERIES = 2_000


@dataclass
class Criterion:
    """How the guard compares networks on the validation items: the loss (lower is better) and,
    with labels, precision@10 of the validation queries against the training items (higher)."""

    loss: Measure
    precision_at_10: Measure | None = None

    @property
    def name(self) -> str:
        return "loss" if self.precision_at_10 is None else "precision@10 and loss"


def start_criterion(
    x: np.ndarray,
    split: dict[str, np.ndarray],
    target: np.ndarray | None,
    loss: str,
    labels: list[str | None],
    metric: str,
    seed: int = 0,
    max_database: int = GUARD_DATABASE_ITEMS,
    max_queries: int = GUARD_QUERIES,
) -> Criterion:
    """The guard's measures for items ``x`` split into train and val: the loss on the validation
    items (against what the decoder reconstructs there, ``target`` rows or the input itself, never
    a smoothed target) and, with a label on every training and validation item and two labels
    among the training items, precision@10 of the validation queries against the training items
    under the index's ``metric`` (on seeded samples of at most ``max_queries`` and
    ``max_database`` of them, the same for every state)."""
    train, val = split["train"], split["val"]
    y = np.array(labels, dtype=object)
    recon = validation_loss(x[val], None if target is None else target[val], loss)
    if not all(v is not None for v in y[np.concatenate([train, val])]) or len(set(y[train])) < 2:
        return Criterion(recon)
    rng = np.random.default_rng(seed)
    train = np.sort(rng.choice(train, max_database, replace=False)) if len(train) > max_database else train
    val = np.sort(rng.choice(val, max_queries, replace=False)) if len(val) > max_queries else val
    x_train, x_val = x[train], x[val]

    @torch.no_grad()
    def precision(net: Autoencoder) -> float:
        codes_train, codes_val = encode_all(net, x_train)[0], encode_all(net, x_val)[0]
        return label_retrieval(codes_train, codes_val, y[train], y[val], metric=metric, k=10)["precision_at_10"]

    return Criterion(recon, precision)


def validation_loss(x_val: np.ndarray, target_val: np.ndarray | None, loss: str) -> Measure:
    """Mean training loss on the validation items (``target_val``: what the decoder reconstructs,
    when not the input), on the network's device."""
    y_val = x_val if target_val is None else target_val

    @torch.no_grad()
    def score(net: Autoencoder) -> float:
        device = next(net.parameters()).device
        total = 0.0
        for i in range(0, len(x_val), 4096):
            xb = torch.from_numpy(x_val[i : i + 4096]).to(device)
            yb = torch.from_numpy(y_val[i : i + 4096]).to(device)
            total += float(reconstruction_loss(net(xb).out, yb, loss, net)) * len(xb)
        return total / len(x_val)

    return score


def _cpu_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


@contextmanager
def _evaluating(net: torch.nn.Module) -> Iterator[None]:
    """``net`` in eval mode inside the block, then back to the mode it was in."""
    was_training = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(was_training)


class StartGuard(L.Callback):
    """Built before training on the start network; watches every validation epoch (rank 0 only);
    ``restore(net)`` afterwards puts the chosen state into ``net``."""

    def __init__(self, net: Autoencoder, criterion: Criterion):
        self.criterion = criterion
        self.start_state = _cpu_state(net)
        with _evaluating(net):
            self.start = self._scores(net, criterion.loss(net))
        self.best: tuple[float, ...] | None = None  # the chosen state's scores (lower is better)
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_epoch: int | None = None
        self.epochs_seen = 0

    def _scores(self, net: Autoencoder, loss: float) -> tuple[float, ...]:
        """(loss,) or (-precision@10, loss): lower is better on each."""
        if self.criterion.precision_at_10 is None:
            return (loss,)
        return (-self.criterion.precision_at_10(net), loss)

    def consider(self, net: Autoencoder, epoch: int) -> None:
        """Score ``net`` (the state after ``epoch``) and keep it if it beats the start and has a
        lower loss than the state kept so far."""
        self.epochs_seen += 1
        with _evaluating(net):
            loss = self.criterion.loss(net)
            if loss > self.start[-1] or (self.best is not None and loss >= self.best[-1]):
                return  # it cannot be chosen: precision, the costly measure, is not computed
            s = self._scores(net, loss)
        if all(a <= b for a, b in zip(s, self.start)) and any(a < b for a, b in zip(s, self.start)):
            self.best, self.best_state, self.best_epoch = s, _cpu_state(net), epoch

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self.consider(pl_module.net, trainer.current_epoch)  # type: ignore[arg-type]  # AutoencoderModule

    def restore(self, net: Autoencoder) -> bool:
        """Load the chosen state into ``net``: the best state that beat the start, or the start.
        Returns whether the start was kept."""
        if self.best_state is not None:
            net.load_state_dict(self.best_state)
            return False
        log.warning(
            "training did not beat its linear start on the validation items at any of %d epochs (%s; start %s): "
            "keeping the start",
            self.epochs_seen,
            self.criterion.name,
            ", ".join(f"{abs(v):.4g}" for v in self.start),
        )
        net.load_state_dict(self.start_state)
        return True

    def summary(self) -> dict:
        """For metrics.json: the measures, the start's and the chosen state's figures."""

        def named(s: tuple[float, ...]) -> dict[str, float]:
            out = {"val_loss": round(s[-1], 6)}
            if len(s) == 2:
                out["val_precision_at_10"] = round(-s[0], 4)
            return out

        return {
            "criterion": self.criterion.name,
            "epochs_seen": self.epochs_seen,
            "start": named(self.start),
            "chosen": None if self.best is None else {"epoch": self.best_epoch, **named(self.best)},
        }
