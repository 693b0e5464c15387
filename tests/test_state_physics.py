"""MDState's temperature, pressure and pressure tensor against ASE's own (kinetic part included)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk
from ase.calculators.lj import LennardJones

from atomsim.engine.state import MDState


@pytest.mark.parametrize("cubic", [True, False], ids=["orthorhombic", "triclinic"])
def test_pressure_tensor_is_minus_ase_stress_with_ideal_gas(cubic):
    atoms = bulk("Ar", "fcc", a=5.4, cubic=cubic) * (2, 2, 2)
    rng = np.random.default_rng(3)
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    atoms.set_velocities(rng.normal(scale=0.02, size=atoms.positions.shape))
    atoms.calc = LennardJones(epsilon=0.0104, sigma=3.4, rc=8.0)
    state = MDState.from_atoms(atoms)
    # the virial convention of MDState: dE/dstrain = ASE stress (no ideal gas) * volume
    state.virial = torch.tensor(atoms.get_stress(voigt=False, include_ideal_gas=False) * atoms.get_volume())

    want = -atoms.get_stress(voigt=False, include_ideal_gas=True)
    got = state.pressure_tensor()
    assert got.dtype == torch.float64 and got.shape == (3, 3)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-14)
    assert state.pressure() == pytest.approx(np.trace(want) / 3.0, rel=1e-10)
    ke = atoms.get_kinetic_energy()
    assert state.temperature() == pytest.approx(2 * ke / ((3 * len(atoms) - 3) * units.kB), rel=1e-12)
    # a caller's kinetic energy gives the same numbers to the bit (thermo passes its own)
    assert state.temperature(kinetic_energy=state.kinetic_energy()) == state.temperature()
    assert state.pressure(kinetic_energy=state.kinetic_energy()) == state.pressure()


def test_pressure_tensor_without_virial_is_the_ideal_gas_part():
    atoms = bulk("Cu", "fcc", a=3.6) * (2, 2, 2)
    atoms.set_velocities(np.random.default_rng(1).normal(scale=0.01, size=atoms.positions.shape))
    state = MDState.from_atoms(atoms)
    m, v = atoms.get_masses(), atoms.get_velocities()
    want = np.einsum("a,ai,aj->ij", m, v, v) / atoms.get_volume()
    np.testing.assert_allclose(state.pressure_tensor().numpy(), want, rtol=1e-12)
