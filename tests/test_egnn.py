"""EGNN potential: the conformance kit (forces/stress vs finite differences, cutoff smoothness,
symmetries, per-layer ghosts, unknown elements), sizes, dtypes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111

from atomsim.kernels.neighbors import neighbor_list
from atomsim.potentials.base import build_graph, evaluate_potential
from atomsim.potentials.egnn import EGNNConfig, EGNNPotential, build_egnn, count_parameters
from atomsim.testing import conformance_tests, default_structures

SPECIES = [13, 28, 29, 79]  # Al Ni Cu Au
SKIN = 0.7  # neighbor list beyond the cutoff, like MD with a Verlet skin


def _model(dtype=torch.float64, width=16, depth=2, seed=0) -> EGNNPotential:
    torch.manual_seed(seed)
    m = build_egnn(SPECIES, width=width, depth=depth, n_rbf=6, cutoff=4.0, avg_num_neighbors=4.0,
                   readout_hidden=8)
    with torch.no_grad():  # non-trivial energy scale/shift, as after fitting
        m.energy_scale.fill_(5.0)
        m.species_energy.copy_(torch.tensor([-3.0, -5.0, -4.0, -3.5], dtype=torch.float64))
    return m.to(dtype)


def _edges(model, atoms: Atoms):
    return tuple(torch.from_numpy(a) for a in neighbor_list(atoms.get_positions(), atoms.cell.array,
                                                             atoms.pbc, model.cutoff + SKIN))


def _run(model, atoms: Atoms):
    """Energy/forces/virial through the engine's path (list at cutoff + skin)."""
    pos = torch.tensor(atoms.get_positions())
    cell = torch.tensor(atoms.cell.array)
    i, j, S = _edges(model, atoms)
    g = build_graph(pos, cell, i, j, S, len(atoms), model.dtype)
    return evaluate_potential(model, torch.tensor(atoms.numbers), g)


def _structures():
    rng = np.random.default_rng(3)
    periodic = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((1, 1, 2))
    periodic.numbers[[1, 4, 6]] = [79, 28, 13]
    periodic.rattle(0.08, seed=1)
    # strongly triclinic: large off-diagonal cell components
    tri = Atoms("CuNiAuAlCuNi", cell=[[4.2, 0.0, 0.0], [2.9, 3.8, 0.0], [-2.1, 1.7, 4.4]], pbc=True)
    base = np.array([[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0.5], [0.25, 0.75, 0.25]])
    tri.set_scaled_positions(base + 0.04 * rng.normal(size=(6, 3)))
    d = tri.get_all_distances(mic=True) + 10 * np.eye(6)
    assert d.min() > 1.0, d.min()
    slab = fcc111("Cu", size=(2, 2, 3), a=3.6, vacuum=6.0, periodic=True)
    slab.numbers[[0, 5, 9]] = [79, 28, 13]
    slab.rattle(0.05, seed=2)
    return {"periodic": periodic, "triclinic": tri, "slab": slab}


# The conformance kit (atomsim/testing.py): forces and virial vs central differences, pairs past
# the cutoff (the skin) change nothing, the pair's share vanishes like delta^3 (energy) and delta^2
# (forces) at the cutoff, rotation/translation/permutation, ghosts refreshed per layer (the periodic
# result rebuilt from explicit ghost atoms), unknown elements named. Agreement to 1e-12 absolute.
def _kit_structures():
    return {**_structures(), "cluster": default_structures(SPECIES, 4.0)["cluster"]}


test_conformance = conformance_tests(_model, _kit_structures, rtol=0.0, atol=1e-12, cutoff_order=3)
test_conformance_depth3 = conformance_tests(lambda: _model(depth=3), _kit_structures, checks=("ghosts",),
                                            rtol=0.0, atol=1e-12)


def test_unknown_element_rejected_naming_known_ones():
    model = _model()
    atoms = bulk("Fe", "bcc", a=2.87, cubic=True)
    with pytest.raises(ValueError, match=r"Fe.*knows: Al Ni Cu Au"):
        _run(model, atoms)


def test_parameter_count_matches_formula_and_scales_to_a_billion():
    def formula(ns, F, L, K, H):
        layer = 2 * F * F + K * F + F + F * F + F + (2 * F * F + F) + (F * F + F)
        return ns * F + L * layer + (F * H + H) + (H + 1)

    small = build_egnn(SPECIES, width=64, depth=3, n_rbf=8, readout_hidden=32)
    assert count_parameters(small) == formula(4, 64, 3, 8, 32)
    assert 5e4 < count_parameters(small) < 2e5
    with torch.device("meta"):
        big = build_egnn(list(range(1, 90)), width=5400, depth=6, n_rbf=8, readout_hidden=256)
    n = count_parameters(big)
    assert n == formula(89, 5400, 6, 8, 256)
    assert n >= 1e9
    assert next(big.parameters()).device.type == "meta"


def test_dtypes_selectable_and_consistent():
    atoms = _structures()["periodic"]
    m64 = _model(torch.float64)
    e64 = _run(m64, atoms)
    m32 = _model(torch.float64).to(torch.float32)
    assert m32.dtype == torch.float32 and m32.species_energy.dtype == torch.float64
    e32 = _run(m32, atoms)
    assert abs(e32.energy - e64.energy) < 1e-4 * len(atoms)
    np.testing.assert_allclose(e32.forces.numpy(), e64.forces.numpy(), atol=1e-4)
    mbf = _model(torch.float64).to(torch.bfloat16)
    assert mbf.dtype == torch.bfloat16 and mbf.species_energy.dtype == torch.float64
    ebf = _run(mbf, atoms)
    assert ebf.forces.dtype == torch.float64
    # bf16 keeps ~3 significant digits of the interaction part; reference energies stay exact
    assert abs(ebf.energy - e64.energy) < 0.05 * len(atoms)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="width"):
        EGNNConfig(species=[29], width=0)
    with pytest.raises(ValueError, match="species"):
        EGNNConfig(species=[0])
