"""The EGNN residual node update ``h + W2 silu(W1 [h, agg] + b1) + b2``, its activations recomputed.

Why: autograd keeps [h, agg] (2F per node), the hidden pre-activation and its SiLU (F each) of
every layer until the backward pass: 1 kB per node and layer for the bundled model (F = 64,
float32), the largest part of a GNN rank's peak memory per atom under MPI
(``benchmarks/memory/probe_phases.py``). Here only h and agg are kept and the backward recomputes
the rest: two small (N x 2F)(2F x F) and (N x F)(F x F) products per layer, next to the edge
work's ~40-80 edges x F x F per node. Same values as the module path (the same torch ops);
a loss on forces (``create_graph=True``) differentiates the recomputation, as the fused edge
kernels do (``kernels/message_passing.py`` ``reference_backward``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F_
from torch import Tensor, nn

from atomsim.kernels.message_passing import gradient_edges, needed_inputs


def _update(h: Tensor, agg: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    return h + F_.linear(F_.silu(F_.linear(torch.cat([h, agg], dim=-1), w1, b1)), w2, b2)


class _NodeUpdate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, agg, w1, b1, w2, b2):
        ctx.save_for_backward(h, agg, w1, b1, w2, b2)
        ctx.grad_edges = gradient_edges((h, agg, w1, b1, w2, b2))
        return _update(h, agg, w1, b1, w2, b2)

    @staticmethod
    def backward(ctx, g):
        saved = ctx.saved_tensors
        needs = needed_inputs(tuple(bool(n) for n in ctx.needs_input_grad), ctx.grad_edges)
        create = torch.is_grad_enabled()
        with torch.enable_grad():
            # aliases (view_as): autograd.grad gives this op's partial derivatives only (agg depends on h)
            inputs = [t.view_as(t) if n and create else (t.detach().requires_grad_(n) if n else t.detach())
                      for t, n in zip(saved, needs)]
            out = _update(*inputs)
            wrt = [t for t, n in zip(inputs, needs) if n]
            got = list(torch.autograd.grad(out, wrt, g, create_graph=create, allow_unused=True)) if wrt else []
        return tuple(got.pop(0) if n else None for n in needs)


def node_update(h: Tensor, agg: Tensor, mlp: nn.Sequential) -> Tensor:
    """``h + mlp(cat([h, agg]))`` for ``mlp = Sequential(Linear, SiLU, Linear)``, recomputed in backward."""
    lin1, lin2 = mlp[0], mlp[2]
    args = (h, agg, lin1.weight, lin1.bias, lin2.weight, lin2.bias)
    if torch.is_grad_enabled() and any(t.requires_grad for t in args):
        return _NodeUpdate.apply(*args)
    return _update(*args)
