"""NVE stability of atomsim's universal model (``default``, or --model) on materials absent from its data.

    .venv/bin/python benchmarks/universal_nve/run.py [--steps 2000] [--only NaCl ...] [--threads 1]

Three crystals whose composition or prototype the training set (sevennet0-distill-v1) lacks
(``--check-absent DATA`` recounts it from the .extxyz.xz: element set and ``proto`` of every frame):

- zincblende InP, 512 atoms (4x4x4 cubic cells), 600 K start: no In-P frame at all
  (diamond Si, the issue's example, IS in the data: bulk_diamond, vacancy and md frames);
- rock-salt NaCl, 512 atoms (4x4x4), 300 K start: no Na-Cl frame at all;
- layered LiCoO2 (R-3m, O z = 0.2396), 432 atoms (6x6x1 hexagonal), 300 K:
  the only Li-Co-O frame is one strained cubic LiCoO3 perovskite; the generator makes no layered cell.

Each unit cell (starting lattice: InP a = 5.94 Å and NaCl 5.69 Å, near PBE; LiCoO2 a = 2.82 Å,
c = 14.05 Å, experiment) is first relaxed with the model (cell and positions, symmetry kept; see
build()). Each then runs NVE, 1 fs, ``--steps`` steps through engine.simulation.Simulation (what
`atomsim run` executes: float64 state and velocity Verlet, float32 model as shipped) in its own
subprocess, one at a time.
Reported per material: drift = slope of a linear fit of the conserved energy per atom vs time
(meV/atom/ps), the largest |E - E0|, the largest |F| seen (every 10 steps), the mean temperature
(a rise above the start, where equipartition would halve it, means the lattice the model relaxed to
is not a minimum and gave up potential energy), and whether the run blew up (the engine's force
limit, 1000 eV/Å, or non-finite numbers). Writes benchmarks/results/universal_nve.json and
universal_nve.png (E_total(t)). ``--modes`` instead computes each relaxed cell's harmonic frequencies
(finite-difference Hessian; imaginary = not a minimum) into universal_nve_modes.json.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODEL = "default"  # --model
DATA = Path("/work/shared/data/sevennet0-distill-v1/train.extxyz.xz")  # default of --check-absent only

# name: (builder description, temperature K)
MATERIALS = {
    "InP zincblende": ("zincblende InP, model-relaxed from a=5.94, 4x4x4 cubic cells", 600.0),
    "NaCl rock-salt": ("rocksalt NaCl, model-relaxed from a=5.69, 4x4x4 cubic cells", 300.0),
    "LiCoO2 layered": ("R-3m LiCoO2, model-relaxed from a=2.82 c=14.05, 6x6x1 hexagonal cells", 300.0),
}
MODES_CONTROL = "MgO rock-salt (in the training data: control)"
ABSENT_ELEMENT_SETS = {"InP zincblende": {"In", "P"}, "NaCl rock-salt": {"Na", "Cl"},
                       "LiCoO2 layered": {"Li", "Co", "O"}}


def unit_cell(name: str):
    """The material's conventional cell at near-PBE (InP, NaCl) or experimental (LiCoO2) lattice constants."""
    from ase.build import bulk
    from ase.spacegroup import crystal

    if name.startswith("InP"):
        return bulk("InP", "zincblende", a=5.94, cubic=True), (4, 4, 4)
    if name.startswith("NaCl"):
        return bulk("NaCl", "rocksalt", a=5.69, cubic=True), (4, 4, 4)
    if name.startswith("MgO"):  # in the training data: the --modes control, and the README's example
        return bulk("MgO", "rocksalt", a=4.21, cubic=True), (4, 4, 4)
    if name.startswith("LiCoO2"):
        cell = crystal(["Li", "Co", "O"], basis=[(0, 0, 0.5), (0, 0, 0), (0, 0, 0.2396)], spacegroup=166,
                       cellpar=[2.82, 2.82, 14.05, 90, 90, 120])
        return cell, (6, 6, 1)
    raise ValueError(f"unknown material {name!r}; known: {', '.join(MATERIALS)}")


def build(name: str):
    """The starting crystal: the unit cell relaxed with the model itself (symmetry kept), repeated.

    Starting at the experimental cell would put the model's own lattice mismatch (LiCoO2: ~7% in a)
    into the NVE run as a large pressure and a heat-up; the run is about stability, so it starts at the
    model's equilibrium. The relaxed lattice is reported (it is also a measure of the model's error).
    """
    cell, repeat = relaxed_unit_cell(name)
    atoms = cell.repeat(repeat)
    atoms.calc = None
    return atoms


def relaxed_unit_cell(name: str):
    """unit_cell() relaxed with the model (FIRE on cell and positions, FixSymmetry), and its repeat."""
    from ase.constraints import FixSymmetry
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    from atomsim.calculator import AtomsimCalculator

    cell, repeat = unit_cell(name)
    cell.calc = AtomsimCalculator(model=MODEL, dtype="float64")
    cell.set_constraint(FixSymmetry(cell))
    FIRE(FrechetCellFilter(cell), logfile=None).run(fmax=0.005, steps=400)
    cell.set_constraint()
    return cell, repeat


def lowest_modes(name: str, h: float = 1e-3) -> dict:
    """Harmonic frequencies (THz) of the model-relaxed cell (LiCoO2: 2x2x1 hexagonal cells) from a
    finite-difference Hessian of the model's forces: an imaginary (negative) one means the symmetric
    lattice is a saddle of the model, not a minimum, which is what a temperature rise in NVE suggests."""
    from atomsim.calculator import AtomsimCalculator

    cell, _ = relaxed_unit_cell(name)
    sup = cell.repeat((2, 2, 1) if name.startswith("LiCoO2") else (1, 1, 1))
    sup.calc = AtomsimCalculator(model=MODEL, dtype="float64")
    n = len(sup)
    hess = np.zeros((3 * n, 3 * n))
    for a in range(n):
        for c in range(3):
            f = []
            for sign in (1, -1):
                b = sup.copy()
                b.calc = sup.calc
                b.positions[a, c] += sign * h
                f.append(b.get_forces().ravel())
            hess[3 * a + c] = -(f[0] - f[1]) / (2 * h)
    hess = 0.5 * (hess + hess.T)
    m = np.repeat(sup.get_masses(), 3)
    w = np.linalg.eigvalsh(hess / np.sqrt(np.outer(m, m)))  # eV/Å^2/amu
    thz = np.sign(w) * np.sqrt(np.abs(w)) * 15.633302  # sqrt(eV/Å^2/amu) -> THz
    return {"n_atoms": n, "lowest_THz": [round(float(x), 3) for x in thz[:8]],
            "highest_THz": round(float(thz[-1]), 3), "n_imaginary_below_-0.1_THz": int((thz < -0.1).sum())}


def _yaml(structure: Path, outdir: Path, temperature: float, steps: int) -> str:
    return f"""system:
  structure: {{file: {structure}}}
  temperature_K: {temperature}
  seed: 1
potential: {{model: {MODEL}, dtype: float32, device: cpu}}
dynamics: {{integrator: nve, timestep_fs: 1.0, steps: {steps}}}
neighbor: {{skin: 1.0}}
parallel: {{threads: 1}}
output: {{directory: {outdir}, thermo_every: 10, trajectory_every: 0, restart_every: 0, progress: false}}
"""


def worker(name: str, steps: int, out_json: Path) -> None:
    """One material's NVE run in this process; writes its raw series to out_json."""
    from ase.io import write

    from atomsim.engine.config import load_config
    from atomsim.engine.simulation import Simulation
    from atomsim.kernels.threads import configure_threads

    configure_threads(1)
    atoms = build(name)
    temperature = MATERIALS[name][1]
    with tempfile.TemporaryDirectory() as tmp:
        struct, run = Path(tmp) / "start.extxyz", Path(tmp) / "run"
        write(struct, atoms)
        (Path(tmp) / "in.yaml").write_text(_yaml(struct, run, temperature, steps))
        cfg = load_config(str(Path(tmp) / "in.yaml"))
        sim = Simulation.from_config(cfg)
        fmax, error, t0 = [], None, time.perf_counter()
        try:
            for _ in range(steps // 10):
                sim.run(10)
                f = sim.state.forces
                fmax.append(float(f.abs().max()) if f is not None and bool(f.isfinite().all()) else float("inf"))
                if not np.isfinite(fmax[-1]):
                    error = "non-finite forces"
                    break
        except (Exception, SystemExit) as exc:  # noqa: BLE001  (a blow-up is a result here)
            error = f"{type(exc).__name__}: {exc}"
        wall = time.perf_counter() - t0
        rows = list(csv.DictReader(open(run / "thermo.csv"))) if (run / "thermo.csv").is_file() else []
    out_json.write_text(json.dumps({
        "name": name, "n_atoms": len(atoms), "temperature_start_K": temperature,
        "formula": atoms.get_chemical_formula(), "cell": atoms.cell.array.tolist(), "error": error,
        "relaxed_cellpar_of_repeated_cell": [round(float(x), 4) for x in atoms.cell.cellpar()],
        "wall_s": wall, "max_abs_force_every_10": fmax,
        "time_ps": [float(r["time_ps"]) for r in rows], "conserved_eV": [float(r["conserved_eV"]) for r in rows],
        "temperature_K": [float(r["temperature_K"]) for r in rows],
        "pressure_GPa": [float(r["pressure_GPa"]) for r in rows],
    }))


def analyse(raw: dict, steps: int) -> dict:
    """Drift (linear fit), excursion, max |F| and the blow-up verdict of one raw series."""
    t, e = np.asarray(raw["time_ps"]), np.asarray(raw["conserved_eV"])
    n = raw["n_atoms"]
    e_meV = (e - e[0]) / n * 1e3 if len(e) else e
    finite = bool(len(e) and np.isfinite(e).all())
    done = len(t) and abs(t[-1] - steps * 1e-3) < 1e-9
    drift = float(np.polyfit(t, e_meV, 1)[0]) if finite and len(t) > 2 else None
    fmax = raw["max_abs_force_every_10"]
    return {
        "n_atoms": n, "formula": raw["formula"], "temperature_start_K": raw["temperature_start_K"],
        "start_cellpar_model_relaxed": raw["relaxed_cellpar_of_repeated_cell"],
        "simulated_ps": float(t[-1]) if len(t) else 0.0, "completed": bool(done),
        "blew_up": bool(raw["error"] is not None or not finite or not done), "error": raw["error"],
        "drift_meV_per_atom_per_ps": drift,
        "max_abs_deviation_meV_per_atom": float(np.abs(e_meV).max()) if finite else None,
        "max_abs_force_eV_per_A": float(max(fmax)) if fmax else None,
        "mean_temperature_K_second_half": float(np.mean(raw["temperature_K"][len(t) // 2:])) if len(t) else None,
        "mean_pressure_GPa_second_half": float(np.mean(raw["pressure_GPa"][len(t) // 2:])) if len(t) else None,
        "wall_s": raw["wall_s"], "atom_steps_per_s": n * steps / raw["wall_s"] if done else None,
        "meets_goal_drift_lt_1": bool(drift is not None and abs(drift) < 1.0 and done),
    }


def check_absent(paths: list[Path]) -> dict:
    """Count frames of the training files (plain or compressed extxyz: the data set and any
    extra_train_data) that share each material's element set (and prototypes)."""
    from atomsim.training.data import read_frames

    frames = [a for path in paths for a in read_frames(path, index=":")]
    out = {"files": [str(p) for p in paths], "frames": len(frames)}
    for name, elements in ABSENT_ELEMENT_SETS.items():
        hits = [a for a in frames if elements <= set(a.get_chemical_symbols())]
        same = [a for a in hits if set(a.get_chemical_symbols()) == elements]
        out[name] = {"frames_containing_all_its_elements": len(hits),
                     "frames_with_exactly_its_elements": len(same),
                     "their_prototypes": sorted({f"{a.info.get('config_type')}/{a.info.get('proto')}"
                                                 for a in hits})}
    si = [a for a in frames if set(a.get_chemical_symbols()) == {"Si"} and "diamond" in str(a.info.get("proto"))]
    out["Si diamond (the issue's example, not used)"] = {"frames": len(si)}
    return out


def _plot(results: dict, raws: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, raw in raws.items():
        t, e = np.asarray(raw["time_ps"]), np.asarray(raw["conserved_eV"])
        if len(e):
            d = results[name]["drift_meV_per_atom_per_ps"]
            label = f"{name} ({raw['n_atoms']} atoms, {raw['temperature_start_K']:.0f} K)"
            label += f": drift {d:+.3f} meV/atom/ps" if d is not None else ": blew up"
            ax.plot(t, (e - e[0]) / raw["n_atoms"] * 1e3, label=label)
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("E_total - E_total(0) (meV/atom)")
    ax.set_title(f"NVE, 1 fs, {MODEL} (float32 model, float64 integration)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--only", nargs="*", default=list(MATERIALS), help=f"subset of: {', '.join(MATERIALS)}")
    ap.add_argument("--check-absent", type=Path, nargs="*", default=None, metavar="DATA",
                    help="recount the training files' frames per material (the data set's .extxyz.xz and any "
                         "extra_train_data files)")
    ap.add_argument("--modes", action="store_true",
                    help="only the harmonic check (lowest_modes) of each material -> universal_nve_modes.json")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default="default", help="a bundled universal model name")
    ap.add_argument("--jobs", type=int, default=1, help="materials run at once (one thread each)")
    ap.add_argument("--out", type=Path, default=RESULTS / "universal_nve.json")
    args = ap.parse_args()
    global MODEL
    MODEL = args.model
    if args.worker:
        worker(args.worker, args.steps, args.worker_out)
        return
    if args.modes:
        from atomsim.kernels.threads import configure_threads

        configure_threads(1)
        modes = {}
        for name in [*args.only, MODES_CONTROL]:
            modes[name] = lowest_modes(name)
            print(f"{name}: lowest {modes[name]['lowest_THz'][:4]} THz, highest {modes[name]['highest_THz']} THz",
                  flush=True)
        out = args.out.with_name(args.out.stem + "_modes.json")
        out.write_text(json.dumps({"what": "harmonic frequencies of the model-relaxed cells (negative: imaginary)",
                                   "command": " ".join([Path(sys.executable).name] + sys.argv),
                                   "model": MODEL, "load_average": list(os.getloadavg()), "modes": modes},
                                  indent=1) + "\n")
        print(f"wrote {out}")
        return
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", MKL_NUM_THREADS="1")
    raws, results, load = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        pending = list(enumerate(args.only))  # (index: the raw file's name, material)
        running: dict = {}
        while pending or running:  # up to --jobs materials at once, one single-thread process each
            while pending and len(running) < args.jobs:
                k, name = pending.pop(0)
                out = Path(tmp) / f"raw{k}.json"
                print(f"{name}: {args.steps} steps ...", flush=True)
                load[name] = {"before": list(os.getloadavg())}
                running[name] = (subprocess.Popen([sys.executable, __file__, "--worker", name, "--steps",
                                                   str(args.steps), "--worker-out", str(out), "--model", MODEL],
                                                  env=env), out)
            for name, (proc, out) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[name]
                if proc.returncode != 0:
                    raise SystemExit(f"{name}: worker failed (exit {proc.returncode})")
                load[name]["after"] = list(os.getloadavg())
                raws[name] = json.loads(out.read_text())
                results[name] = r = analyse(raws[name], args.steps)
                print(f"  {name}: drift {r['drift_meV_per_atom_per_ps']} meV/atom/ps, max|dE| "
                      f"{r['max_abs_deviation_meV_per_atom']} meV/atom, max|F| {r['max_abs_force_eV_per_A']} eV/Å, "
                      f"blew up: {r['blew_up']}, {r['wall_s']:.0f} s", flush=True)
            time.sleep(0.5)
    results = {k: results[k] for k in args.only}
    import torch

    from atomsim import __version__

    doc = {
        "benchmark": f"NVE stability of {MODEL} on three materials absent from its training data",
        "goal": "no blow-up, |drift| < 1 meV/atom/ps, 1 fs, >= 2 ps",
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "model": MODEL, "model_dtype": "float32", "integration": "velocity Verlet, float64 state, 1 fs",
        "structures": {k: MATERIALS[k][0] for k in args.only},
        "absence_in_training_data": check_absent(args.check_absent) if args.check_absent else
        "see benchmarks/universal_nve/absent.json (run with --check-absent DATA)",
        "machine": {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "threads": 1, "load_average": load},
        "versions": {"atomsim": __version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "results": results,
        "all_meet_goal": all(r["meets_goal_drift_lt_1"] and not r["blew_up"] for r in results.values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    _plot(results, raws, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
