"""Force providers: the one contract between the MD step and whatever computes forces.

A provider turns the state a rank owns into a :class:`ForceResult`; it owns
its neighbor list (``kernels/neighbor_list.py``) and, under MPI, the halo.
``md_step`` (``engine/step.py``) is its only caller in the run loop. Two
implementations ship: :class:`SerialForces` here and ``ParallelForces``
(``engine/parallel_forces.py``, domain decomposition); a plugin may bring its
own by implementing :class:`ForceProvider`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np
from torch import Tensor

from atomsim.kernels.edge_ops import edge_atom_virials, rows_int32
from atomsim.kernels.neighbor_list import NeighborList
from atomsim.potentials.base import PairList, Potential, build_graph, evaluate_potential

from .device_checks import DeferredChecks
from .state import host_array  # re-exported: atomsim/calculator.py reads energies with it

__all__ = ["ForceResult", "ForceProvider", "NeighborListForces", "SerialForces", "host_array"]


@dataclass
class ForceResult:
    """What one force evaluation gives the step: all global quantities are already reduced."""

    # energy and energies: host numbers (MPI provider, direct CPU path) or tensors on the model's device
    # (SerialForces' GNN path: no host read in the step); float(energy) / host_array(energies) read them
    energy: Union[float, Tensor]  # eV, whole system (every rank holds the same value)
    energies: Union[np.ndarray, Tensor]  # (n_owned,) eV per owned atom
    forces: Tensor  # (n_owned, 3) float64, eV/Å
    virial: Optional[Tensor]  # (3, 3) float64, whole system, dE/d(strain); None when not asked
    rebuilt: bool = False  # the neighbor list (and halo) was rebuilt for this evaluation
    atom_virials: Optional[Tensor] = None  # (n_owned, 3, 3) float64, summing to the virial; when asked


@runtime_checkable
class ForceProvider(Protocol):
    """The contract every force provider meets (serial, MPI, or a plugin's own).

    - ``compute(state, virial=...)`` evaluates forces at ``state``'s positions and cell.
      It may reorder or migrate the atoms ``state`` owns (MPI), never anything else
      of the state; collective under MPI. Providers that also take ``atom_virial=True``
      fill ``ForceResult.atom_virials`` (``output.per_atom: [stresses]`` needs it).
    - ``prepare(state)`` is called once before the first step (MPI: keep the atoms
      this rank owns).
    - ``reference_state(state)`` is what a restart needs to rebuild the identical
      neighbor list: ``{"positions": (n_owned, 3), "ids": (n_owned,), "cell": (3, 3)}``
      for the atoms this rank owns (``{}`` before the first build). No communication.
    - ``restore_reference(state, positions, cell)`` rebuilds exactly there
      (``positions`` for ALL atoms, sorted by id); collective under MPI.
    - Optional: ``deferred_checks = True`` and ``compute(..., checks=DeferredChecks)``
      (``engine/device_checks.py``): the skin check folded into ``checks`` on the device,
      no rebuild decided on the host while a list for these atoms exists.
    - ``n_builds`` counts neighbor-list builds; ``timers`` accumulates seconds by part
      (at least ``neighbor``; the MPI provider adds ``halo``, ``model``, ``reverse``, ``sync``).
    """

    potential: Potential
    n_builds: int
    timers: Dict[str, float]

    def prepare(self, state) -> None: ...

    def compute(self, state, *, virial: bool = True) -> ForceResult: ...

    def reference_state(self, state) -> dict: ...

    def restore_reference(self, state, positions: Tensor, cell: Tensor) -> None: ...


class NeighborListForces:
    """What the shipped providers share: a potential, a NeighborList whose builds they count, timers."""

    def __init__(self, potential: Potential, nlist: NeighborList, timers: Sequence[str]):
        self.potential = potential
        self.nlist = nlist
        self.timers: Dict[str, float] = {name: 0.0 for name in timers}

    @property
    def n_builds(self) -> int:
        return self.nlist.n_builds

    @n_builds.setter
    def n_builds(self, value: int) -> None:  # a resumed run continues the saved count
        self.nlist.n_builds = int(value)


def direct_pairs(nlist: NeighborList) -> PairList:
    """The neighbor list's current edges as the direct path's CSR pair list."""
    return PairList(row_ptr=nlist.row_ptr, senders=nlist.senders, cell_shifts=nlist.cell_shifts,
                    half=nlist.half)


class SerialForces(NeighborListForces):
    """One rank, periodic images through the neighbor list's cell shifts.

    A potential with a direct path (``Potential.direct_list()``, e.g. LJ in float64 on
    CPU) gets the list it asks for (half, compact int32 indices) and computes energy,
    forces and virial itself in one pass; any other goes through ``evaluate_potential``.
    """

    def __init__(self, potential: Potential, skin: float = 1.0, neighbor_list: Optional[NeighborList] = None):
        direct = potential.direct_list()
        if neighbor_list is not None:
            nlist = neighbor_list
        else:
            nlist = NeighborList(float(potential.cutoff), skin, half=direct == "half", compact=True)
        if nlist.half and direct is None:
            raise ValueError(f"{type(potential).__name__} needs a full neighbor list (it has no direct path)")
        super().__init__(potential, nlist, ("neighbor", "model"))
        self.direct = direct is not None
        self._recv32 = None  # (row_ptr, int32 receivers) of the GNN path: 4 B per edge, no int64 copy

    def prepare(self, state) -> None:
        """Nothing to distribute on one rank."""

    deferred_checks = True  # compute(..., checks=) is supported: the device-resident step

    def compute(self, state, *, virial: bool = True, atom_virial: bool = False,
                checks: Optional[DeferredChecks] = None) -> ForceResult:
        """Forces at ``state``; with ``checks`` the skin check stays on the device (no host read)."""
        t0 = time.perf_counter()
        nl = self.nlist
        if checks is not None and nl.can_check_on_device(state.positions, state.pbc):
            checks.note_displacement(nl.displacement_sq(state.positions, state.cell))
            rebuilt = False
        else:
            rebuilt = nl.update(state.positions, state.cell, state.pbc)
        t1 = time.perf_counter()
        if self.direct:
            out = self.potential.direct_forces(state.numbers, state.positions, state.cell, direct_pairs(nl),
                                               state.n_local, virial=virial, atom_virial=atom_virial)
            self.timers["neighbor"] += t1 - t0
            self.timers["model"] += time.perf_counter() - t1
            atoms = None if out.atom_virials is None else out.atom_virials[: state.n_local]
            return ForceResult(energy=out.energy, energies=out.energies, forces=out.forces[: state.n_local],
                               virial=out.virial, rebuilt=rebuilt, atom_virials=atoms)
        # edge vectors in one pass from positions + integer shifts @ cell, in the model dtype
        graph = build_graph(state.positions, state.cell, self._receivers(), nl.senders, nl.cell_shifts,
                            state.n_local, self.potential.dtype, row_ptr=nl.row_ptr)
        out = evaluate_potential(self.potential, state.numbers, graph, compute_virial=virial,
                                 keep_edge_gradients=atom_virial, host_values=False)
        atoms = None
        if atom_virial:
            atoms = edge_atom_virials(out.edge_gradients, graph.edge_vectors, graph.receivers, graph.senders,
                                      graph.n_nodes)[: state.n_local]
        self.timers["neighbor"] += t1 - t0
        self.timers["model"] += time.perf_counter() - t1
        return ForceResult(energy=out.energy, energies=out.energies, forces=out.forces[: state.n_local],
                           virial=out.virial, rebuilt=rebuilt, atom_virials=atoms)

    def _receivers(self) -> Tensor:
        """Receivers of the current list: the list's own if it has them, else int32 from row_ptr."""
        nl = self.nlist
        if nl.__dict__.get("_receivers") is not None or not nl.compact:
            return nl.receivers
        if self._recv32 is None or self._recv32[0] is not nl.row_ptr:
            self._recv32 = (nl.row_ptr, rows_int32(nl.row_ptr))
        return self._recv32[1]

    def reference_state(self, state) -> dict:
        nl = self.nlist
        if nl.reference_positions is None:
            return {}
        return {"positions": nl.reference_positions, "ids": state.ids, "cell": nl.reference_cell}

    def restore_reference(self, state, positions: Tensor, cell: Tensor) -> None:
        """Rebuild at the saved reference: the same pairs in the same order as the saved run."""
        ref = positions.to(state.positions)
        if state.n_local and int(state.ids.max()) < ref.shape[0]:
            ref = ref[state.ids]  # restart arrays are sorted by id
        self.nlist.build(ref, cell.to(state.cell), state.pbc)
