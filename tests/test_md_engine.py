"""The serial run loop against ASE: trajectories, thermo columns, trajectory frames, blow-up stop.

References: ASE's VelocityVerlet driven by ASE's own LennardJones calculator
(independent integrator and force code), ASE's temperature/stress for the thermo
columns, and a separate ASE run for the "last good state" a blow-up leaves behind.
"""
from __future__ import annotations

import csv

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLJ
from ase.io import read, write
from ase.md.verlet import VelocityVerlet
from rich.console import Console

from atomsim.engine.config import RunConfig
from atomsim.engine.simulation import Simulation, SimulationError

EPS, SIG, RC = 0.0104, 3.4, 8.5


def make_config(outdir, **sections) -> RunConfig:
    """A small LJ-argon RunConfig; `sections` update the defaults section by section."""
    d = {
        "system": {"structure": {"lattice": "fcc", "symbols": "Ar", "a": 5.26, "repeat": [3, 3, 3]},
                   "temperature_K": 120.0, "seed": 7},
        "potential": {"model": "lj", "params": {"epsilon": EPS, "sigma": SIG, "cutoff": RC},
                      "dtype": "float64", "device": "cpu"},
        "dynamics": {"integrator": "nve", "timestep_fs": 2.0, "steps": 100},
        "neighbor": {"skin": 0.4},
        "output": {"directory": str(outdir), "thermo_every": 10, "trajectory_every": 50,
                   "restart_every": 0, "progress": False},
    }
    for key, upd in sections.items():
        d[key] = {**d[key], **upd}
    return RunConfig.model_validate(d)


def start_atoms(seed: int = 0, temperature_K: float = 120.0):
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((3, 3, 3))  # 108 atoms
    atoms.rattle(0.05, seed=seed)
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((len(atoms), 3)) * np.sqrt(units.kB * temperature_K / atoms.get_masses())[:, None]
    atoms.set_velocities(v - v.mean(0))
    return atoms


def quiet() -> Console:
    return Console(quiet=True)


def test_nve_matches_ase_velocity_verlet(tmp_path):
    atoms0 = start_atoms()
    cfg = make_config(tmp_path / "run")
    sim = Simulation(cfg, atoms=atoms0.copy(), console=quiet())
    summary = sim.run()
    assert summary["final_step"] == 100

    ref = atoms0.copy()
    ref.calc = AseLJ(epsilon=EPS, sigma=SIG, rc=RC)
    VelocityVerlet(ref, timestep=2.0 * units.fs).run(100)

    pos = sim.state.positions.numpy()
    assert np.abs(pos - ref.positions).max() < 1e-8
    assert np.abs(sim.state.velocities.numpy() - ref.get_velocities()).max() < 1e-9
    # skin reuse was active: the list was rebuilt, but far from every step
    assert 2 <= summary["n_neighbor_builds"] <= 30

    # thermo row of the last step against ASE's own energies, temperature and stress
    rows = list(csv.DictReader(open(tmp_path / "run" / "thermo.csv")))
    assert list(rows[0])[:7] == ["step", "time_ps", "temperature_K", "pe_eV", "ke_eV", "etotal_eV",
                                 "pressure_GPa"]
    assert list(rows[0])[7:] == ["volume_A3", "conserved_eV", "atom_steps_per_s", "n_neighbor_builds",
                                 "pxx_GPa", "pyy_GPa", "pzz_GPa", "pyz_GPa", "pxz_GPa", "pxy_GPa",
                                 "peak_rss_B_per_atom"]
    assert [int(r["step"]) for r in rows] == list(range(0, 101, 10))
    last = rows[-1]
    n = len(ref)
    ke = ref.get_kinetic_energy()
    assert float(last["time_ps"]) == pytest.approx(0.2)
    assert float(last["pe_eV"]) == pytest.approx(ref.get_potential_energy(), abs=1e-9)
    assert float(last["ke_eV"]) == pytest.approx(ke, abs=1e-9)
    assert float(last["etotal_eV"]) == pytest.approx(ref.get_total_energy(), abs=1e-9)
    assert float(last["temperature_K"]) == pytest.approx(2 * ke / ((3 * n - 3) * units.kB), rel=1e-9)
    p_ase = -np.trace(ref.get_stress(voigt=False, include_ideal_gas=True)) / 3.0 / units.GPa
    assert float(last["pressure_GPa"]) == pytest.approx(p_ase, rel=1e-8)
    assert float(last["volume_A3"]) == pytest.approx(ref.get_volume())
    assert float(last["conserved_eV"]) == float(last["etotal_eV"])  # NVE: nothing extra

    # trajectory frames: steps 0, 50, 100 with positions, forces, velocities, ids
    frames = read(tmp_path / "run" / "trajectory.extxyz", index=":")
    assert [f.info["step"] for f in frames] == [0, 50, 100]
    last_frame = frames[-1]
    assert np.abs(last_frame.positions - ref.positions).max() < 1e-8
    assert np.abs(last_frame.get_forces() - ref.get_forces()).max() < 1e-8
    assert np.abs(last_frame.get_velocities() - ref.get_velocities()).max() < 1e-8
    assert np.array_equal(last_frame.arrays["ids"], np.arange(n))
    assert last_frame.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-9)


def test_resolved_config_and_species_check(tmp_path):
    cfg = make_config(tmp_path / "run", dynamics={"steps": 0})
    Simulation(cfg, atoms=start_atoms(), console=quiet()).run()
    assert (tmp_path / "run" / "resolved_config.yaml").exists()

    # a potential that knows only Ar must refuse Ne before any step runs
    bad = make_config(tmp_path / "run2", potential={"params": {"epsilon": {"Ar": EPS}, "sigma": {"Ar": SIG},
                                                              "cutoff": RC}})
    atoms = start_atoms()
    atoms.numbers[5] = 10
    with pytest.raises(ValueError, match="Ne"):
        Simulation(bad, atoms=atoms, console=quiet())


def test_run_steps_argument_continues(tmp_path):
    """run(n) takes n more steps; two calls equal one call of the sum, bit for bit."""
    atoms = start_atoms(seed=3)
    a = Simulation(make_config(tmp_path / "a"), atoms=atoms.copy(), console=quiet())
    a.run(30)
    a.run(20)
    b = Simulation(make_config(tmp_path / "b"), atoms=atoms.copy(), console=quiet())
    b.run(50)
    assert a.state.step == b.state.step == 50
    assert np.array_equal(a.state.positions.numpy(), b.state.positions.numpy())


# ---------------------------------------------------------------- blow-up --

def _write_input(tmp_path, body: str):
    path = tmp_path / "in.yaml"
    path.write_text(body)
    return path


HOT_ARGON = """
system:
  structure: {{lattice: fcc, symbols: Ar, a: 5.26, repeat: [2, 2, 2]}}
  temperature_K: 2000
  seed: 4
potential: {{model: lj, params: {{epsilon: 0.0104, sigma: 3.4, cutoff: 8.5}}, dtype: float64, device: cpu}}
dynamics: {{integrator: nve, timestep_fs: 5.0, steps: 100, max_force_eV_per_A: 1.0}}
neighbor: {{skin: 0.5}}
output: {{directory: {out}, thermo_every: 1, trajectory_every: 0, restart_every: 0, progress: false}}
"""


def test_blowup_stops_with_exit_3_and_keeps_last_good_state(tmp_path, capsys):
    """Atoms so hot they collide within a few steps: exit 3, message, restart = ASE at step k-1."""
    from atomsim.cli import main
    from atomsim.engine.config import load_config
    from atomsim.engine.restart import Restart
    from atomsim.engine.structure import build_atoms, initialize_velocities

    out = tmp_path / "run"
    inp = _write_input(tmp_path, HOT_ARGON.format(out=out))
    assert main(["run", str(inp)]) == 3
    err = capsys.readouterr().err
    assert "blow-up at step" in err and "atom id" in err and "(Ar)" in err
    assert "Traceback" not in err
    bad_step = int(err.split("blow-up at step")[1].split(":")[0])
    assert bad_step >= 2

    restart = Restart(out / "restart.npz")
    assert restart.step == bad_step - 1
    # independent reference: ASE VelocityVerlet + ASE LJ from the same start, k-1 steps
    cfg = load_config(inp)
    ref = build_atoms(cfg)
    initialize_velocities(ref, cfg.system.temperature_K, cfg.system.seed)
    ref.calc = AseLJ(epsilon=EPS, sigma=SIG, rc=RC)
    VelocityVerlet(ref, timestep=5.0 * units.fs).run(bad_step - 1)
    assert np.abs(restart.arrays["positions"] - ref.positions).max() < 1e-8
    assert np.abs(restart.arrays["velocities"] - ref.get_velocities()).max() < 1e-8
    # the worst atom of the failing frame is the one the message names
    frames = read(out / "blowup.extxyz", index=":")
    assert [f.info["state"] for f in frames] == ["last_good", "blowup"]
    f = np.linalg.norm(frames[1].get_forces(), axis=1)
    assert f.max() > 1.0
    assert f"atom id {int(frames[1].arrays['ids'][f.argmax()])} (Ar)" in err
    # thermo stopped at the last good step
    rows = list(csv.DictReader(open(out / "thermo.csv")))
    assert int(rows[-1]["step"]) == bad_step - 1


def test_atoms_too_close_stop_at_step_zero(tmp_path):
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((2, 2, 2))
    atoms.positions[3] = atoms.positions[0] + [0.6, 0.0, 0.0]
    write(tmp_path / "close.extxyz", atoms)
    cfg = make_config(tmp_path / "run", system={"structure": {"file": str(tmp_path / "close.extxyz")}})
    with pytest.raises(SimulationError, match=r"blow-up at step 0: atom id (0|3) \(Ar\) at .* has \|F\|"):
        Simulation.from_config(cfg, console=quiet()).run()
    assert (tmp_path / "run" / "blowup.extxyz").exists()
    assert not (tmp_path / "run" / "restart.npz").exists()  # no good state existed


def test_nan_forces_are_caught(tmp_path):
    """NaN never compares greater than a limit; the check must still stop the run.

    The run keeps its state at every thermo row (here every step) for recovery: step 2 is the last good one.
    """
    cfg = make_config(tmp_path / "run", output={"thermo_every": 1})
    sim = Simulation(cfg, atoms=start_atoms(), console=quiet())
    compute = sim.forces.compute

    def poisoned(state, *, virial=True):
        result = compute(state, virial=virial)
        if state.step == 3:
            result.forces[7, 1] = float("nan")
        return result

    sim.forces.compute = poisoned
    with pytest.raises(SimulationError, match="blow-up at step 3: atom id 7"):
        sim.run()
    assert sim.state.step == 2
