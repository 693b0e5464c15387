"""The serial GNN path on the compact list (int32 indices, int8 shifts, edge vectors written in the
model dtype in one pass) equals the plain int64 full-list path, triclinic cell, fp32 and fp64."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ase.build import bulk

from atomsim.engine.forces import SerialForces
from atomsim.kernels.neighbors import neighbor_list
from atomsim.potentials.base import build_graph, evaluate_potential
from atomsim.potentials.egnn import build_egnn


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compact_gnn_path_matches_int64_list(dtype):
    torch.manual_seed(0)
    atoms = bulk("Cu", "fcc", a=3.6).repeat((3, 3, 3))
    atoms.rattle(0.05, seed=1)
    atoms.set_cell(atoms.cell.array + np.array([[0, 0.2, 0], [0, 0, 0.1], [0.3, 0, 0]]), scale_atoms=False)
    model = build_egnn([29]).to(dtype)
    pos, cell = torch.tensor(atoms.positions), torch.tensor(atoms.cell.array)
    numbers = torch.tensor(atoms.numbers)
    i, j, S = (torch.as_tensor(np.asarray(a), dtype=torch.int64)
               for a in neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, model.cutoff))
    ref = evaluate_potential(model, numbers, build_graph(pos, cell, i, j, S, len(atoms), dtype))

    forces = SerialForces(model, skin=1.0)
    state = SimpleNamespace(positions=pos, cell=cell, pbc=(True, True, True), numbers=numbers,
                            n_local=len(atoms))
    out = forces.compute(state)
    nl = forces.nlist
    assert nl.senders.dtype == torch.int32 and nl.cell_shifts.dtype == torch.int8
    assert forces._receivers().dtype == torch.int32 and nl.__dict__.get("_receivers") is None
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert abs(out.energy - ref.energy) < tol * len(atoms)
    torch.testing.assert_close(out.forces, ref.forces, atol=tol, rtol=0)
    torch.testing.assert_close(out.virial, ref.virial, atol=10 * tol, rtol=0)
