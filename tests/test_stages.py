"""Multi-stage runs (``stages:``) against the same runs chained by hand, and --resume mid-stage.

References: each stage run as its own Simulation with a config written out by hand and started
from the previous run's final restart file (the relaxation stage: atomsim.relax.relax_config and
Maxwell-Boltzmann velocities, as `atomsim relax` then `atomsim run` on its output would); the
uninterrupted staged run for the resumed one. Equality is bit for bit: final positions and
velocities, and every thermo column except the wall-clock rate.
"""
from __future__ import annotations

import copy
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from rich.console import Console

from atomsim.cli import main
from atomsim.engine.config import RunConfig, load_config
from atomsim.engine.restart import RESTART_NAME, Restart, find_restart
from atomsim.engine.simulation import Simulation
from atomsim.engine.stages import STAGE_FILE
from atomsim.engine.thermo import MEASURED

BASE = {
    "system": {"structure": {"lattice": "fcc", "symbols": "Ar", "a": 5.3, "repeat": 2}, "temperature_K": 40.0,
               "seed": 5},
    "potential": {"model": "lj", "params": {"epsilon": 0.0104, "sigma": 3.4, "cutoff": 7.0},
                  "dtype": "float64", "device": "cpu"},
    "neighbor": {"skin": 0.4},
    "dynamics": {"timestep_fs": 4.0, "tdamp_fs": 40.0, "pdamp_fs": 400.0},
    "output": {"thermo_every": 5, "trajectory_every": 10, "restart_every": 10, "progress": False},
}
# relax -> Langevin ramp 40 -> 80 K -> NPT at 80 K -> NVE; the last stage changes an output key
STAGES = [
    {"relax": {"cell": True, "fmax_eV_per_A": 0.01, "trajectory": False}},
    {"dynamics": {"integrator": "langevin", "steps": 24, "temperature_K": [40.0, 80.0]}},
    {"name": "npt",
     "dynamics": {"integrator": "npt", "steps": 17, "temperature_K": 80.0, "pressure_GPa": 0.0}},
    {"dynamics": {"integrator": "nve", "steps": 13}, "output": {"thermo_every": 3}},
]
DIRS = ["stage1_relax", "stage2_langevin", "stage3_npt", "stage4_nve"]


def staged_input(tmp_path: Path, out: str) -> Path:
    data = copy.deepcopy(BASE)
    data["output"]["directory"] = str(tmp_path / out)
    data["stages"] = copy.deepcopy(STAGES)
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def thermo_rows(path: Path):
    return [{k: v for k, v in r.items() if k not in MEASURED} for r in csv.DictReader(open(path))]


def final_arrays(directory: Path) -> dict:
    r = find_restart(directory)  # restart.npz, or restart.json + shards from several ranks
    return {k: r.arrays[k] for k in ("positions", "velocities", "cell", "ids")} | {"step": r.step}


def assert_same(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for key in ("positions", "velocities", "cell", "ids"):
        assert np.array_equal(a[key], b[key]), key  # bit for bit


def by_hand(tmp_path: Path) -> Path:
    """The same four runs, configs written out in full, each started from the last one's restart."""
    from atomsim.engine.structure import initialize_velocities
    from atomsim.relax import relax_config

    out = tmp_path / "hand"
    quiet = Console(quiet=True)
    relax_cfg = RunConfig.model_validate({**BASE, "output": {"directory": str(out / "relax")},
                                          "relax": STAGES[0]["relax"]})
    atoms = relax_config(relax_cfg, console=quiet).atoms
    initialize_velocities(atoms, 40.0, 5)  # `atomsim run` on the relaxed structure draws these
    runs = [  # (name, dynamics, output changes); steps count on from the previous run's last step
        ("langevin", {"integrator": "langevin", "steps": 24, "temperature_K": 40.0,
                      "temperature_stop_K": 80.0}, {}),
        ("npt", {"integrator": "npt", "steps": 24 + 17, "temperature_K": 80.0, "pressure_GPa": 0.0}, {}),
        ("nve", {"integrator": "nve", "steps": 24 + 17 + 13}, {"thermo_every": 3}),
    ]
    previous = None
    for name, dynamics, output in runs:
        cfg = RunConfig.model_validate({
            **BASE, "dynamics": {**BASE["dynamics"], **dynamics},
            "output": {**BASE["output"], **output, "directory": str(out / name)}})
        if previous is None:
            sim = Simulation(cfg, atoms=atoms.copy(), console=quiet)
        else:
            sim = Simulation(cfg, state=Restart(previous / RESTART_NAME).to_state(), console=quiet)
        sim.run()
        previous = out / name
    return out


def test_staged_input_equals_the_runs_chained_by_hand(tmp_path):
    assert main(["run", str(staged_input(tmp_path, "staged"))]) == 0
    staged, hand = tmp_path / "staged", by_hand(tmp_path)
    assert sorted(p.name for p in staged.iterdir() if p.is_dir()) == DIRS
    for stage_dir, hand_dir in zip(DIRS[1:], ("langevin", "npt", "nve")):
        assert_same(final_arrays(staged / stage_dir), final_arrays(hand / hand_dir))
        rows = thermo_rows(staged / stage_dir / "thermo.csv")
        assert rows == thermo_rows(hand / hand_dir / "thermo.csv")
        assert (staged / stage_dir / "trajectory.extxyz").exists()
    # steps count on: 0..24, 24..41, 41..54; each stage's thermo starts at its first step
    starts = [int(thermo_rows(staged / d / "thermo.csv")[0]["step"]) for d in DIRS[1:]]
    assert starts == [0, 24, 41] and final_arrays(staged / DIRS[-1])["step"] == 54
    # the relaxation stage: ASE's result, the velocities the next stage starts from
    relaxed = Restart(staged / DIRS[0] / RESTART_NAME)
    assert relaxed.step == 0 and (staged / DIRS[0] / "final.extxyz").exists()
    # every stage finished: stage.json, and a resolved config per stage plus the whole input's
    for d in DIRS:
        assert (staged / d / STAGE_FILE).exists() and (staged / d / "resolved_config.yaml").exists()
    whole = load_config(staged / "resolved_config.yaml")
    assert whole == load_config(staged_input(tmp_path, "staged"))  # round trip of the staged schema


def test_resume_mid_stage_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    """A crash at step 36 (stage 3, NPT, steps 24..41; last restart at 30): --resume finishes stage 3
    from that restart and runs stage 4; everything equals the uninterrupted run."""
    full = staged_input(tmp_path, "full")
    assert main(["run", str(full)]) == 0

    import atomsim.engine.simulation as simulation

    real = simulation.md_step

    def crash_at_36(state, *args, **kwargs):
        if state.step == 35:  # about to take step 36
            raise KeyboardInterrupt
        return real(state, *args, **kwargs)

    cut = staged_input(tmp_path, "cut")
    monkeypatch.setattr(simulation, "md_step", crash_at_36)
    assert main(["run", str(cut)]) == 130  # interrupted
    monkeypatch.setattr(simulation, "md_step", real)
    cut_dir, full_dir = tmp_path / "cut", tmp_path / "full"
    assert Restart(cut_dir / DIRS[2] / RESTART_NAME).step == 30
    assert not (cut_dir / DIRS[2] / STAGE_FILE).exists() and not (cut_dir / DIRS[3]).exists()
    assert int(thermo_rows(cut_dir / DIRS[2] / "thermo.csv")[-1]["step"]) == 35  # rows past the restart

    assert main(["run", str(cut), "--resume"]) == 0
    for d in DIRS[1:]:
        assert_same(final_arrays(cut_dir / d), final_arrays(full_dir / d))
        assert thermo_rows(cut_dir / d / "thermo.csv") == thermo_rows(full_dir / d / "thermo.csv")
    from ase.io import read

    frames = [read(p / DIRS[2] / "trajectory.extxyz", ":") for p in (cut_dir, full_dir)]
    assert [f.info["step"] for f in frames[0]] == [f.info["step"] for f in frames[1]]
    # resuming a finished run does nothing and says so
    assert main(["run", str(cut), "--resume"]) == 0
    assert_same(final_arrays(cut_dir / DIRS[3]), final_arrays(full_dir / DIRS[3]))


def test_single_stage_input_is_a_plain_run(tmp_path):
    """The schema without `stages` is unchanged: same files, same config as before."""
    data = copy.deepcopy(BASE)
    data["output"]["directory"] = str(tmp_path / "plain")
    data["dynamics"].update(integrator="nve", steps=10)
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(data))
    assert main(["run", str(tmp_path / "plain.yaml")]) == 0
    assert (tmp_path / "plain" / "thermo.csv").exists() and not list((tmp_path / "plain").glob("stage*"))
    resolved = yaml.safe_load((tmp_path / "plain" / "resolved_config.yaml").read_text())
    assert "stages" not in resolved and "relax" not in resolved and "deform" not in resolved["dynamics"]


@pytest.mark.parametrize("stages,key,text", [
    ([{"dynamics": {"timestep": 2.0}}], "stages[0].dynamics.timestep", "did you mean `timestep_fs`"),
    ([{"dynamics": {"integrator": "nve", "temperature_K": [10, 20]}}],
     "stages[0].dynamics.temperature_stop_K", "needs a thermostat"),
    ([{"relax": {}, "dynamics": {"steps": 3}}], "stages[0]", "not both"),
    ([{"dynamcs": {"steps": 3}}], "stages[0].dynamcs", "did you mean `dynamics`"),
    ([{"name": "a b", "dynamics": {}}], "stages[0].name", "should match"),
    ([], "stages", "at least 1"),
])
def test_bad_stage_keys_exit_2_naming_the_key(tmp_path, capsys, stages, key, text):
    data = copy.deepcopy(BASE)
    data["stages"] = stages
    (tmp_path / "in.yaml").write_text(yaml.safe_dump(data))
    assert main(["run", str(tmp_path / "in.yaml")]) == 2
    err = capsys.readouterr().err
    assert key in err and text in err and "Traceback" not in err


def test_unconverged_relax_stage_stops_the_run_with_status_4(tmp_path):
    path = staged_input(tmp_path, "stuck")
    assert main(["run", str(path), "--set", "stages.0.relax.steps=1",
                 "--set", "stages.0.relax.fmax_eV_per_A=1e-6"]) == 4
    run = tmp_path / "stuck"
    assert (run / DIRS[0] / "final.extxyz").exists() and not (run / DIRS[0] / STAGE_FILE).exists()
    assert not (run / DIRS[1]).exists()  # the MD stages did not start


def test_resume_with_nothing_started_is_an_input_error(tmp_path, capsys):
    assert main(["run", str(staged_input(tmp_path, "never")), "--resume"]) == 2
    assert "no stage" in capsys.readouterr().err


def test_set_reaches_into_a_stage(tmp_path, capsys):
    """--set stages.K.section.key=value (K from 0, as in error messages) changes one stage."""
    path = staged_input(tmp_path, "set")
    cfg = load_config(path, ["stages.3.dynamics.steps=7", "stages.0.relax.fmax_eV_per_A=0.02"])
    assert cfg.stages[3].dynamics.steps == 7 and cfg.stages[0].relax.fmax_eV_per_A == 0.02
    assert cfg.stages[1].dynamics.steps == 24  # the others keep theirs
    assert main(["run", str(path), "--set", "stages.4.dynamics.steps=7"]) == 2
    assert "index it with a number from 0 to 3" in capsys.readouterr().err
    assert main(["run", str(path), "--set", "stages.1.dynamics.stpes=7"]) == 2
    assert "did you mean `steps`" in capsys.readouterr().err


@pytest.mark.mpi
@pytest.mark.timeout(400)
def test_staged_run_on_two_ranks_matches_one_rank(tmp_path):
    """mpiexec -n 2: the relaxation stage runs on rank 0 (ASE), the MD stages on both ranks; every
    stage's final state equals the 1-rank run's (the relaxation bit for bit, MD to round-off)."""
    mpiexec = Path(sys.executable).parent / "mpiexec"
    if not mpiexec.exists():
        pytest.skip(f"no mpiexec next to {sys.executable} (install atomsim[mpi])")
    assert main(["run", str(staged_input(tmp_path, "one"))]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([str(mpiexec), "-n", "2", sys.executable, "-m", "atomsim", "run",
                           str(staged_input(tmp_path, "two"))], env=env, capture_output=True, text=True,
                          timeout=360)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same(final_arrays(tmp_path / "two" / DIRS[0]), final_arrays(tmp_path / "one" / DIRS[0]))
    for d in DIRS[1:]:
        a, b = final_arrays(tmp_path / "two" / d), final_arrays(tmp_path / "one" / d)
        assert a["step"] == b["step"] and np.array_equal(a["ids"], b["ids"])
        for key in ("positions", "velocities", "cell"):
            np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-9, err_msg=f"{d} {key}")
