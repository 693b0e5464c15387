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
    """Torch-native gather + index_add_ reference (any device, any dtype).

    16-bit inputs (bf16, fp16): the receiver sums run in fp32 and the result is cast back, as
    in the fused kernels (fp32 accumulation), so a CPU bf16/fp16 model matches their numerics
    there instead of summing ~40 messages per atom in 8- or 11-bit mantissas.
    """
    d = torch.linalg.vector_norm(edge_vectors, dim=-1)
    rbf = bessel_basis(d, w_rbf.shape[0], cutoff).to(a.dtype)
    pre = a.index_select(0, senders) + b.index_select(0, receivers) + rbf @ w_rbf + b1
    m = F_.silu(F_.silu(pre) @ w2 + b2) * polynomial_envelope(d, cutoff).to(a.dtype).unsqueeze(-1)
    acc = torch.float32 if a.dtype in (torch.float16, torch.bfloat16) else a.dtype
    out = torch.zeros(a.shape, dtype=acc, device=a.device)
    return out.index_add_(0, receivers, m.to(acc)).to(a.dtype)


BACKENDS = ("triton", "numba", "reference")


def gradient_edges(tensors) -> tuple:
    """Autograd edges of the differentiable inputs, to ask in backward which are still needed."""
    try:
        return tuple(torch.autograd.graph.get_gradient_edge(t) if t.requires_grad else None
                     for t in tensors)
    except Exception:  # older torch: fall back to needs_input_grad alone
        return (None,) * len(tensors)


def needed_inputs(needs: tuple, edges: tuple) -> tuple:
    """needs_input_grad, minus inputs whose gradient this backward pass will not use.

    MD asks only for d(energy)/d(edge vectors) while the model's weights still require
    grad: without this the weight-gradient kernels would run (and be thrown away) every step.
    """
    out = []
    for need, edge in zip(needs, edges):
        if need and edge is not None:
            try:
                need = bool(torch._C._will_engine_execute_node(edge.node))
            except Exception:  # not inside an engine run, or API gone: keep the flag
                pass
        out.append(need)
    return tuple(out)


def reference_backward(g: Tensor, originals: tuple, senders: Tensor, receivers: Tensor, cutoff: float,
                       needs: tuple) -> list:
    """Differentiable gradients of the fused kernels' inputs (a, b, edge_vectors, w_rbf, b1, w2, b2)
    by torch recomputation: what the fused kernels' backward does under create_graph=True (a loss on
    forces). On aliases (view_as), so autograd.grad returns this op's partial derivatives: on the
    tensors themselves it would add paths through earlier layers (a depends on the edge vectors
    too) and count them twice."""
    with torch.enable_grad():
        alias = [t.view_as(t) for t in originals]
        out = edge_message_aggregate_reference(*alias[:3], senders, receivers, *alias[3:], cutoff)
        wrt = [t for t, n in zip(alias, needs) if n]
        got = list(torch.autograd.grad(out, wrt, g, create_graph=True, allow_unused=True))
    grads = [got.pop(0) if n else None for n in needs]
    return [torch.zeros_like(t) if n and gr is None else gr for t, n, gr in zip(originals, needs, grads)]


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
