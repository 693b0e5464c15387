"""The largest system this machine holds, end to end: build, MD, sharded restart, resume elsewhere, convert.

    python benchmarks/largest/run_largest.py --system lj --atoms 2e6 --steps 100
    python benchmarks/largest/run_largest.py --system gnn --atoms 2e5 --steps 10 --resume-ranks 3

Phases (each launched as its own process group, progress streamed to the console):

1. ``mpiexec -n RANKS``: build the lattice per rank (engine/structure.py), STEPS steps of NVE, then one
   sharded restart (engine/parallel_io.py). The worker makes the calls ``atomsim run`` makes
   (``load_config`` + ``Simulation.from_config`` + ``run``) with ``output.restart_every: 0`` and writes the
   restart itself after the loop, so build, steps and restart write are timed apart.
2. ``mpiexec -n RESUME_RANKS``: ``--resume`` on another rank count: reads the shards it owns, re-evaluates
   the forces at the restart step (its thermo row must equal the first run's last row), and runs
   RESUME_STEPS more steps.
3. ``atomsim convert run/restart.json restart.extxyz`` (one process): the merged file's atom count is checked.

Systems: ``lj``: fcc argon (a = 5.26 Å), epsilon 0.0104 eV, sigma 3.40 Å, cutoff 8.5 Å, skin 1 Å, float64
(benchmarks/lj_vs_lammps's system), 2 fs; ``gnn``: fcc Cu (a = 3.61 Å), the bundled egnn-emt-v1 model,
float32, per-layer halo, 1 fs. Both 1 thread per rank. Timings are the slowest rank's (barriers
around each phase). Restart read bandwidth is from a warm page cache (the shards were just written
and the machine has the memory to keep them): it is the file format's and the reader's pace, not
the disk's (benchmarks/parallel_io measures cold reads).

Results are merged into benchmarks/results/largest_<system>.json (one entry per atoms x steps x
rank counts), with the machine, versions, commands and load averages.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results"
BIN = Path(sys.executable).parent


def _repeat_for(n_atoms: float) -> int:
    return max(1, round((float(n_atoms) / 4) ** (1 / 3)))  # 4 atoms per cubic fcc cell


def write_yaml(system: str, n_atoms: float, steps: int, run_dir: Path) -> Path:
    """The run's input file (what a user would hand ``atomsim run``)."""
    import yaml

    r = _repeat_for(n_atoms)
    if system == "lj":
        structure = {"lattice": "fcc", "symbols": "Ar", "a": 5.26, "cubic": True, "repeat": [r, r, r]}
        potential = {"model": "lj", "params": {"epsilon": 0.0104, "sigma": 3.40, "cutoff": 8.5},
                     "dtype": "float64", "device": "cpu"}
        temperature, dt = 60, 2.0
    else:
        structure = {"lattice": "fcc", "symbols": "Cu", "a": 3.61, "cubic": True, "repeat": [r, r, r]}
        potential = {"model": "egnn-emt-v1", "dtype": "float32", "device": "cpu"}
        temperature, dt = 300, 1.0
    cfg = {
        "system": {"structure": structure, "temperature_K": temperature, "seed": 1},
        "potential": potential,
        "dynamics": {"integrator": "nve", "timestep_fs": dt, "steps": steps},
        "neighbor": {"skin": 1.0},
        "parallel": {"halo": "per-layer", "threads": 1},
        "output": {"directory": str(run_dir / "run"), "thermo_every": max(1, steps // 10),
                   "trajectory_every": 0, "restart_every": 0, "progress": True, "parallel": "sharded"},
    }
    path = run_dir / "input.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# ------------------------------------------------------------------ workers (under mpiexec) --

def _rank_info(comm, sim) -> list:
    from atomsim.engine.memory import peak_rss

    ghosts = getattr(sim.forces, "ghosts", None)
    return comm.gather({"rank": comm.rank, "n_owned": int(sim.state.n_local), "peak_rss_B": peak_rss(),
                        "n_ghost": 0 if ghosts is None else int(ghosts.n)})


def worker_run(args) -> None:
    """Build, STEPS steps, sharded restart; timings are the slowest rank's."""
    from atomsim.engine.comm import world_comm
    from atomsim.engine.config import load_config
    from atomsim.engine.simulation import Simulation

    comm = world_comm()
    cfg = load_config(args.yaml, [])
    comm.barrier()
    t0 = time.perf_counter()
    sim = Simulation.from_config(cfg)
    comm.barrier()
    t1 = time.perf_counter()
    summary = sim.run()  # set-up (first force evaluation, memory report) + the loop
    comm.barrier()
    t2 = time.perf_counter()
    path = sim.write_restart()
    comm.barrier()
    t3 = time.perf_counter()
    ranks = _rank_info(comm, sim)
    if comm.rank == 0:
        Path(args.report).write_text(json.dumps({
            "build_s": t1 - t0, "setup_first_forces_s": (t2 - t1) - summary["wall_s"],
            "steps_s": summary["wall_s"], "restart_write_s": t3 - t2, "restart": str(path),
            "summary": summary, "memory_report": sim.memory_report, "ranks": ranks}, indent=1, default=str))


def worker_resume(args) -> None:
    """Resume on this rank count: read the shards, re-evaluate at the restart step, run on."""
    from atomsim.engine import restart as rs
    from atomsim.engine.comm import world_comm
    from atomsim.engine.config import load_config
    from atomsim.engine.simulation import Simulation
    from atomsim.engine.thermo import thermo_row

    comm = world_comm()
    cfg = load_config(args.yaml, [f"dynamics.steps={args.total_steps}"])
    read_s = [0.0]
    to_state = rs.ShardedRestart.to_state

    def timed(self, *a, **kw):  # the shard reads alone, apart from the provider's set-up
        t = time.perf_counter()
        try:
            return to_state(self, *a, **kw)
        finally:
            read_s[0] += time.perf_counter() - t

    rs.ShardedRestart.to_state = timed
    comm.barrier()
    t0 = time.perf_counter()
    sim = Simulation.from_config(cfg, resume=True)
    comm.barrier()
    t1 = time.perf_counter()
    sim.run(0)  # set-up: the list rebuilt at the saved reference positions, forces at the restart step
    row0 = thermo_row(sim.state, sim.integrator, cfg.dynamics.timestep_fs, 0.0, sim.forces.n_builds)
    comm.barrier()
    t2 = time.perf_counter()
    summary = sim.run()
    comm.barrier()
    ranks = _rank_info(comm, sim)
    read_max = comm.allreduce_max(read_s[0]) if comm.size > 1 else read_s[0]
    if comm.rank == 0:
        Path(args.report).write_text(json.dumps({
            "resume_construct_s": t1 - t0, "restart_read_s": float(read_max),
            "setup_first_forces_s": t2 - t1, "steps_s": summary["wall_s"], "row_at_restart": row0,
            "summary": summary, "memory_report": sim.memory_report, "ranks": ranks}, indent=1, default=str))


# ------------------------------------------------------------------ driver --

def _stream(cmd: list, log: Path, env: dict) -> tuple[int, float, str]:
    """Run cmd, echoing its output (progress) and keeping it in log; returns rc, wall s, tail."""
    t0 = time.perf_counter()
    tail: list[str] = []
    with open(log, "w") as fh, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                               text=True, bufsize=1) as proc:
        for line in proc.stdout:
            fh.write(line)
            tail = (tail + [line])[-40:]
            print("   |", line.rstrip()[:150], flush=True)
        rc = proc.wait()
    return rc, time.perf_counter() - t0, "".join(tail)


def _thermo(path: Path) -> list[dict]:
    with open(path) as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _shard_bytes(run: Path) -> tuple[int, int]:
    man = json.loads((run / "restart.json").read_text())
    return sum(int(s["bytes"]) for s in man["shards"]), len(man["shards"])


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def _mem_available_GiB() -> float:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def _merge_json(path: Path, extra: dict) -> None:
    """Add keys to a phase report (the launch wall time, so a --reuse-run keeps it)."""
    path.write_text(json.dumps({**json.loads(path.read_text()), **extra}, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--system", choices=("lj", "gnn"), default="lj")
    p.add_argument("--atoms", type=float, default=1e5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--resume-ranks", type=int, default=1)
    p.add_argument("--resume-steps", type=int, default=3)
    p.add_argument("--root", default="/work/largest_runs", help="run folders go here (not the repository)")
    p.add_argument("--keep", action="store_true", help="keep the run folder (default: removed after)")
    p.add_argument("--reuse-run", action="store_true",
                   help="the run folder already holds a finished phase 1 (phase_run.json): resume and convert only")
    p.add_argument("--no-convert", action="store_true", help="skip the convert phase")
    p.add_argument("--convert-to", default="extxyz", choices=("extxyz", "traj"),
                   help="convert's output format (ASE .traj is binary: far faster at 10^7 atoms)")
    p.add_argument("--mmap-threshold", type=int, default=1 << 20,
                   help="MALLOC_MMAP_THRESHOLD_ for every process (bytes; 0: glibc's dynamic default). "
                        "Fixed at 1 MiB, freed arrays go back to the OS instead of staying in the heap")
    p.add_argument("--json", default=None, help="default benchmarks/results/largest_<system>.json")
    p.add_argument("--worker", choices=("run", "resume"), help=argparse.SUPPRESS)
    p.add_argument("--yaml", help=argparse.SUPPRESS)
    p.add_argument("--report", help=argparse.SUPPRESS)
    p.add_argument("--total-steps", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker == "run":
        return worker_run(args)
    if args.worker == "resume":
        return worker_resume(args)

    import numpy as np
    import torch

    import atomsim

    n_req = int(float(args.atoms))
    r = _repeat_for(n_req)
    n_atoms = 4 * r ** 3
    run_dir = Path(args.root) / f"{args.system}_{n_atoms}_{args.steps}"
    reuse = args.reuse_run and (run_dir / "phase_run.json").exists()
    if run_dir.exists() and not reuse:
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    yaml_path = run_dir / "input.yaml" if reuse else write_yaml(args.system, n_req, args.steps, run_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if args.mmap_threshold > 0:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    else:
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
    mpiexec = str(BIN / "mpiexec")
    me = [sys.executable, str(Path(__file__).resolve())]
    load0 = os.getloadavg()
    avail0 = _mem_available_GiB()
    print(f"{args.system}: {n_atoms} atoms ({r}^3 cubic fcc cells), {args.steps} steps on {args.ranks} ranks, "
          f"resume on {args.resume_ranks}; run folder {run_dir}; {avail0:.1f} GiB available, load "
          f"{load0[0]:.1f}", flush=True)
    phases, commands, checks = {}, {}, {}

    # 1. build + steps + restart
    rep1 = run_dir / "phase_run.json"
    cmd = [mpiexec, "-n", str(args.ranks), *me, "--worker", "run", "--yaml", str(yaml_path), "--report", str(rep1)]
    commands["run"] = " ".join(cmd)
    if reuse:
        print(f"[1/3] reusing the finished run phase in {run_dir}", flush=True)
        wall = json.loads(rep1.read_text()).get("launch_wall_s")
    else:
        print(f"[1/3] build + {args.steps} steps + sharded restart on {args.ranks} ranks", flush=True)
        rc, wall, tail = _stream(cmd, run_dir / "phase_run.log", env)
        if rc != 0:
            sys.exit(f"run phase failed (rc {rc}); log {run_dir / 'phase_run.log'}:\n{tail}")
        _merge_json(rep1, {"launch_wall_s": wall})
    a = json.loads(rep1.read_text())
    phases["run_launch_wall_s"] = wall
    run = run_dir / "run"
    thermo1 = _thermo(run / "thermo.csv")
    restart_B, n_shards = _shard_bytes(run)

    # 2. resume on another rank count
    total = args.steps + args.resume_steps
    rep2 = run_dir / "phase_resume.json"
    cmd = [mpiexec, "-n", str(args.resume_ranks), *me, "--worker", "resume", "--yaml", str(yaml_path),
           "--report", str(rep2), "--total-steps", str(total)]
    commands["resume"] = " ".join(cmd)
    print(f"[2/3] resume on {args.resume_ranks} rank(s) to step {total}", flush=True)
    rc, wall, tail = _stream(cmd, run_dir / "phase_resume.log", env)
    if rc != 0:
        sys.exit(f"resume phase failed (rc {rc}); log {run_dir / 'phase_resume.log'}:\n{tail}")
    b = json.loads(rep2.read_text())
    phases["resume_launch_wall_s"] = wall
    thermo2 = _thermo(run / "thermo.csv")

    # 3. convert the restart to extxyz
    conv = None
    if not args.no_convert:
        out_xyz = run_dir / f"restart.{args.convert_to}"
        cmd = [str(BIN / "atomsim"), "convert", str(run / "restart.json"), str(out_xyz)]
        commands["convert"] = " ".join(cmd)
        print(f"[3/3] atomsim convert restart.json -> {args.convert_to} (one process)", flush=True)
        rc, wall, tail = _stream(["/usr/bin/time", "-f", "maxrss_kB=%M", *cmd], run_dir / "phase_convert.log", env)
        if rc != 0:
            sys.exit(f"convert failed (rc {rc}):\n{tail}")
        if args.convert_to == "extxyz":
            with open(out_xyz) as fh:
                n_conv = int(fh.readline())
        else:
            from ase.io import read

            n_conv = len(read(out_xyz, index=0))
        size = out_xyz.stat().st_size
        rss = [int(x.split("=")[1]) * 1024 for x in tail.split() if x.startswith("maxrss_kB=")]
        conv = {"format": args.convert_to, "wall_s": wall, "output_bytes": size, "atoms_in_file": n_conv,
                "peak_rss_B": rss[0] if rss else None, "MB_per_s_written": size / wall / 1e6}
        checks["converted_atom_count_ok"] = n_conv == n_atoms
        out_xyz.unlink()

    # checks (cheap)
    last = thermo1[-1]
    row0 = b["row_at_restart"]
    tol = 1e-9 if args.system == "lj" else 2e-6  # float32 sums on another partition differ in the last bits
    rel = {k: abs(row0[k] - last[k]) / max(abs(last[k]), 1e-30) for k in ("pe_eV", "ke_eV", "etotal_eV")}
    checks.update({
        "run_final_step": a["summary"]["final_step"], "resumed_final_step": b["summary"]["final_step"],
        "resumed_step_count_ok": b["summary"]["final_step"] == total and b["summary"]["steps"] == args.resume_steps,
        "restart_row_vs_last_row_rel": rel, "restart_row_equal_ok": max(rel.values()) <= tol,
        "restart_row_tolerance_rel": tol,
        "energies_finite_ok": all(math.isfinite(t[k]) for t in thermo2 for k in ("pe_eV", "ke_eV", "etotal_eV")),
        "thermo_rows_after_resume": [int(t["step"]) for t in thermo2],
    })
    etot = [t["etotal_eV"] for t in thermo2]
    checks["etotal_drift_eV_per_atom"] = (max(etot) - min(etot)) / n_atoms
    ok = all(v for k, v in checks.items() if k.endswith("_ok"))

    def rss_per_owned(ranks):
        return max(x["peak_rss_B"] / max(x["n_owned"], 1) for x in ranks)

    mem = a["memory_report"]
    entry = {
        "system": args.system, "n_atoms": n_atoms, "steps": args.steps, "ranks": args.ranks,
        "resume_ranks": args.resume_ranks, "resume_steps": args.resume_steps,
        "description": ("fcc Ar, LJ eps 0.0104 eV sigma 3.40 A cutoff 8.5 A skin 1 A, float64, 2 fs, NVE"
                        if args.system == "lj" else
                        "fcc Cu, bundled egnn-emt-v1, float32, per-layer halo, skin 1 A, 1 fs, NVE"),
        "all_checks_ok": ok, "checks": checks,
        "wall_s": {"build": a["build_s"], "first_forces_setup": a["setup_first_forces_s"],
                   "steps": a["steps_s"], "restart_write": a["restart_write_s"],
                   "resume_construct_incl_read": b["resume_construct_s"], "restart_read": b["restart_read_s"],
                   "resume_first_forces_setup": b["setup_first_forces_s"], "resume_steps": b["steps_s"],
                   "convert": conv["wall_s"] if conv else None, **phases},
        "atom_steps_per_s": a["summary"]["atom_steps_per_s"],
        "step_timings_s": a["summary"]["timings_s"],
        "memory": {
            "peak_rss_B_per_rank": [x["peak_rss_B"] for x in a["ranks"]],
            "owned_per_rank": [x["n_owned"] for x in a["ranks"]],
            "ghosts_per_rank": [x["n_ghost"] for x in a["ranks"]],
            "peak_rss_B_per_owned_atom": rss_per_owned(a["ranks"]),
            "thermo_peak_rss_B_per_atom": last.get("peak_rss_B_per_atom"),
            "run_report": mem,
            "resume_peak_rss_B_per_rank": [x["peak_rss_B"] for x in b["ranks"]],
            "resume_peak_rss_B_per_owned_atom": rss_per_owned(b["ranks"]),
            "convert_peak_rss_B": conv["peak_rss_B"] if conv else None,
            "mem_available_GiB_before": avail0,
        },
        "io": {"restart_bytes": restart_B, "restart_bytes_per_atom": restart_B / n_atoms, "n_shards": n_shards,
               "restart_write_MB_per_s": restart_B / a["restart_write_s"] / 1e6,
               "restart_read_MB_per_s_warm_cache": restart_B / max(b["restart_read_s"], 1e-9) / 1e6,
               "convert": conv},
        "commands": {"driver": " ".join(["python", "benchmarks/largest/run_largest.py"] + sys.argv[1:]),
                     **commands},
        "input_yaml": yaml_path.read_text(),
        "env": {k: env[k] for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MALLOC_MMAP_THRESHOLD_") if k in env},
        "load_average_before": load0, "load_average_after": os.getloadavg(),
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = Path(args.json) if args.json else RESULTS / f"largest_{args.system}.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc.update({
        "benchmark": "largest system end to end (benchmarks/largest/run_largest.py)",
        "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(),
                    "memory_GiB": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
        "versions": {"atomsim": getattr(atomsim, "__version__", "?"), "torch": torch.__version__,
                     "numpy": np.__version__, "python": platform.python_version(),
                     "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                           cwd=HERE).stdout.strip()},
    })
    key = f"{n_atoms}_atoms_{args.steps}_steps_{args.ranks}r_resume{args.resume_ranks}r"
    doc.setdefault("runs", {})[key] = entry
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))
    w, io = entry["wall_s"], entry["io"]
    print(f"{'OK' if ok else 'CHECK FAILED'} {args.system} {n_atoms} atoms: build {w['build']:.1f} s, first forces "
          f"{w['first_forces_setup']:.1f} s, {args.steps} steps {w['steps']:.1f} s "
          f"({entry['atom_steps_per_s']:.3g} atom-steps/s), restart write {w['restart_write']:.2f} s "
          f"({io['restart_write_MB_per_s']:.0f} MB/s, {io['restart_bytes'] / 1e6:.0f} MB), read "
          f"{w['restart_read']:.2f} s ({io['restart_read_MB_per_s_warm_cache']:.0f} MB/s warm), convert "
          f"{w['convert'] if w['convert'] is None else round(w['convert'], 1)} s; peak RSS "
          f"{', '.join(f'{x / 2**30:.2f}' for x in entry['memory']['peak_rss_B_per_rank'])} GiB per rank = "
          f"{entry['memory']['peak_rss_B_per_owned_atom']:.0f} B per owned atom -> {path}", flush=True)
    print(json.dumps(checks, indent=1))
    if not args.keep:
        shutil.rmtree(run_dir)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
