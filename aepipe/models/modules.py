"""Encoder -> code -> decoder networks, built from the classic hyperparameters:
code size, number of layers, nodes per layer (the decoder mirrors the encoder)."""

from __future__ import annotations

import math

import torch
from torch import nn

from aepipe.config import ModelConfig

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


class Autoencoder(nn.Module):
    """Common interface. ``decode`` returns pre-activation outputs (logits when the
    output activation is a sigmoid, so BCE can use the numerically stable form)."""

    input_shape: tuple[int, ...]
    code_size: int
    output_activation: str  # "sigmoid" or "identity"

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # (B, *input_shape) -> (B, code)
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # (B, code) -> (B, *input_shape)
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return z, self.decode(z)

    def activate(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out) if self.output_activation == "sigmoid" else out

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.decode(self.encode(x)))


def _dense_block(d_in: int, d_out: int, act: str, batch_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Linear(d_in, d_out)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(d_out))
    layers.append(ACTIVATIONS[act]())
    return layers


class DenseAutoencoder(Autoencoder):
    """Stacked fully connected layers, e.g. 784-512-256-128-code-128-256-512-784."""

    def __init__(self, input_shape: tuple[int, ...], widths: list[int], code_size: int,
                 activation: str = "gelu", batch_norm: bool = False, output_activation: str = "sigmoid"):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.code_size = code_size
        self.output_activation = output_activation
        d_in = math.prod(self.input_shape)
        dims = [d_in, *widths]
        enc: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(dims[:-1], dims[1:]):
            enc += _dense_block(a, b, activation, batch_norm)
        enc.append(nn.Linear(dims[-1], code_size))  # linear code layer
        self.encoder = nn.Sequential(*enc)
        rdims = [code_size, *reversed(widths)]
        dec: list[nn.Module] = []
        for a, b in zip(rdims[:-1], rdims[1:]):
            dec += _dense_block(a, b, activation, batch_norm)
        dec.append(nn.Linear(rdims[-1], d_in))
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)  # (B, C, H, W) -> (B, code)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).view(-1, *self.input_shape)  # (B, code) -> (B, C, H, W)


class ConvAutoencoder(Autoencoder):
    """Strided 3x3 convolutions (each halves H and W), a dense code layer, and a
    mirrored transposed-convolution decoder that restores the exact input size."""

    def __init__(self, input_shape: tuple[int, int, int], channels: list[int], code_size: int,
                 activation: str = "gelu", batch_norm: bool = True, output_activation: str = "sigmoid"):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.code_size = code_size
        self.output_activation = output_activation
        c, h, w = input_shape
        self.sizes = [(h, w)]
        convs = []
        for c_out in channels:
            convs.append(nn.Sequential(
                nn.Conv2d(c, c_out, 3, stride=2, padding=1),
                nn.BatchNorm2d(c_out) if batch_norm else nn.Identity(),
                ACTIVATIONS[activation](),
            ))
            h, w = (h + 1) // 2, (w + 1) // 2
            self.sizes.append((h, w))
            c = c_out
        self.convs = nn.ModuleList(convs)
        self.flat_shape = (c, h, w)
        self.to_code = nn.Linear(c * h * w, code_size)
        self.from_code = nn.Sequential(nn.Linear(code_size, c * h * w), ACTIVATIONS[activation]())
        deconvs = []
        outs = [*reversed(channels[:-1]), input_shape[0]]
        for i, c_out in enumerate(outs):
            last = i == len(outs) - 1
            deconvs.append(nn.ModuleDict({
                "conv": nn.ConvTranspose2d(c, c_out, 3, stride=2, padding=1),
                "post": nn.Identity() if last else nn.Sequential(
                    nn.BatchNorm2d(c_out) if batch_norm else nn.Identity(), ACTIVATIONS[activation]()),
            }))
            c = c_out
        self.deconvs = nn.ModuleList(deconvs)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = conv(x)  # (B, C, H, W) -> (B, C', ceil(H/2), ceil(W/2))
        return self.to_code(x.flatten(1))  # -> (B, code)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        x = self.from_code(z).view(-1, *self.flat_shape)  # (B, code) -> (B, C, h, w)
        for block, size in zip(self.deconvs, reversed(self.sizes[:-1])):
            x = block["post"](block["conv"](x, output_size=list(size)))  # doubles H, W back to ``size``
        return x  # (B, C_in, H, W)


def build_autoencoder(cfg: ModelConfig, input_shape: tuple[int, int, int], output_activation: str = "sigmoid") -> Autoencoder:
    if cfg.architecture == "dense":
        return DenseAutoencoder(input_shape, cfg.widths(), cfg.code_size, cfg.activation, cfg.batch_norm, output_activation)
    return ConvAutoencoder(input_shape, cfg.widths(), cfg.code_size, cfg.activation, cfg.batch_norm, output_activation)
