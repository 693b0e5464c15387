"""NVE energy conservation of LJ argon: a bound on the drift, and the dt^2 law of velocity Verlet.

System: 1,000 Ar atoms (fcc 5x5x10 cells, a = 5.26 Å) started at 120 K (settles
near 60 K, a hot solid), LJ epsilon 0.0104 eV, sigma 3.4 Å, cutoff 8.5 Å with
ASE's smooth cutoff from 7.0 Å (continuous forces: a hard cutoff adds energy jumps
that do not scale with dt), skin 0.5 Å so the Verlet list is reused.

References, independent of the code under test:
- the stated bound: |linear-fit drift| < 1e-8 eV/atom/ps and max |E(t) - E(0)| <
  3e-6 eV/atom over 10 ps at 2 fs (kT at 60 K is 5.2e-3 eV: the error is < 1e-3 kT);
- velocity Verlet's global energy error is O(dt^2): halving dt must shrink the
  RMS of E(t) - E(0) over the first ps by ~4 (asserted within [3.5, 4.5]).
Cost: ~6,000 steps of 1,000 atoms, ~1.5 min of one CPU core; marked slow.
"""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from rich.console import Console

from atomsim.engine.config import RunConfig
from atomsim.engine.simulation import Simulation

N_ATOMS = 1000


@pytest.fixture
def one_thread():
    """One torch thread: small tensors gain nothing from two, and CI's 2 cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def energy_series(outdir, timestep_fs: float, steps: int, thermo_every: int):
    cfg = RunConfig.model_validate({
        "system": {"structure": {"lattice": "fcc", "symbols": "Ar", "a": 5.26, "repeat": [5, 5, 10]},
                   "temperature_K": 120.0, "seed": 3},
        "potential": {"model": "lj", "params": {"epsilon": 0.0104, "sigma": 3.4, "cutoff": 8.5,
                                                "smooth": True, "ro": 7.0},
                      "dtype": "float64", "device": "cpu"},
        "dynamics": {"integrator": "nve", "timestep_fs": timestep_fs, "steps": steps},
        "neighbor": {"skin": 0.5},
        "output": {"directory": str(outdir), "thermo_every": thermo_every, "trajectory_every": 0,
                   "restart_every": 0, "progress": False},
    })
    summary = Simulation.from_config(cfg, console=Console(quiet=True)).run()
    assert summary["n_atoms"] == N_ATOMS
    assert summary["n_neighbor_builds"] < steps / 5  # the list really is reused
    rows = list(csv.DictReader(open(outdir / "thermo.csv")))
    t = np.array([float(r["time_ps"]) for r in rows])
    e = np.array([float(r["etotal_eV"]) for r in rows])
    temp = np.array([float(r["temperature_K"]) for r in rows])
    return t, e, temp


@pytest.mark.slow
@pytest.mark.timeout(1500)  # ~100 s on an idle 2-core machine; far more when the cores are shared
def test_nve_drift_bound_and_dt_squared(tmp_path, one_thread):
    t2, e2, temp = energy_series(tmp_path / "dt2", 2.0, 5000, 5)  # 10 ps, a row every 10 fs
    assert t2[-1] == pytest.approx(10.0)
    assert 40.0 < temp[len(temp) // 2:].mean() < 80.0  # the system did heat/cool as expected
    slope = np.polyfit(t2, e2, 1)[0] / N_ATOMS  # eV/atom/ps
    dev2 = np.abs(e2 - e2[0]) / N_ATOMS
    assert abs(slope) < 1e-8, f"energy drift {slope:.3g} eV/atom/ps"
    assert dev2.max() < 3e-6, f"max |E - E0| = {dev2.max():.3g} eV/atom"

    # dt^2: the same start at 1 fs for the first picosecond, rows at the same times (10 fs)
    t1, e1, _ = energy_series(tmp_path / "dt1", 1.0, 1000, 10)
    window = t2 <= 1.0 + 1e-9
    assert np.allclose(t1, t2[window])
    rms2 = np.sqrt(np.mean((e2[window] - e2[0]) ** 2))
    rms1 = np.sqrt(np.mean((e1 - e1[0]) ** 2))
    ratio = rms2 / rms1
    assert 3.5 < ratio < 4.5, f"energy error ratio dt=2 fs / dt=1 fs = {ratio:.3f} (expected ~4)"
