"""Neighbor lists. PLACEHOLDER: delegates to ASE until the Numba cell list lands.

Public contract (ARCHITECTURE.md): ``neighbor_list(positions, cell, pbc, cutoff)``
returns ``(i, j, S)`` with the meaning of ASE's ``neighbor_list('ijS', ...)``:
every ordered pair within the cutoff, sorted by i, S the integer cell shift of j
(so the vector is ``positions[j] - positions[i] + S @ cell``).
"""
from __future__ import annotations

import numpy as np


def neighbor_list(positions, cell, pbc, cutoff: float):
    from ase.neighborlist import primitive_neighbor_list

    i, j, S = primitive_neighbor_list(
        "ijS", np.asarray(pbc, dtype=bool), np.asarray(cell, dtype=float),
        np.asarray(positions, dtype=float), float(cutoff), self_interaction=False,
    )
    order = np.lexsort((j, i))
    return i[order].astype(np.int64), j[order].astype(np.int64), S[order].astype(np.int64)
