"""Neighbor lists (Numba cell list) with the meaning of ASE's ``neighbor_list('ijS')``.

Public contract: ``neighbor_list(positions, cell, pbc, cutoff)``
returns ``(i, j, S)``: every ordered pair closer than ``cutoff`` (strictly, as
ASE), sorted by i, then j, then S; S is the integer cell shift of j, so the
vector is ``positions[j] - positions[i] + S @ cell``. Atoms need not be inside
the cell. Along non-periodic directions S is 0 and the cell vector is ignored
(a zero cell is fine for a cluster).

Cost is O(N) for a fixed density: a cell list built in fractional coordinates
(triclinic cells via face distances, many periodic images when the cell is
thinner than the cutoff, the atoms' bounding box along non-periodic
directions). See ``cell_grid`` and ``neighbors_numba`` for the details.

Related modules: ``neighbor_list.NeighborList`` (the engine's list: skin reuse, backends),
``neighbors_array_api`` (the same list under numpy or cupy) and
``neighbors_cupy`` (CUDA raw kernels); all return the same pairs in the same order.
"""
from __future__ import annotations

import numpy as np

from atomsim.kernels.cell_grid import CellGrid, check_inputs, make_grid
from atomsim.kernels.neighbors_numba import bin_order, build_csr, expand_rows

__all__ = ["neighbor_list", "neighbor_list_csr", "spatial_order", "grid_for"]


def grid_for(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float,
             bins_per_cutoff: int = 1) -> CellGrid:
    """The bin grid for these atoms (bounding box on non-periodic directions)."""
    from atomsim.kernels.cell_grid import effective_cell

    fmin = fmax = None
    if len(positions) and not pbc.all():
        frac = positions @ np.linalg.inv(effective_cell(cell, pbc))
        fmin, fmax = frac.min(axis=0), frac.max(axis=0)
    return make_grid(cell, pbc, cutoff, len(positions), fmin, fmax, bins_per_cutoff)


def neighbor_list_csr(positions, cell, pbc, cutoff: float, half: bool = False):
    """Receiver-sorted CSR list: ``(row_ptr, j, S)``; row i is ``row_ptr[i]:row_ptr[i+1]``.

    ``half=True`` keeps each unordered pair once: i < j, or i == j (a periodic
    self-image) with S lexicographically positive.
    """
    pos, cell, pbc, cutoff = check_inputs(positions, cell, pbc, cutoff)
    n = len(pos)
    if n == 0:
        return np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros((0, 3), np.int64)
    grid = grid_for(pos, cell, pbc, cutoff)
    return build_csr(pos, grid, cutoff, bool(half))


def neighbor_list(positions, cell, pbc, cutoff: float, half: bool = False):
    """``(i, j, S)`` as ASE's ``neighbor_list('ijS', ...)``, sorted by i then j (int64 arrays)."""
    row_ptr, j, S = neighbor_list_csr(positions, cell, pbc, cutoff, half)
    return expand_rows(row_ptr), j, S


def spatial_order(positions, cell, pbc, cutoff: float) -> np.ndarray:
    """Permutation listing atoms bin by bin, for the engine to reorder atoms for locality.

    Apply it to every per-atom array (ids included): ``positions[perm]``,
    ``ids[perm]``. Atoms that share a bin end up adjacent in memory, so the
    neighbour list and message passing read nearby rows.
    """
    pos, cell, pbc, cutoff = check_inputs(positions, cell, pbc, cutoff)
    if len(pos) == 0:
        return np.zeros(0, np.int64)
    return bin_order(pos, grid_for(pos, cell, pbc, cutoff))
