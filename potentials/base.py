"""The Potential plugin interface and the one shared place forces and stress come from.

A potential only maps (atomic numbers, graph) -> per-atom energies. Forces
(-dE/dx) and the virial come from autograd with respect to the edge vectors,
here, once for every model: dE/dr_e is exactly what the MPI engine and
LAMMPS's ML-IAP interface (update_pair_forces) need.

Optional direct path: a potential whose ``direct_list()`` names a list kind
("half") computes energy, per-atom energies, forces and virial itself, in one
pass over a :class:`PairList` (positions + integer cell shifts, no edge
tensors, no autograd), as LAMMPS pair styles do; the force providers
(``engine/forces.py``, ``engine/parallel_forces.py``) then call
``direct_forces`` instead of :func:`evaluate_potential`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from atomsim.kernels.edge_ops import edge_vectors, edge_vectors_csr, scatter_edge_forces
from atomsim.kernels.graph import Graph, csr_row_ptr


class Potential(torch.nn.Module):
    """Base class of every atomsim potential (built-in or plugin).

    Subclasses set ``cutoff`` (Å), ``receptive_field`` (message-passing layers;
    1 for pair potentials) and ``species`` (atomic numbers they know, or None for
    any) and implement :meth:`per_atom_energy`.
    """

    cutoff: float = 0.0
    receptive_field: int = 1
    species: Optional[Sequence[int]] = None

    def per_atom_energy(self, numbers: Tensor, graph: Graph) -> Tensor:
        """Energies (n_nodes,) in eV; only the first ``graph.n_local`` are summed."""
        raise NotImplementedError

    def forward(self, numbers: Tensor, graph: Graph) -> Tensor:
        return self.per_atom_energy(numbers, graph)

    # -- optional direct path (pair potentials) -----------------------------
    def direct_list(self) -> Optional[str]:
        """``"half"`` (or ``"full"``): the list :meth:`direct_forces` prefers, as configured now
        (dtype, device, backend); None: this potential has no direct path, use autograd."""
        return None

    def direct_forces(self, numbers: Tensor, positions: Tensor, cell: Tensor, pairs: "PairList",
                      n_local: int, *, virial: bool = True, atom_virial: bool = False) -> "PotentialOutput":
        """Energy, per-atom energies, forces and virial of ``pairs`` in one pass (no autograd).

        Must accept a half or a full list (``pairs.half``) with ghosts (nodes >= ``n_local``,
        MPI): energies count for owned atoms, each pair once overall; forces on ghost rows
        are returned for the caller to send back to their owners. ``atom_virial``: fill
        ``PotentialOutput.atom_virials`` (half of each pair's virial to each of its atoms).
        """
        raise NotImplementedError(f"{type(self).__name__} has no direct path; use evaluate_potential")

    # -- conveniences -------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        for b in self.buffers():
            if b.is_floating_point():
                return b.dtype
        return getattr(self, "_dtype", torch.float64)

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def check_species(self, numbers) -> None:
        """Reject elements the model does not cover, naming them and the known ones."""
        if self.species is None:
            return
        from ase.data import chemical_symbols

        known = set(int(z) for z in self.species)
        present = set(int(z) for z in np.unique(np.asarray(numbers)))
        missing = sorted(present - known)
        if missing:
            names = ", ".join(chemical_symbols[z] for z in missing)
            knows = " ".join(chemical_symbols[z] for z in sorted(known))
            raise ValueError(
                f"the potential does not cover element(s) {names}; it knows: {knows}"
            )


@dataclass
class PotentialOutput:
    energy: Union[float, Tensor]  # eV, sum over the local (owned) atoms, float64 (0-dim: host_values=False)
    energies: Union[np.ndarray, Tensor]  # (n_local,) eV
    forces: Tensor  # (n_nodes, 3) float64: owned AND ghost rows (ghost rows go back to owners)
    virial: Optional[Tensor]  # (3, 3) float64, sum_e r_e (x) dE/dr_e = dE/d(strain); None if not asked
    edge_gradients: Optional[Tensor] = None  # (E, 3) dE/dr_e, for LAMMPS ML-IAP
    atom_virials: Optional[Tensor] = None  # (n_nodes, 3, 3) float64, direct path with atom_virial=True


@dataclass
class PairList:
    """A receiver-sorted CSR pair list for :meth:`Potential.direct_forces`.

    Pair e of row i: r = x[senders[e]] - x[i] + cell_shifts[e] @ cell. ``half``: each
    unordered pair once (i < j, or a periodic self-image once); else every ordered pair.
    Indices may be int32 and shifts any integer type (the compact list keeps memory low).
    """

    row_ptr: Tensor  # (n_nodes + 1,) int64
    senders: Tensor  # (E,) int32 or int64
    cell_shifts: Tensor  # (E, 3) integer
    half: bool


def build_graph(
    positions: Tensor, cell: Tensor, receivers: Tensor, senders: Tensor, cell_shifts: Tensor,
    n_local: int, dtype: torch.dtype, halo_update=None, shifts: Optional[Tensor] = None,
    row_ptr: Optional[Tensor] = None,
) -> Graph:
    """Edge vectors in float64 from positions + integer cell shifts, cast to the model dtype.

    ``shifts`` (= cell_shifts @ cell) and ``row_ptr`` may be passed in by callers that
    cache them between neighbor-list rebuilds. With ``row_ptr``, integer ``cell_shifts``
    and no ``shifts``, one pass over the CSR list writes the model dtype directly (no
    (E, 3) float64 shift or difference arrays: the memory of the GNN path).
    """
    if shifts is None and row_ptr is not None and not cell_shifts.is_floating_point():
        vec = edge_vectors_csr(positions, cell, row_ptr, senders, cell_shifts, dtype, receivers=receivers)
    else:
        if shifts is None:
            shifts = cell_shifts.to(positions.dtype) @ cell
        vec = edge_vectors(positions, receivers, senders, shifts).to(dtype)
    n_nodes = int(positions.shape[0])
    if row_ptr is None:
        row_ptr = csr_row_ptr(receivers, n_nodes)
    return Graph(receivers=receivers, senders=senders, edge_vectors=vec, n_nodes=n_nodes, n_local=n_local,
                 row_ptr=row_ptr, halo_update=halo_update)


def evaluate_potential(
    potential: Potential, numbers: Tensor, graph: Graph, compute_virial: bool = True,
    keep_edge_gradients: bool = False, host_values: bool = True,
) -> PotentialOutput:
    """Energy, forces (on owned + ghost nodes) and virial from autograd on edge vectors.

    ``host_values=False`` leaves ``energy`` (0-dim float64) and ``energies`` as tensors on
    the model's device: no device-to-host read (the engine's device-resident step).

    ``graph.edge_vectors`` must be a leaf (no grad history); forces are
    accumulated in float32 (float64 if the model runs in float64) and returned in
    float64.
    """
    vec = graph.edge_vectors.detach().requires_grad_(True)
    graph.edge_vectors = vec
    with torch.enable_grad():
        e_atoms = potential.per_atom_energy(numbers, graph)
        e_local = e_atoms[: graph.n_local].to(torch.float64)
        energy = e_local.sum()
        # No shortcut for zero edges: under MPI every rank must run the backward pass,
        # because per-layer halo exchanges communicate inside it (an empty rank too).
        g = None
        if energy.requires_grad:
            (g,) = torch.autograd.grad(energy, vec, allow_unused=True)
        if g is None:
            g = torch.zeros_like(vec)
    forces, virial = scatter_edge_forces(g.detach(), vec.detach(), graph.receivers, graph.senders,
                                         graph.n_nodes, compute_virial)
    if virial is not None:
        virial = 0.5 * (virial + virial.T)
    if host_values:
        energy, e_local = float(energy.detach()), e_local.detach().cpu().numpy()
    return PotentialOutput(
        energy=energy.detach() if isinstance(energy, Tensor) else energy,
        energies=e_local.detach() if isinstance(e_local, Tensor) else e_local,
        forces=forces,
        virial=virial,
        edge_gradients=g.detach() if keep_edge_gradients else None,
    )
