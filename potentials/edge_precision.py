"""A 16-bit model fed float32 edge vectors.

Why: the engine builds edge vectors in ``potential.dtype``; in bfloat16 that rounds a 5 Å
distance to ~0.01 Å (8-bit mantissa), and distances are the input whose error the forces feel
directly. Measured on the bundled model (benchmarks/precision/nve_drift.py): the bf16 force
error against float64 drops about tenfold with float32 edge vectors, the rest of the model
still in bf16. The fused kernels take float32 edge vectors beside 16-bit features (the Triton
kernel loads each input in its own dtype; the CPU path runs the torch reference).
"""
from __future__ import annotations

import torch
from torch import Tensor

from atomsim.kernels.graph import Graph

from .base import Potential

__all__ = ["Float32Edges"]


class Float32Edges(Potential):
    """Wraps ``inner`` so the engine builds float32 edge vectors; ``inner`` computes in its dtype."""

    def __init__(self, inner: Potential):
        super().__init__()
        self.inner = inner
        self.cutoff = inner.cutoff
        self.receptive_field = inner.receptive_field
        self.species = inner.species

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def model_dtype(self) -> torch.dtype:
        return self.inner.dtype

    def per_atom_energy(self, numbers: Tensor, graph: Graph) -> Tensor:
        return self.inner.per_atom_energy(numbers, graph)
