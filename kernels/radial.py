"""Radial basis and smooth cutoff envelope shared by message-passing models and kernels."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def bessel_basis(distances: Tensor, n_basis: int, cutoff: float) -> Tensor:
    """DimeNet's sine Bessel basis sqrt(2/rc) sin(n pi d / rc) / d, shape (E, n_basis)."""
    n = torch.arange(1, n_basis + 1, device=distances.device, dtype=distances.dtype)
    d = distances.unsqueeze(-1)
    return math.sqrt(2.0 / cutoff) * torch.sin(n * (math.pi / cutoff) * d) / d


def polynomial_envelope(distances: Tensor, cutoff: float, p: int = 6) -> Tensor:
    """DimeNet polynomial envelope: 1 at 0, value and first two derivatives 0 at the cutoff.

    u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2), x = d / rc,
    and 0 beyond the cutoff, so energies and forces are continuous when a
    neighbor crosses it.
    """
    x = distances / cutoff
    a = -(p + 1) * (p + 2) / 2.0
    b = float(p * (p + 2))
    c = -p * (p + 1) / 2.0
    xp = x**p
    u = 1.0 + a * xp + b * xp * x + c * xp * x * x
    return torch.where(x < 1.0, u, torch.zeros_like(u))
