"""NVE energy drift of the bundled EMT GNN (egnn-emt-v1) through `atomsim run` (goal: < 0.5 meV/atom/ps).

1,008 Cu atoms (fcc 7x6x6 conventional cells), 300 K start, 1 fs, 5 ps by default,
float32 model. Drift = slope of a linear fit of the conserved energy per atom vs
time (meV/atom/ps); also the largest excursion |E(t) - E(0)|. Writes
benchmarks/results/gnn_nve_drift.json and a PNG of E(t).

    .venv/bin/python benchmarks/gnn_nve_drift/run.py [--steps 5000] [--dtype float32]
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--outdir", default="/tmp/atomsim_gnn_nve_drift")
    args = ap.parse_args()
    atomsim = str(Path(sys.executable).with_name("atomsim"))
    # the quickstart's input turned back into what it was when this benchmark was recorded: fcc Cu, EMT GNN
    cmd = [atomsim, "run", str(HERE.parent.parent / "examples" / "quickstart.yaml"),
           "--set", "system.structure.lattice=fcc", "--set", "system.structure.symbols=Cu",
           "--set", "system.structure.a=3.61", "--set", "potential.model=egnn-emt-v1",
           "--set", "system.structure.repeat=[7,6,6]", "--set", f"dynamics.steps={args.steps}",
           "--set", "dynamics.timestep_fs=1.0", "--set", f"potential.dtype={args.dtype}",
           "--set", f"output.directory={args.outdir}", "--set", "output.thermo_every=10",
           "--set", "output.trajectory_every=0", "--set", "output.restart_every=0",
           "--set", "output.progress=false"]
    t0 = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.time() - t0
    with open(Path(args.outdir) / "thermo.csv") as fh:
        rows = list(csv.DictReader(fh))
    t = np.array([float(r["time_ps"]) for r in rows])
    e = np.array([float(r["conserved_eV"]) for r in rows])
    n_atoms = 7 * 6 * 6 * 4
    e_meV = (e - e[0]) / n_atoms * 1e3
    slope = float(np.polyfit(t, e_meV, 1)[0])
    result = {
        "benchmark": "NVE drift, bundled EMT GNN (egnn-emt-v1), atomsim run",
        "command": " ".join([sys.executable] + sys.argv),
        "run_command": " ".join(cmd),
        "machine": {"platform": platform.platform(), "cpus": __import__("os").cpu_count(),
                    "load_average_end": list(__import__("os").getloadavg())},
        "n_atoms": n_atoms, "timestep_fs": 1.0, "steps": args.steps, "dtype": args.dtype,
        "simulated_ps": float(t[-1]),
        "drift_meV_per_atom_per_ps": slope,
        "max_abs_deviation_meV_per_atom": float(np.abs(e_meV).max()),
        "mean_temperature_K": float(np.mean([float(r["temperature_K"]) for r in rows[len(rows) // 2:]])),
        "goal_meV_per_atom_per_ps": 0.5,
        "wall_s": wall,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gnn_nve_drift.json").write_text(json.dumps(result, indent=2))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(t, e_meV)
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("E_conserved - E(0) (meV/atom)")
    ax.set_title(f"NVE, egnn-emt-v1, {n_atoms} Cu atoms, 1 fs: drift {slope:.3g} meV/atom/ps")
    fig.tight_layout()
    fig.savefig(RESULTS / "gnn_nve_drift.png", dpi=120)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
