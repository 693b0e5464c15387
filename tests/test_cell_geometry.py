"""kernels.cell_grid.face_distances, the one face-distance function of the neighbor lists and the domains."""
from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from atomsim.engine import domain
from atomsim.kernels import cell_grid
from atomsim.kernels.cell_grid import face_distances


def _plane_gaps(cell: np.ndarray) -> np.ndarray:
    """Independent: the face through the origin spanned by (b, c) and the opposite one through a,
    their gap = |a . n| with n the unit normal b x c / |b x c| (and cyclically); also V / |b x c|."""
    out = np.empty((2, 3))
    vol = abs(np.linalg.det(cell))
    for d in range(3):
        a, b, c = cell[d], cell[(d + 1) % 3], cell[(d + 2) % 3]
        n = np.cross(b, c)
        out[0, d] = abs(a @ n) / np.linalg.norm(n)
        out[1, d] = vol / np.linalg.norm(n)
    return out


def _cells():
    rng = np.random.default_rng(7)
    yield "orthorhombic", np.diag([3.0, 4.5, 7.25])
    yield "fcc primitive", bulk("Cu", "fcc", a=3.61).cell.array
    yield "hcp", bulk("Mg", "hcp", a=3.2, c=5.2).cell.array
    yield "triclinic", np.array([[6.0, 0.0, 0.0], [3.5, 5.2, 0.0], [1.7, 2.1, 7.3]])
    for k in range(5):  # random, upper-triangular-free, some strongly sheared
        cell = rng.normal(size=(3, 3)) + np.eye(3) * rng.uniform(1.0, 4.0)
        yield f"random{k}", cell * rng.uniform(2.0, 20.0)


@pytest.mark.parametrize("name,cell", list(_cells()), ids=[n for n, _ in _cells()])
def test_face_distances_match_the_plane_gap(name, cell):
    got = face_distances(cell)
    gaps = _plane_gaps(cell)
    np.testing.assert_allclose(got, gaps[0], rtol=1e-12)
    np.testing.assert_allclose(got, gaps[1], rtol=1e-12)
    if name == "orthorhombic":
        np.testing.assert_allclose(got, np.diag(cell), rtol=1e-15)
    # a list is as good as an array (domain.py passes the config's cell as given)
    np.testing.assert_array_equal(face_distances(cell.tolist()), got)


def test_face_distances_bound_every_lattice_point_off_the_face():
    """No lattice vector with a non-zero c-th fractional index is nearer the (other two vectors') plane
    than the face distance: brute force over a block of lattice points."""
    cell = np.array([[6.0, 0.0, 0.0], [3.5, 5.2, 0.0], [1.7, 2.1, 7.3]])
    got = face_distances(cell)
    idx = np.stack(np.meshgrid(*[np.arange(-3, 4)] * 3, indexing="ij"), -1).reshape(-1, 3)
    pts = idx @ cell
    for d in range(3):
        n = np.cross(cell[(d + 1) % 3], cell[(d + 2) % 3])
        n /= np.linalg.norm(n)
        off = idx[:, d] != 0
        assert np.abs(pts[off] @ n).min() == pytest.approx(got[d], rel=1e-12)


def test_domain_uses_the_kernels_face_distances():
    assert domain.face_distances is cell_grid.face_distances
