"""MD throughput of SevenNet-0: atomsim (plugin, `atomsim run` loop) vs sevenn's ASE calculator + ASE VelocityVerlet.

    .venv/bin/python benchmarks/sevenn/bench_md.py [--repeat 6 6 6] [--steps 5] [--warmup 1]
        [--threads 2] [--repeats 2]

Same system (fcc Cu, a = 3.61 Å, cubic cell repeated 6x6x6 = 864 atoms), same
start (atomsim's structure builder and Maxwell-Boltzmann velocities at 300 K,
seed 1, handed to both), same NVE integrator (velocity Verlet, 1 fs), same
torch thread count, each run in a fresh subprocess. Each run times ``--steps``
steps after ``--warmup`` steps (the first force call, model warm-up and first
neighbor build are not timed on either side). The two engines alternate
(A B A B ...) so slow drifts in machine load hit both.

- ``atomsim``: ``atomsim.Simulation`` with ``potential.model: sevennet-0`` (what
  `atomsim run` executes): Verlet list with 1 Å skin, reused across steps.
- ``sevenn_ase``: ``sevenn.calculator.SevenNetCalculator('7net-0')`` driven by
  ``ase.md.verlet.VelocityVerlet`` (a fresh neighbor list every step).

Allocator settings matter on CPU (see atomsim_sevenn/malloc.py), so four runs
per repeat separate the engine's gain from the allocator's:

- ``sevenn_ase/plain`` and ``atomsim/plain`` (plugin's malloc tuning off,
  ``ATOMSIM_SEVENN_MALLOC=0``): the engine alone, glibc defaults on both sides;
- ``atomsim/default``: atomsim as shipped (the plugin applies mallopt);
- ``sevenn_ase/tuned``: sevenn under the same settings via GLIBC_TUNABLES.

Reported: seconds per step and atom-steps/s (median over repeats), process CPU
seconds per step, speed-ups (engine only; equal allocator settings; as
shipped), and the final-state difference between the two engines (they
integrate the same trajectory). JSON goes to benchmarks/results/sevenn_md.json.
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

ROOT = Path(__file__).resolve().parents[2]
TUNABLES = ("glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296:"
            "glibc.malloc.top_pad=268435456")


def _yaml(repeat, outdir: str, steps: int) -> str:
    return f"""system:
  structure: {{lattice: fcc, symbols: Cu, a: 3.61, cubic: true, repeat: [{repeat[0]}, {repeat[1]}, {repeat[2]}]}}
  temperature_K: 300
  seed: 1
potential: {{model: sevennet-0, dtype: float32, device: cpu}}
dynamics: {{integrator: nve, timestep_fs: 1.0, steps: {steps}}}
neighbor: {{skin: 1.0}}
output: {{directory: {outdir}, thermo_every: 1000000, trajectory_every: 0, restart_every: 0, progress: false}}
"""


def _final(positions, forces, energy) -> dict:
    import numpy as np

    return {"positions": np.asarray(positions).tolist(), "energy_eV": float(energy),
            "max_force_eV_per_A": float(np.abs(np.asarray(forces)).max())}


def worker(args) -> dict:
    import warnings


    warnings.filterwarnings("ignore")
    from atomsim.kernels.threads import configure_threads

    configure_threads(args.threads)  # torch, numba and BLAS alike
    from atomsim.engine.config import load_config
    from atomsim.engine.simulation import Simulation
    from atomsim.engine.structure import build_atoms, initialize_velocities

    with tempfile.TemporaryDirectory() as tmp:
        cfgfile = Path(tmp) / "in.yaml"
        cfgfile.write_text(_yaml(args.repeat, str(Path(tmp) / "run"), args.warmup + args.steps))
        cfg = load_config(str(cfgfile))
        if args.engine == "atomsim":
            t_load = time.perf_counter()
            sim = Simulation.from_config(cfg)
            load_s = time.perf_counter() - t_load
            sim.run(args.warmup)  # includes the initial force call
            c0, t0 = time.process_time(), time.perf_counter()
            summary = sim.run(args.steps)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            st = sim.state
            extra = {"n_neighbor_builds": summary["n_neighbor_builds"], "timings_s": summary["timings_s"]}
            final = _final(st.positions.numpy(), st.forces.numpy(), st.energy)
            n = st.n_atoms_global
        else:
            from ase import units
            from ase.md.verlet import VelocityVerlet
            from sevenn.calculator import SevenNetCalculator

            atoms = build_atoms(cfg)
            initialize_velocities(atoms, cfg.system.temperature_K, cfg.system.seed)
            t_load = time.perf_counter()
            atoms.calc = SevenNetCalculator("7net-0", device="cpu")
            load_s = time.perf_counter() - t_load
            dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
            dyn.run(args.warmup)  # includes the initial force call
            c0, t0 = time.process_time(), time.perf_counter()
            dyn.run(args.steps)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            extra = {"neighbor_list": "sevenn (matscipy if installed, else ASE) every step"}
            final = _final(atoms.positions, atoms.get_forces(), atoms.get_potential_energy())
            n = len(atoms)
    return {"engine": args.engine, "n_atoms": n, "steps": args.steps, "warmup": args.warmup,
            "threads": args.threads, "wall_s": wall, "cpu_s": cpu, "s_per_step": wall / args.steps,
            "cpu_s_per_step": cpu / args.steps, "atom_steps_per_s": n * args.steps / wall,
            "load_s": load_s, **extra, "final": final}


def _versions() -> dict:
    out = {}
    for mod in ("torch", "numpy", "ase", "sevenn", "e3nn", "matscipy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001  (absent: not part of the run)
            out[mod] = None
    from importlib.metadata import version

    for dist in ("atomsim", "atomsim-sevenn"):
        try:
            out[dist] = version(dist)
        except Exception:  # noqa: BLE001
            out[dist] = None
    return out


def _git() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, nargs=3, default=[6, 6, 6])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sevenn_md.json"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--engine", choices=["atomsim", "sevenn_ase"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return

    import numpy as np

    def spawn(engine: str, mode: str) -> dict:
        t = str(args.threads)
        env = dict(os.environ, OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, NUMBA_NUM_THREADS=t, PYTHONWARNINGS="ignore")
        env.pop("GLIBC_TUNABLES", None)
        env.pop("ATOMSIM_SEVENN_MALLOC", None)
        if mode == "tuned":
            env["GLIBC_TUNABLES"] = TUNABLES
        if engine == "atomsim" and mode == "plain":
            env["ATOMSIM_SEVENN_MALLOC"] = "0"
        cmd = [sys.executable, __file__, "--worker", "--engine", engine, "--repeat", *map(str, args.repeat),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", t]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise SystemExit(f"{engine} run failed:\n{proc.stderr[-3000:]}")
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
        res = json.loads(line[len("RESULT "):])
        res["mode"] = mode
        res["env"] = {k: env[k] for k in ("GLIBC_TUNABLES", "ATOMSIM_SEVENN_MALLOC") if k in env}
        print(f"  {engine + '/' + mode:18s}: {res['s_per_step']:.2f} s/step "
              f"(cpu {res['cpu_s_per_step']:.2f} s/step), {res['atom_steps_per_s']:.1f} atom-steps/s", flush=True)
        return res

    combos = [("sevenn_ase", "plain"), ("atomsim", "plain"), ("atomsim", "default"), ("sevenn_ase", "tuned")]
    runs = {f"{e}/{m}": [] for e, m in combos}
    for r in range(args.repeats):
        for engine, mode in (combos if r % 2 == 0 else combos[::-1]):
            runs[f"{engine}/{mode}"].append(spawn(engine, mode))

    def med(key, q="s_per_step"):
        return statistics.median(x[q] for x in runs[key])

    def ratio(slow, fast):
        return {"wall": med(slow) / med(fast), "cpu": med(slow, "cpu_s_per_step") / med(fast, "cpu_s_per_step")}

    pos = {k: np.array(v[0]["final"]["positions"]) for k, v in runs.items()}
    summary = {
        "s_per_step_median": {k: med(k) for k in runs},
        "cpu_s_per_step_median": {k: med(k, "cpu_s_per_step") for k in runs},
        "atom_steps_per_s_median": {k: med(k, "atom_steps_per_s") for k in runs},
        "speedup_engine_only_plain_malloc": ratio("sevenn_ase/plain", "atomsim/plain"),
        "speedup_equal_malloc_settings": ratio("sevenn_ase/tuned", "atomsim/default"),
        "speedup_as_shipped": ratio("sevenn_ase/plain", "atomsim/default"),
        "final_max_position_difference_A": float(np.abs(pos["atomsim/default"] - pos["sevenn_ase/plain"]).max()),
        "final_energy_difference_eV": abs(runs["atomsim/default"][0]["final"]["energy_eV"]
                                          - runs["sevenn_ase/plain"][0]["final"]["energy_eV"]),
    }
    for name in ("speedup_engine_only_plain_malloc", "speedup_equal_malloc_settings", "speedup_as_shipped"):
        print(f"{name}: {summary[name]['wall']:.2f}x wall, {summary[name]['cpu']:.2f}x cpu")
    print(f"final positions differ by {summary['final_max_position_difference_A']:.1e} Å")
    for rs in runs.values():  # keep the JSON small: positions only in the summary check
        for x in rs:
            x["final"].pop("positions", None)
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    doc = {
        "benchmark": "SevenNet-0 MD throughput: atomsim (plugin) vs sevenn ASE calculator + ASE VelocityVerlet",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": _git(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version(), "loadavg_at_end": load},
        "versions": _versions(),
        "system": {"lattice": "fcc Cu a=3.61 cubic", "repeat": args.repeat, "temperature_K": 300, "seed": 1,
                   "integrator": "NVE velocity Verlet, 1 fs", "skin_A": 1.0},
        "settings": {"steps": args.steps, "warmup": args.warmup, "threads": args.threads, "repeats": args.repeats},
        "summary": summary,
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
