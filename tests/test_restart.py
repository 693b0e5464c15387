"""Restart files and --resume: 200 steps in one go == 100 + resume + 100, bit for bit.

Reference: the uninterrupted run. The neighbor list is rebuilt only every few
steps (skin reuse), so the resumed run must restore the list's reference
positions to reproduce the pair order -- a plain rebuild at step 100 would change
the last bits. Langevin's noise is keyed by (seed, step, id), so it must match too.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from atomsim.engine.config import RunConfig
from atomsim.engine.errors import InputError
from atomsim.engine.restart import (
    PREVIOUS_NAME,
    RESTART_NAME,
    Restart,
    RestartError,
    RestartFallbackWarning,
    find_restart,
)
from atomsim.engine.simulation import Simulation
from atomsim.engine.thermo import MEASURED


def make_config(outdir, integrator="nve", steps=200, *, dynamics: dict | None = None, **output) -> RunConfig:
    cfg = _config_dict(outdir, integrator, steps, **output)
    cfg["dynamics"].update(dynamics or {})
    return RunConfig.model_validate(cfg)


def _config_dict(outdir, integrator, steps, **output) -> dict:
    return dict({
        "system": {"structure": {"lattice": "fcc", "symbols": "Ar", "a": 5.26, "repeat": [2, 2, 2]},
                   "temperature_K": 150.0, "seed": 11},
        "potential": {"model": "lj", "params": {"epsilon": 0.0104, "sigma": 3.4, "cutoff": 7.0},
                      "dtype": "float64", "device": "cpu"},
        "dynamics": {"integrator": integrator, "timestep_fs": 4.0, "steps": steps, "tdamp_fs": 50.0},
        "neighbor": {"skin": 0.3},
        "output": {"directory": str(outdir), "thermo_every": 10, "trajectory_every": 40,
                   "restart_every": 30, "progress": False, **output},
    })


def run(cfg, resume=False):
    sim = Simulation.from_config(cfg, resume=resume, console=Console(quiet=True))
    return sim, sim.run()


def thermo_rows(path):
    """Thermo rows without the timing column (wall-clock dependent)."""
    rows = list(csv.DictReader(open(path)))
    return [{k: v for k, v in r.items() if k not in MEASURED} for r in rows]


def assert_same_final_state(a: Path, b: Path):
    ra, rb = Restart(a / RESTART_NAME), Restart(b / RESTART_NAME)
    assert ra.step == rb.step
    for key in ("positions", "velocities", "ids", "cell"):
        assert np.array_equal(ra.arrays[key], rb.arrays[key]), key  # bit for bit
    assert thermo_rows(a / "thermo.csv") == thermo_rows(b / "thermo.csv")


@pytest.mark.parametrize("integrator", ["nve", "langevin"])
def test_resume_is_bit_for_bit(tmp_path, integrator):
    full_sim, full = run(make_config(tmp_path / "full", integrator))
    assert full["final_step"] == 200
    # the list is reused across the restart point: a restart must carry it
    assert 2 <= full["n_neighbor_builds"] < 60

    _, first = run(make_config(tmp_path / "split", integrator, steps=100))
    assert first["final_step"] == 100
    assert Restart(tmp_path / "split" / RESTART_NAME).step == 100  # written at the end of the run
    resumed_sim, second = run(make_config(tmp_path / "split", integrator), resume=True)
    assert second["steps"] == 100 and second["final_step"] == 200
    assert second["n_neighbor_builds"] == full["n_neighbor_builds"]
    assert np.array_equal(resumed_sim.state.forces.numpy(), full_sim.state.forces.numpy())
    assert_same_final_state(tmp_path / "full", tmp_path / "split")


CELL_INTEGRATORS = {  # integrators with state beyond positions/velocities: barostat momenta, cell, FIRE
    "npt-anisotropic": {"integrator": "npt", "pressure_GPa": [0.2, 0.0, 0.0], "pdamp_fs": 200.0,
                        "barostat": "anisotropic"},
    "npt-triclinic": {"integrator": "npt", "pressure_GPa": 0.1, "pdamp_fs": 200.0, "barostat": "triclinic"},
    "berendsen": {"integrator": "berendsen", "pressure_GPa": 0.1, "pdamp_fs": 200.0,
                  "compressibility_per_GPa": 0.3},
    # 40 steps (split at 20): this cell relaxation converges at step ~56
    "fire-cell": {"integrator": "fire", "relax_cell": True, "pressure_GPa": 0.1, "fmax_eV_per_A": 1e-6},
}


@pytest.mark.parametrize("key", list(CELL_INTEGRATORS))
def test_resume_with_cell_and_barostat_state_is_bit_for_bit(tmp_path, key):
    """NPT, Berendsen and FIRE with a moving cell: 100 steps + restart file + 100 steps == 200 steps:
    positions, velocities, cell, every thermo column and the integrator's own state (barostat and
    thermostat momenta, FIRE's mixing, step size and cell deformation)."""
    dyn = dict(CELL_INTEGRATORS[key])
    name = dyn.pop("integrator")
    n = 40 if name == "fire" else 200
    _, full = run(make_config(tmp_path / "full", name, steps=n, dynamics=dyn))
    assert full["final_step"] == n  # (not converged: a minimiser stops early)
    run(make_config(tmp_path / "split", name, steps=n // 2, dynamics=dyn))
    run(make_config(tmp_path / "split", name, steps=n, dynamics=dyn), resume=True)
    assert_same_final_state(tmp_path / "full", tmp_path / "split")
    ra, rb = Restart(tmp_path / "full" / RESTART_NAME), Restart(tmp_path / "split" / RESTART_NAME)
    assert ra.meta["integrator"] == rb.meta["integrator"] == name
    assert ra.integrator_state.keys() == rb.integrator_state.keys()
    for k, v in ra.integrator_state.items():
        w = rb.integrator_state[k]
        same = torch.equal(v, w) if isinstance(v, torch.Tensor) else np.array_equal(v, w) if isinstance(
            v, np.ndarray) else v == w
        assert same, (k, v, w)
    cell0 = np.diag([2 * 5.26] * 3)
    assert np.abs(ra.arrays["cell"] - cell0).max() > 1e-3  # the cell did move: the test is not trivial


def test_resuming_a_converged_fire_run_takes_no_step(tmp_path):
    dyn = dict(CELL_INTEGRATORS["fire-cell"])
    name = dyn.pop("integrator")
    _, done = run(make_config(tmp_path / "run", name, steps=200, dynamics=dyn))
    assert done["final_step"] < 200  # converged
    _, again = run(make_config(tmp_path / "run", name, steps=200, dynamics=dyn), resume=True)
    assert again["steps"] == 0 and again["final_step"] == done["final_step"]


def test_resume_from_previous_when_newest_is_torn(tmp_path):
    """A crash mid-write can leave a broken restart.npz: resume falls back to restart.prev.npz."""
    run(make_config(tmp_path / "full", "langevin", steps=100))
    run(make_config(tmp_path / "split", "langevin", steps=50))
    out = tmp_path / "split"
    assert Restart(out / PREVIOUS_NAME).step == 30  # restart_every=30 -> 30, then the end (50)
    (out / RESTART_NAME).write_bytes((out / RESTART_NAME).read_bytes()[:200])
    torn = re.escape(str(out / RESTART_NAME))
    with pytest.warns(RestartFallbackWarning, match=rf"skipping {torn}: unreadable"):
        assert find_restart(out).step == 30
    with pytest.warns(RestartFallbackWarning, match=re.escape(str(out / PREVIOUS_NAME))):
        run(make_config(out, "langevin", steps=100), resume=True)
    assert_same_final_state(tmp_path / "full", out)


def _rewrite(path: Path, change) -> None:
    """Load a restart archive, let ``change(arrays, meta)`` damage it, write it back as a valid .npz."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: np.array(data[k]) for k in data.files}
    meta = json.loads(str(arrays.pop("meta")))
    change(arrays, meta)
    arrays["meta"] = np.array(json.dumps(meta))
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _drop(path: Path, key: str) -> None:
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: np.array(data[k]) for k in data.files if k != key}
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _nan_in(key):
    def change(arrays, meta):
        arrays[key] = arrays[key].astype(float)
        arrays[key].flat[arrays[key].size // 2] = np.nan
    return change


DAMAGE = {  # what is wrong -> (how to do it to the file, what the report must say)
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "unreadable"),
    "not_an_archive": (lambda p: p.write_text("positions: []\n"), "unreadable"),
    "version": (lambda p: _rewrite(p, lambda a, m: m.update(format_version=99)),
                "format version 99 is not 1"),
    "missing_array": (lambda p: _rewrite(p, lambda a, m: a.pop("velocities")), "missing velocities"),
    "missing_meta_key": (lambda p: _rewrite(p, lambda a, m: m.pop("integrator_state")),
                         "missing integrator_state"),
    "empty_meta": (lambda p: _rewrite(p, lambda a, m: m.clear()), "missing format_version"),
    "missing_meta": (lambda p: _drop(p, "meta"), "key 'meta' is missing"),
    "nan_positions": (lambda p: _rewrite(p, _nan_in("positions")), "positions contains NaN"),
    "nan_velocities": (lambda p: _rewrite(p, _nan_in("velocities")), "velocities contains NaN"),
    "nan_thermostat": (lambda p: _rewrite(p, _nan_thermostat), "integrator state chain contains NaN"),
    "wrong_shape": (lambda p: _rewrite(p, lambda a, m: a.update(velocities=a["velocities"][:-1])),
                    r"velocities has shape \(31, 3\)"),
}


def _nan_thermostat(arrays, meta):
    meta["integrator_state"]["chain"][1]["p_eta"][1] = float("nan")  # the Nose-Hoover chain's momenta


@pytest.fixture(scope="module")
def nose_hoover_run(tmp_path_factory) -> Path:
    """A finished 60-step Nose-Hoover run: restart.npz at step 60, restart.prev.npz at step 30
    (the thermostat chain is JSON state in the archive's meta)."""
    out = tmp_path_factory.mktemp("nh") / "run"
    run(make_config(out, "nose-hoover", steps=60))
    return out


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_unusable_newest_restart_is_reported_then_previous_used(kind, nose_hoover_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(nose_hoover_run, out)
    damage, why = DAMAGE[kind]
    damage(out / RESTART_NAME)
    with pytest.raises(RestartError, match=why):
        Restart(out / RESTART_NAME)
    with pytest.warns(RestartFallbackWarning) as record:
        rs = find_restart(out)
    assert rs.path == out / PREVIOUS_NAME and rs.step == 30
    (msg,) = [str(w.message) for w in record if w.category is RestartFallbackWarning]
    assert str(out / RESTART_NAME) in msg and re.search(why, msg) and str(out / PREVIOUS_NAME) in msg, msg
    assert len(rs.skipped) == 1 and str(out / RESTART_NAME) in rs.skipped[0]


def test_both_restarts_unusable_is_an_input_error_naming_both(nose_hoover_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(nose_hoover_run, out)
    DAMAGE["truncated"][0](out / RESTART_NAME)
    DAMAGE["nan_velocities"][0](out / PREVIOUS_NAME)
    with pytest.raises(InputError) as err:
        find_restart(out)
    msg = str(err.value)
    assert f"{out / RESTART_NAME}: unreadable" in msg, msg
    assert f"{out / PREVIOUS_NAME}: velocities contains NaN" in msg, msg
    # through the command line: exit status 2, both files named, no traceback
    inp = tmp_path / "in.yaml"
    inp.write_text(INPUT.format(out="run").replace("integrator: langevin", "integrator: nose-hoover"))
    res = subprocess.run([sys.executable, "-m", "atomsim", "run", str(inp), "--resume"], cwd=tmp_path,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=300)
    err_text = " ".join(res.stderr.split())  # the console may wrap long lines
    assert res.returncode == 2, res.stderr
    assert RESTART_NAME in err_text and PREVIOUS_NAME in err_text, res.stderr
    assert "Traceback" not in res.stderr, res.stderr


def test_resume_refuses_changed_physics_but_allows_output_changes(tmp_path):
    run(make_config(tmp_path / "run", steps=60))
    changed = make_config(tmp_path / "run", steps=90).model_copy(deep=True)
    changed.dynamics.timestep_fs = 2.0
    with pytest.raises(ValueError, match=r"dynamics\.timestep_fs"):
        Simulation.from_config(changed, resume=True)
    changed = make_config(tmp_path / "run", steps=90, thermo_every=5, trajectory_every=0)
    _, summary = run(changed, resume=True)
    assert summary["final_step"] == 90
    with pytest.raises(ValueError, match="no readable restart"):
        Simulation.from_config(make_config(tmp_path / "empty"), resume=True)


def test_restart_write_is_atomic_and_keeps_previous(tmp_path):
    run(make_config(tmp_path / "run", steps=60))
    out = tmp_path / "run"
    assert Restart(out / RESTART_NAME).step == 60
    assert Restart(out / PREVIOUS_NAME).step == 30
    assert not [p for p in os.listdir(out) if ".tmp" in p]
    # thermo rows past the restart are dropped on resume (a crash after the last restart)
    with open(out / "thermo.csv", "a") as fh:
        fh.write("70,0.28,1,2,3,4,5,6,7,8,9\n")
    run(make_config(out, steps=80), resume=True)
    steps = [int(r["step"]) for r in thermo_rows(out / "thermo.csv")]
    assert steps == list(range(0, 81, 10))


INPUT = """
system:
  structure: {{lattice: fcc, symbols: Ar, a: 5.26, repeat: [2, 2, 2]}}
  temperature_K: 150
  seed: 5
potential: {{model: lj, params: {{epsilon: 0.0104, sigma: 3.4, cutoff: 7.0}}, dtype: float64, device: cpu}}
dynamics: {{integrator: langevin, timestep_fs: 4.0, steps: 200, tdamp_fs: 50}}
neighbor: {{skin: 0.3}}
output: {{directory: {out}, thermo_every: 20, trajectory_every: 0, restart_every: 70, progress: false}}
"""


def test_cli_resume_langevin_bit_for_bit(tmp_path):
    """The real command line, in subprocesses: `atomsim run` vs `--set steps=100` + `--resume`."""
    exe = [sys.executable, "-m", "atomsim"]
    inp = tmp_path / "in.yaml"
    inp.write_text(INPUT.format(out="split"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}

    def cli(*args):
        res = subprocess.run(exe + ["run", str(inp), *args], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        return res

    cli("--set", "output.directory=full")
    cli("--set", "dynamics.steps=100")
    cli("--resume")
    assert_same_final_state(tmp_path / "full", tmp_path / "split")
    # a changed physics key is refused with exit status 2 and names the key
    res = subprocess.run(exe + ["run", str(inp), "--resume", "--set", "dynamics.tdamp_fs=60"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "dynamics.tdamp_fs" in res.stderr and "Traceback" not in res.stderr


def test_resume_drops_trajectory_frames_written_after_the_restart(tmp_path):
    """A run cut after its last restart left frames past it; resuming rewrites them once,
    so the trajectory equals the uninterrupted run's frame for frame."""
    from ase.io import read

    run(make_config(tmp_path / "full", trajectory_every=10))
    run(make_config(tmp_path / "cut", steps=100, trajectory_every=10))
    (tmp_path / "cut" / RESTART_NAME).unlink()  # as if killed after step 100: newest restart is step 90
    assert find_restart(tmp_path / "cut").step == 90
    run(make_config(tmp_path / "cut", trajectory_every=10), resume=True)
    full = read(tmp_path / "full" / "trajectory.extxyz", ":")
    cut = read(tmp_path / "cut" / "trajectory.extxyz", ":")
    assert [a.info["step"] for a in cut] == [a.info["step"] for a in full] == list(range(0, 201, 10))
    for a, b in zip(full, cut, strict=True):
        assert np.array_equal(a.positions, b.positions)
