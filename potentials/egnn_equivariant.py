"""The E(n)-equivariant EGNN variant (``EGNNConfig(equivariant=True)``): layers also move coordinates.

The seed paper's EGNN (Satorras et al. 2021, as in HydraGNN) updates coordinates in every layer,
x_i <- x_i + C sum_j (x_i - x_j) phi_x(m_ij), and later layers read distances between the updated
coordinates. Those distances mix in neighbours' directions, so the model sees angles, which the
invariant layers (distances only) see only through several hops.

Formulation (kernels/coordinate_update.py has the math): each node carries its displacement
D_i = x_i^l - x_i, not absolute coordinates, and a layer's edge vectors are r_e + s_e (D_j - D_i)
with the graph's own edge vectors r_e. That makes it work unchanged with
- periodic images: an image moves with its atom, so it shares D and the graph's shifted r_e stays;
- MPI ghosts: D goes through ``graph.refresh_ghosts`` together with the node features (one
  exchange per layer, 3 extra columns), so the per-layer halo needs no new data path, and the full
  halo needs no deeper ghosts (h and D after layer l both depend on l hops: the receptive field
  stays ``depth``);
- forces and stress: the energy is a function of the edge vectors only, so autograd on them
  (``potentials/base.py``, evaluate_potential) gives exact forces and the strain derivative.
The full-width edge message stays on the fused kernel (``EGNNLayer.forward``, kernels/
message_passing.py), fed the layer's edge vectors; phi_x is a narrow edge MLP of its own
(``coord_hidden`` wide) over the same inputs (h_i, h_j, distance), because the kernel returns only
the per-receiver sums, not the per-edge messages. The last layer moves no coordinates (nothing
would read them).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from atomsim.kernels.coordinate_update import coordinate_update_reference, layer_edge_vectors
from atomsim.kernels.graph import Graph
from atomsim.kernels.radial import polynomial_envelope

from .egnn import EGNNLayer


class CoordinateUpdate(nn.Module):
    """phi_x: edge MLP (h_j, h_i, bessel(d)) -> tanh weight; starts near zero (EGNN inits it small)."""

    def __init__(self, width: int, n_rbf: int, hidden: int):
        super().__init__()
        self.w_src = nn.Linear(width, hidden, bias=False)
        self.w_dst = nn.Linear(width, hidden, bias=False)
        self.w_rbf = nn.Parameter(torch.empty(n_rbf, hidden))
        self.b1 = nn.Parameter(torch.zeros(hidden))
        self.w_out = nn.Parameter(torch.empty(hidden, 1))
        self.b_out = nn.Parameter(torch.zeros(1))
        nn.init.normal_(self.w_rbf, std=n_rbf**-0.5)
        nn.init.normal_(self.w_out, std=0.01 * hidden**-0.5)

    def forward(self, h: Tensor, disp: Tensor | None, r_layer: Tensor, s: Tensor, graph: Graph,
                cutoff: float, scale: float) -> Tensor:
        return coordinate_update_reference(
            disp, self.w_src(h), self.w_dst(h), r_layer, s, graph.senders, graph.receivers,
            self.w_rbf, self.b1, self.w_out, self.b_out, cutoff, scale)


class EquivariantEGNNLayer(EGNNLayer):
    """The invariant layer (same parameters, same kernel) on the layer's edge vectors, plus phi_x."""

    def __init__(self, width: int, n_rbf: int, coord_hidden: int, moves_coordinates: bool = True):
        super().__init__(width, n_rbf)
        self.coord = CoordinateUpdate(width, n_rbf, coord_hidden) if moves_coordinates else None

    def forward_equivariant(self, h: Tensor, disp: Tensor | None, graph: Graph, s: Tensor, cutoff: float,
                            inv_avg: float) -> tuple[Tensor, Tensor | None]:
        """(h', D'): messages from the edge vectors between this layer's coordinates."""
        r0 = graph.edge_vectors
        r_layer = layer_edge_vectors(r0, s, disp, graph.senders, graph.receivers)
        layer_graph = graph if disp is None else dataclasses.replace(graph, edge_vectors=r_layer)
        h_new = EGNNLayer.forward(self, h, layer_graph, cutoff, inv_avg)
        if self.coord is None:
            return h_new, None
        return h_new, self.coord(h, disp, r_layer, s, graph, cutoff, inv_avg)


def build_layers(width: int, n_rbf: int, depth: int, coord_hidden: int) -> nn.ModuleList:
    """``depth`` layers; all but the last move coordinates."""
    return nn.ModuleList(EquivariantEGNNLayer(width, n_rbf, coord_hidden, moves_coordinates=k < depth - 1)
                         for k in range(depth))


def equivariant_node_features(layers: nn.ModuleList, h: Tensor, graph: Graph, cutoff: float,
                              inv_avg: float) -> Tensor:
    """Final node states: node features and displacements refreshed on ghosts together, per layer."""
    s = polynomial_envelope(torch.linalg.vector_norm(graph.edge_vectors, dim=-1), cutoff)
    width = h.shape[-1]
    disp = None
    for layer in layers:
        h, disp = layer.forward_equivariant(h, disp, graph, s, cutoff, inv_avg)
        if disp is None:
            h = graph.refresh_ghosts(h)
        else:
            both = graph.refresh_ghosts(torch.cat([h, disp.to(h.dtype)], dim=-1))
            h, disp = both[:, :width], both[:, width:]
    return h
