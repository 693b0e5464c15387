"""potentials/edge_precision.py: float32 edge vectors for a 16-bit model, against float64."""
from __future__ import annotations

import numpy as np
import torch
from ase.build import bulk

from atomsim.kernels.neighbor_list import NeighborList
from atomsim.potentials.base import build_graph, evaluate_potential
from atomsim.potentials.edge_precision import Float32Edges
from atomsim.potentials.registry import load_potential


def _forces(model, atoms, nl):
    pos = torch.from_numpy(atoms.positions.copy())
    cell = torch.from_numpy(atoms.cell.array.copy())
    graph = build_graph(pos, cell, nl.receivers, nl.senders, nl.cell_shifts, len(atoms), model.dtype)
    return evaluate_potential(model, torch.from_numpy(atoms.numbers.astype(np.int64)), graph)


def test_float32_edges_cut_the_bf16_force_error():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=3)
    base = load_potential("egnn-emt-v1")
    nl = NeighborList(base.cutoff)
    nl.build(torch.from_numpy(atoms.positions.copy()), torch.from_numpy(atoms.cell.array.copy()), True)
    ref = _forces(base.to(torch.float64), atoms, nl).forces
    plain = _forces(load_potential("egnn-emt-v1").to(torch.bfloat16), atoms, nl)
    wide_model = Float32Edges(load_potential("egnn-emt-v1").to(torch.bfloat16))
    assert wide_model.dtype == torch.float32 and wide_model.model_dtype == torch.bfloat16
    wide = _forces(wide_model, atoms, nl)
    err = lambda f: float((f - ref).pow(2).mean().sqrt())  # noqa: E731
    assert err(wide.forces) < 0.3 * err(plain.forces)
    # a float32 model is unchanged by the wrapper
    m32 = load_potential("egnn-emt-v1")
    a, b = _forces(m32, atoms, nl), _forces(Float32Edges(m32), atoms, nl)
    assert torch.equal(a.forces, b.forces) and a.energy == b.energy
