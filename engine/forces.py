"""Serial force provider: Verlet list with skin reuse + the potential, into an MDState.

The MPI engine provides the same ``compute(state)`` contract with ghosts.
"""
from __future__ import annotations

import numpy as np
import torch

from atomsim.kernels.neighbors_verlet import VerletList
from atomsim.potentials.base import Potential, build_graph, evaluate_potential


class SerialForces:
    """Builds the neighbor list at cutoff + skin and reuses it until an atom moved > skin/2."""

    def __init__(self, potential: Potential, skin: float = 1.0, compute_virial: bool = True):
        self.potential = potential
        self.skin = float(skin)
        self.compute_virial = compute_virial
        self.list_cutoff = float(potential.cutoff) + self.skin
        self._ref_positions = None
        self._ref_cell = None
        self._edges = None
        self._vlist = VerletList(float(potential.cutoff), self.skin)
        self.n_builds = 0

    def needs_rebuild(self, state) -> bool:
        if self._edges is None:
            return True
        return self._vlist.needs_update(state.positions.detach().cpu().numpy(),
                                        state.cell.detach().cpu().numpy(), state.pbc)

    def rebuild(self, state) -> None:
        vl = self._vlist
        vl.build(state.positions.detach().cpu().numpy(), state.cell.detach().cpu().numpy(), state.pbc)
        dev = state.positions.device
        self._edges = tuple(torch.from_numpy(np.ascontiguousarray(a)).to(dev) for a in (vl.i, vl.j, vl.S))
        # Constant until the next rebuild (a cell change forces one): cache them.
        self._shifts = self._edges[2].to(state.cell.dtype) @ state.cell
        self._row_ptr = torch.from_numpy(np.ascontiguousarray(vl.row_ptr)).to(dev)
        self._ref_positions = state.positions.detach().clone()
        self._ref_cell = state.cell.detach().clone()
        self.n_builds += 1

    def reference_state(self) -> dict:
        """What a restart needs to rebuild exactly the same list (bit-for-bit resume)."""
        return {"positions": self._ref_positions, "cell": self._ref_cell}

    def compute(self, state) -> None:
        if self.needs_rebuild(state):
            self.rebuild(state)
        i, j, S = self._edges
        graph = build_graph(state.positions, state.cell, i, j, S, state.n_local, self.potential.dtype,
                            shifts=self._shifts, row_ptr=self._row_ptr)
        out = evaluate_potential(self.potential, state.numbers, graph, compute_virial=self.compute_virial)
        state.forces = out.forces[: state.n_local]
        state.energies = out.energies
        state.energy = out.energy
        state.virial = out.virial
