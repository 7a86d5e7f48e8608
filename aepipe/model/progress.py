"""Training progress for people and for scheduled jobs: Lightning's bar on a terminal, otherwise
one log line per epoch (loss, val loss, elapsed, ETA) on the ``aepipe.progress`` logger, which
``setup_logging`` keeps at INFO even when the rest of aepipe logs only warnings."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import lightning as L

log = logging.getLogger("aepipe.progress")


def format_duration(seconds: float) -> str:
    """12s, 3m05s, 1h02m."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class EpochLog(L.Callback):
    """One INFO line per training epoch. The ETA assumes the remaining epochs (of max_epochs, or
    what is left of max_time) take the mean epoch time so far; early stopping can end sooner."""

    def __init__(self, max_time_s: float | None = None) -> None:
        self.max_time_s = max_time_s
        self.t0 = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        done = trainer.current_epoch + 1
        elapsed = time.perf_counter() - self.t0
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else done
        per_epoch = trainer.num_training_batches
        if trainer.max_steps and trainer.max_steps > 0 and isinstance(per_epoch, int) and per_epoch > 0:
            total = max(min(total, math.ceil(trainer.max_steps / per_epoch)), done)  # max_steps ends it sooner
        eta = elapsed / done * (total - done)
        if self.max_time_s is not None:
            eta = min(eta, max(self.max_time_s - elapsed, 0.0))
        log.info("%s", epoch_line(done, total, trainer.callback_metrics, elapsed, eta))


def epoch_line(epoch: int, max_epochs: int, metrics: dict[str, Any], elapsed: float, eta: float) -> str:
    """'epoch 3/60: loss 0.1234, val loss 0.1201, elapsed 12s, ETA 3m05s'"""
    parts = [f"epoch {epoch}/{max_epochs}:"]
    for key, name in (("train_loss", "loss"), ("val_loss", "val loss")):
        if key in metrics:
            parts.append(f"{name} {float(metrics[key]):.4g},")
    parts.append(f"elapsed {format_duration(elapsed)}, ETA {format_duration(eta)}")
    return " ".join(parts)
