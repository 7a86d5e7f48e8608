"""The model directory: safetensors weights (no pickle), the resolved config,
the preprocessing spec and a content-hash model id."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from aepipe import __version__
from aepipe.config import PipelineConfig
from aepipe.errors import ConfigError, MissingArtifact
from aepipe.features import Preprocessor, TextPreprocessor, preprocessor_from_dict
from aepipe.files import atomic_write_json, read_json
from aepipe.layout import ModelFiles
from aepipe.model.networks import Autoencoder, build_autoencoder


@dataclass
class LoadedModel:
    net: Autoencoder
    prep: Preprocessor
    config: PipelineConfig
    info: dict[str, Any]

    @property
    def model_id(self) -> str:
        return self.info["model_id"]

    @property
    def code_size(self) -> int:
        return self.net.code_size


def model_id_for(weights_path: Path, config: PipelineConfig, prep: Preprocessor) -> str:
    h = hashlib.sha256()
    h.update(Path(weights_path).read_bytes())
    h.update(json.dumps(config.model.model_dump(mode="json"), sort_keys=True).encode())
    h.update(json.dumps(prep.to_dict(), sort_keys=True).encode())
    return h.hexdigest()[:16]


def save_model(
    files: ModelFiles,
    net: Autoencoder,
    config: PipelineConfig,
    prep: Preprocessor,
    extra_info: dict[str, Any] | None = None,
) -> str:
    """Write weights, config, preprocessing spec and model.json into ``files.root``; return the model id."""
    files.root.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(files.weights))
    atomic_write_json(files.config, config.model_dump(mode="json"))
    atomic_write_json(files.preprocess, prep.to_dict())
    model_id = model_id_for(files.weights, config, prep)
    info = {
        "model_id": model_id,
        "architecture": config.model.architecture,
        "input_shape": list(prep.shape),
        "code_size": config.model.code_size,
        "output_activation": net.output_activation,
        "widths": list(net.widths),
        "residual": net.residual,
        "keep_luma": net.keep_luma,
        "aepipe_version": __version__,
        **(extra_info or {}),
    }
    atomic_write_json(files.info, info)
    return model_id


def load_model(files: ModelFiles | str | Path) -> LoadedModel:
    """Rebuild a model from its directory alone (no unpickling)."""
    if not isinstance(files, ModelFiles):
        files = ModelFiles(Path(files))
    if not files.weights.is_file() or not files.info.is_file():
        raise MissingArtifact(f"no trained model in {files.root}; run `aepipe train` first")
    saved = read_json(files.config)
    # The saved config is complete as trained: no preset fills what it lacks. (A model saved before a
    # key existed was trained without it; the images preset's model.linear_path: pca would otherwise
    # describe another network than the weights.)
    if isinstance(saved.get("model"), dict):  # saved before model.pca_basis: its deep path read raw values
        saved["model"].setdefault("pca_basis", 0)
    config = PipelineConfig.model_validate({**saved, "preset": "none"}).model_copy(
        update={"preset": saved.get("preset", "auto")}
    )
    prep = preprocessor_from_dict(read_json(files.preprocess))
    info = read_json(files.info)
    # Widths as trained (info.json); models saved before that key used the input-independent rule.
    widths = info.get("widths") or config.model.widths()
    net = build_autoencoder(
        config.model,
        prep.shape,
        info.get("output_activation", "sigmoid"),
        widths,
        residual=info.get("residual", False),
        keep_luma=info.get("keep_luma", False),
    )
    try:
        net.load_state_dict(load_file(str(files.weights)))
    except RuntimeError:
        raise MissingArtifact(
            f"weights in {files.weights} do not match the model described by {files.config} "
            "(made by another aepipe version?); retrain with `aepipe train`"
        ) from None
    net.eval()
    return LoadedModel(net=net, prep=prep, config=config, info=info)


@torch.inference_mode()
def encode_array(
    net: Autoencoder, x: torch.Tensor, autocast: str = "off", target: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and per-item summed squared reconstruction error. (B, C, H, W) -> (B, code), (B,)
    The error is measured against ``target`` (B, ...) when given: for documents, the word
    distribution the softmax decoder is trained to output (``reconstruction_target``); without it,
    against the input (for a softmax output, the input normalised to sum 1: only codes wanted).
    Runs on the device of ``net`` (``x`` is moved there); results come back as float32 on the CPU.
    ``autocast``: "bf16" / "fp16" run the forward pass in that precision (torch.autocast)."""
    device = next(net.parameters()).device
    x = x.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=AUTOCAST_DTYPES[autocast], enabled=autocast != "off"):
        z, out = net.code_and_output(x)  # (B, code), (B, *input_shape); a U-Net's decoder also needs the encoder maps
        recon = net.activate(out)
    z, recon = z.float(), recon.float()
    if target is not None:
        x = target.to(device)
    elif net.output_activation == "softmax":
        x = x / x.sum(-1, keepdim=True).clamp_min(1e-12)
    return z.cpu(), (recon - x).pow(2).flatten(1).sum(1).cpu()


def encode_all(net: Autoencoder, x: np.ndarray, target: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``encode_array`` over an array, 4,096 items at a time: codes and per-item SSE (against
    ``target``, default the input). (N, ...) -> (N, code), (N,)"""
    parts = [
        encode_array(
            net,
            torch.from_numpy(x[i : i + 4096]),
            target=None if target is None else torch.from_numpy(target[i : i + 4096]),
        )
        for i in range(0, len(x), 4096)
    ]
    return np.concatenate([z.numpy() for z, _ in parts]), np.concatenate([e.numpy() for _, e in parts])


def reconstruction_target(prep: Preprocessor, x: np.ndarray) -> np.ndarray:
    """What a model's reconstruction is scored against: the items themselves, or for documents
    their word distributions (term counts normalised to sum 1; the TF-IDF inputs normalised to sum 1
    are a different distribution, which the decoder is never trained to output). (N, ...) -> (N, ...)"""
    return prep.word_distribution(x) if isinstance(prep, TextPreprocessor) else x


AUTOCAST_DTYPES = {"off": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def inference_settings(device: str, autocast: str) -> tuple[torch.device, str]:
    """Resolve ``encode.device`` / ``encode.autocast`` ("auto": CUDA when present; bf16 where the GPU
    supports it, else fp16; full precision on the CPU, where bf16 autocast is slower on most chips)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"encode.device={device} but torch sees no CUDA device (torch {torch.__version__}); "
            "use encode.device=cpu or auto"
        )
    if autocast == "auto":
        if device.startswith("cuda"):
            autocast = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            autocast = "off"
    return torch.device(device), autocast
