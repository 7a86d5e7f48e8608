"""Where training runs: ``training.accelerator: auto`` and ``training.precision: auto`` resolved
for this machine, so a GPU machine trains on its GPU with a precision it supports."""

from __future__ import annotations

from typing import NamedTuple

import torch

from aepipe.config import TrainingConfig


class Device(NamedTuple):
    accelerator: str
    precision: str


def resolve_device(tc: TrainingConfig, cuda: bool | None = None, bf16: bool | None = None) -> Device:
    """``auto`` accelerator: gpu when CUDA is available, else cpu. ``auto`` precision: bf16-mixed on a
    GPU that supports bfloat16 (Ampere and later), 16-mixed on older GPUs, 32-true elsewhere (CPU
    mixed precision is slower than float32 on most chips). ``cuda``/``bf16`` override the probes (tests)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    accelerator = tc.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if cuda else "cpu"
    precision = tc.precision
    if precision == "auto":
        on_gpu = accelerator in ("gpu", "cuda") and cuda
        if on_gpu:
            bf16 = torch.cuda.is_bf16_supported() if bf16 is None else bf16
            precision = "bf16-mixed" if bf16 else "16-mixed"
        else:
            precision = "32-true"
    return Device(accelerator, precision)
