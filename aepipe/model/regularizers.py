"""What turns a plain autoencoder into the other kinds: input corruption
(denoising), activity penalties (sparse), the encoder-Jacobian penalty
(contractive) and the KL term (variational)."""

from __future__ import annotations

import torch

from aepipe.config import ContractiveConfig, DenoisingConfig, SparsityConfig
from aepipe.model.networks import Autoencoder


def corrupt(x: torch.Tensor, cfg: DenoisingConfig) -> torch.Tensor:
    """Stochastic corruption of inputs in [0, 1] (masking: of any non-negative inputs, e.g. term
    weights); the reconstruction target stays clean."""
    if cfg.noise == "gaussian":
        return (x + cfg.level * torch.randn_like(x)).clamp(0.0, 1.0)
    hit = torch.rand_like(x) < cfg.level
    if cfg.noise == "masking":
        return x.masked_fill(hit, 0.0)
    salt = (torch.rand_like(x) < 0.5).to(x.dtype)  # salt_pepper: hit values become 0 or 1
    return torch.where(hit, salt, x)


def sparsity_penalty(z: torch.Tensor, cfg: SparsityConfig) -> torch.Tensor:
    """L1 on code activations plus KL(rho || mean activation) summed over code units."""
    penalty = z.new_zeros(())
    if cfg.l1:
        penalty = penalty + cfg.l1 * z.abs().sum(1).mean()
    if cfg.kl:
        rho_hat = z.mean(0).clamp(1e-6, 1 - 1e-6)  # (code,)
        rho = cfg.rho
        kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
        penalty = penalty + cfg.kl * kl.sum()
    return penalty


def jacobian_frobenius_exact(net: Autoencoder, x: torch.Tensor) -> torch.Tensor:
    """||dh/dx||_F^2 for h = sigmoid(W x + b), per item: sum_j (h_j (1 - h_j))^2 ||W_j||^2. -> (B,)"""
    w = net.code_head.weight  # (code, D)
    h = torch.sigmoid(net.code_head(x.flatten(1)))  # (B, code)
    return ((h * (1 - h)) ** 2 * w.pow(2).sum(1)).sum(1)


def jacobian_frobenius_estimate(net: Autoencoder, x: torch.Tensor, n_projections: int = 1) -> torch.Tensor:
    """Unbiased estimate of ||dz/dx||_F^2 per item: E_v ||J^T v||^2 with v ~ N(0, I) in code
    space, one vector-Jacobian product (an extra backward pass) per projection. -> (B,)"""
    x = x.detach().requires_grad_(True)
    z = net.encode(x)  # (B, code)
    total = x.new_zeros(len(x))
    for _ in range(n_projections):
        v = torch.randn_like(z)
        (jtv,) = torch.autograd.grad(z, x, grad_outputs=v, create_graph=True)  # (B, *input) = J^T v
        total = total + jtv.pow(2).flatten(1).sum(1)
    return total / n_projections


def contractive_penalty(net: Autoencoder, x: torch.Tensor, cfg: ContractiveConfig, exact: bool) -> torch.Tensor:
    norms = jacobian_frobenius_exact(net, x) if exact else jacobian_frobenius_estimate(net, x, cfg.n_projections)
    return cfg.weight * norms.mean()


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per item, summed over code units. -> (B,)"""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
