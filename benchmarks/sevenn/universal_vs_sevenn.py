"""`atomsim run` MD speed: atomsim's universal model (``default``) vs SevenNet-0 (its teacher).

    .venv/bin/python benchmarks/sevenn/universal_vs_sevenn.py [--model default] [--repeat 6 6 6]
        [--steps-sevenn 3] [--steps-egnn 50] [--threads 1]

Why: the student exists to run the teacher's chemistry much faster; the goal is >= 20x at equal
threads. Same input for both (fcc Cu, a = 3.61 Å, 6x6x6 cubic cells = 864 atoms, 300 K, seed 1,
NVE 1 fs, skin 1 Å, float32, ``parallel.threads`` = ``--threads``), each in a fresh subprocess that
runs the YAML exactly as `atomsim run` does (engine.config.load_config -> Simulation.from_config ->
run), interleaved egnn / sevennet / egnn so a change of machine load shows as a difference between
the two egnn runs. Timed: the steps after the first force call (list builds included; start-up, model
loading and the first force call not), as wall time and as the process's CPU time. On this shared
2-core machine (load 10-17 while it ran) a single-thread job gets a varying share of a core, so the
CPU-time ratio is the load-independent figure; the wall-time ratio is reported next to it. JSON:
benchmarks/results/universal_vs_sevenn_speed.json.
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

ROOT = Path(__file__).resolve().parents[2]
MODELS = {"egnn": "default", "sevennet": "sevennet-0"}  # "egnn": --model


def _yaml(model: str, repeat, steps: int, threads: int, outdir: Path) -> str:
    return f"""system:
  structure: {{lattice: fcc, symbols: Cu, a: 3.61, cubic: true, repeat: [{repeat[0]}, {repeat[1]}, {repeat[2]}]}}
  temperature_K: 300
  seed: 1
potential: {{model: {model}, dtype: float32, device: cpu}}
dynamics: {{integrator: nve, timestep_fs: 1.0, steps: {steps}}}
neighbor: {{skin: 1.0}}
parallel: {{threads: {threads}}}
output: {{directory: {outdir}, thermo_every: {steps}, trajectory_every: 0, restart_every: 0, progress: false}}
"""


def worker(key: str, repeat, steps: int, threads: int) -> dict:
    """In the subprocess: the YAML through the engine as `atomsim run` runs it, timed after step 0."""
    from atomsim.engine.config import load_config
    from atomsim.engine.simulation import Simulation

    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "in.yaml"
        inp.write_text(_yaml(MODELS[key], repeat, steps, threads, Path(tmp) / "run"))
        c_load, t_load = time.process_time(), time.perf_counter()
        sim = Simulation.from_config(load_config(str(inp)))
        sim.run(0)  # setup: first neighbor list and force call
        load = {"wall_s": time.perf_counter() - t_load, "cpu_s": time.process_time() - c_load}
        c0, t0 = time.process_time(), time.perf_counter()
        summary = sim.run(steps)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = sim.state.n_atoms_global
    return {"model": MODELS[key], "n_atoms": n, "steps": steps, "threads": sim.threads,
            "wall_s": wall, "cpu_s": cpu, "s_per_step": wall / steps, "cpu_s_per_step": cpu / steps,
            "atom_steps_per_s": n * steps / wall, "atom_steps_per_cpu_s": n * steps / cpu,
            "setup_and_first_forces": load, "n_neighbor_builds": summary["n_neighbor_builds"],
            "final_energy_eV": float(sim.state.energy)}


def run_one(key: str, repeat, steps: int, threads: int) -> dict:
    """One fresh subprocess running worker(); load averages before and after."""
    t = str(threads)
    env = dict(os.environ, OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, NUMBA_NUM_THREADS=t, PYTHONWARNINGS="ignore")
    cmd = [sys.executable, __file__, "--worker", key, "--repeat", *map(str, repeat), "--steps-worker", str(steps),
           "--threads", t, "--model", MODELS["egnn"]]
    load0 = os.getloadavg()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    load1 = os.getloadavg()
    if proc.returncode != 0:
        raise SystemExit(f"{key} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    res = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][len("RESULT "):])
    res.update(load_average_before=list(load0), load_average_after=list(load1),
               yaml=_yaml(MODELS[key], repeat, steps, threads, Path("run")))
    print(f"  {MODELS[key]:18s}: {res['s_per_step']:.3f} s/step wall, {res['cpu_s_per_step']:.3f} CPU-s/step, "
          f"{res['atom_steps_per_s']:.0f} atom-steps/s wall, {res['atom_steps_per_cpu_s']:.0f} per CPU-s "
          f"(load {load1[0]:.1f})", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, nargs=3, default=[6, 6, 6])
    ap.add_argument("--steps-sevenn", type=int, default=3)
    ap.add_argument("--steps-egnn", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="default", help="the student (a bundled name): default = the universal model")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "universal_vs_sevenn_speed.json")
    ap.add_argument("--worker", choices=list(MODELS), help=argparse.SUPPRESS)
    ap.add_argument("--steps-worker", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    MODELS["egnn"] = args.model
    if args.worker:
        from atomsim.kernels.threads import configure_threads

        configure_threads(args.threads)
        print("RESULT " + json.dumps(worker(args.worker, args.repeat, args.steps_worker, args.threads)), flush=True)
        return
    runs = []
    for key in ("egnn", "sevennet", "egnn"):  # interleaved: the egnn runs bracket the slow one
        runs.append(run_one(key, args.repeat, args.steps_egnn if key == "egnn" else args.steps_sevenn,
                            args.threads))
    egnn = [r for r in runs if r["model"] == MODELS["egnn"]]
    seven = [r for r in runs if r["model"] == MODELS["sevennet"]][0]
    speedup = {
        "cpu_time_mean_egnn_over_sevennet": sum(r["atom_steps_per_cpu_s"] for r in egnn) / len(egnn)
        / seven["atom_steps_per_cpu_s"],
        "cpu_time_slowest_egnn_over_sevennet": min(r["atom_steps_per_cpu_s"] for r in egnn)
        / seven["atom_steps_per_cpu_s"],
        "wall_time_mean_egnn_over_sevennet": sum(r["atom_steps_per_s"] for r in egnn) / len(egnn)
        / seven["atom_steps_per_s"],
        "wall_time_slowest_egnn_over_sevennet": min(r["atom_steps_per_s"] for r in egnn) / seven["atom_steps_per_s"],
    }
    print(f"speed-up {MODELS['egnn']} / sevennet-0: {speedup['cpu_time_mean_egnn_over_sevennet']:.1f}x by CPU "
          f"time (slower egnn run {speedup['cpu_time_slowest_egnn_over_sevennet']:.1f}x), "
          f"{speedup['wall_time_mean_egnn_over_sevennet']:.1f}x by wall time; goal >= 20x")
    import torch

    from atomsim import __version__

    versions = {"atomsim": __version__, "torch": torch.__version__, "python": platform.python_version()}
    for dist in ("sevenn", "atomsim-sevenn", "e3nn"):
        try:
            from importlib.metadata import version

            versions[dist] = version(dist)
        except Exception:  # noqa: BLE001  (absent: recorded as such)
            versions[dist] = None
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").is_file() else platform.processor()
    doc = {
        "benchmark": f"atomsim run MD: {MODELS['egnn']} vs SevenNet-0 (atomsim-sevenn plugin), same input and threads",
        "goal": ">= 20x",
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "run_command": "each run: its runs[].yaml through load_config -> Simulation.from_config -> run, "
                       "as `atomsim run in.yaml` does",
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
                    "note": "shared 2-core machine; load averages per run below",
                    "load_average_end": list(os.getloadavg())},
        "versions": versions,
        "system": {"structure": "fcc Cu a=3.61 cubic", "repeat": args.repeat, "n_atoms": runs[0]["n_atoms"],
                   "integrator": "NVE velocity Verlet, 1 fs", "dtype": "float32", "threads": args.threads},
        "speedup": speedup, "meets_goal_by_cpu_time": speedup["cpu_time_slowest_egnn_over_sevennet"] >= 20,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
