"""The device path: the same model encodes on CUDA (with autocast) as on the CPU. Marked ``gpu``:
deselected by default, skipped without CUDA; run with ``pytest -m gpu`` on a GPU machine."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from aepipe.config import build_config
from aepipe.model.networks import build_autoencoder
from aepipe.model.saved import encode_array, inference_settings

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_cuda_autocast_codes_match_cpu_codes(digits_x):
    torch.manual_seed(0)
    cfg = build_config(overrides=["model.code_size=8", "model.n_layers=2", "model.nodes_per_layer=[64, 32]"])
    net = build_autoencoder(cfg.model, (1, 8, 8)).eval()
    x = torch.from_numpy(digits_x[:512])
    cpu_codes, cpu_err = encode_array(net, x)
    device, autocast = inference_settings("auto", "auto")
    assert device.type == "cuda" and autocast in ("bf16", "fp16")
    gpu_codes, gpu_err = encode_array(copy.deepcopy(net).to(device), x, autocast)
    assert gpu_codes.device.type == "cpu" and gpu_codes.dtype == torch.float32
    rel = (gpu_codes - cpu_codes).norm(dim=1) / cpu_codes.norm(dim=1).clamp_min(1e-6)
    assert float(rel.median()) < 0.02  # bf16 keeps ~3 significant digits
    assert np.allclose(gpu_err.numpy(), cpu_err.numpy(), rtol=0.05, atol=1e-3)
