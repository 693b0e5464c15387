"""The MPI rank's local list (kernels/neighbors_local.py) against the general cell-list builder."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from atomsim.kernels.neighbors import neighbor_list_csr
from atomsim.kernels.neighbors_local import local_csr, local_edge_vectors


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
