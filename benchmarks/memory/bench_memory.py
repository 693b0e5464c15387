"""Memory per owned atom of a short run, as the run itself reports it (engine/memory.py).

    python benchmarks/memory/bench_memory.py --system lj --atoms 2e5 --ranks 2 [--steps 10]
    python benchmarks/memory/bench_memory.py --system gnn --atoms 2e4 --ranks 2

Launches ``mpiexec -n RANKS`` on itself (``--worker``): each rank builds its own sub-domain
(engine/structure.py's per-rank build), runs STEPS steps of NVE through atomsim.Simulation, and
reports its peak RSS, owned and ghost atoms and the breakdown (state, neighbor list, ghosts, model).
Systems: ``lj``: fcc argon (a = 5.26 Å), LJ epsilon 0.0104 eV, sigma 3.40 Å, cutoff 8.5 Å, skin 1 Å,
float64; ``gnn``: fcc Cu with the bundled pretrained model, float32, per-layer halo. The JSON
(benchmarks/results/memory_<system>_<atoms>_<ranks>r.json) has the machine, versions, command
and load average; the figures printed are the worst rank's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results"


def _repeat_for(n_atoms: float) -> int:
    return max(1, round((float(n_atoms) / 4) ** (1 / 3)))  # 4 atoms per cubic fcc cell


def _config(system: str, n_atoms: float, steps: int, out: str):
    from atomsim.engine.config import RunConfig

    r = _repeat_for(n_atoms)
    if system == "lj":
        structure = {"lattice": "fcc", "symbols": "Ar", "a": 5.26, "cubic": True, "repeat": [r, r, r]}
        potential = {"model": "lj", "params": {"epsilon": 0.0104, "sigma": 3.40, "cutoff": 8.5},
                     "dtype": "float64", "device": "cpu"}
        temperature = 60
    else:
        structure = {"lattice": "fcc", "symbols": "Cu", "a": 3.61, "cubic": True, "repeat": [r, r, r]}
        potential = {"model": "egnn-emt-v1", "dtype": "float32", "device": "cpu"}
        temperature = 300
    return RunConfig.model_validate({
        "system": {"structure": structure, "temperature_K": temperature, "seed": 1},
        "potential": potential,
        "dynamics": {"integrator": "nve", "timestep_fs": 2.0 if system == "lj" else 1.0, "steps": steps},
        "neighbor": {"skin": 1.0},
        "parallel": {"halo": "per-layer", "threads": 1},
        "output": {"directory": out, "thermo_every": steps, "trajectory_every": 0, "restart_every": 0,
                   "progress": False},
    })


def worker(args) -> None:
    from atomsim.engine.comm import world_comm
    from atomsim.engine.memory import breakdown, peak_rss
    from atomsim.engine.simulation import Simulation

    comm = world_comm()
    t0 = time.perf_counter()
    sim = Simulation(_config(args.system, args.atoms, args.steps, args.out), comm=comm)
    t_build = time.perf_counter() - t0
    summary = sim.run()
    st, forces = sim.state, sim.forces
    parts = breakdown(st, forces)
    ghosts = getattr(forces, "ghosts", None)
    rank = {"rank": comm.rank, "n_owned": st.n_local, "n_ghost": 0 if ghosts is None else ghosts.n,
            "n_edges": forces.nlist.n_edges, "peak_rss_B": peak_rss(), "baseline_B": sim.memory.baseline,
            "model_transient_B": sim.memory.model, **{f"{k}_B": v for k, v in parts.items()}}
    ranks = comm.gather(rank)
    if comm.rank == 0:
        res = {"report": sim.memory_report, "ranks": ranks, "n_atoms": st.n_atoms_global,
               "build_s": t_build, "run_wall_s": summary["wall_s"], "steps": summary["steps"],
               "atom_steps_per_s": summary["atom_steps_per_s"],
               "thermo_peak_rss_B_per_atom": summary["thermo"]["peak_rss_B_per_atom"]}
        Path(args.json_out).write_text(json.dumps(res, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--system", choices=("lj", "gnn"), default="lj")
    p.add_argument("--atoms", type=float, default=2e5)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--mmap-threshold", type=int, default=0,
                   help="MALLOC_MMAP_THRESHOLD_ for the ranks (bytes; 0: glibc's dynamic default)")
    p.add_argument("--tag", default="", help="suffix of the JSON name (e.g. before/after of a change)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    import numpy as np
    import torch

    import atomsim

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.json"
        cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(args.ranks), sys.executable, __file__,
               "--worker", "--system", args.system, "--atoms", str(args.atoms), "--steps", str(args.steps),
               "--out", str(Path(tmp) / "run"), "--json-out", str(raw)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
        if args.mmap_threshold > 0:
            env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"worker failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        res = json.loads(raw.read_text())
    rep = res["report"]
    per_rank = [{**r, "peak_rss_B_per_owned_atom": r["peak_rss_B"] / max(r["n_owned"], 1)}
                for r in res["ranks"]]
    out = {
        "benchmark": "memory per owned atom (engine/memory.py)",
        "system": args.system, "n_atoms": res["n_atoms"], "ranks": args.ranks, "steps": res["steps"],
        "description": ("fcc Ar, LJ eps 0.0104 eV sigma 3.40 A cutoff 8.5 A skin 1 A, float64"
                        if args.system == "lj" else
                        "fcc Cu, bundled pretrained GNN (potential.model default), float32, per-layer halo"),
        "peak_rss_B_per_rank": [r["peak_rss_B"] for r in per_rank],
        "bytes_per_owned_atom": max(r["peak_rss_B_per_owned_atom"] for r in per_rank),
        "bytes_per_owned_atom_above_baseline": rep["above_baseline_B_per_atom"],
        "breakdown_B_per_owned_atom": {k: rep[f"{k}_B_per_atom"] for k in ("state", "neighbor_list", "ghosts",
                                                                           "model")},
        "baseline_B_per_rank": rep["baseline_B"],
        "thermo_peak_rss_B_per_atom": res["thermo_peak_rss_B_per_atom"],
        "per_rank": per_rank,
        "build_s": res["build_s"], "run_wall_s": res["run_wall_s"],
        "atom_steps_per_s": res["atom_steps_per_s"],
        "launch_wall_s": wall,
        "malloc_mmap_threshold": args.mmap_threshold or "glibc default",
        "pythonpath": os.environ.get("PYTHONPATH", ""),
        "command": " ".join([Path(sys.executable).name, "benchmarks/memory/bench_memory.py"] + sys.argv[1:]),
        "machine": {"cpu": platform.processor() or _cpu_model(), "cores": os.cpu_count(),
                    "memory_GiB": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
        "versions": {"atomsim": getattr(atomsim, "__version__", "?"), "torch": torch.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "load_average_before": load0, "load_average_after": os.getloadavg(),
    }
    RESULTS.mkdir(exist_ok=True)
    tag = f"_{args.tag}" if args.tag else ""
    path = RESULTS / f"memory_{args.system}_{int(float(args.atoms))}_{args.ranks}r{tag}.json"
    path.write_text(json.dumps(out, indent=1))
    b = out["breakdown_B_per_owned_atom"]
    print(f"{args.system}: {out['n_atoms']} atoms on {args.ranks} ranks: peak RSS "
          f"{', '.join(f'{x / 2**30:.2f}' for x in out['peak_rss_B_per_rank'])} GiB per rank; "
          f"{out['bytes_per_owned_atom']:.0f} B per owned atom "
          f"({rep['above_baseline_B_per_atom']:.0f} above the "
          f"{rep['baseline_B'] / 2**20:.0f} MiB baseline); state {b['state']:.0f}, neighbor list "
          f"{b['neighbor_list']:.0f}, ghosts {b['ghosts']:.0f}, model {b['model']:.0f} B/atom -> {path}")


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


if __name__ == "__main__":
    main()
