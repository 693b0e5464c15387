"""GPU neighbor lists (cupy): array-API and raw-kernel versions == the Numba list.

Skipped without cupy and a CUDA device (CI has none); run on a GPU machine.
The Numba list is itself checked against ASE in test_neighbors.py.
"""
from __future__ import annotations

import numpy as np
import pytest

cp = pytest.importorskip("cupy")
try:
    if cp.cuda.runtime.getDeviceCount() < 1:
        raise RuntimeError("no device")
    (cp.arange(2) + 1).sum().item()
except Exception:  # noqa: BLE001 - any CUDA failure means "no GPU here"
    pytest.skip("no usable CUDA device", allow_module_level=True)

from atomsim.kernels import neighbors_array_api, neighbors_cupy  # noqa: E402
from atomsim.kernels.neighbors import neighbor_list  # noqa: E402


@pytest.mark.parametrize("impl", [neighbors_array_api.neighbor_list, neighbors_cupy.neighbor_list])
@pytest.mark.parametrize("half", [False, True])
def test_gpu_lists_equal_numba(impl, half):
    rng = np.random.default_rng(11)
    for k in range(12):
        pbc = rng.random(3) < 0.6
        if k % 3 == 0:
            cell = np.diag(rng.uniform(3, 9, 3)) + np.tril(rng.uniform(-6, 6, (3, 3)), -1)
        elif k % 3 == 1:
            cell = np.diag(rng.uniform(0.8, 2.0, 3))
        else:
            cell, pbc = np.zeros((3, 3)), np.zeros(3, bool)
        n = int(rng.integers(1, 60))
        pos = rng.uniform(-0.3, 1.3, (n, 3)) @ (cell if k % 3 != 2 else np.eye(3) * 6)
        cutoff = float(rng.uniform(0.5, 3.5))
        ref = neighbor_list(pos, cell, pbc, cutoff, half=half)
        got = impl(cp.asarray(pos), cell, pbc, cutoff, half=half)
        for a, b in zip(ref, got):
            assert np.array_equal(a, cp.asnumpy(b))


def test_dlpack_handoff_is_zero_copy():
    pytest.importorskip("torch")
    i, j, S = neighbors_cupy.neighbor_list(cp.asarray(np.random.default_rng(0).random((50, 3)) * 5),
                                           np.eye(3) * 5, True, 2.0)
    ti, tj, tS = neighbors_array_api.to_torch(i, j, S)
    assert ti.is_cuda and ti.data_ptr() == i.data.ptr and tS.shape == (len(i), 3)


@pytest.mark.parametrize("backend", ["auto", "cupy", "array-api"])
def test_neighbor_list_object_on_cuda_equals_cpu(backend):
    """kernels/neighbor_list.py on CUDA tensors: the same edges as on the CPU, the skin check on the device."""
    import torch

    from atomsim.kernels.neighbor_list import NeighborList

    rng = np.random.default_rng(5)
    cell = np.diag([9.0, 8.0, 10.0]) + np.tril(rng.uniform(-2, 2, (3, 3)), -1)
    pos = rng.uniform(0, 1, (300, 3)) @ cell
    cpu = NeighborList(3.0, 0.5, backend="numba")
    gpu = NeighborList(3.0, 0.5, backend=backend)
    cpu.build(torch.from_numpy(pos), torch.from_numpy(cell), True)
    pos_d, cell_d = torch.from_numpy(pos).cuda(), torch.from_numpy(cell).cuda()
    assert gpu.update(pos_d, cell_d, True)
    for name in ("receivers", "senders", "cell_shifts", "row_ptr"):
        got = getattr(gpu, name)
        assert got.is_cuda, name
        assert torch.equal(got.cpu(), getattr(cpu, name)), name
    moved = pos_d.clone()
    moved[3, 1] += 0.2
    assert not gpu.update(moved, cell_d, True)
    moved[3, 1] += 0.1
    assert gpu.update(moved, cell_d, True) and gpu.n_builds == 2
