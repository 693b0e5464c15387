"""EGNN edge-message + aggregation: the one op the fused Triton kernel replaces.

Math (per layer; the reference below is the specification the fused kernel must match):
    d_e   = |r_e|                         r_e = edge_vectors[e], e = (j -> i)
    pre_e = a[j] + b[i] + bessel(d_e) @ w_rbf + b1      a = h @ W_src, b = h @ W_dst (node-level)
    m_e   = silu(silu(pre_e) @ w2 + b2) * envelope(d_e)
    out_i = sum_{e: receiver(e) = i} m_e                 (segment sum over receiver-sorted edges)
Shapes: a, b (N, F); w_rbf (K, F); b1 (F,); w2 (F, F); b2 (F,); out (N, F).
Gradients flow to a, b, edge_vectors and all weights (forces need edge_vectors).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F_
from torch import Tensor

from .radial import bessel_basis, polynomial_envelope


def edge_message_aggregate_reference(
    a: Tensor, b: Tensor, edge_vectors: Tensor, senders: Tensor, receivers: Tensor,
    w_rbf: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, cutoff: float,
    row_ptr: Tensor | None = None,
) -> Tensor:
    """Torch-native gather + index_add_ reference (any device, any dtype)."""
    d = torch.linalg.vector_norm(edge_vectors, dim=-1)
    rbf = bessel_basis(d, w_rbf.shape[0], cutoff).to(a.dtype)
    pre = a.index_select(0, senders) + b.index_select(0, receivers) + rbf @ w_rbf + b1
    m = F_.silu(F_.silu(pre) @ w2 + b2) * polynomial_envelope(d, cutoff).to(a.dtype).unsqueeze(-1)
    out = torch.zeros_like(a)
    return out.index_add_(0, receivers, m)


BACKENDS = ("triton", "numba", "reference")


def kernel_backend(device: torch.device) -> str:
    """'triton', 'numba' or 'reference'. ATOMSIM_KERNELS forces one; by default the fused Triton
    kernel on CUDA, the fused Numba kernel (kernels/message_passing_cpu.py) on CPU."""
    forced = os.environ.get("ATOMSIM_KERNELS", "").strip().lower()
    if forced in BACKENDS:
        return forced
    if forced:
        raise ValueError(f"ATOMSIM_KERNELS={forced!r}: use one of {', '.join(BACKENDS)} (or unset it)")
    return {"cuda": "triton", "cpu": "numba"}.get(device.type, "reference")


def skips_far_edges(edge_vectors: Tensor) -> bool:
    """Whether the op on this graph runs the fused CPU kernel, which skips edges at or past the
    cutoff itself (their message and gradient are exactly zero): callers need not copy the graph
    without them (EGNNPotential.within_cutoff)."""
    return kernel_backend(edge_vectors.device) == "numba" and edge_vectors.device.type == "cpu" \
        and edge_vectors.dtype in (torch.float32, torch.float64)


def edge_message_aggregate(*args, **kwargs) -> Tensor:
    """Dispatch to a fused kernel or the reference (see kernel_backend). The Numba kernel takes
    float32/float64 CPU tensors; other dtypes (bf16, fp16) run the reference."""
    a = args[0] if args else kwargs["a"]
    backend = kernel_backend(a.device)
    if backend == "triton":
        from .triton_message_passing import edge_message_aggregate_triton  # lazy: triton is optional

        return edge_message_aggregate_triton(*args, **kwargs)
    if backend == "numba":
        from . import message_passing_cpu  # lazy: binds BLAS and loads the numba kernels once

        if message_passing_cpu.supports(a):
            return message_passing_cpu.edge_message_aggregate_cpu(*args, **kwargs)
    return edge_message_aggregate_reference(*args, **kwargs)
