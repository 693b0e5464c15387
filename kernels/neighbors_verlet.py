"""Verlet list with skin: one cell-list build at cutoff + skin, reused while valid.

Why: a pair closer than ``cutoff`` now was closer than ``cutoff + skin`` at the
last build as long as no atom has moved more than skin/2 since, so the list
only needs rebuilding when that fails (or the cell / pbc / atom count change).
The check is one parallel max-reduction over |x - x_ref|^2, far cheaper than a
build.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from atomsim.kernels.cell_grid import as_cell, check_inputs
from atomsim.kernels.neighbors import neighbor_list_csr
from atomsim.kernels.neighbors_numba import expand_rows, max_displacement_sq


class VerletList:
    """Neighbour list at ``cutoff + skin`` rebuilt only when an atom moved more than skin/2.

    After ``update`` the list is in ``i, j, S`` (ASE ``'ijS'`` meaning, sorted by
    i then j) and ``row_ptr`` (CSR over i). ``reference_positions`` are the
    positions of the last build: rebuilding from them gives the identical list,
    in the identical order (what a bit-for-bit restart needs).
    """

    def __init__(self, cutoff: float, skin: float, half: bool = False):
        if not cutoff > 0:
            raise ValueError(f"neighbor cutoff must be > 0 Å, got {cutoff}")
        if not skin >= 0:
            raise ValueError(f"neighbor.skin must be >= 0 Å, got {skin}")
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.half = bool(half)
        self.list_cutoff = self.cutoff + self.skin
        self.n_builds = 0
        self.reference_positions: Optional[np.ndarray] = None
        self.reference_cell: Optional[np.ndarray] = None
        self.reference_pbc: Optional[np.ndarray] = None
        self.i = self.j = self.S = self.row_ptr = None

    def needs_update(self, positions, cell, pbc) -> bool:
        """True when the stored list may miss a pair within ``cutoff`` at these positions."""
        if self.reference_positions is None:
            return True
        pos = np.ascontiguousarray(positions, dtype=np.float64)
        if pos.shape != self.reference_positions.shape:
            return True
        if not np.array_equal(as_cell(cell), self.reference_cell):
            return True
        if not np.array_equal(np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)), self.reference_pbc):
            return True
        if len(pos) == 0:
            return False
        return bool(max_displacement_sq(pos, self.reference_positions) > (0.5 * self.skin) ** 2)

    def build(self, positions, cell, pbc) -> None:
        """Rebuild unconditionally at ``cutoff + skin`` and take these positions as reference."""
        pos, cell_a, pbc_a, _ = check_inputs(positions, cell, pbc, self.list_cutoff)
        self.row_ptr, self.j, self.S = neighbor_list_csr(pos, cell_a, pbc_a, self.list_cutoff, self.half)
        self.i = expand_rows(self.row_ptr)
        self.reference_positions = pos.copy()
        self.reference_cell = cell_a.copy()
        self.reference_pbc = pbc_a.copy()
        self.n_builds += 1

    def update(self, positions, cell, pbc) -> bool:
        """Rebuild if needed; returns True when it did."""
        if self.needs_update(positions, cell, pbc):
            self.build(positions, cell, pbc)
            return True
        return False
