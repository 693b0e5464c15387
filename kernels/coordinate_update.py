"""EGNN's E(n)-equivariant coordinate update, written on edges: the reference op a kernel must match.

Satorras et al. (2021) update coordinates in every layer,
``x_i <- x_i + C sum_j (x_i - x_j) phi_x(m_ij)``. An energy model that must work with periodic
images and with MPI ghost atoms cannot carry absolute coordinates: the image of atom j across a
cell face sits at x_j + S cell. Every image moves by the same amount (the update is translation
equivariant), so this op carries the *displacement* D_i = x_i^l - x_i of each node instead; it is
the same for every image of an atom and for a ghost and its owner, so ghosts get it with the
per-layer halo exactly like the invariant node features. The layer's relative vectors are then

    s_e       = envelope(d_e)                           d_e = |r_e|, r_e = graph edge vector (j -> i)
    r^l_e     = r_e + s_e (D_j - D_i)                   (s_e = 1 is EGNN's x_j^l - x_i^l exactly)
    w_e       = tanh(silu(u[j] + v[i] + bessel(|r^l_e|) @ w_rbf + b1) @ w_out + b_out)    (phi_x)
    D'_i      = D_i + C sum_{e: recv(e) = i} (-r^l_e) w_e s_e                            (x_i - x_j = -r^l_e)

The switch s_e (the model's polynomial envelope, zero with two derivatives at the cutoff) keeps
the energy smooth when a pair crosses the cutoff: the graph is the radius graph of the original
positions, so a pair entering it must start with its original length and no weight.
Shapes: r (E, 3); s (E,); D (N, 3); u, v (N, H); w_rbf (K, H); b1 (H,); w_out (H, 1); b_out (1,).
Everything is differentiable (forces and stress come from autograd on the graph's edge vectors).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F_
from torch import Tensor

from .radial import bessel_basis


def layer_edge_vectors(r: Tensor, s: Tensor, disp: Tensor | None, senders: Tensor, receivers: Tensor) -> Tensor:
    """r_e + s_e (D_j - D_i): edge vectors between the layer's coordinates (r itself when D is None)."""
    if disp is None:
        return r
    return r + s.unsqueeze(-1) * (disp.index_select(0, senders) - disp.index_select(0, receivers))


def coordinate_update_reference(
    disp: Tensor | None, u: Tensor, v: Tensor, r_layer: Tensor, s: Tensor, senders: Tensor,
    receivers: Tensor, w_rbf: Tensor, b1: Tensor, w_out: Tensor, b_out: Tensor, cutoff: float,
    scale: float,
) -> Tensor:
    """The new displacements D' (N, 3); ``disp`` None means zero (the first layer)."""
    d = torch.linalg.vector_norm(r_layer, dim=-1)
    rbf = bessel_basis(d, w_rbf.shape[0], cutoff).to(u.dtype)
    hidden = F_.silu(u.index_select(0, senders) + v.index_select(0, receivers) + rbf @ w_rbf + b1)
    weight = torch.tanh(hidden @ w_out + b_out) * s.unsqueeze(-1)  # (E, 1)
    out = torch.zeros((u.shape[0], 3), dtype=u.dtype, device=u.device)
    out = out.index_add(0, receivers, r_layer * weight, alpha=-scale)
    return out if disp is None else disp + out
