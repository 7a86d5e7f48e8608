"""Stage: train an autoencoder on the corpus and write ``RUN/model``.

One process: :func:`aepipe.model.fit.fit_model` runs here. Several (DDP over devices or
nodes): Lightning starts the other ranks by re-running the command of rank 0, which must not be
the caller (a Prefect flow, the pipeline), so training runs in ``python -m aepipe.model.ddp``.
"""

from __future__ import annotations

from aepipe.config import PipelineConfig
from aepipe.model.ddp import inside_launched_job, needs_launcher, train_in_subprocess
from aepipe.model.fit import TrainResult, fit_model
from aepipe.runconfig import run_stage

__all__ = ["TrainResult", "train_model"]


@run_stage("train")
def train_model(cfg: PipelineConfig) -> TrainResult:
    """Train on ``cfg.corpus``; write the model directory under ``cfg.run_dir`` atomically."""
    if needs_launcher(cfg.training) and not inside_launched_job():
        return train_in_subprocess(cfg)
    return fit_model(cfg)
