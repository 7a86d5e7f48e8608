"""Encoder -> code -> decoder networks, built from the classic hyperparameters:
code size, number of layers, nodes per layer (the decoder mirrors the encoder)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from aepipe.config import ModelConfig
from aepipe.features.degrade import LUMA

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


class TrainPass(NamedTuple):
    code: torch.Tensor  # (B, code): sampled for a VAE in training mode, else the mean
    out: torch.Tensor  # (B, *input_shape) decoder output before the output activation
    mu: torch.Tensor  # (B, code) deterministic code / posterior mean
    logvar: torch.Tensor | None  # (B, code) for a VAE


_LUMA = torch.from_numpy(LUMA)  # (3,) ITU-R 601 weights, summing to 1 (the colorize task's gray)

CODE_ACTIVATIONS: dict[str, type[nn.Module]] = {"linear": nn.Identity, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}


class Autoencoder(nn.Module):
    """Common interface. Subclasses build ``body`` (input -> features), ``code_head``
    (features -> code, or mean and log-variance for a VAE) and ``decode``.
    ``decode`` returns pre-activation outputs (logits when the output activation is a
    sigmoid, so BCE can use the numerically stable form)."""

    input_shape: tuple[int, ...]
    widths: list[int]  # hidden widths (dense) or channels (conv) of the encoder, saved in info.json
    code_size: int
    # "sigmoid", "softmax" (over the last dimension: word distributions), "identity" or "clamp" (identity,
    # clamped to [0, 1] when reconstructing: the linear path's output for inputs in [0, 1])
    output_activation: str
    variational: bool
    body: nn.Module  # (B, *input_shape) -> (B, features)
    decodes_codes = True  # False for a U-Net or a residual output: the decoder also needs the input's maps
    residual = False  # output = input + decoder output (model.residual); see ``make_residual``
    keep_luma = False  # colorize: the correction changes colour only, never the luma

    def make_residual(self, keep_luma: bool = False) -> None:
        """Add the input to the output (residual learning, as DnCNN does for denoising) and zero the
        last layer, so the untrained network returns its input unchanged: training learns only the
        correction. The output activation must be the identity ("clamp"): a sum is not a logit.
        ``keep_luma`` (colorization of a gray input): the correction loses its luma (ITU-R 601), so
        the output keeps the input's brightness exactly and the network learns only colour."""
        self.residual = True
        self.keep_luma = self.keep_luma or keep_luma
        self.decodes_codes = False
        last = [m for m in self.modules() if isinstance(m, (nn.Linear, nn.ConvTranspose2d))][-1]
        refiner = getattr(self, "refiner", None)  # a dense decoder's image correction: zeroed too
        with torch.no_grad():
            for layer in [last] + ([refiner[-1]] if refiner is not None else []):
                layer.weight.zero_()
                if layer.bias is not None:
                    layer.bias.zero_()

    def _output(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The decoder's output ``out``, plus the input ``x`` for a residual network (same shape)."""
        if not self.residual:
            return out
        if self.keep_luma:  # (B, 3, H, W) - (B, 1, H, W): a correction with zero luma
            out = out - torch.einsum("bchw,c->bhw", out, _LUMA.to(out))[:, None]
        return out + x

    def _init_code(self, d_features: int, code_size: int, code_activation: str, variational: bool) -> None:
        self.code_size = code_size
        self.variational = variational
        self.code_head = nn.Linear(d_features, code_size * (2 if variational else 1))
        self.code_act = CODE_ACTIVATIONS[code_activation]()

    def encode_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, *input_shape) -> code (B, code) [posterior mean for a VAE], log-variance or None."""
        h = self.code_head(self.body(x))
        if self.variational:
            mu, logvar = h.chunk(2, dim=1)
            return mu, logvar.clamp(-12, 12)
        return self.code_act(h), None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic code (the posterior mean for a VAE). (B, *input_shape) -> (B, code)"""
        return self.encode_stats(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # (B, code) -> (B, *input_shape)
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> TrainPass:
        mu, logvar = self.encode_stats(x)
        z = mu
        if logvar is not None and self.training:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)  # reparameterisation
        return TrainPass(z, self._output(x, self.decode(z)), mu, logvar)

    def encoder_layers(self) -> list[nn.Module]:
        """Encoder layers with weights, outermost first (for transfer learning)."""
        layers: list[nn.Module] = [m for m in self.body.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        return layers + [self.code_head]

    def activate(self, out: torch.Tensor) -> torch.Tensor:
        if self.output_activation == "softmax":
            return torch.softmax(out, dim=-1)
        if self.output_activation == "clamp":  # identity in training (MSE on ``out``), [0, 1] when reconstructing
            return out.clamp(0.0, 1.0)
        return torch.sigmoid(out) if self.output_activation == "sigmoid" else out

    def code_and_output(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic code and decoder output (pre-activation). (B, *input_shape) -> (B, code), (B, *input_shape)"""
        z = self.encode(x)
        return z, self._output(x, self.decode(z))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.code_and_output(x)[1])


def _dense_block(d_in: int, d_out: int, act: str, batch_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Linear(d_in, d_out)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(d_out))
    layers.append(ACTIVATIONS[act]())
    return layers


class DenseAutoencoder(Autoencoder):
    """Stacked fully connected layers, e.g. 784-512-256-128-code-128-256-512-784.

    ``linear_path`` ("pca" or "pca-frozen") adds a linear path beside the deep one:
    code = P (x - mean) + f(x) and output = mean + P' code + g(code), where f and g are the deep
    encoder and decoder. ``init_linear_path`` sets P and the mean from a fitted PCA and zeroes the
    last layers of f and g, so the network starts as exactly that PCA and training moves away from
    it only where the loss improves; with "pca-frozen" P and the mean stay fixed.

    "lsa" / "lsa-frozen": the same with P from an uncentred truncated SVD (the mean stays zero), so
    the codes start as LSA's. With a softmax output (word logits, documents) the decoder has no
    linear path (P' code is not a logit): it starts with zero weights and the bias given to
    ``init_linear_path`` (e.g. log of the mean word distribution), so the first steps fit the
    decoder to the LSA codes before the codes move."""

    basis_components: torch.Tensor  # (N, D) buffers when pca_basis > 0 (model.pca_basis)
    basis_scale: torch.Tensor  # () the first basis component's standard deviation

    def __init__(
        self,
        input_shape: tuple[int, ...],
        widths: list[int],
        code_size: int,
        activation: str = "gelu",
        batch_norm: bool = False,
        output_activation: str = "sigmoid",
        code_activation: str = "linear",
        variational: bool = False,
        decoder: str = "mirror",
        linear_path: str = "none",
        refine_channels: int = 0,
        pca_basis: int = 0,
    ):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.output_activation = output_activation
        self.widths = list(widths)
        d_in = math.prod(self.input_shape)
        self.pca_basis = pca_basis
        if pca_basis:  # the deep path reads and writes N principal components, set by init_linear_path
            self.register_buffer("basis_components", torch.zeros(pca_basis, d_in))  # (N, D), orthonormal rows
            self.register_buffer("basis_scale", torch.ones(()))  # sqrt of the first component's variance
        deep_in = pca_basis or d_in
        dims = [deep_in, *widths]
        body: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(dims[:-1], dims[1:]):
            body += _dense_block(a, b, activation, batch_norm)
        self.body = nn.Sequential(*body)  # (B, C, H, W) -> (B, widths[-1])
        self._init_code(dims[-1], code_size, code_activation, variational)
        # A linear decoder maps the code straight to output logits (for documents: word logits, so
        # each code unit is a topic-like direction in vocabulary space).
        rdims = [code_size] if decoder == "linear" else [code_size, *reversed(widths)]
        dec: list[nn.Module] = []
        for a, b in zip(rdims[:-1], rdims[1:]):
            dec += _dense_block(a, b, activation, batch_norm)
        dec.append(nn.Linear(rdims[-1], deep_in))
        self.decoder = nn.Sequential(*dec)
        self.linear_path = linear_path
        if linear_path != "none":
            trainable = linear_path in ("pca", "lsa")
            # Until init_linear_path: no linear path (zero components), so the network is the plain one.
            self.pca_components = nn.Parameter(torch.zeros(code_size, d_in), requires_grad=trainable)  # (code, D)
            self.pca_mean = nn.Parameter(torch.zeros(d_in), requires_grad=trainable)  # (D,)
        self.refiner = _refiner(self.input_shape, refine_channels, activation) if refine_channels else None

    @property
    def linear_output(self) -> bool:
        """Whether the decoder adds mean + P' code: not for word logits (softmax), where it means nothing."""
        return self.linear_path != "none" and self.output_activation != "softmax"

    @torch.no_grad()
    def init_linear_path(
        self,
        components: torch.Tensor,
        mean: torch.Tensor,
        decoder_bias: torch.Tensor | None = None,
        basis: torch.Tensor | None = None,
        basis_scale: float = 1.0,
    ) -> None:
        """Start as PCA (or LSA): P = ``components`` (k <= code rows, e.g. sklearn's ``components_``),
        the mean = ``mean``, and the deep path's last encoder and decoder layers at zero; the decoder's
        bias = ``decoder_bias`` when given (a softmax output's start: the mean word distribution's
        logits). ``basis`` (model.pca_basis): the N principal components the deep path reads and
        writes, its inputs divided by ``basis_scale``. (k, D), (D,), (D,), (N, D)"""
        if self.linear_path == "none":
            raise ValueError("this network was built without a linear path (model.linear_path: none)")
        if self.pca_basis:
            if basis is None or len(basis) > self.pca_basis:
                raise ValueError(f"this network's deep path reads {self.pca_basis} principal components: pass them")
            self.basis_components.zero_()
            self.basis_components[: len(basis)] = basis.to(self.basis_components)  # fewer rows: unused inputs
            self.basis_scale.fill_(basis_scale)
        self.pca_components.zero_()
        self.pca_components[: len(components)] = components.to(self.pca_components)  # fewer rows: spare code units
        self.pca_mean.copy_(mean.to(self.pca_mean))
        for layer in (self.code_head, self.decoder[-1]):
            assert isinstance(layer, nn.Linear)  # for the type checker: both are the last Linear layers
            layer.weight.zero_()
            layer.bias.zero_()
        last = self.decoder[-1]
        if decoder_bias is not None and isinstance(last, nn.Linear):
            last.bias.copy_(decoder_bias.to(last.bias))

    def deep_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the deep path reads: the raw values, or their first ``pca_basis`` principal
        components (scaled). (B, *input_shape) -> (B, D) or (B, N)"""
        if not self.pca_basis:
            return x
        return (x.flatten(1) - self.pca_mean) @ self.basis_components.T / self.basis_scale

    def encode_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        z, logvar = super().encode_stats(self.deep_input(x))
        if self.linear_path == "none":
            return z, logvar
        # (B, D) @ (D, code) -> (B, code); the config allows the path only for a linear, deterministic code
        return z + (x.flatten(1) - self.pca_mean) @ self.pca_components.T, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        out = self.decoder(z)  # (B, code) -> (B, D), or (B, N) coefficients of the PCA basis
        if self.pca_basis:
            out = out @ self.basis_components  # (B, N) @ (N, D) -> (B, D)
        if self.linear_output:
            out = out + self.pca_mean + z @ self.pca_components  # (B, code) @ (code, D) -> (B, D)
        out = out.view(-1, *self.input_shape)  # (B, D) -> (B, C, H, W)
        return out if self.refiner is None else out + self.refiner(out)  # a learned correction of the image


def _refiner(input_shape: tuple[int, ...], channels: int, activation: str) -> nn.Sequential:
    """``model.refine_channels``: three 3x3 convolutions at the image's resolution, (B, C, H, W) ->
    (B, C, H, W), the last starting at zero so the decoder starts as it was without one."""
    if len(input_shape) != 3:
        raise ValueError(f"model.refine_channels needs image inputs (C, H, W), not shape {input_shape}")
    c = input_shape[0]
    net = nn.Sequential(
        nn.Conv2d(c, channels, 3, padding=1),
        ACTIVATIONS[activation](),
        nn.Conv2d(channels, channels, 3, padding=1),
        ACTIVATIONS[activation](),
        nn.Conv2d(channels, c, 3, padding=1),
    )
    last = net[-1]
    assert isinstance(last, nn.Conv2d) and last.bias is not None  # for the type checker
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    return net


class ConvAutoencoder(Autoencoder):
    """Strided 3x3 convolutions (each halves H and W), a dense code layer, and a
    mirrored transposed-convolution decoder that restores the exact input size.

    ``skip_connections`` (U-Net-style): the decoder adds the encoder's feature map of the same
    resolution to its own at every level but the deepest, so fine detail bypasses the code. Good
    for restoration (the output keeps the input's edges and texture; only what must change goes
    through the bottleneck), but the code no longer describes the whole image: the decoder needs
    the feature maps too, so codes alone cannot be decoded. There is no skip of features at the full
    input resolution; the identity path at that resolution is ``model.residual`` (the input added to
    the output, the network learning the correction)."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        channels: list[int],
        code_size: int,
        activation: str = "gelu",
        batch_norm: bool = True,
        output_activation: str = "sigmoid",
        code_activation: str = "linear",
        variational: bool = False,
        skip_connections: bool = False,
    ):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.output_activation = output_activation
        self.widths = list(channels)
        self.skips = skip_connections
        self.decodes_codes = not skip_connections
        c, h, w = input_shape
        self.sizes = [(h, w)]
        convs = []
        for c_out in channels:
            convs.append(
                nn.Sequential(
                    nn.Conv2d(c, c_out, 3, stride=2, padding=1),
                    nn.BatchNorm2d(c_out) if batch_norm else nn.Identity(),
                    ACTIVATIONS[activation](),
                )
            )
            h, w = (h + 1) // 2, (w + 1) // 2
            self.sizes.append((h, w))
            c = c_out
        self.body = nn.Sequential(*convs, nn.Flatten())  # (B, C, H, W) -> (B, C' * h * w)
        self.flat_shape = (c, h, w)
        self._init_code(c * h * w, code_size, code_activation, variational)
        self.from_code = nn.Sequential(nn.Linear(code_size, c * h * w), ACTIVATIONS[activation]())
        deconvs = []
        outs = [*reversed(channels[:-1]), input_shape[0]]
        for i, c_out in enumerate(outs):
            last = i == len(outs) - 1
            deconvs.append(
                nn.ModuleDict(
                    {
                        "conv": nn.ConvTranspose2d(c, c_out, 3, stride=2, padding=1),
                        "post": nn.Identity()
                        if last
                        else nn.Sequential(
                            nn.BatchNorm2d(c_out) if batch_norm else nn.Identity(), ACTIVATIONS[activation]()
                        ),
                    }
                )
            )
            c = c_out
        self.deconvs = nn.ModuleList(deconvs)

    def feature_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Flattened features for the code head and each conv block's output (for the skips).
        (B, C, H, W) -> (B, C' * h * w), [(B, c_i, h_i, w_i) for each block]"""
        maps = []
        for block in list(self.body.children())[:-1]:  # the convs, without the final Flatten
            x = block(x)
            maps.append(x)
        return x.flatten(1), maps

    def encode_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._code_stats(self.feature_maps(x)[0])

    def _code_stats(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.code_head(h)  # (B, features) -> (B, code) or (B, 2 * code)
        if self.variational:
            mu, logvar = h.chunk(2, dim=1)
            return mu, logvar.clamp(-12, 12)
        return self.code_act(h), None

    def forward(self, x: torch.Tensor) -> TrainPass:
        flat, maps = self.feature_maps(x)
        mu, logvar = self._code_stats(flat)
        z = mu
        if logvar is not None and self.training:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)  # reparameterisation
        return TrainPass(z, self._output(x, self.decode(z, maps)), mu, logvar)

    def code_and_output(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat, maps = self.feature_maps(x)
        z = self._code_stats(flat)[0]
        return z, self._output(x, self.decode(z, maps))

    def decode(self, z: torch.Tensor, maps: list[torch.Tensor] | None = None) -> torch.Tensor:
        if self.skips and maps is None:
            raise ValueError("a U-Net decoder needs the encoder's feature maps; use reconstruct(x)")
        x = self.from_code(z).view(-1, *self.flat_shape)  # (B, code) -> (B, C, h, w)
        n = len(self.deconvs)
        for i, (block, size) in enumerate(zip(self.deconvs, reversed(self.sizes[:-1]))):
            assert isinstance(block, nn.ModuleDict)  # for the type checker: deconvs holds ModuleDicts
            x = block["post"](block["conv"](x, output_size=list(size)))  # doubles H, W back to ``size``
            if self.skips and maps is not None and i < n - 1:
                x = x + maps[n - 2 - i]  # the encoder's map of this resolution: (B, c, h, w) + (B, c, h, w)
        return x  # (B, C_in, H, W)


def build_autoencoder(
    cfg: ModelConfig,
    input_shape: tuple[int, ...],
    output_activation: str = "sigmoid",
    widths: list[int] | None = None,
    residual: bool = False,
    keep_luma: bool = False,
) -> Autoencoder:
    """The network of ``cfg`` for inputs of ``input_shape``; ``widths`` (a saved model's) overrides
    the widths the config would choose for this input; ``residual``, ``keep_luma``: see
    ``Autoencoder.make_residual``."""
    net = _build(cfg, input_shape, output_activation, widths or cfg.widths(math.prod(input_shape)))
    if residual:
        net.make_residual(keep_luma)
    return net


def _build(cfg: ModelConfig, input_shape: tuple[int, ...], output_activation: str, widths: list[int]) -> Autoencoder:
    n_inputs = math.prod(input_shape)
    if cfg.architecture == "dense":
        return DenseAutoencoder(
            input_shape,
            widths,
            cfg.code_size,
            cfg.activation,
            cfg.uses_batch_norm(n_inputs),
            output_activation,
            cfg.code_activation,
            cfg.variational,
            cfg.decoder,
            cfg.linear_path,
            cfg.refine_channels,
            cfg.pca_basis_size(n_inputs),
        )
    c, h, w = input_shape  # conv: (C, H, W)
    return ConvAutoencoder(
        (c, h, w),
        widths,
        cfg.code_size,
        cfg.activation,
        cfg.uses_batch_norm(n_inputs),
        output_activation,
        cfg.code_activation,
        cfg.variational,
        cfg.skip_connections,
    )
