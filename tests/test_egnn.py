"""EGNN potential: forces/stress vs finite differences, symmetries, cutoff smoothness, sizes, dtypes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111

from atomsim.kernels.neighbors import neighbor_list
from atomsim.potentials.base import build_graph, evaluate_potential
from atomsim.potentials.egnn import EGNNConfig, EGNNPotential, build_egnn, count_parameters

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


def _run(model, atoms: Atoms, halo_update=None, edges=None):
    """Energy/forces/virial; ``edges`` reuses a list built with a skin (valid for tiny moves)."""
    pos = torch.tensor(atoms.get_positions())
    cell = torch.tensor(atoms.cell.array)
    i, j, S = edges if edges is not None else _edges(model, atoms)
    g = build_graph(pos, cell, i, j, S, len(atoms), model.dtype, halo_update=halo_update)
    return evaluate_potential(model, torch.tensor(atoms.numbers), g)


def _energy(model, atoms, edges=None) -> float:
    return _run(model, atoms, edges=edges).energy


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


@pytest.mark.parametrize("name", ["periodic", "triclinic", "slab"])
def test_forces_match_central_differences(name):
    model = _model()
    atoms = _structures()[name]
    edges = _edges(model, atoms)
    out = _run(model, atoms, edges=edges)
    h = 1e-5
    rng = np.random.default_rng(0)
    for a in rng.choice(len(atoms), size=2, replace=False):
        for c in range(3):
            p = atoms.copy(); p.positions[a, c] += h
            m = atoms.copy(); m.positions[a, c] -= h
            fd = -(_energy(model, p, edges) - _energy(model, m, edges)) / (2 * h)
            assert abs(float(out.forces[a, c]) - fd) < 1e-6 * max(1.0, abs(fd)), (a, c, fd)
    assert float(out.forces[: len(atoms)].abs().max()) > 1e-3  # forces are not trivially zero


@pytest.mark.parametrize("name", ["triclinic", "slab"])
def test_virial_is_strain_derivative(name):
    model = _model()
    atoms = _structures()[name]
    edges = _edges(model, atoms)  # integer shifts stay valid under a tiny homogeneous strain
    vir = _run(model, atoms, edges=edges).virial.numpy()
    h = 1e-5
    fd = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            out = []
            for sgn in (1, -1):
                eps = np.eye(3); eps[a, b] += sgn * h
                d = atoms.copy(); d.set_cell(atoms.cell.array @ eps, scale_atoms=True)
                out.append(_energy(model, d, edges))
            fd[a, b] = (out[0] - out[1]) / (2 * h)
    fd = 0.5 * (fd + fd.T)
    np.testing.assert_allclose(vir, fd, atol=1e-6 * max(1.0, np.abs(fd).max()))
    # and it is ASE's stress convention: virial = stress * volume
    assert abs(vir).max() > 1e-4


def test_energy_invariant_under_rotation_translation_permutation():
    model = _model()
    atoms = _structures()["triclinic"]
    ref = _run(model, atoms)
    q, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(3, 3)))
    rot = atoms.copy()
    rot.set_cell(atoms.cell.array @ q.T, scale_atoms=False)
    rot.positions = atoms.positions @ q.T
    r = _run(model, rot)
    assert abs(r.energy - ref.energy) < 1e-9
    np.testing.assert_allclose(r.forces.numpy(), ref.forces.numpy() @ q.T, atol=1e-9)
    tr = atoms.copy(); tr.positions += np.array([0.37, -1.3, 2.2])
    assert abs(_energy(model, tr) - ref.energy) < 1e-9
    perm = np.random.default_rng(6).permutation(len(atoms))
    pa = atoms[perm]
    p = _run(model, pa)
    assert abs(p.energy - ref.energy) < 1e-9
    np.testing.assert_allclose(p.energies, ref.energies[perm], atol=1e-10)
    np.testing.assert_allclose(p.forces.numpy(), ref.forces.numpy()[perm], atol=1e-9)


def test_energy_and_forces_continuous_across_cutoff():
    """Move one atom of a trimer through r_c of atom 0: the 0-2 pair's share of E and F fades smoothly.

    Reference: the same structure with the 0-2 edges deleted from the graph. The
    difference must vanish like delta^3 (E) and delta^2 (F) as the pair reaches r_c
    from inside, and be exactly zero outside.
    """
    model = _model()
    rc = model.cutoff

    def trimer(d):
        return Atoms("CuAuNi", positions=[[0, 0, 0], [2.5, 0, 0], [2.5 + d, 0.3, 0]], cell=[30, 30, 30], pbc=False)

    from scipy.optimize import brentq

    d_c = brentq(lambda d: float(np.linalg.norm(trimer(d).positions[2])) - rc, 0.5, 3.0)

    def with_and_without(delta):
        at = trimer(d_c + delta)
        i, j, S = _edges(model, at)
        keep = ~(((i == 0) & (j == 2)) | ((i == 2) & (j == 0)))
        full = _run(model, at, edges=(i, j, S))
        cut = _run(model, at, edges=(i[keep], j[keep], S[keep]))
        return full.energy - cut.energy, (full.forces - cut.forces).abs().max().item()

    de_far, df_far = with_and_without(-0.3)
    assert abs(de_far) > 1e-6 and df_far > 1e-5  # the pair does interact well inside r_c
    for delta in (1e-4, 1e-3, 0.05):  # beyond r_c: no contribution at all
        de, df = with_and_without(delta)
        assert de == 0.0 and df == 0.0
    de3, df3 = with_and_without(-1e-3)
    de4, df4 = with_and_without(-1e-4)
    assert abs(de4) < 1e-9 and df4 < 1e-7
    # power laws: 10x closer to r_c -> ~1000x smaller energy share, ~100x smaller force share
    assert abs(de4) < abs(de3) / 200 and df4 < df3 / 20


def test_unknown_element_rejected_naming_known_ones():
    model = _model()
    atoms = bulk("Fe", "bcc", a=2.87, cubic=True)
    with pytest.raises(ValueError, match=r"Fe.*knows: Al Ni Cu Au"):
        _run(model, atoms)
    with pytest.raises(ValueError, match="Fe"):
        model.check_species(atoms.numbers)


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


def test_per_layer_halo_hook_called_once_per_layer():
    model = _model(depth=3)
    calls = []

    def hook(h):
        calls.append(tuple(h.shape))
        return h

    atoms = _structures()["slab"]
    a = _run(model, atoms, halo_update=hook)
    assert calls == [(len(atoms), 16)] * 3
    assert abs(a.energy - _run(model, atoms).energy) < 1e-12
    assert model.receptive_field == 3


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="width"):
        EGNNConfig(species=[29], width=0)
    with pytest.raises(ValueError, match="species"):
        EGNNConfig(species=[0])


def test_skin_edges_beyond_cutoff_change_nothing():
    """An MD list (cutoff + skin) and an exact-cutoff list give the same energy, forces, virial."""
    model = _model()
    atoms = _structures()["periodic"]
    with_skin = _run(model, atoms)
    exact = _run(model, atoms, edges=tuple(torch.from_numpy(a) for a in neighbor_list(
        atoms.get_positions(), atoms.cell.array, atoms.pbc, model.cutoff)))
    assert len(_edges(model, atoms)[0]) > 1.3 * len(neighbor_list(atoms.get_positions(), atoms.cell.array,
                                                                   atoms.pbc, model.cutoff)[0])
    assert abs(with_skin.energy - exact.energy) < 1e-12
    np.testing.assert_allclose(with_skin.forces.numpy(), exact.forces.numpy(), atol=1e-12)
    np.testing.assert_allclose(with_skin.virial.numpy(), exact.virial.numpy(), atol=1e-12)
