"""MD throughput: atomsim vs TorchSim on the same systems, same start, same integrator, 1 thread.

Systems:
- LJ argon as benchmarks/lj_vs_lammps/bench_lj.py runs it (epsilon 0.0104 eV, sigma 3.4 Å, cutoff
  8.5 Å, no shift, fcc at rho* = 0.8442, T* = 1.44, NVE 5 fs, float64) at 10^3, 16^3 and 20^3 fcc
  cells: 4,000, 16,384 and 32,000 atoms. TorchSim: ``LennardJonesModel`` (vesin full list rebuilt
  every step, as it ships); atomsim: the ``lj`` potential, Verlet list with 1 Å skin.
- SevenNet-0 on fcc Cu (a = 3.61 Å, 300 K, NVE 1 fs, float32), 4^3 cubic cells = 256 atoms by
  default (``--sevenn-cells 6``: 864, as benchmarks/sevenn/bench_md.py). TorchSim: its
  ``SevenNetModel`` through sevenn_shim.py; atomsim: the ``sevennet-0`` plugin potential
  (plugins/atomsim-sevenn). The plugin tunes glibc malloc (atomsim_sevenn/malloc.py), so TorchSim
  runs twice: as shipped and under the same settings (GLIBC_TUNABLES), to separate engine from
  allocator.

Method: each engine lives in one warm worker process (worker.py; TorchSim's in its own venv, made
by setup_venv.sh). Both get identical positions and velocities; the energies and forces after the
first (untimed) step are compared (the systems and models match: the perfect fcc start has zero
forces) and, after the same number of velocity-Verlet steps, the final positions (the dynamics
match). TorchSim 0.3.0's LJ forces are 2x the true ones; shims.py halves them (see there). Timed
runs alternate between engines (A B, B A, ...) so drifts in machine load hit both; reported: median
atom-steps/s over ``--repeats`` runs and the load average around each run. The whole run takes
~3-5 minutes on a busy 2-core machine.

    benchmarks/torchsim/setup_venv.sh            # once: the TorchSim venv
    .venv/bin/python benchmarks/torchsim/bench.py [--repeats 3] [--threads 1] [--sevenn-cells 4]

Writes benchmarks/results/torchsim.json and benchmarks/results/torchsim.png.
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
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEFAULT_VENV = Path(os.environ.get("TORCHSIM_VENV", HERE / ".venv"))
SIG, EPS = 3.4, 0.0104
A_AR = (4.0 / (0.8442 / SIG**3)) ** (1.0 / 3.0)  # Å: LAMMPS bench/in.lj density, as bench_lj.py
T_AR = 1.44 * EPS / 8.617333262e-5  # K: T* = 1.44
TUNABLES = ("glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296:"
            "glibc.malloc.top_pad=268435456")  # what atomsim_sevenn/malloc.py sets with mallopt


class Worker:
    """One worker.py process; ``ask`` sends a command and returns its ``@@`` answer."""

    def __init__(self, name: str, python: str, engine: str, threads: int, env_extra: dict, log: Path):
        t = str(threads)
        env = {**os.environ, "OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t,
               "NUMBA_NUM_THREADS": t, "PYTHONWARNINGS": "ignore", **env_extra}
        env.pop("ATOMSIM_SEVENN_MALLOC", None)
        if "GLIBC_TUNABLES" not in env_extra:
            env.pop("GLIBC_TUNABLES", None)
        self.name, self.env_extra = name, env_extra
        self._log = open(log, "w")
        self.proc = subprocess.Popen([python, str(HERE / "worker.py"), "--engine", engine, "--threads", t],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True, env=env, cwd=ROOT)

    def ask(self, **msg) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith("@@ "):
                return json.loads(line[3:])
        self._log.flush()
        raise SystemExit(f"worker {self.name} died; its log: {self._log.name}\n"
                         + Path(self._log.name).read_text()[-3000:])

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            self.proc.kill()
        self._log.close()


def make_system(kind: str, cells: int, path: Path) -> int:
    """fcc Ar (LJ) or Cu (SevenNet-0) with Maxwell-Boltzmann velocities from a fixed seed -> npz."""
    from ase.build import bulk
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    if kind == "lj":
        atoms = bulk("Ar", "fcc", a=A_AR, cubic=True).repeat((cells,) * 3)
        temp = T_AR
    else:
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((cells,) * 3)
        temp = 300.0
    with warnings.catch_warnings():  # ase 3.29 deprecates the name, not the function
        warnings.simplefilter("ignore", DeprecationWarning)
        MaxwellBoltzmannDistribution(atoms, temperature_K=temp, rng=np.random.default_rng(12345))
    Stationary(atoms)
    np.savez(path, positions=atoms.positions, cell=atoms.cell.array, numbers=atoms.numbers,
             masses=atoms.get_masses(), velocities=atoms.get_velocities())
    return len(atoms)


def _min_image_max(a: np.ndarray, b: np.ndarray, cell: np.ndarray) -> float:
    frac = (a - b) @ np.linalg.inv(cell)
    frac -= np.round(frac)
    return float(np.abs(frac @ cell).max())


def compare_system(label: str, kind: str, cells: int, workers: dict, args, tmp: Path) -> dict:
    """Set up every worker on one system, check agreement, time interleaved runs."""
    npz = tmp / f"{label}.npz"
    n = make_system(kind, cells, npz)
    dt = 5.0 if kind == "lj" else 1.0
    steps = args.lj_steps if kind == "lj" else args.sevenn_steps
    print(f"{label}: {n} atoms, {steps} steps per run, {args.repeats} runs per engine", flush=True)
    setup, forces = {}, {}
    for name, w in workers.items():
        f_out = tmp / f"{label}_{name}_f.npy"
        setup[name] = w.ask(cmd="setup", system=kind, npz=str(npz), forces_out=str(f_out), dt_fs=dt)
        forces[name] = np.load(tmp / f"{label}_{name}_f.npy")
        print(f"  {name:18s} set up in {setup[name]['setup_s']:.1f} s, "
              f"E(step 1) = {setup[name]['energy_eV']:.8f} eV", flush=True)
    names = list(workers)
    ref = names[0]
    agreement = {}
    for name in names[1:]:
        e_a, e_b = setup[ref]["energy_eV"], setup[name]["energy_eV"]
        agreement[f"{name} vs {ref}"] = {
            "energy_diff_eV_per_atom": abs(e_a - e_b) / n,
            "force_max_abs_diff_eV_per_A": float(np.abs(forces[ref] - forces[name]).max()),
            "force_max_abs_eV_per_A": float(np.abs(forces[ref]).max())}
    runs = {name: [] for name in names}
    for r in range(args.repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            res = workers[name].ask(cmd="run", steps=steps)
            res["atom_steps_per_s"] = n * steps / res["wall_s"]
            res["atom_steps_per_cpu_s"] = n * steps / max(res["cpu_s"], 1e-9)
            runs[name].append(res)
            print(f"  run {r + 1} {name:18s} {res['atom_steps_per_s']:12.1f} atom-steps/s "
                  f"(cpu {res['cpu_s'] / res['wall_s']:.2f} of wall; load {res['load_avg'][0]:.2f})",
                  flush=True)
    final = {}
    for name in names:
        workers[name].ask(cmd="final", npz_out=str(tmp / f"{label}_{name}_x.npy"))
        final[name] = np.load(tmp / f"{label}_{name}_x.npy")
    cell = np.load(npz)["cell"]
    for name in names[1:]:
        agreement[f"{name} vs {ref}"].update(
            final_positions_max_abs_diff_A=_min_image_max(final[ref], final[name], cell),
            steps_integrated=1 + steps * args.repeats)
    med = {name: statistics.median(x["atom_steps_per_s"] for x in runs[name]) for name in names}
    med_cpu = {name: statistics.median(x["atom_steps_per_cpu_s"] for x in runs[name]) for name in names}
    for key, a in agreement.items():
        print(f"  agreement {key}: |dE| {a['energy_diff_eV_per_atom']:.2e} eV/atom, "
              f"max|dF| {a['force_max_abs_diff_eV_per_A']:.2e} eV/Å, "
              f"final max|dx| {a['final_positions_max_abs_diff_A']:.2e} Å", flush=True)
    return {"label": label, "kind": kind, "n_atoms": n, "fcc_cells_per_side": cells, "steps_per_run": steps,
            "timestep_fs": dt, "setup": setup, "runs": runs, "median_atom_steps_per_s": med,
            "atomsim_over": {name: med["atomsim"] / med[name] for name in names if name != "atomsim"},
            "median_atom_steps_per_cpu_s": med_cpu,
            "atomsim_over_per_cpu_s": {name: med_cpu["atomsim"] / med_cpu[name] for name in names
                                       if name != "atomsim"},
            "agreement": agreement}


def _versions(python: str) -> dict:
    code = ("import json, importlib.metadata as m\nout = {}\n"
            "for d in ('torch', 'numpy', 'ase', 'numba', 'sevenn', 'e3nn', 'torch-sim-atomistic', 'vesin',"
            " 'vesin-torch', 'atomsim', 'atomsim-sevenn'):\n"
            "    try: out[d] = m.version(d)\n    except Exception: out[d] = None\nprint(json.dumps(out))")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr[-500:]}


def _machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
            "platform": platform.platform(), "python": platform.python_version()}


def _git() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return out.stdout.strip() + (" (+uncommitted changes)" if dirty else "")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = result["systems"]
    metrics = (("median_atom_steps_per_s", "atom-steps per wall s"),
               ("median_atom_steps_per_cpu_s", "atom-steps per CPU s"))
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), gridspec_kw={"width_ratios": [3, 1.4]})
    colors = {"atomsim": "tab:blue", "torchsim": "tab:orange", "torchsim_tuned_malloc": "tab:red"}
    for row, (metric, ylabel) in enumerate(metrics):
        panels = ((axes[row][0], "lj", "LJ argon, float64"),
                  (axes[row][1], "sevennet", "SevenNet-0, float32"))
        for ax, kind, title in panels:
            rows = [s for s in systems if s["kind"] == kind and metric in s]
            if not rows:
                ax.set_visible(False)
                continue
            names = list(rows[0][metric])
            width = 0.8 / len(names)
            for k, name in enumerate(names):
                xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(rows))]
                vals = [s[metric][name] for s in rows]
                bars = ax.bar(xs, vals, width, label=name, color=colors.get(name))
                ax.bar_label(bars, labels=[f"{v:.3g}" for v in vals], fontsize=7)
            ax.set_xticks(range(len(rows)), [f"{s['n_atoms']:,} atoms" for s in rows])
            ax.set_title(title, fontsize=10)
            ax.set_ylabel(f"{ylabel} (median)")
            ax.legend(fontsize=7)
    load = result["load_average_start"][0]
    fig.suptitle(f"atomsim vs TorchSim, {result['threads']} thread(s), {result['machine']['cpu']} "
                 f"(load {load:.1f} at start)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lj-cells", type=int, nargs="+", default=[10, 16, 20],
                    help="fcc cells per side (4 atoms each): 10 16 20 -> 4,000 16,384 32,000 atoms")
    ap.add_argument("--lj-steps", type=int, default=10)
    ap.add_argument("--sevenn-cells", type=int, default=4, help="Cu fcc cells per side: 4 -> 256, 6 -> 864")
    ap.add_argument("--sevenn-steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per engine and system (median)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-lj", action="store_true")
    ap.add_argument("--skip-sevenn", action="store_true")
    ap.add_argument("--venv", default=str(DEFAULT_VENV), help="the TorchSim venv (setup_venv.sh)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "torchsim.json"))
    args = ap.parse_args()
    ts_python = str(Path(args.venv) / "bin" / "python")
    if not Path(ts_python).exists():
        raise SystemExit(f"no TorchSim venv at {args.venv}: run benchmarks/torchsim/setup_venv.sh "
                         "(or pass --venv / set TORCHSIM_VENV)")
    t_start = time.time()
    result = {"benchmark": "atomsim vs TorchSim MD throughput",
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "git": _git(),
              "machine": _machine(), "threads": args.threads, "load_average_start": os.getloadavg(),
              "versions": {"atomsim_venv": _versions(sys.executable), "torchsim_venv": _versions(ts_python)},
              "notes": ["agreement: energy and forces after the first step (the fcc start has zero forces), "
                        "final positions after all steps (minimum image)",
                        "TorchSim 0.3.0 LennardJonesModel returns 2x the true forces (full list, pair "
                        "force added to both atoms of each of the two entries); shims.py halves them: "
                        "timing unaffected",
                        "TorchSim rebuilds its vesin neighbor list every step (as shipped); atomsim keeps a "
                        "Verlet list with a 1 Å skin"],
              "systems": []}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        phases = []
        if not args.skip_lj:
            phases.append(("lj", [(f"lj_{4 * c**3}", c) for c in args.lj_cells]))
        if not args.skip_sevenn:
            phases.append(("sevennet", [(f"sevennet0_cu_{4 * args.sevenn_cells**3}", args.sevenn_cells)]))
        for kind, systems in phases:
            specs = [("atomsim", sys.executable, "atomsim", {}), ("torchsim", ts_python, "torchsim", {})]
            if kind == "sevennet":
                specs.append(("torchsim_tuned_malloc", ts_python, "torchsim", {"GLIBC_TUNABLES": TUNABLES}))
            workers = {name: Worker(name, py, eng, args.threads, extra, tmp / f"{kind}_{name}.log")
                       for name, py, eng, extra in specs}
            try:
                for label, cells in systems:
                    result["systems"].append(compare_system(label, kind, cells, workers, args, tmp))
            finally:
                for w in workers.values():
                    w.close()
    result["load_average_end"] = os.getloadavg()
    result["total_wall_s"] = time.time() - t_start
    print("\natomsim / TorchSim: median atom-steps per wall second (per CPU second: robust to load)")
    for s in result["systems"]:
        ratios = ", ".join(f"{k} {v:.2f}x ({s['atomsim_over_per_cpu_s'][k]:.2f}x)"
                           for k, v in s["atomsim_over"].items())
        print(f"  {s['label']:22s} atomsim {s['median_atom_steps_per_s']['atomsim']:11.1f} "
              f"({s['median_atom_steps_per_cpu_s']['atomsim']:11.1f})  over {ratios}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')} ({result['total_wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
