"""The torch-native cell list (kernels/neighbors_torch.py) against ASE and the Numba list.

On CPU tensors here; the same code runs on CUDA tensors (benchmarks/gpu/md_end_to_end.py runs
this file there too). Pair sets are compared per receiver with ASE; against the Numba list the
arrays must be equal (same rows, same order, same shifts).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.neighborlist import neighbor_list as ase_neighbor_list

from atomsim.kernels import neighbors_torch as nt
from atomsim.kernels.neighbor_list import NeighborList
from atomsim.kernels.neighbors import neighbor_list_csr as numba_csr

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _random_system(rng, k: int):
    """Triclinic cells, mixed pbc, tiny cells (many images) and clusters, atoms outside the cell."""
    pbc = rng.random(3) < 0.6
    if k % 3 == 0:
        cell = np.diag(rng.uniform(3, 9, 3)) + np.tril(rng.uniform(-6, 6, (3, 3)), -1)
    elif k % 3 == 1:
        cell = np.diag(rng.uniform(0.8, 2.0, 3)) + np.tril(rng.uniform(-0.4, 0.4, (3, 3)), -1)
    else:
        cell, pbc = np.zeros((3, 3)), np.zeros(3, bool)
    n = int(rng.integers(1, 50))
    pos = rng.uniform(-0.3, 1.3, (n, 3)) @ (cell if k % 3 != 2 else np.eye(3) * 6)
    return pos, cell, pbc, float(rng.uniform(0.5, 3.5))


def _pos(pos):
    return torch.as_tensor(pos, dtype=torch.float64, device=DEVICE)


@pytest.mark.parametrize("half", [False, True])
def test_equals_numba_list(half):
    rng = np.random.default_rng(3)
    for k in range(18):
        pos, cell, pbc, cutoff = _random_system(rng, k)
        ref = numba_csr(pos, cell, pbc, cutoff, half=half)
        got = nt.neighbor_list_csr(_pos(pos), cell, pbc, cutoff, half=half)
        for name, a, b in zip(("row_ptr", "j", "S"), ref, got):
            assert np.array_equal(a, b.cpu().numpy()), (k, name)


def test_pair_sets_equal_ase():
    rng = np.random.default_rng(8)
    for k in range(12):
        pbc = rng.random(3) < 0.6
        small = k % 2 == 1
        cell = np.diag(rng.uniform(1.0, 2.0, 3) if small else rng.uniform(4, 8, 3))
        cell += np.tril(rng.uniform(-0.5, 0.5, (3, 3)), -1) * (1 if small else 4)
        pos = rng.uniform(0, 1, (int(rng.integers(2, 40)), 3)) @ cell
        cutoff = float(rng.uniform(1.0, 3.0))
        i, j, S = ase_neighbor_list("ijS", Atoms("H" * len(pos), pos, cell=cell, pbc=pbc), cutoff)
        ti, tj, tS = (x.cpu().numpy() for x in nt.neighbor_list(_pos(pos), cell, pbc, cutoff))
        assert len(ti) == len(i), k
        for r in range(len(pos)):
            want = {(int(a), *map(int, s)) for a, s in zip(j[i == r], S[i == r])}
            got = {(int(a), *map(int, s)) for a, s in zip(tj[ti == r], tS[ti == r])}
            assert got == want, (k, r)


def test_static_buffers_overflow_and_reallocate():
    rng = np.random.default_rng(5)
    cell = np.diag([7.0, 6.5, 8.0]) + np.tril(rng.uniform(-1, 1, (3, 3)), -1)
    pos = rng.uniform(0, 1, (120, 3)) @ cell
    pbc = (True, False, True)
    buf = nt.allocate(_pos(pos), cell, pbc, 2.5, capacity_multiplier=1.1)
    cap = buf.capacity
    assert not buf.did_overflow() and buf.senders.shape == (cap,)
    # compress the atoms: more pairs than the buffers hold
    squeezed = pos * 0.7
    nt.update(buf, _pos(squeezed), cell, pbc, 2.5)
    ref = numba_csr(squeezed, cell, pbc, 2.5)
    assert buf.did_overflow() and int(buf.n_edges) == len(ref[1]) > cap
    assert buf.senders.shape == (cap,)  # shapes never change in update
    grown = nt.reallocate(buf, _pos(squeezed), cell, pbc, 2.5)
    E = len(ref[1])
    assert not grown.did_overflow() and grown.capacity >= max(E, int(1.5 * cap))
    assert torch.equal(grown.senders[:E].cpu(), torch.from_numpy(ref[1]))
    assert torch.equal(grown.cell_shifts[:E].cpu(), torch.from_numpy(ref[2]))
    assert torch.equal(grown.row_ptr.cpu(), torch.from_numpy(ref[0]))
    rows = np.repeat(np.arange(len(pos)), np.diff(ref[0]))
    assert torch.equal(grown.receivers[:E].cpu(), torch.from_numpy(rows))
    # padding: receivers stay sorted, pads are self-edges of the last atom with zero shift
    assert bool((grown.receivers.diff() >= 0).all())
    assert bool((grown.senders[E:] == len(pos) - 1).all()) and not grown.cell_shifts[E:].any()
    assert int(grown.valid.sum()) == E


def test_static_update_follows_moving_atoms():
    rng = np.random.default_rng(9)
    cell = np.diag([1.6, 5.0, 5.5])  # thin along a: several images
    pos = rng.uniform(0, 1, (30, 3)) @ cell
    buf = nt.allocate(_pos(pos), cell, True, 2.2, half=True, capacity_multiplier=1.5)
    moved = pos + rng.normal(0, 0.2, pos.shape)
    nt.update(buf, _pos(moved), cell, True, 2.2)
    ref = numba_csr(moved, cell, True, 2.2, half=True)
    E = len(ref[1])
    assert not buf.did_overflow() and int(buf.n_edges) == E
    assert torch.equal(buf.senders[:E].cpu(), torch.from_numpy(ref[1]))
    assert torch.equal(buf.cell_shifts[:E].cpu(), torch.from_numpy(ref[2]))


def test_row_capacity_overflow_and_reallocate():
    """A row longer than the buffers' row capacity sets the flag although the edge total fits."""
    rng = np.random.default_rng(6)
    cell = np.diag([6.0, 6.0, 6.0])
    pos = rng.uniform(0, 1, (60, 3)) @ cell
    buf = nt.allocate(_pos(pos), cell, True, 2.5, capacity_multiplier=3.0)
    buf.row_capacity = 4  # as if the rows had been allocated for a much sparser state
    nt.update(buf, _pos(pos), cell, True, 2.5)
    ref = numba_csr(pos, cell, True, 2.5)
    assert buf.did_overflow() and int(buf.n_edges) == len(ref[1]) <= buf.capacity
    grown = nt.reallocate(buf, _pos(pos), cell, True, 2.5)
    E = len(ref[1])
    assert not grown.did_overflow() and grown.row_capacity > int(np.diff(ref[0]).max())
    assert torch.equal(grown.senders[:E].cpu(), torch.from_numpy(ref[1]))
    assert torch.equal(grown.cell_shifts[:E].cpu(), torch.from_numpy(ref[2]))


def test_pad_far_puts_pads_past_the_cutoff():
    ev = torch.randn(6, 3, dtype=torch.float64)
    valid = torch.tensor([True, True, True, False, False, False])
    out = nt.pad_far(ev, valid, 3.0)
    assert torch.equal(out[:3], ev[:3]) and bool((out[3:].norm(dim=1) > 3.0).all())


@pytest.mark.parametrize("compact", [False, True])
def test_registered_backend_in_neighbor_list(compact):
    rng = np.random.default_rng(2)
    cell = np.diag([9.0, 8.0, 10.0]) + np.tril(rng.uniform(-2, 2, (3, 3)), -1)
    pos = torch.from_numpy(rng.uniform(0, 1, (200, 3)) @ cell)
    ref = NeighborList(3.0, 0.5, backend="numba", compact=compact)
    got = NeighborList(3.0, 0.5, backend="torch", compact=compact)
    ref.build(pos, torch.from_numpy(cell), True)
    assert got.update(pos.to(DEVICE), torch.from_numpy(cell).to(DEVICE), True)
    for name in ("receivers", "senders", "cell_shifts", "row_ptr"):
        a, b = getattr(ref, name), getattr(got, name)
        assert b.device.type == DEVICE and b.dtype == a.dtype, name
        assert torch.equal(a, b.cpu()), name
