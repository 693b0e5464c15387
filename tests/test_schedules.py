"""Temperature and pressure ramps and strain-rate deformation (integrators/schedule.py), end to end.

References: LAMMPS's ramp formula (fix nvt temp Tstart Tstop: target at step s of a run from b to e
is Tstart + (Tstop - Tstart)(s - b)/(e - b)); the exact expectation of the kinetic temperature of
an ideal gas under BAOAB Langevin (an Ornstein-Uhlenbeck recursion); window means of interacting
runs within their autocorrelation-based standard error (tests/stats_util.py) plus a stated lag band;
the analytic box L0 (1 + erate t) and affine remap of LAMMPS's fix deform erate ... remap x; and the
uninterrupted run for resumed ones (bit for bit).
"""
from __future__ import annotations

import numpy as np
import pytest
from ase import units
from rich.console import Console

from atomsim.engine.config import RunConfig
from atomsim.engine.restart import RESTART_NAME, Restart
from atomsim.engine.simulation import Simulation
from atomsim.engine.step import md_step
from atomsim.integrators.schedule import Ramp

from stats_util import standard_error, z_limit

LJ = {"model": "lj", "params": {"epsilon": 0.0104, "sigma": 3.4, "cutoff": 7.0}, "dtype": "float64",
      "device": "cpu"}


def config(tmp_path, dynamics: dict, repeat=2, temperature_K=80.0, potential=LJ, name="run",
           **output) -> RunConfig:
    return RunConfig.model_validate({
        "system": {"structure": {"lattice": "fcc", "symbols": "Ar", "a": 5.3, "repeat": repeat},
                   "temperature_K": temperature_K, "seed": 9},
        "potential": potential, "neighbor": {"skin": 1.0},
        "dynamics": {"timestep_fs": 5.0, "tdamp_fs": 100.0, "pdamp_fs": 500.0, **dynamics},
        "output": {"directory": str(tmp_path / name), "thermo_every": 10**6, "trajectory_every": 0,
                   "restart_every": 0, "progress": False, **output}})


def series(cfg: RunConfig, observe):
    """Run cfg's steps with the engine's md_step, recording observe(state) after every step."""
    sim = Simulation(cfg, console=Console(quiet=True))
    sim.run(0)  # set-up: forces, integrator
    out = []
    for _ in range(cfg.dynamics.steps):
        md_step(sim.state, sim.integrator, sim.forces, virial=True, max_force=1e3)
        out.append(observe(sim))
    return sim, np.asarray(out)


def lammps_target(start, stop, s, b, e):
    return start + (stop - start) * (s - b) / (e - b)


def test_ramp_is_lammps_formula_and_a_constant_is_untouched():
    r = Ramp(40.0, 100.0, begin=10, end=60)
    steps = np.arange(11, 61)
    want = lammps_target(40.0, 100.0, steps, 10, 60)
    np.testing.assert_allclose([r.at(s) for s in steps], want, rtol=1e-15)
    assert r.at(60) == 100.0 and r.at(200) == 100.0 and r.at(0) == 40.0  # clipped outside the run
    assert Ramp(300.0).at(12345) == 300.0 and not Ramp(300.0, 400.0, 5, 5).ramped
    p = Ramp(np.eye(3), 3 * np.eye(3), 0, 4)  # tensors ramp elementwise (pressure)
    np.testing.assert_allclose(p.at(2), 2 * np.eye(3))


def test_integrators_get_the_ramp_from_the_input(tmp_path):
    cfg = config(tmp_path, {"integrator": "nose-hoover", "steps": 50, "temperature_K": [40, 100],
                            "pressure_GPa": None})
    sim = Simulation(cfg, console=Console(quiet=True))
    assert [sim.integrator.target_temperature(s) for s in (1, 25, 50)] == [
        lammps_target(40.0, 100.0, s, 0, 50) for s in (1, 25, 50)]
    npt = Simulation(config(tmp_path, {"integrator": "npt", "steps": 20, "pressure_GPa": 0.1,
                                       "pressure_stop_GPa": 0.5}), console=Console(quiet=True)).integrator
    np.testing.assert_allclose(npt.target_pressure(10) / units.GPa, 0.3 * np.eye(3), rtol=1e-12)


def test_langevin_ramp_ideal_gas_follows_the_exact_expectation(tmp_path):
    """Without forces BAOAB's velocities are an Ornstein-Uhlenbeck process: per degree of freedom
    <m v^2>_s = c1^2 <m v^2>_{s-1} + (1 - c1^2) kB T(s), c1 = exp(-dt/tdamp). The measured kinetic
    temperature (3N - 3 degrees of freedom in the thermo convention, 3N thermostatted) must follow
    that curve -- the ramp and its lag -- window by window within the standard error."""
    n_steps, t0, t1, dt, tdamp = 2000, 40.0, 100.0, 5.0, 100.0
    gas = {"model": "lj", "params": {"epsilon": 1e-9, "sigma": 0.1, "cutoff": 0.3}, "dtype": "float64",
           "device": "cpu"}  # no interactions at argon distances
    cfg = config(tmp_path, {"integrator": "langevin", "steps": n_steps, "timestep_fs": dt, "tdamp_fs": tdamp,
                            "temperature_K": [t0, t1]}, repeat=4, temperature_K=t0, potential=gas)
    sim, temps = series(cfg, lambda s: s.state.temperature())
    n = sim.state.n_atoms_global
    c1sq = np.exp(-2 * dt / tdamp)
    expect, e = np.empty(n_steps), t0 * (3 * n - 3) / (3 * n)  # the start: exactly t0 over 3N - 3 dof
    for k, s in enumerate(range(1, n_steps + 1)):
        e = c1sq * e + (1 - c1sq) * lammps_target(t0, t1, s, 0, n_steps)
        expect[k] = e * 3 * n / (3 * n - 3)
    windows = np.array_split(np.arange(n_steps), 5)
    limit = z_limit(len(windows))
    for w in windows:
        d = temps[w] - expect[w]
        assert abs(d.mean()) <= limit * standard_error(d), (w[0], d.mean(), standard_error(d))
    assert expect[-1] > 95.0 and temps[-400:].mean() > 90.0  # it did heat up


# integrator -> extra dynamics keys; one family of checks (5 windows x 4 thermostats)
THERMOSTATS = {"langevin": {}, "nose-hoover": {}, "berendsen": {}, "npt": {"pressure_GPa": 0.0}}


@pytest.mark.parametrize("integrator", list(THERMOSTATS))
def test_thermostat_ramp_window_means_follow_the_schedule(tmp_path, integrator):
    """32 LJ argon atoms heated 40 -> 100 K over 3000 steps of 5 fs (4 K/ps): after a 500-step
    equilibration, each of 5 windows' mean kinetic temperature is the mean target within
    z * SE (autocorrelation-based) plus a lag band. The band: a thermostat of time constant tau
    trails a target moving at rate r by about r tau, doubled because the lattice's potential
    energy takes up as much heat as its kinetic energy; 2 r tau = 0.8 K (the SEs are ~1-3 K).
    Langevin also thermalises the centre of mass: its kinetic temperature, counted over 3N - 3
    degrees of freedom as thermo does, is 3N/(3N - 3) times the target (the others remove it)."""
    n_steps, eq, t0, t1, dt, tdamp = 3000, 500, 40.0, 100.0, 5.0, 100.0
    cfg = config(tmp_path, {"integrator": integrator, "steps": n_steps, "temperature_K": [t0, t1],
                            **THERMOSTATS[integrator]}, temperature_K=2 * t0)
    sim, temps = series(cfg, lambda s: s.state.temperature())
    steps = np.arange(1, n_steps + 1)
    target = lammps_target(t0, t1, steps, 0, n_steps)
    if integrator == "langevin":  # it thermalises the centre of mass too: 3N dof at T, counted over 3N - 3
        n = sim.state.n_atoms_global
        target = target * 3 * n / (3 * n - 3)
    rate = (t1 - t0) / (n_steps * dt * 1e-3)  # K/ps
    band = 2 * rate * tdamp * 1e-3
    windows = np.array_split(np.arange(eq, n_steps), 5)
    limit = z_limit(len(windows) * len(THERMOSTATS))
    for w in windows:
        d = temps[w] - target[w]
        se = standard_error(d)
        assert abs(d.mean()) <= limit * se + band, (integrator, w[0], d.mean(), se)
    # the schedule is followed, not the start or the end: the first and last windows differ by ~50 K
    assert temps[windows[-1]].mean() - temps[windows[0]].mean() > 30.0


@pytest.mark.parametrize("integrator,extra", [("berendsen", {"compressibility_per_GPa": 0.3}),
                                              ("npt", {})])
def test_barostat_pressure_ramp_window_means_follow_the_schedule(tmp_path, integrator, extra):
    """Pressure ramped 0 -> 0.2 GPa at 60 K: window means of the instantaneous pressure follow the
    target within z * SE plus a lag band 2 r tau_P (r: the ramp rate, tau_P = pdamp)."""
    n_steps, eq, p0, p1, dt, pdamp = 3000, 500, 0.0, 0.2, 5.0, 500.0
    cfg = config(tmp_path, {"integrator": integrator, "steps": n_steps, "temperature_K": 60.0,
                            "pressure_GPa": p0, "pressure_stop_GPa": p1, "pdamp_fs": pdamp, **extra},
                 temperature_K=120.0)
    _, press = series(cfg, lambda s: s.state.pressure() / units.GPa)
    target = lammps_target(p0, p1, np.arange(1, n_steps + 1), 0, n_steps)
    band = 2 * (p1 - p0) / (n_steps * dt) * pdamp
    windows = np.array_split(np.arange(eq, n_steps), 5)
    limit = z_limit(len(windows) * 2)
    for w in windows:
        d = press[w] - target[w]
        se = standard_error(d)
        assert abs(d.mean()) <= limit * se + band, (integrator, w[0], d.mean(), se)


def test_deform_cell_is_analytic_and_atoms_are_remapped(tmp_path):
    """A perfect lattice at 0 K (no forces, by symmetry) under fix deform erate: after n steps the
    cell is L0 (1 + erate t) and every atom is at its starting fractional coordinates."""
    erate, dt, n = np.array([0.5, -0.2, 0.1]), 2.0, 150  # 1/ps, fs
    cfg = config(tmp_path, {"integrator": "nve", "steps": n, "timestep_fs": dt,
                            "deform": {"erate_per_ps": erate.tolist()}}, temperature_K=0.0)
    sim = Simulation(cfg, console=Console(quiet=True))
    cell0 = sim.state.cell.numpy().copy()
    frac0 = np.linalg.solve(cell0.T, sim.state.positions.numpy().T).T
    cells = []
    sim.run(0)
    for _ in range(n):
        md_step(sim.state, sim.integrator, sim.forces, virial=True, max_force=1e3)
        cells.append(sim.state.cell.numpy().copy())
    for k in (1, n // 2, n):
        t_ps = k * dt * 1e-3
        np.testing.assert_allclose(cells[k - 1], cell0 * (1 + erate * t_ps)[:, None], rtol=1e-13, atol=1e-13)
    cell = sim.state.cell.numpy()
    np.testing.assert_allclose(sim.state.positions.numpy(), frac0 @ cell, atol=1e-9)
    assert float(np.abs(sim.state.velocities.numpy()).max()) < 1e-9
    # the stress responds to the strain like the static strained lattice's (ASE LennardJones)
    from ase import Atoms
    from ase.calculators.lj import LennardJones

    ref = Atoms(numbers=sim.state.numbers.numpy(), positions=frac0 @ cell, cell=cell, pbc=True)
    ref.calc = LennardJones(epsilon=0.0104, sigma=3.4, rc=7.0, smooth=False)
    np.testing.assert_allclose(sim.state.virial.numpy() / ref.get_volume(),  # virial = ASE stress * V
                               ref.get_stress(voigt=False), atol=1e-9)


@pytest.mark.parametrize("dynamics", [
    {"integrator": "langevin", "temperature_K": [60, 90], "deform": {"erate_per_ps": [0.3, 0.0, -0.1]}},
    {"integrator": "npt", "temperature_K": [60, 90], "pressure_GPa": 0.0, "pressure_stop_GPa": 0.1},
    {"integrator": "berendsen", "temperature_K": [60, 90], "pressure_GPa": 0.0, "pressure_stop_GPa": 0.1,
     "compressibility_per_GPa": 0.3},
    {"integrator": "nose-hoover", "temperature_K": [60, 90]},
], ids=["langevin-deform", "npt", "berendsen", "nose-hoover"])
def test_ramped_run_resumes_bit_for_bit_and_refuses_a_new_length(tmp_path, dynamics):
    steps = 40
    full = Simulation(config(tmp_path, {**dynamics, "steps": steps}, name="full", restart_every=20),
                      console=Console(quiet=True))
    full.run()
    Simulation(config(tmp_path, {**dynamics, "steps": steps}, name="cut", restart_every=20),
               console=Console(quiet=True)).run(25)  # 25 of the 40 steps, a restart at the end
    cut = config(tmp_path, {**dynamics, "steps": steps}, name="cut", restart_every=20)
    resumed = Simulation.from_config(cut, resume=True, console=Console(quiet=True))
    assert resumed.state.step == 25
    resumed.run()
    for key in ("positions", "velocities", "cell"):
        assert np.array_equal(getattr(full.state, key).numpy(), getattr(resumed.state, key).numpy()), key
    a, b = Restart(tmp_path / "full" / RESTART_NAME), Restart(tmp_path / "cut" / RESTART_NAME)
    assert a.step == b.step == steps and a.integrator_state.keys() == b.integrator_state.keys()
    if "deform" in dynamics:
        t_ps = steps * 5.0e-3
        cell0 = np.diag([10.6] * 3)
        want = cell0 * (1 + np.array([0.3, 0, -0.1]) * t_ps)[:, None]
        np.testing.assert_allclose(full.state.cell.numpy(), want, rtol=1e-13, atol=1e-12)
        return  # a deformation's rate does not depend on the run's length
    with pytest.raises(ValueError, match="dynamics.steps"):  # exit status 2 on the command line
        Simulation.from_config(config(tmp_path, {**dynamics, "steps": 2 * steps}, name="cut"), resume=True,
                               console=Console(quiet=True))


@pytest.mark.parametrize("dynamics,key", [
    ({"integrator": "nve", "temperature_stop_K": 100}, "dynamics.temperature_stop_K"),
    ({"integrator": "langevin", "pressure_GPa": 0.1, "pressure_stop_GPa": 0.3}, "dynamics.pressure_stop_GPa"),
    ({"integrator": "npt", "pressure_stop_GPa": 0.3}, "dynamics.pressure_stop_GPa"),
    ({"integrator": "npt", "pressure_GPa": 0.1, "pressure_stop_GPa": [0.3, 0.1, 0.1],
      "barostat": "anisotropic"}, "dynamics.pressure_stop_GPa"),
    ({"integrator": "npt", "deform": {"erate_per_ps": [0.1, 0, 0]}}, "dynamics.deform"),
    ({"integrator": "nve", "deform": {"erate_per_ps": [0.1, 0]}}, "dynamics.deform.erate_per_ps"),
    ({"integrator": "nve", "deform": {"erate_per_ps": [-500, 0, 0]}}, "dynamics.deform.erate_per_ps"),
    ({"integrator": "nve", "steps": 1000, "deform": {"erate_per_ps": [-0.5, 0, 0]}},
     "dynamics.deform.erate_per_ps"),
    ({"integrator": "langevin", "temperature_K": [1, 2, 3]}, "dynamics.temperature_K"),
    ({"integrator": "langevin", "temperature_K": [1, 2], "temperature_stop_K": 3}, "temperature_stop_K"),
    ({"integrator": "langevin", "temperature_stop": 3}, "did you mean `temperature_stop_K`"),
])
def test_bad_ramp_and_deform_values_exit_2_naming_the_key(tmp_path, capsys, dynamics, key):
    import yaml

    from atomsim.cli import main

    data = config(tmp_path, {}).model_dump(mode="json")
    data["dynamics"] = {"timestep_fs": 5.0, **dynamics}
    for k in ("relax", "stages"):
        data.pop(k, None)
    (tmp_path / "in.yaml").write_text(yaml.safe_dump(data))
    assert main(["run", str(tmp_path / "in.yaml")]) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err
