"""The graph a potential sees: directed edges with their vectors, receiver-sorted.

Convention (shared by every potential, the MPI engine and the LAMMPS front end):
edge e goes from sender j to receiver i (i is the "center" atom of ASE's
``neighbor_list('ijS')``), and ``edge_vectors[e] = x[j] - x[i] + S[e] @ cell``.
Edges are sorted by receiver so segment reductions over ``row_ptr`` work.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor


@dataclass
class Graph:
    receivers: Tensor  # (E,) int64, ascending
    senders: Tensor  # (E,) int64
    edge_vectors: Tensor  # (E, 3) in the model dtype, x_j - x_i + shift
    n_nodes: int  # owned + ghost nodes
    n_local: int  # the first n_local nodes are owned: their energies count
    row_ptr: Optional[Tensor] = None  # (n_nodes + 1,) CSR offsets over receivers
    # Per-layer halo hook: called by message-passing models after each layer
    # with node features (n_nodes, F); returns features whose ghost rows were
    # refreshed from their owners. Identity on one rank / with a full halo.
    halo_update: Optional[Callable[[Tensor], Tensor]] = field(default=None, repr=False)

    def refresh_ghosts(self, features: Tensor) -> Tensor:
        """Apply the per-layer halo hook, if any (models call this between layers)."""
        return features if self.halo_update is None else self.halo_update(features)

    @property
    def n_edges(self) -> int:
        return int(self.receivers.shape[0])


def csr_row_ptr(receivers: Tensor, n_nodes: int) -> Tensor:
    """Row offsets of receiver-sorted edges: edges of node i are row_ptr[i]:row_ptr[i+1]."""
    counts = torch.bincount(receivers, minlength=n_nodes)
    row_ptr = torch.zeros(n_nodes + 1, dtype=torch.int64, device=receivers.device)
    torch.cumsum(counts, 0, out=row_ptr[1:])
    return row_ptr
