"""LennardJones potential against independent references: ASE's LennardJones,
a numpy pair sum with Lorentz-Berthelot mixing, and the conformance kit
(atomsim/testing.py: finite differences, cutoff, symmetries, the periodic result
rebuilt from explicit ghost atoms, unknown elements)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.calculators.lj import LennardJones as AseLJ
from ase.neighborlist import neighbor_list as ase_neighbor_list

from atomsim.kernels.neighbors import neighbor_list
from atomsim.potentials import load_potential
from atomsim.potentials.base import build_graph, evaluate_potential
from atomsim.potentials.lj import LennardJones
from atomsim.testing import CHECKS, conformance_tests, default_structures

from conftest import AR_EPSILON, AR_SIGMA, STRUCTURES

SKIN = 0.7  # list beyond the cutoff: the potential must mask those pairs


def lj_eval(potential, atoms, skin=SKIN):
    """(energy, energies, forces, stress 3x3 or None) via the shared autograd path."""
    i, j, S = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, potential.cutoff + skin)
    pos = torch.tensor(atoms.positions, dtype=torch.float64)
    cell = torch.tensor(atoms.cell.array, dtype=torch.float64)
    graph = build_graph(pos, cell, *(torch.from_numpy(a) for a in (i, j, S)), len(atoms),
                        potential.dtype)
    out = evaluate_potential(potential, torch.tensor(atoms.numbers), graph)
    stress = out.virial.numpy() / atoms.get_volume() if atoms.cell.rank == 3 else None
    return out.energy, out.energies, out.forces.numpy(), stress


def ase_eval(atoms, **kw):
    a = atoms.copy()
    a.calc = AseLJ(**kw)
    stress = a.get_stress(voigt=False) if a.cell.rank == 3 else None
    return a.get_potential_energy(), a.get_potential_energies(), a.get_forces(), stress


@pytest.mark.parametrize("smooth", [False, True])
def test_matches_ase_lennard_jones(lj_structure, smooth):
    atoms = lj_structure
    pot = load_potential("lj", epsilon=AR_EPSILON, sigma=AR_SIGMA, smooth=smooth,
                         ase_compatible=True)
    e, ea, f, s = lj_eval(pot, atoms)
    e_ref, ea_ref, f_ref, s_ref = ase_eval(atoms, epsilon=AR_EPSILON, sigma=AR_SIGMA, smooth=smooth)
    assert abs(e - e_ref) <= 1e-10 * max(1.0, abs(e_ref))
    np.testing.assert_allclose(ea, ea_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(f, f_ref, rtol=1e-10, atol=1e-12)
    assert (s is None) == (s_ref is None)
    if s is not None:
        np.testing.assert_allclose(s, s_ref, rtol=1e-10, atol=1e-14)
    assert np.abs(f_ref).max() > 1e-4  # the comparison is not trivially zero


def test_matches_ase_with_explicit_rc_ro():
    atoms = STRUCTURES["triclinic"]()
    pot = LennardJones(epsilon=0.02, sigma=3.0, rc=7.5, ro=5.0, smooth=True, ase_compatible=True)
    e, ea, f, s = lj_eval(pot, atoms)
    e_ref, ea_ref, f_ref, s_ref = ase_eval(atoms, epsilon=0.02, sigma=3.0, rc=7.5, ro=5.0, smooth=True)
    assert abs(e - e_ref) <= 1e-10 * abs(e_ref)
    np.testing.assert_allclose(f, f_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(s, s_ref, rtol=1e-10, atol=1e-14)


# --- per-element parameters, Lorentz-Berthelot ------------------------------
EPS = {"Ar": 0.0104, "Kr": 0.0140, "Xe": 0.0200}
SIG = {"Ar": 3.40, "Kr": 3.65, "Xe": 3.98}


def _alloy(seed=7):
    from ase.build import bulk

    atoms = bulk("Ar", "fcc", a=5.9, cubic=True).repeat((2, 2, 2))
    rng = np.random.default_rng(seed)
    atoms.symbols = rng.choice(["Ar", "Kr", "Xe"], size=len(atoms))
    atoms.rattle(0.12, seed=seed)
    return atoms


def lb_reference(atoms, rc, shift=True, ro=None):
    """Direct numpy pair sum over ASE's neighbor list, Lorentz-Berthelot mixing.

    Energy with shift or (ro given) smooth cutoff; forces and stress only for the
    unsmoothed cases (analytic phi'(r)).
    """
    i, j, d, D = ase_neighbor_list("ijdD", atoms, rc)
    sym = np.array(atoms.get_chemical_symbols())
    eps = np.sqrt(np.array([EPS[s] for s in sym[i]]) * np.array([EPS[s] for s in sym[j]]))
    sig = 0.5 * (np.array([SIG[s] for s in sym[i]]) + np.array([SIG[s] for s in sym[j]]))
    phi = 4 * eps * ((sig / d) ** 12 - (sig / d) ** 6)
    dphi = 4 * eps * (-12 * sig**12 / d**13 + 6 * sig**6 / d**7)
    if ro is not None:
        x = (d**2 - ro**2) / (rc**2 - ro**2)
        fc = np.where(d < ro, 1.0, 1 - 3 * x**2 + 2 * x**3)  # (rc2-r2)^2(rc2+2r2-3ro2)/(rc2-ro2)^3
        phi = phi * fc
    elif shift:
        phi = phi - 4 * eps * ((sig / rc) ** 12 - (sig / rc) ** 6)
    energies = np.zeros(len(atoms))
    np.add.at(energies, i, 0.5 * phi)
    forces = np.zeros((len(atoms), 3))
    np.add.at(forces, i, (dphi / d)[:, None] * D)
    stress = 0.5 * np.einsum("e,ea,eb->ab", dphi / d, D, D) / atoms.get_volume()
    return energies.sum(), energies, forces, stress


@pytest.mark.parametrize("shift", [True, False])
def test_lorentz_berthelot_matches_pair_sum(shift):
    atoms = _alloy()
    pot = load_potential("lj", epsilon=EPS, sigma=SIG, shift=shift)
    assert pot.cutoff == pytest.approx(3 * 3.98)
    assert sorted(pot.species) == [18, 36, 54]
    e, ea, f, s = lj_eval(pot, atoms)
    e_ref, ea_ref, f_ref, s_ref = lb_reference(atoms, pot.cutoff, shift=shift)
    assert abs(e - e_ref) <= 1e-10 * abs(e_ref)
    np.testing.assert_allclose(ea, ea_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(f, f_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(s, s_ref, rtol=1e-9, atol=1e-14)


def test_lorentz_berthelot_smooth_energy_and_scalar_sigma():
    atoms = _alloy(seed=8)
    pot = LennardJones(epsilon=EPS, sigma=SIG, cutoff=9.0, ro=6.5, smooth=True)
    e, ea, _, _ = lj_eval(pot, atoms)
    e_ref, ea_ref, _, _ = lb_reference(atoms, 9.0, ro=6.5)
    np.testing.assert_allclose(ea, ea_ref, rtol=1e-10, atol=1e-12)
    # a scalar sigma with per-element epsilon applies to every element
    pot2 = LennardJones(epsilon=EPS, sigma=3.5)
    assert sorted(pot2.species) == [18, 36, 54] and pot2.cutoff == pytest.approx(10.5)


# --- the conformance kit: forces and virial vs finite differences, cutoff, symmetry, ghosts ---
# (atomsim/testing.py; tolerances for the agreement checks kept at this file's former
# explicit-ghost test: 1e-10 relative, 1e-12 absolute; finite differences 1e-6 relative)
ALL_BUT_SMOOTH = tuple(c for c in CHECKS if c != "smooth_cutoff")


def _lj_structures(*names):
    """Kit structures at Ar/Kr/Xe spacing plus the named structures of this file (fresh copies)."""
    def build():
        s = default_structures([18, 36, 54], cutoff=9.0, nn_distance=3.8)
        s.update({name: _alloy(seed=9) if name == "alloy" else STRUCTURES[name]() for name in names})
        return s
    return build


test_conformance_smooth_per_element = conformance_tests(
    lambda: LennardJones(epsilon=EPS, sigma=SIG, cutoff=9.0, smooth=True), _lj_structures("alloy"),
    fd_points=18, rtol=1e-10, atol=1e-12)
# shifted (ASE's default): continuous energy, but the force jumps at rc (test_conformance_kit.py)
test_conformance_shifted_per_element = conformance_tests(
    lambda: LennardJones(epsilon=EPS, sigma=SIG, cutoff=9.0), _lj_structures("alloy"), checks=ALL_BUT_SMOOTH,
    fd_points=18, rtol=1e-10, atol=1e-12)
test_conformance_argon = conformance_tests(
    lambda: LennardJones(epsilon=AR_EPSILON, sigma=AR_SIGMA, smooth=True),
    lambda: {name: STRUCTURES[name]() for name in ("triclinic", "small_cell", "mixed_pbc", "cluster")},
    fd_points=18, rtol=1e-10, atol=1e-12)


# --- options, dtype, input errors ----------------------------------------------
@pytest.mark.parametrize("smooth", [False, True])
def test_backends_agree(smooth, monkeypatch):
    """numba kernels (serial and parallel twins), fused torch ops and plain autograd agree."""
    from atomsim.potentials import lj_kernels

    atoms = _alloy(seed=10)
    ref = lj_eval(LennardJones(epsilon=EPS, sigma=SIG, smooth=smooth, backend="autograd"), atoms)
    n_threads = torch.get_num_threads()
    for backend, parallel in (("numba", False), ("numba", True), ("torch", False)):
        monkeypatch.setattr(lj_kernels, "PARALLEL_MIN_NODES", 1 if parallel else 10**9)
        torch.set_num_threads(2 if parallel else n_threads)
        try:
            e, ea, f, s = lj_eval(LennardJones(epsilon=EPS, sigma=SIG, smooth=smooth,
                                               backend=backend), atoms)
        finally:
            torch.set_num_threads(n_threads)
        assert e == pytest.approx(ref[0], rel=1e-13)
        np.testing.assert_allclose(ea, ref[1], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(f, ref[2], rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(s, ref[3], rtol=1e-10, atol=1e-15)


def test_float32_close_to_float64():
    atoms = STRUCTURES["fcc_argon"]()
    e64, _, f64, s64 = lj_eval(LennardJones(epsilon=AR_EPSILON, sigma=AR_SIGMA), atoms)
    pot32 = LennardJones(epsilon=AR_EPSILON, sigma=AR_SIGMA, dtype="float32")
    assert pot32.dtype == torch.float32
    e32, _, f32, s32 = lj_eval(pot32, atoms)
    assert e32 == pytest.approx(e64, rel=1e-5)
    assert np.abs(f32 - f64).max() < 1e-4 * np.abs(f64).max() + 1e-7


def test_bad_input_is_rejected_with_clear_messages():
    # (unknown elements at evaluation: the conformance kit's species check)
    with pytest.raises(ValueError, match="Kr"):
        LennardJones(epsilon={"Ar": 0.01, "Kr": 0.014}, sigma={"Ar": 3.4})
    with pytest.raises(ValueError, match="Qq"):
        LennardJones(epsilon={"Qq": 0.01}, sigma=3.4)
    with pytest.raises(ValueError, match="ase_compatible"):
        LennardJones(epsilon=EPS, sigma=SIG, ase_compatible=True)
    with pytest.raises(ValueError, match="shift"):
        LennardJones(smooth=True, shift=True)
    with pytest.raises(ValueError, match="sigma"):
        LennardJones(sigma=-1.0)
    with pytest.raises(ValueError, match="dtype"):
        LennardJones(dtype="float8")
    assert LennardJones().species is None  # scalar parameters: any element
