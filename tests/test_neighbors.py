"""Neighbor lists against ASE's ``primitive_neighbor_list('ijS')``, pair for pair (as sets).

Pairs whose length is within 1e-9 Å of the cutoff are dropped from both sides
before comparing: which side of the cutoff they fall on is decided by
round-off, and the two codes compute the vector in different orders.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.neighborlist import primitive_neighbor_list
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atomsim.kernels.neighbor_list import NeighborList
from atomsim.kernels.neighbors import neighbor_list, neighbor_list_csr, spatial_order
from atomsim.kernels.neighbors_array_api import neighbor_list as neighbor_list_xp

TIE = 1e-9


def _as_set(pos, cell, i, j, S, cutoff):
    d = np.linalg.norm(pos[j] - pos[i] + S @ cell, axis=1) if len(i) else np.zeros(0)
    keep = np.abs(d - cutoff) > TIE
    return set(zip(i[keep].tolist(), j[keep].tolist(), map(tuple, S[keep].tolist())))


def ase_pairs(pos, cell, pbc, cutoff):
    i, j, S = primitive_neighbor_list("ijS", np.broadcast_to(np.asarray(pbc, bool), (3,)), np.asarray(cell, float), pos,
                                      cutoff, self_interaction=False)
    return _as_set(pos, np.asarray(cell, float), i, j, S, cutoff)


def half_of(pairs):
    return {(a, b, s) for (a, b, s) in pairs if a < b or (a == b and s > (0, 0, 0))}


def check_all(pos, cell, pbc, cutoff):
    """Numba full/half and array-API full/half lists all equal ASE's."""
    cell = np.asarray(cell, float)
    ref = ase_pairs(pos, cell, pbc, cutoff)
    for fn in (neighbor_list, neighbor_list_xp):
        i, j, S = fn(pos, cell, pbc, cutoff)
        assert i.dtype == j.dtype == S.dtype == np.int64
        # sorted by i, then j, then S
        order = np.lexsort((S[:, 2], S[:, 1], S[:, 0], j, i))
        assert np.array_equal(order, np.arange(len(i)))
        assert _as_set(pos, cell, i, j, S, cutoff) == ref, fn.__module__
        ih, jh, Sh = fn(pos, cell, pbc, cutoff, half=True)
        assert _as_set(pos, cell, ih, jh, Sh, cutoff) == half_of(ref), fn.__module__
        assert len(ih) == len(half_of(_as_set(pos, cell, i, j, S, -1.0)))  # exact, ties included
    return ref


def random_cell(rng, kind):
    lengths = rng.uniform(3.0, 9.0, 3)
    if kind == "ortho":
        return np.diag(lengths)
    if kind == "skewed":  # strongly skewed triclinic (upper-triangular tilts up to ~1.5 box lengths)
        cell = np.diag(lengths)
        cell[1, 0] = rng.uniform(-1.5, 1.5) * lengths[0]
        cell[2, 0] = rng.uniform(-1.5, 1.5) * lengths[0]
        cell[2, 1] = rng.uniform(-1.5, 1.5) * lengths[1]
        return cell @ _rotation(rng)
    if kind == "small":  # thinner than the cutoff: many periodic images
        return np.diag(rng.uniform(0.8, 2.0, 3)) + np.triu(rng.uniform(-1, 1, (3, 3)), 1)
    raise ValueError(kind)


def _rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


@pytest.mark.parametrize("kind", ["ortho", "skewed", "small"])
@pytest.mark.parametrize("pbc", [(True, True, True), (True, False, True), (False, False, True)])
def test_random_cells_match_ase(kind, pbc):
    # a stable seed per case (hash() of strings changes with every process: failures would not reproduce)
    rng = np.random.default_rng(zlib.crc32(f"{kind}-{pbc}".encode()))
    for _ in range(3):
        cell = random_cell(rng, kind)
        n = int(rng.integers(1, 40))
        # atoms partly outside the cell: wrapping and shifts must still be right
        pos = (rng.uniform(-0.3, 1.3, (n, 3))) @ cell
        cutoff = float(rng.uniform(1.0, 4.5))
        check_all(pos, cell, pbc, cutoff)


def test_cluster_zero_cell_matches_ase():
    rng = np.random.default_rng(3)
    pos = rng.uniform(-5, 5, (60, 3))
    ref = check_all(pos, np.zeros((3, 3)), False, 2.5)
    assert ref  # non-trivial
    # a flat cluster (all z equal): zero extent along one direction
    pos[:, 2] = 1.0
    check_all(pos, np.zeros((3, 3)), False, 2.5)


def test_slab_and_wire_with_zero_vectors():
    rng = np.random.default_rng(4)
    pos = rng.uniform(0, 6, (40, 3))
    cell = np.diag([6.0, 6.0, 0.0])
    check_all(pos, cell, (True, True, False), 2.0)
    cell = np.diag([0.0, 6.0, 0.0])
    check_all(pos, cell, (False, True, False), 2.0)


def test_fcc_counts_and_ase():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)
    ref = check_all(atoms.positions, atoms.cell.array, True, 5.0)
    assert len(ref) == len(atoms) * 42  # 12 + 6 + 24 neighbours within 5 Å
    prim = bulk("Cu", "fcc", a=3.61).repeat((4, 3, 2))  # primitive triclinic cell
    assert len(check_all(prim.positions, prim.cell.array, True, 5.0)) == len(prim) * 42


def test_degenerate_inputs():
    i, j, S = neighbor_list(np.zeros((0, 3)), np.eye(3) * 3, True, 2.0)
    assert len(i) == len(j) == len(S) == 0 and S.shape == (0, 3)
    # one atom in a 3 Å cube, cutoff 7: its own images only
    one = np.zeros((1, 3))
    check_all(one, np.eye(3) * 3.0, True, 7.0)
    assert len(neighbor_list(one, np.eye(3), False, 2.0)[0]) == 0
    with pytest.raises(ValueError, match="periodic"):
        neighbor_list(one, np.zeros((3, 3)), (True, False, False), 2.0)
    with pytest.raises(ValueError, match="cutoff"):
        neighbor_list(one, np.eye(3), True, 0.0)


def test_csr_matches_ijs():
    atoms = bulk("Cu", "fcc", a=3.61).repeat(3)
    row_ptr, j, S = neighbor_list_csr(atoms.positions, atoms.cell.array, True, 4.0)
    i2, j2, S2 = neighbor_list(atoms.positions, atoms.cell.array, True, 4.0)
    assert np.array_equal(np.repeat(np.arange(len(atoms)), np.diff(row_ptr)), i2)
    assert np.array_equal(j, j2) and np.array_equal(S, S2)


def test_spatial_order_is_a_permutation_and_list_is_invariant():
    rng = np.random.default_rng(5)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)
    atoms.positions += rng.normal(0, 0.1, atoms.positions.shape)
    idx = rng.permutation(len(atoms))
    pos = atoms.positions[idx]
    perm = spatial_order(pos, atoms.cell.array, True, 5.0)
    assert sorted(perm.tolist()) == list(range(len(atoms)))
    # the same physical pairs after reordering (mapped back through the permutation)
    i, j, S = neighbor_list(pos, atoms.cell.array, True, 5.0)
    i2, j2, S2 = neighbor_list(pos[perm], atoms.cell.array, True, 5.0)
    a = set(zip(i.tolist(), j.tolist(), map(tuple, S.tolist())))
    b = set(zip(perm[i2].tolist(), perm[j2].tolist(), map(tuple, S2.tolist())))
    assert a == b


def test_neighbor_list_reuse_matches_fresh_list():
    """The skin-reuse list (kernels/neighbor_list.py) against a fresh ASE list at every step."""
    rng = np.random.default_rng(6)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)
    cell, pbc, cutoff, skin = atoms.cell.array, (True, True, True), 4.0, 1.0
    pos = atoms.positions + rng.normal(0, 0.05, atoms.positions.shape)
    nl = NeighborList(cutoff, skin)
    assert nl.update(pos, cell, pbc) and nl.n_builds == 1
    start = pos.copy()
    rebuilt = 0
    for _ in range(12):
        pos = pos + rng.normal(0, 0.07, pos.shape)
        rebuilt += nl.update(pos, cell, pbc)
        max_disp = np.sqrt(((pos - nl.reference_positions.numpy()) ** 2).sum(1).max())
        assert max_disp <= skin / 2
        # pairs of the reused list that are within `cutoff` now == a fresh list at `cutoff`
        i, j, S = nl.receivers.numpy(), nl.senders.numpy(), nl.cell_shifts.numpy()
        d = np.linalg.norm(pos[j] - pos[i] + S @ cell, axis=1)
        keep = d < cutoff
        reused = set(zip(i[keep].tolist(), j[keep].tolist(), map(tuple, S[keep].tolist())))
        assert reused == ase_pairs(pos, cell, pbc, cutoff)
    assert 0 < rebuilt < 12 and nl.n_builds == 1 + rebuilt
    assert np.array_equal(np.repeat(np.arange(len(pos)), np.diff(nl.row_ptr.numpy())), nl.receivers.numpy())
    # a cell change forces a rebuild even without motion
    assert nl.update(pos, cell * 1.01, pbc)
    # rebuilding from the reference positions gives the identical list (restart)
    nl2 = NeighborList(cutoff, skin)
    nl2.build(nl.reference_positions, cell * 1.01, pbc)
    assert all(torch.equal(a, b) for a, b in ((nl.receivers, nl2.receivers), (nl.senders, nl2.senders),
                                              (nl.cell_shifts, nl2.cell_shifts), (nl.row_ptr, nl2.row_ptr)))
    assert not np.shares_memory(nl.reference_positions.numpy(), start)


@pytest.mark.parametrize("half", [False, True])
def test_neighbor_list_backends_agree(half):
    """The array-API backend (numpy here, cupy on a GPU) gives the Numba backend's list, edge for edge."""
    rng = np.random.default_rng(11)
    atoms = bulk("Cu", "fcc", a=3.61).repeat((4, 3, 3))
    pos = torch.from_numpy(atoms.positions + rng.normal(0, 0.1, atoms.positions.shape))
    cell = torch.from_numpy(atoms.cell.array)
    lists = {}
    for backend in ("numba", "array-api"):
        nl = NeighborList(4.0, 0.5, half=half, backend=backend)
        nl.build(pos, cell, (True, True, True))
        lists[backend] = nl
    a, b = lists["numba"], lists["array-api"]
    assert a.n_edges > 0
    for name in ("receivers", "senders", "cell_shifts", "row_ptr"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_neighbor_list_skin_check_counts_every_reason():
    """Rebuild on motion past skin/2, a cell change, a periodicity change or a new atom count; not otherwise."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    pos, cell = torch.from_numpy(atoms.positions.copy()), torch.from_numpy(atoms.cell.array.copy())
    nl = NeighborList(3.0, 1.0)
    assert nl.update(pos, cell, True)
    moved = pos.clone()
    moved[5, 0] += 0.49
    assert not nl.needs_rebuild(moved, cell, True)
    moved[5, 0] += 0.02
    assert nl.needs_rebuild(moved, cell, True)
    assert nl.needs_rebuild(pos, cell * 1.001, True)
    assert nl.needs_rebuild(pos, cell, (True, True, False))
    assert nl.needs_rebuild(pos[:-1], cell, True)
    with pytest.raises(ValueError, match="neighbor.skin"):
        NeighborList(3.0, -0.1)
    with pytest.raises(ValueError, match="backend"):
        NeighborList(3.0, 0.1, backend="fortran")


@st.composite
def systems(draw):
    kind = draw(st.sampled_from(["ortho", "skewed", "small", "cluster"]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    pbc = tuple(draw(st.lists(st.booleans(), min_size=3, max_size=3)))
    if kind == "cluster":
        cell, pbc = np.zeros((3, 3)), (False, False, False)
        n = draw(st.integers(0, 40))
        pos = rng.uniform(-4, 4, (n, 3))
    else:
        cell = random_cell(rng, kind)
        n = draw(st.integers(0, 25 if kind == "small" else 40))
        pos = rng.uniform(-0.5, 1.5, (n, 3)) @ cell
    cutoff = draw(st.floats(0.3, 5.0))
    return pos, cell, pbc, cutoff


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(systems())
def test_hypothesis_matches_ase(system):
    check_all(*system)


@pytest.mark.parametrize("half", [False, True])
def test_parallel_kernels_match_serial_and_ase(monkeypatch, half):
    """The prange twins (used from PARALLEL_MIN_ATOMS atoms up) give the identical list."""
    from atomsim.kernels import neighbors_numba

    rng = np.random.default_rng(7)
    atoms = bulk("Cu", "fcc", a=3.61).repeat((5, 4, 3))  # triclinic primitive cell
    pos = atoms.positions + rng.normal(0, 0.2, atoms.positions.shape)
    cell = atoms.cell.array
    serial = neighbor_list(pos, cell, True, 5.0, half=half)
    monkeypatch.setattr(neighbors_numba, "PARALLEL_MIN_ATOMS", 0)
    monkeypatch.setattr(neighbors_numba, "PARALLEL_MIN_ATOMS_DISPLACEMENT", 0)
    parallel = neighbor_list(pos, cell, True, 5.0, half=half)
    assert len(serial) == len(parallel) and all(np.array_equal(a, b) for a, b in zip(serial, parallel))
    ref = ase_pairs(pos, cell, True, 5.0)
    assert _as_set(pos, cell, *parallel, 5.0) == (half_of(ref) if half else ref)
    moved = pos + 0.01
    assert neighbors_numba.max_displacement_sq(moved, pos) == pytest.approx(3e-4)
