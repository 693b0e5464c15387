"""The run loop hands every dynamics.* key to the integrators, honours fixed atoms
through restarts, and reports the pressure tensor ASE would."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk
from ase.calculators.lj import LennardJones

from atomsim.engine.config import RunConfig
from atomsim.engine.simulation import Simulation

LJ = {"model": "lj", "params": {"epsilon": 0.0104, "sigma": 3.4, "cutoff": 8.5}, "dtype": "float64"}


def _config(tmp_path, **dynamics):
    return RunConfig.model_validate({
        "system": {"structure": {"lattice": "fcc", "symbols": "Ar", "a": 5.26, "repeat": [2, 2, 2]},
                   "temperature_K": 40, "seed": 3},
        "potential": LJ,
        "dynamics": {"timestep_fs": 2.0, "steps": 20, **dynamics},
        "output": {"directory": str(tmp_path / "run"), "thermo_every": 5, "trajectory_every": 0,
                   "restart_every": 10, "progress": False},
    })


def _rows(tmp_path):
    with open(tmp_path / "run" / "thermo.csv") as fh:
        return list(csv.DictReader(fh))


def test_pressure_tensor_matches_ase_stress(tmp_path):
    """At zero velocity the thermo pressure tensor is -stress of ASE's own LJ calculator."""
    cfg = _config(tmp_path, steps=0)
    cfg.system.temperature_K = 0.0
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=1)
    atoms.cell[0, 1] = 0.7  # triclinic: shear components are non-zero
    atoms.arrays["ids"] = np.arange(len(atoms))
    Simulation(cfg, atoms=atoms.copy()).run()
    row = _rows(tmp_path)[0]
    ref = LennardJones(epsilon=0.0104, sigma=3.4, rc=8.5)
    atoms.calc = ref
    stress = atoms.get_stress() / units.GPa  # Voigt xx yy zz yz xz xy
    got = [float(row[k]) for k in ("pxx_GPa", "pyy_GPa", "pzz_GPa", "pyz_GPa", "pxz_GPa", "pxy_GPa")]
    np.testing.assert_allclose(got, -stress, rtol=1e-9, atol=1e-12)
    assert float(row["pressure_GPa"]) == pytest.approx(np.mean(got[:3]), rel=1e-12)


def test_dynamics_keys_reach_the_integrator_and_fixed_atoms_survive_resume(tmp_path):
    """nose-hoover with chain_length and a fix group from YAML; the fixed atoms never move,
    and a resumed run keeps the same mask (bit-for-bit equal to an uninterrupted run)."""
    fix = {"indices": [0, 5, 9]}
    cfg = _config(tmp_path, integrator="nose-hoover", chain_length=5, tdamp_fs=50.0, fix=fix)
    sim = Simulation(cfg)
    assert sim.integrator.chain_length == 5  # the key reached the integrator (default is 3)
    assert sim.integrator.tdamp_fs == 50.0
    start = sim.state.positions.clone()
    sim.run()
    fixed = sim.state.fixed.cpu().numpy()
    assert fixed.sum() == 3
    ids = sim.state.ids.cpu().numpy()
    moved = (sim.state.positions - start).norm(dim=1).cpu().numpy()
    assert np.all(moved[np.isin(ids, fix["indices"])] == 0.0)
    assert np.all(moved[~np.isin(ids, fix["indices"])] > 0.0)
    full = sim.state.positions.clone()

    cfg2 = _config(tmp_path / "b", integrator="nose-hoover", chain_length=5, tdamp_fs=50.0, fix=fix)
    cfg2.dynamics.steps = 10
    Simulation(cfg2).run()
    cfg2.dynamics.steps = 20
    resumed = Simulation.from_config(cfg2, resume=True)
    assert resumed.state.fixed is not None and int(resumed.state.fixed.sum()) == 3
    resumed.run()
    assert torch.equal(resumed.state.positions, full)


def test_thread_setting_is_what_torch_uses(tmp_path, monkeypatch):
    """parallel.threads reaches torch even after numba's OpenMP layer starts (it used to reset
    OpenMP's count behind torch's back, leaving small systems on 2 threads: ~7x slower here)."""
    import numba

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        cfg = _config(tmp_path, steps=2)
        cfg.parallel.threads = 1
        sim = Simulation(cfg)
        sim.run()
        assert sim.threads == 1
        assert torch.get_num_threads() == 1 and numba.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
