"""The bin grid shared by the Numba and array-API neighbor lists.

Why a separate module: both backends must bin atoms identically (same
effective cell, bin counts and search ranges) so their lists agree pair for
pair, and the 3x3 geometry is cheap host-side numpy in both cases.

Binning is done in fractional coordinates of an *effective cell*: the periodic
cell vectors as given, and, for each non-periodic direction, a unit vector
orthogonal to the other vectors (the user's vector there carries no meaning,
and an orthogonal one gives the thinnest bins). Along a periodic direction the
fractional coordinate is wrapped into [0, 1); along a non-periodic one the bins
span the atoms' bounding box. Bins along direction c are at least
``cutoff / bins_per_cutoff`` thick measured between the planes of constant
fractional coordinate (the face distance), which is what makes triclinic cells
correct: two atoms whose bins differ by more than ``search[c]`` along c are
farther apart than the cutoff.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Relative safety margin: bins are sized for cutoff * (1 + _MARGIN) so a
# fractional coordinate rounded into the neighbouring bin cannot hide a pair.
_MARGIN = 1e-8


@dataclass(frozen=True)
class CellGrid:
    cell: np.ndarray  # (3, 3) effective cell, rows are vectors
    inv_cell: np.ndarray  # (3, 3): frac = x @ inv_cell
    pbc: np.ndarray  # (3,) bool
    origin: np.ndarray  # (3,) frac origin of the bins (0 on periodic dims)
    span: np.ndarray  # (3,) frac extent covered by the bins (1 on periodic dims)
    n_bins: np.ndarray  # (3,) int64
    search: np.ndarray  # (3,) int64: bins to scan on each side of an atom's bin

    @property
    def total_bins(self) -> int:
        return int(np.prod(self.n_bins))

    @property
    def n_stencil(self) -> int:
        """Number of distinct image-shift codes (used to encode shifts in sort keys)."""
        return int(np.prod(2 * self.search + 1))


def as_cell(cell) -> np.ndarray:
    """(3, 3) float64 cell; three numbers mean an orthorhombic box (as ASE accepts)."""
    cell = np.asarray(cell, dtype=np.float64)
    if cell.size == 3:
        cell = np.diag(cell.reshape(3))
    if cell.shape != (3, 3):
        raise ValueError(f"cell must be a 3x3 matrix (rows are vectors), got shape {cell.shape}")
    return cell


def check_inputs(positions, cell, pbc, cutoff):
    """Normalise (positions, cell, pbc, cutoff); raise ValueError naming the bad input."""
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions must have shape (n_atoms, 3), got {pos.shape}")
    cell = as_cell(cell)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    cutoff = float(cutoff)
    if not np.isfinite(cutoff) or cutoff <= 0:
        raise ValueError(f"neighbor cutoff must be a positive number of Å, got {cutoff}")
    if pos.size and not np.all(np.isfinite(pos)):
        raise ValueError("positions contain NaN or inf; the neighbor list cannot be built")
    return np.ascontiguousarray(pos), cell, pbc, cutoff


def effective_cell(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Periodic vectors as given; non-periodic ones replaced by orthonormal completions."""
    per = [c for c in range(3) if pbc[c]]
    non = [c for c in range(3) if not pbc[c]]
    out = np.array(cell, dtype=np.float64, copy=True)
    if per:
        vecs = cell[per]
        sv = np.linalg.svd(vecs, compute_uv=False)
        if sv.min() <= 1e-10 * max(sv.max(), 1e-300):
            raise ValueError(
                f"cell {cell.tolist()} is degenerate along the periodic directions pbc={pbc.tolist()}: "
                "give non-zero, independent cell vectors along every periodic direction "
                "(or set pbc False along the flat one)"
            )
    if len(per) == 0:
        return np.eye(3)
    if len(per) == 1:
        u = cell[per[0]] / np.linalg.norm(cell[per[0]])
        e = np.zeros(3)
        e[int(np.argmin(np.abs(u)))] = 1.0
        v1 = np.cross(u, e)
        v1 /= np.linalg.norm(v1)
        v2 = np.cross(u, v1)
        out[non[0]], out[non[1]] = v1, v2
    elif len(per) == 2:
        n = np.cross(cell[per[0]], cell[per[1]])
        out[non[0]] = n / np.linalg.norm(n)
    return out


def face_distances(cell: np.ndarray) -> np.ndarray:
    """Distance (Å) between opposite faces of the cell, per cell vector: V / |b x c|, V / |c x a|, V / |a x b|.

    Computed as 1 / |reciprocal vector| (the columns of the inverse cell), the same
    quantity; it is the thickness of the cell along a fractional direction, which
    is what bins (kernels) and sub-domain halos (engine/domain.py) are sized by.
    """
    inv = np.linalg.inv(np.asarray(cell, dtype=np.float64))
    return 1.0 / np.linalg.norm(inv, axis=0)


def make_grid(cell, pbc, cutoff: float, n_atoms: int, frac_min=None, frac_max=None,
              bins_per_cutoff: int = 1) -> CellGrid:
    """Bin grid for atoms whose fractional coordinates (non-periodic dims) span [frac_min, frac_max].

    ``bins_per_cutoff`` > 1 makes bins thinner than the cutoff (fewer wasted
    candidates, more bins to visit). The total number of bins is capped at
    about 4 per atom so sparse or vacuum-filled boxes do not allocate huge grids.
    """
    cell = np.asarray(cell, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    eff = effective_cell(cell, pbc)
    inv = np.linalg.inv(eff)
    face = face_distances(eff)
    rc = cutoff * (1.0 + _MARGIN)
    origin = np.zeros(3)
    span = np.ones(3)
    for c in range(3):
        if not pbc[c]:
            lo = 0.0 if frac_min is None else float(frac_min[c])
            hi = 0.0 if frac_max is None else float(frac_max[c])
            origin[c] = lo
            span[c] = max(hi - lo, 0.0)
    thickness = span * face  # Å between the first and last bin planes
    n_bins = np.maximum(1, np.floor(bins_per_cutoff * thickness / rc)).astype(np.int64)
    cap = max(64, 4 * int(n_atoms))
    while int(np.prod(n_bins)) > cap:
        c = int(np.argmax(n_bins))
        n_bins[c] = max(1, (n_bins[c] + 1) // 2)
    search = np.zeros(3, dtype=np.int64)
    for c in range(3):
        t = thickness[c] / n_bins[c]
        if pbc[c]:
            search[c] = int(np.ceil(rc / t))
        elif n_bins[c] > 1:
            search[c] = min(int(np.ceil(rc / t)), int(n_bins[c]) - 1)
    # Bins along a non-periodic direction with zero extent: span 0 -> avoid 0/0 in binning.
    span = np.where(span > 0, span, 1.0)
    return CellGrid(eff, inv, pbc.copy(), origin, span, n_bins, search)
