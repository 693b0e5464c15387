"""Where 2 threads do not pay: per-phase work split across threads, LJ and the GNN, 1 vs 2 threads.

Why per-thread CPU and not only wall time: on a shared, loaded machine the wall-clock ratio of a
2-thread to a 1-thread run mostly measures the neighbours' load. Which thread did the work does not
depend on the load: every phase of the step (neighbor list, LJ kernel, graph, model forward,
backward, integration) is wrapped, and the CPU time of the main thread (CLOCK_THREAD_CPUTIME_ID) and
of the whole process (CLOCK_PROCESS_CPUTIME_ID) is read before and after it. A phase that runs on both threads
shows ~half its CPU on the non-main threads; a serial phase shows ~none. From the 2-thread run's
split, Amdahl's law gives the speed-up each phase (and the step) can reach on 2 idle cores:
1 / ((1 - p) + p / 2), with p = 2 x (non-main share). Measured wall-clock ratios are reported too,
2 threads with OpenMP's default wait policy and with OMP_WAIT_POLICY=PASSIVE: on a loaded machine
spin-waiting workers take the cores the working threads need (seen here: 2-5x slower).

OpenMP threads spin after a parallel region and that spin counts as CPU, so the workers run with
OMP_WAIT_POLICY=PASSIVE for the split (the wall-clock runs use the default policy).

    .venv/bin/python benchmarks/thread_scaling/probe.py [--lj-cells 10 20] [--gnn-cells 10] [--steps 30]

Writes benchmarks/results/thread_scaling_probe.json.
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

ROOT = Path(__file__).resolve().parents[2]
SIG = 3.4
A_AR = (4.0 / (0.8442 / SIG**3)) ** (1.0 / 3.0)


class PhaseMeter:
    """Accumulates wall time and per-thread CPU (main vs the rest) of named phases; phases nest
    (an outer phase's figures exclude what its inner phases took)."""

    def __init__(self):
        self.data: dict = {}
        self._stack: list = []

    def wrap(self, owner, attr: str, name: str) -> None:
        inner = getattr(owner, attr)
        meter = self

        def wrapped(*args, **kwargs):
            meter._enter(name)
            try:
                return inner(*args, **kwargs)
            finally:
                meter._exit()

        setattr(owner, attr, wrapped)

    @staticmethod
    def _snapshot():
        """Wall, main-thread CPU and other-threads CPU (process minus main; both clocks are exact,
        unlike /proc's per-thread counters, which a running thread updates only at scheduler ticks)."""
        main, process = time.thread_time_ns(), time.process_time_ns()
        return time.perf_counter(), main, process - main

    def _enter(self, name: str) -> None:
        if self._stack:  # pause the outer phase
            self._add(self._stack[-1][0], self._stack[-1][1], self._snapshot())
        self._stack.append([name, self._snapshot()])

    def _exit(self) -> None:
        name, start = self._stack.pop()
        now = self._snapshot()
        self._add(name, start, now)
        if self._stack:
            self._stack[-1][1] = now

    def _add(self, name, start, now) -> None:
        d = self.data.setdefault(name, {"wall_s": 0.0, "main_cpu_s": 0.0, "other_cpu_s": 0.0, "calls": 0})
        d["wall_s"] += now[0] - start[0]
        d["main_cpu_s"] += (now[1] - start[1]) * 1e-9
        d["other_cpu_s"] += (now[2] - start[2]) * 1e-9
        d["calls"] += 1


def _config(kind: str, cells: int, threads: int, outdir: str):
    from atomsim.engine.config import RunConfig

    if kind == "lj":
        system = {"structure": {"lattice": "fcc", "symbols": "Ar", "a": A_AR, "cubic": True,
                                "repeat": [cells] * 3}, "temperature_K": 173.8, "seed": 12345}
        pot = {"model": "lj", "params": {"epsilon": 0.0104, "sigma": SIG, "cutoff": 8.5, "shift": False},
               "dtype": "float64", "device": "cpu"}
        dt = 5.0
    else:
        system = {"structure": {"lattice": "fcc", "symbols": "Cu", "a": 3.61, "cubic": True,
                                "repeat": [cells] * 3}, "temperature_K": 300, "seed": 1}
        pot = {"model": "egnn-emt-v1", "dtype": "float32", "device": "cpu"}
        dt = 2.0
    return RunConfig.model_validate({
        "system": system, "potential": pot,
        "dynamics": {"integrator": "nve", "timestep_fs": dt, "steps": 10**9},
        "neighbor": {"skin": 1.0}, "parallel": {"threads": threads},
        "output": {"directory": outdir, "thermo_every": 10**8, "trajectory_every": 0, "restart_every": 0,
                   "progress": False}})


def worker(kind: str, cells: int, threads: int, steps: int, meter_on: bool) -> dict:
    from rich.console import Console

    import atomsim.engine.forces as forces_mod
    from atomsim.engine.simulation import Simulation
    from atomsim.kernels.neighbor_list import NeighborList
    from atomsim.kernels.threads import thread_report

    with tempfile.TemporaryDirectory() as tmp:
        sim = Simulation(_config(kind, cells, threads, tmp), console=Console(quiet=True))
        sim.run(1)  # JIT and first list, not measured
        meter = PhaseMeter()
        if meter_on:
            meter.wrap(NeighborList, "update", "neighbor: update/check")
            meter.wrap(NeighborList, "build", "neighbor: build")
            pot = sim.potential
            if getattr(sim.forces, "direct", False):
                meter.wrap(pot, "direct_forces", "model: direct kernel")
            else:
                meter.wrap(forces_mod, "build_graph", "graph: edge vectors")
                meter.wrap(forces_mod, "evaluate_potential", "model: backward + rest")
                meter.wrap(pot, "per_atom_energy", "model: forward")
            meter.wrap(sim.integrator, "initial_integrate", "integrate")
            meter.wrap(sim.integrator, "final_integrate", "integrate")
            meter.wrap(sim.forces, "compute", "forces: other")
            meter.wrap(sim, "run", "step: other")
        c0, t0 = time.process_time(), time.perf_counter()
        sim.run(steps)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return {"kind": kind, "n_atoms": sim.state.n_atoms_global, "threads": threads, "steps": steps,
                "wall_s": wall, "cpu_s": cpu, "atom_steps_per_s": sim.state.n_atoms_global * steps / wall,
                "phases": meter.data, "pools": thread_report(), "load_avg": os.getloadavg()}


def _spawn(kind, cells, threads, steps, meter_on, passive=False) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for var in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "OMP_WAIT_POLICY"):
        env.pop(var, None)
    if meter_on or passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    cmd = [sys.executable, __file__, "--worker", kind, str(cells), str(threads), str(steps),
           str(int(meter_on))]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def amdahl(split: dict) -> dict:
    """Per phase: share of CPU off the main thread, and the 2-thread speed-up it allows."""
    out, total_cpu = {}, sum(d["main_cpu_s"] + d["other_cpu_s"] for d in split.values()) or 1.0
    bound_time = 0.0
    for name, d in sorted(split.items(), key=lambda kv: -(kv[1]["main_cpu_s"] + kv[1]["other_cpu_s"])):
        cpu = d["main_cpu_s"] + d["other_cpu_s"]
        share = d["other_cpu_s"] / cpu if cpu > 0 else 0.0
        p = min(1.0, 2.0 * share)
        frac = cpu / total_cpu
        bound_time += frac * ((1 - p) + p / 2)
        out[name] = {"cpu_fraction": round(frac, 4), "off_main_share": round(share, 3),
                     "amdahl_2thread_speedup": round(1 / ((1 - p) + p / 2), 3)}
    return {"phases": out, "step_amdahl_2thread_speedup": round(1 / bound_time, 3) if bound_time else None}


def _machine() -> dict:
    """CPU model, cores, versions and the checkout measured."""
    import platform
    from importlib.metadata import version

    cpu = platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return {"machine": {"cpu": cpu, "cores": os.cpu_count(), "affinity": len(os.sched_getaffinity(0))},
            "versions": {d: version(d) for d in ("torch", "numpy", "numba", "atomsim")},
            "git": git.stdout.strip() + (" (+uncommitted changes)" if dirty else "")}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, cells, threads, steps, meter_on = sys.argv[2], *map(int, sys.argv[3:7])
        print(json.dumps(worker(kind, cells, threads, steps, bool(meter_on))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lj-cells", type=int, nargs="*", default=[10, 20],
                    help="10 -> 4,000 atoms, 20 -> 32,000")
    ap.add_argument("--gnn-cells", type=int, nargs="*", default=[10], help="fcc Cu cells: 10 -> 4,000 atoms")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--gnn-steps", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "thread_scaling_probe.json"))
    args = ap.parse_args()
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), **_machine(),
              "load_average_start": os.getloadavg(), "systems": []}
    plan = (("lj", args.lj_cells, args.steps), ("gnn", args.gnn_cells, args.gnn_steps))
    for kind, cells_list, steps in plan:
        for cells in cells_list:
            wall = {}
            # interleaved wall-clock runs; "2 passive": OMP_WAIT_POLICY=PASSIVE (no spin-waiting)
            for threads in ("1", "2", "2 passive", "2 passive", "2", "1"):
                r = _spawn(kind, cells, int(threads[0]), steps, False, passive=threads.endswith("passive"))
                wall.setdefault(threads, []).append(r["atom_steps_per_s"])
            split = _spawn(kind, cells, 2, steps, True)
            one = _spawn(kind, cells, 1, steps, True)
            entry = {"kind": kind, "n_atoms": split["n_atoms"], "atom_steps_per_s": wall,
                     "wall_speedup_2_over_1": max(wall["2"]) / max(wall["1"]),
                     "wall_speedup_2_passive_over_1": max(wall["2 passive"]) / max(wall["1"]),
                     "split_2_threads": split["phases"], "split_1_thread": one["phases"],
                     "amdahl": amdahl(split["phases"]), "pools_2_threads": split["pools"],
                     "load_avg": split["load_avg"]}
            result["systems"].append(entry)
            print(f"{kind} {entry['n_atoms']} atoms: wall 2/1 = {entry['wall_speedup_2_over_1']:.2f}, "
                  f"2 passive/1 = {entry['wall_speedup_2_passive_over_1']:.2f}; "
                  f"Amdahl bound from the thread split = "
                  f"{entry['amdahl']['step_amdahl_2thread_speedup']}", flush=True)
            for name, a in entry["amdahl"]["phases"].items():
                print(f"    {name:26s} {100 * a['cpu_fraction']:5.1f}% of CPU, "
                      f"{100 * a['off_main_share']:5.1f}% off the main thread "
                      f"-> <= {a['amdahl_2thread_speedup']:.2f}x", flush=True)
    result["load_average_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
