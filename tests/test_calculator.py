"""AtomsimCalculator against ASE's own LennardJones calculator: single points,
neighbor-list skin reuse, Langevin MD and a FrechetCellFilter relaxation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.lj import LennardJones as AseLJ
from ase.cell import Cell
from ase.filters import FrechetCellFilter
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.optimize import FIRE

from atomsim import AtomsimCalculator
from atomsim.potentials.lj import LennardJones

from conftest import AR_EPSILON, AR_SIGMA, STRUCTURES


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Systems here are tiny: a second torch thread only adds sync cost (10x on a busy box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _ase_results(atoms, **kw):
    a = atoms.copy()
    a.calc = AseLJ(**kw)
    return a


@pytest.mark.parametrize("smooth", [False, True])
def test_single_point_matches_ase(lj_structure, smooth):
    atoms = lj_structure
    atoms.calc = AtomsimCalculator(model="lj", device="cpu", epsilon=AR_EPSILON, sigma=AR_SIGMA,
                                   smooth=smooth)
    ref = _ase_results(atoms, epsilon=AR_EPSILON, sigma=AR_SIGMA, smooth=smooth)
    e_ref = ref.get_potential_energy()
    assert atoms.get_potential_energy() == pytest.approx(e_ref, rel=1e-10, abs=1e-12)
    assert atoms.calc.get_property("free_energy") == pytest.approx(e_ref, rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(atoms.get_potential_energies(), ref.get_potential_energies(),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), ref.get_forces(), rtol=1e-10, atol=1e-12)
    if atoms.cell.rank == 3:
        np.testing.assert_allclose(atoms.get_stress(), ref.get_stress(), rtol=1e-10, atol=1e-14)
    else:  # like ASE's LennardJones: no lattice, no stress
        with pytest.raises(PropertyNotImplementedError):
            atoms.get_stress()
        with pytest.raises(PropertyNotImplementedError):
            ref.get_stress()


def test_skin_reuse_and_rebuilds_stay_exact():
    atoms = STRUCTURES["fcc_argon"]()
    calc = AtomsimCalculator(model="lj", device="cpu", skin=1.0, epsilon=AR_EPSILON,
                             sigma=AR_SIGMA, smooth=True)
    atoms.calc = calc
    rng = np.random.default_rng(1)
    ref_calc = AseLJ(epsilon=AR_EPSILON, sigma=AR_SIGMA, smooth=True)
    for _ in range(6):  # small moves: one list, results still exact
        atoms.positions += rng.normal(scale=0.03, size=atoms.positions.shape)
        ref = atoms.copy()
        ref.calc = ref_calc
        np.testing.assert_allclose(atoms.get_forces(), ref.get_forces(), rtol=1e-10, atol=1e-12)
    assert calc.n_neighbor_builds == 1
    atoms.positions[0] += [0.6, 0.0, 0.0]  # > skin/2: rebuild
    atoms.get_forces()
    assert calc.n_neighbor_builds == 2
    atoms.set_cell(atoms.cell.array * 1.01, scale_atoms=True)  # cell change: rebuild
    ref = atoms.copy()
    ref.calc = ref_calc
    np.testing.assert_allclose(atoms.get_stress(), ref.get_stress(), rtol=1e-10, atol=1e-14)
    assert calc.n_neighbor_builds == 3
    atoms.numbers[:5] = 36  # new species: new list, still any element for scalar LJ
    ref = atoms.copy()
    ref.calc = ref_calc
    assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), rel=1e-10)


def test_unknown_element_rejected_up_front():
    atoms = STRUCTURES["fcc_argon"]()
    atoms.symbols[3] = "Kr"
    calc = AtomsimCalculator(model="lj", device="cpu", epsilon={"Ar": AR_EPSILON},
                             sigma={"Ar": AR_SIGMA})
    atoms.calc = calc
    with pytest.raises(ValueError, match="Kr"):
        atoms.get_potential_energy()
    with pytest.raises(ValueError, match="params"):
        AtomsimCalculator(model=LennardJones(), epsilon=1.0)
    with pytest.raises(ValueError, match="unknown potential"):
        AtomsimCalculator(model="no-such-model")


def test_potential_instance_and_dtype():
    atoms = STRUCTURES["triclinic"]()
    atoms.calc = AtomsimCalculator(model=LennardJones(epsilon=AR_EPSILON, sigma=AR_SIGMA),
                                   device="cpu", dtype="float32")
    assert atoms.calc.potential.dtype.is_floating_point and str(atoms.calc.potential.dtype) == "torch.float32"
    ref = _ase_results(atoms, epsilon=AR_EPSILON, sigma=AR_SIGMA)
    f_ref = ref.get_forces()
    assert np.abs(atoms.get_forces() - f_ref).max() < 1e-4 * np.abs(f_ref).max()


def test_langevin_run_is_sane_and_matches_ase_at_the_end():
    atoms = STRUCTURES["fcc_argon"]()  # 108 atoms
    atoms.calc = AtomsimCalculator(model="lj", device="cpu", epsilon=AR_EPSILON, sigma=AR_SIGMA,
                                   smooth=True)
    MaxwellBoltzmannDistribution(atoms, temperature_K=60, rng=np.random.default_rng(2))  # noqa
    Stationary(atoms)
    dyn = Langevin(atoms, timestep=5 * units.fs, temperature_K=60, friction=0.02 / units.fs,
                   rng=np.random.default_rng(3))
    temps, etot = [], []

    def record():
        temps.append(atoms.get_temperature())
        etot.append(atoms.get_total_energy())

    dyn.attach(record, interval=1)
    dyn.run(200)
    assert np.all(np.isfinite(etot))
    assert 35 < np.mean(temps[100:]) < 85  # thermostatted near 60 K
    ref = _ase_results(atoms, epsilon=AR_EPSILON, sigma=AR_SIGMA, smooth=True)
    assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), rel=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), ref.get_forces(), rtol=1e-9, atol=1e-12)
    assert atoms.calc.n_neighbor_builds < 100  # the list was reused between steps


def test_frechet_cell_filter_relaxation_matches_ase():
    from ase.build import bulk

    # 4 atoms (cutoff > box: many images), strained and rattled; small because every
    # cell step rebuilds both calculators' neighbor lists
    start = bulk("Ar", "fcc", a=5.45, cubic=True)
    start.set_cell(start.cell.array @ np.array([[1, 0.02, 0], [0, 0.98, 0], [0, 0, 1.01]]),
                   scale_atoms=True)
    start.rattle(0.05, seed=11)
    kw = dict(epsilon=AR_EPSILON, sigma=AR_SIGMA, smooth=True, rc=2.5 * AR_SIGMA)
    start.calc = AseLJ(**kw)
    e_start = start.get_potential_energy()
    results = []
    for calc in (AtomsimCalculator(model="lj", device="cpu", **kw), AseLJ(**kw)):
        atoms = start.copy()
        atoms.calc = calc
        opt = FIRE(FrechetCellFilter(atoms), logfile=None)
        assert opt.run(fmax=1e-3, steps=2000)
        results.append((atoms.get_potential_energy(), atoms.cell.array.copy(), opt.nsteps))
    (e, cell, n), (e_ref, cell_ref, n_ref) = results
    assert e == pytest.approx(e_ref, rel=1e-6)
    np.testing.assert_allclose(cell, cell_ref, atol=1e-6 * np.abs(cell_ref).max())
    assert e < e_start - 1e-3  # it did relax
    np.testing.assert_allclose(Cell(cell).angles(), 90.0, atol=0.05)  # back to a cubic cell
