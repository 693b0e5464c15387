"""Domain decomposition geometry without MPI: face distances, wrapping, ownership, halo depth."""
from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from atomsim.engine.domain import Decomposition, face_distances, rank_grid
from atomsim.engine.halo import outside_distance

TRICLINIC = np.array([[6.0, 0.0, 0.0], [3.5, 5.2, 0.0], [1.7, 2.1, 7.3]])


def test_face_distances_are_inverse_reciprocal_lengths():
    for cell in (TRICLINIC, bulk("Cu", "fcc", a=3.61).cell.array, np.diag([3.0, 4.0, 5.0])):
        recip = np.linalg.inv(cell).T  # rows b_i with a_i . b_j = delta_ij
        np.testing.assert_allclose(face_distances(cell), 1.0 / np.linalg.norm(recip, axis=1), rtol=1e-12)


def test_wrap_returns_fractions_in_unit_cell_and_exact_images():
    rng = np.random.default_rng(0)
    d = Decomposition(TRICLINIC, (True, True, True), size=8, rank=0, grid=[2, 2, 2])
    pos = rng.uniform(-20, 20, (500, 3))
    frac, image = d.wrap(pos)
    assert frac.min() >= 0.0 and frac.max() < 1.0
    np.testing.assert_allclose((frac + image) @ TRICLINIC, pos, atol=1e-10)
    tiny = np.array([[-1e-17, 0.5, 0.5]]) @ TRICLINIC  # rounds to frac 1.0: must wrap to 0
    f, k = d.wrap(tiny)
    assert 0.0 <= f[0, 0] < 1.0


def test_owner_covers_every_rank_and_strays_go_to_edge_ranks():
    d = Decomposition(np.diag([10.0, 10.0, 30.0]), (True, True, False), size=6, rank=0, grid=[1, 2, 3])
    frac = np.array([[0.5, 0.25, 0.1], [0.5, 0.75, 0.5], [0.5, 0.75, 0.9],
                     [0.5, 0.25, -0.4], [0.5, 0.75, 1.7]])  # last two: outside the box in z (no pbc)
    owners = d.owner_of(frac)
    assert list(owners) == [0, 4, 5, 0, 5]
    assert [Decomposition(d.cell, d.pbc, 6, r, [1, 2, 3]).coords for r in range(6)] == [
        (0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0), (0, 1, 1), (0, 1, 2)]


def test_neighbors_wrap_only_where_periodic():
    d = Decomposition(np.diag([10.0, 10.0, 30.0]), (True, True, False), size=6, rank=2, grid=[1, 2, 3])
    assert d.neighbor(2, +1) is None  # top of a non-periodic direction
    assert d.neighbor(2, -1) == (1, 0)
    assert d.neighbor(0, +1) == (2, -1)  # one rank along x, periodic: itself, image shift
    assert d.neighbor(1, +1) == (5, 0)
    assert d.neighbor(1, -1) == (5, 1)  # across the periodic face: the receiver sees an image


def test_outside_distance_is_the_perpendicular_distance_to_the_sub_box():
    d = Decomposition(TRICLINIC, (True, True, True), size=8, rank=0, grid=[2, 2, 2])
    normal = np.cross(TRICLINIC[1], TRICLINIC[2])
    normal /= np.linalg.norm(normal)
    inside = np.array([[0.25, 0.25, 0.25]])
    assert outside_distance(d, inside)[0] == 0.0
    p = np.array([[0.5 + 0.1, 0.25, 0.25]])  # beyond the +a face of the sub-box [0, 0.5)
    on_face = np.array([[0.5, 0.25, 0.25]]) @ TRICLINIC
    geometric = abs(np.dot(p @ TRICLINIC - on_face, normal))
    np.testing.assert_allclose(outside_distance(d, p)[0], geometric, rtol=1e-12)


def test_bad_grid_names_the_key():
    with pytest.raises(ValueError, match="parallel.grid"):
        rank_grid(4, [3, 1, 1])
