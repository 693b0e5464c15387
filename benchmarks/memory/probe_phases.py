"""Where the peak bytes of an MPI force evaluation go: peak RSS per phase, per owned atom.

    python benchmarks/memory/probe_phases.py --system gnn --atoms 5e4 --ranks 2 [--evals 3]

Why: peak RSS (engine/memory.py) says how much, not where. Each rank builds the system
(benchmarks/memory/bench_memory.py's config) and runs ``forces.compute`` EVALS times with the
phases wrapped: the rebuild (migration, ghosts, list), the graph (the edges within the cutoff
and their vectors), the model's forward, its backward, the force scatter and the reverse exchange. Around each phase the
kernel's high-water mark is reset (``/proc/self/clear_refs`` 5, Linux) so each phase's own peak is
read: the printed figures are that peak above the RSS at the phase's start, and what the phase
left resident, in bytes per owned atom (the worst rank). Linux only.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


class Phases:
    """Nested phase timer of peak RSS: each phase's own high-water mark above its start."""

    def __init__(self):
        self.stack: list = []
        self.rows: dict = {}

    def wrap(self, name: str, fn):
        def inner(*a, **k):
            self.enter(name)
            try:
                return fn(*a, **k)
            finally:
                self.exit()
        return inner

    def enter(self, name: str) -> None:
        h = _status("VmHWM")
        for p in self.stack:
            p["peak"] = max(p["peak"], h)
        _reset_peak()
        rss = _status("VmRSS")
        self.stack.append({"name": name, "rss0": rss, "peak": rss})

    def exit(self) -> None:
        top = self.stack.pop()
        top["peak"] = max(top["peak"], _status("VmHWM"))
        for p in self.stack:
            p["peak"] = max(p["peak"], top["peak"])
        row = self.rows.setdefault(top["name"], {"peak_above_start": 0, "left": 0, "peak_rss": 0})
        row["peak_above_start"] = max(row["peak_above_start"], top["peak"] - top["rss0"])
        row["left"] = max(row["left"], _status("VmRSS") - top["rss0"])
        row["peak_rss"] = max(row["peak_rss"], top["peak"])
        _reset_peak()


def worker(args) -> None:
    import torch
    from bench_memory import _config

    import atomsim.engine.halo as halo
    import atomsim.engine.parallel_forces as pf
    import atomsim.potentials.base as pb
    from atomsim.engine.comm import world_comm
    from atomsim.engine.simulation import Simulation

    comm = world_comm()
    ph = Phases()
    sim = Simulation(_config(args.system, args.atoms, 1, args.out), comm=comm)
    forces = sim.forces
    pf.ParallelForces._build = ph.wrap("rebuild", pf.ParallelForces._build)
    pf.edges_within = ph.wrap("graph", pf.edges_within)
    pf.evaluate_potential = ph.wrap("evaluate", pf.evaluate_potential)
    pot = forces.potential
    pot.per_atom_energy = ph.wrap("model_forward", pot.per_atom_energy)
    pb.scatter_edge_forces = ph.wrap("scatter", pb.scatter_edge_forces)
    grad = torch.autograd.grad
    torch.autograd.grad = ph.wrap("model_backward", grad)
    halo.GhostPlan.reverse = ph.wrap("reverse", halo.GhostPlan.reverse)
    state = sim.state
    forces.prepare(state)
    rss_start = _status("VmRSS")
    t0 = time.perf_counter()
    for _ in range(args.evals):
        ph.enter("compute")
        res = forces.compute(state)
        ph.exit()
        state.positions = state.positions + 1e-3  # a small move: no rebuild after the first
    wall = time.perf_counter() - t0
    n = max(state.n_local, 1)
    rows = {k: {kk: v / n for kk, v in r.items() if kk != "peak_rss"} | {"peak_rss_B": r["peak_rss"]}
            for k, r in ph.rows.items()}
    mine = {"rank": comm.rank, "n_owned": state.n_local, "n_ghost": forces.ghosts.n,
            "n_edges": forces.nlist.n_edges, "rss_before_B": rss_start, "phases_B_per_owned_atom": rows,
            "energy_eV": res.energy, "wall_s": wall,
            "list_dtypes": [str(getattr(forces.nlist, k).dtype) for k in ("senders", "cell_shifts", "row_ptr")]}
    got = comm.gather(mine)
    if comm.rank == 0:
        Path(args.json_out).write_text(json.dumps(got, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--system", choices=("lj", "gnn"), default="gnn")
    p.add_argument("--atoms", type=float, default=5e4)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--evals", type=int, default=3)
    p.add_argument("--mmap-threshold", type=int, default=0, help="MALLOC_MMAP_THRESHOLD_ (0: glibc default)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.json"
        cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(args.ranks), sys.executable, __file__,
               "--worker", "--system", args.system, "--atoms", str(args.atoms), "--evals", str(args.evals),
               "--out", str(Path(tmp) / "run"), "--json-out", str(raw)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
        if args.mmap_threshold > 0:
            env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"worker failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        ranks = json.loads(raw.read_text())
    for r in ranks:
        print(f"rank {r['rank']}: {r['n_owned']} owned, {r['n_ghost']} ghosts, {r['n_edges']} edges "
              f"({r['n_edges'] / max(r['n_owned'], 1):.1f}/owned atom), list {r['list_dtypes']}, "
              f"E = {r['energy_eV']:.6f} eV, {r['wall_s']:.1f} s")
        for name, row in r["phases_B_per_owned_atom"].items():
            print(f"  {name:15s} peak +{row['peak_above_start']:8.0f} B/atom above its start, "
                  f"left {row['left']:8.0f} B/atom, peak RSS {row['peak_rss_B'] / 2**20:7.1f} MiB")
    print(json.dumps(ranks))


if __name__ == "__main__":
    main()
