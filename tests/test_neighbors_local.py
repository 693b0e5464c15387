"""The MPI rank's local list (kernels/neighbors_local.py) against the general cell-list builder."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from atomsim.kernels.neighbors import neighbor_list_csr
from atomsim.kernels.neighbors_local import edges_within, local_csr, local_edge_vectors


@pytest.mark.parametrize("n, box, seed", [(400, 14.0, 0), (60, 30.0, 1), (5, 2.0, 2), (1, 5.0, 3)])
def test_local_rows_equal_general_open_list(n, box, seed):
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, box, (n, 3)) * np.array([1.0, 0.6, 1.3])
    cutoff = 4.0
    want = rng.random(n) < 0.6
    row_ptr, senders = local_csr(pos, want, cutoff)
    ref_ptr, ref_j, ref_s = neighbor_list_csr(pos, np.zeros((3, 3)), (False, False, False), cutoff)
    assert senders.dtype == np.int32 and row_ptr.dtype == np.int64
    assert not ref_s.any()
    for i in range(n):
        got = senders[row_ptr[i]:row_ptr[i + 1]]
        exp = ref_j[ref_ptr[i]:ref_ptr[i + 1]] if want[i] else ref_j[:0]
        np.testing.assert_array_equal(got, exp)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_local_edge_vectors_are_position_differences(dtype):
    rng = np.random.default_rng(4)
    pos = rng.uniform(0, 10.0, (200, 3))
    row_ptr, senders = local_csr(pos, np.ones(200, bool), 3.5)
    p = torch.from_numpy(pos)
    vec = local_edge_vectors(p, torch.from_numpy(row_ptr), torch.from_numpy(senders), dtype)
    rows = torch.arange(200).repeat_interleave(torch.from_numpy(np.diff(row_ptr)))
    ref = (p[torch.from_numpy(senders).long()] - p[rows]).to(dtype)
    assert vec.dtype == dtype
    torch.testing.assert_close(vec, ref, rtol=0, atol=0)
    assert float(vec.double().norm(dim=1).max()) < 3.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_edges_within_cutoff_are_the_list_edges_shorter_than_it(dtype):
    rng = np.random.default_rng(6)
    pos = rng.uniform(0, 12.0, (300, 3))
    row_ptr, senders = local_csr(pos, rng.random(300) < 0.7, 4.0)
    p, ptr, snd = torch.from_numpy(pos), torch.from_numpy(row_ptr), torch.from_numpy(senders)
    got_ptr, got_snd, got_vec = edges_within(p, ptr, snd, 3.0, dtype)
    vec = local_edge_vectors(p, ptr, snd, dtype)
    keep = (vec.double() ** 2).sum(1) < 9.0
    assert 0 < int(keep.sum()) < keep.shape[0]
    rows = torch.arange(300).repeat_interleave(torch.from_numpy(np.diff(row_ptr)))
    assert torch.equal(got_ptr, torch.cat([torch.zeros(1, dtype=torch.int64),
                                           torch.bincount(rows[keep], minlength=300).cumsum(0)]))
    assert got_snd.dtype == torch.int32 and torch.equal(got_snd, snd[keep])
    assert got_vec.dtype == dtype and torch.equal(got_vec, vec[keep])
