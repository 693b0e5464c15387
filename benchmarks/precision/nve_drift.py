"""NVE energy conservation of the bundled model per potential dtype (positions/velocities float64).

Why: a bf16/fp16 model is only usable for MD if the total energy does not drift; this runs
the engine's own step (``engine/step.py`` md_step, ``engine/forces.py`` SerialForces,
velocity Verlet) on a small rattled Cu cell for each dtype and records the drift (linear
fit, meV/atom/ps), the largest excursion, the force error against float64 at step 0 and,
plainly, which kernel path ran (on CPU, bf16/fp16 run the torch reference path, not a fused
kernel; on CUDA every dtype runs the fused Triton kernel).

    python benchmarks/precision/nve_drift.py                      # CPU: float64 float32 bfloat16 float16
    python benchmarks/precision/nve_drift.py --device cuda --out $OUT/precision_nve_drift_gpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from ase import units
from ase.build import bulk
from ase.md.velocitydistribution import Stationary

from atomsim.bench.weak_scaling import machine_info
from atomsim.engine.forces import SerialForces
from atomsim.engine.state import MDState
from atomsim.engine.step import evaluate_forces, md_step
from atomsim.integrators.base import make_integrator
from atomsim.kernels.dtypes import torch_dtype
from atomsim.kernels.message_passing import kernel_backend
from atomsim.potentials.edge_precision import Float32Edges
from atomsim.potentials.registry import load_potential

RESULTS = Path(__file__).resolve().parents[1] / "results"


def kernel_path(device: torch.device, dtype: torch.dtype) -> str:
    """Which message-passing implementation a model of this dtype runs on this device."""
    backend = kernel_backend(device)
    if backend == "numba":
        from atomsim.kernels import message_passing_cpu

        probe = torch.zeros(1, 1, dtype=dtype)
        if message_passing_cpu.supports(probe):
            return "fused numba (CPU)"
        return f"torch reference ({str(dtype).split('.')[-1]} math, fp32 receiver sums, CPU)"
    if backend == "triton":
        return "fused triton (CUDA, fp32 accumulation)"
    return f"torch reference ({device.type})"


def make_atoms(repeat: int, temperature_K: float, seed: int):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
    atoms.rattle(0.02, seed=seed)
    rng = np.random.default_rng(seed)  # Maxwell-Boltzmann velocities (Å per ASE time unit)
    sigma = np.sqrt(temperature_K * units.kB / atoms.get_masses())[:, None]
    atoms.set_momenta(rng.normal(0.0, 1.0, (len(atoms), 3)) * sigma * atoms.get_masses()[:, None])
    Stationary(atoms)
    return atoms


def run_dtype(dtype_name: str, atoms, steps: int, dt_fs: float, device: str, budget_s: float,
              f_ref=None) -> dict:
    """One NVE run; returns the energy series and summary figures."""
    name, _, edges = dtype_name.partition("+")  # "bfloat16+f32edges": float32 edge vectors
    dtype = torch_dtype(name, "--dtypes")
    model = load_potential("egnn-emt-v1").to(device=device, dtype=dtype)
    if edges:
        if edges != "f32edges":
            raise ValueError(f"--dtypes: unknown variant {dtype_name!r}; use e.g. bfloat16+f32edges")
        model = Float32Edges(model)
    state = MDState.from_atoms(atoms, device=device)
    provider = SerialForces(model, skin=1.0)
    integ = make_integrator("nve", timestep_fs=dt_fs)
    t0 = time.perf_counter()
    evaluate_forces(state, provider, virial=False, max_force=1e3)
    forces0 = state.forces.detach().cpu().clone()
    n = len(atoms)
    etot = [(state.energy + state.kinetic_energy()) / n]
    done = 0
    for _ in range(steps):
        md_step(state, integ, provider, virial=False, max_force=1e3)
        etot.append((state.energy + state.kinetic_energy()) / n)
        done += 1
        if time.perf_counter() - t0 > budget_s:
            break
    wall = time.perf_counter() - t0
    e = np.asarray(etot)
    t_ps = np.arange(len(e)) * dt_fs * 1e-3
    slope = float(np.polyfit(t_ps, e, 1)[0]) if len(e) > 2 else float("nan")
    h = len(e) // 2  # the second half: drift after the first heating by force errors has settled
    slope2 = float(np.polyfit(t_ps[h:], e[h:], 1)[0]) if len(e) - h > 2 else float("nan")
    out = {"dtype": dtype_name, "kernel_path": kernel_path(torch.device(device), dtype),
           "edge_vector_dtype": str(model.dtype).split(".")[-1], "steps": done,
           "wall_s": wall, "atom_steps_per_s": n * done / wall, "neighbor_builds": provider.n_builds,
           "drift_meV_per_atom_per_ps": 1e3 * slope, "drift_second_half_meV_per_atom_per_ps": 1e3 * slope2,
           "max_abs_dE_meV_per_atom": float(1e3 * np.abs(e - e[0]).max()),
           "std_E_meV_per_atom": float(1e3 * e.std()),
           "E_tot_eV_per_atom": e.tolist(), "time_ps": t_ps.tolist()}
    if f_ref is not None:
        df = forces0 - f_ref
        out["force_rmse_vs_float64_eV_per_A"] = float(df.pow(2).mean().sqrt())
        out["force_max_err_vs_float64_eV_per_A"] = float(df.abs().max())
    out["_forces0"] = forces0
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 6))
    for r in report["runs"]:
        e = np.asarray(r["E_tot_eV_per_atom"])
        ax.plot(r["time_ps"], 1e3 * (e - e[0]),
                label=f"{r['dtype']} ({r['kernel_path']}): {r['drift_meV_per_atom_per_ps']:+.3f} meV/atom/ps"
                      f" (2nd half {r['drift_second_half_meV_per_atom_per_ps']:+.3f})")
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("E_tot - E_tot(0) (meV/atom)")
    ax.set_title(f"NVE, bundled model, {report['n_atoms']} Cu atoms, dt {report['dt_fs']} fs, "
                 f"{report['device']}", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14))  # below: the curves stay visible
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", default="float64,float32,bfloat16,float16,bfloat16+f32edges,float16+f32edges",
                    help="potential dtypes; '+f32edges': the 16-bit model fed float32 edge vectors")
    ap.add_argument("--repeat", type=int, default=3, help="fcc Cu cubic cell repeat (3: 108 atoms)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--dt-fs", type=float, default=2.0)
    ap.add_argument("--temperature-K", type=float, default=600.0)
    ap.add_argument("--budget-s", type=float, default=300.0, help="wall-time cap per dtype")
    ap.add_argument("--out", default=str(RESULTS / "precision_nve_drift.json"))
    args = ap.parse_args(argv)
    atoms = make_atoms(args.repeat, args.temperature_K, seed=7)
    runs, f_ref = [], None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "precision_nve_drift", "command": " ".join([sys.executable, *sys.argv]),
              "model": "default (egnn-emt-v1)", "n_atoms": len(atoms), "dt_fs": args.dt_fs,
              "temperature_K": args.temperature_K, "device": args.device,
              "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
              "positions_velocities_dtype": "float64", "kernels_env": os.environ.get("ATOMSIM_KERNELS"),
              "machine": machine_info(), "runs": runs,
              "note": "dt in fs; ASE time unit conversion via ase.units.fs = %.6f" % units.fs}
    for name in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        try:
            r = run_dtype(name, atoms, args.steps, args.dt_fs, args.device, args.budget_s, f_ref)
        except Exception as exc:  # noqa: BLE001 - a dtype this device cannot run: record it, go on
            runs.append({"dtype": name, "error": f"{type(exc).__name__}: {exc}"[:300]})
            print(f"{name}: FAILED {runs[-1]['error']}", flush=True)
            out.write_text(json.dumps(report, indent=1))
            continue
        forces0 = r.pop("_forces0")
        if name == "float64":
            f_ref = forces0
        runs.append(r)
        print(f"{name:9s} {r['kernel_path']:40s} {r['steps']} steps {r['wall_s']:.1f} s  drift "
              f"{r['drift_meV_per_atom_per_ps']:+.4f} "
              f"(2nd half {r['drift_second_half_meV_per_atom_per_ps']:+.4f}) "
              f"meV/atom/ps  max|dE| {r['max_abs_dE_meV_per_atom']:.4f} "
              f"meV/atom  F rmse vs f64 {r.get('force_rmse_vs_float64_eV_per_A', float('nan')):.2e}",
              flush=True)
        out.write_text(json.dumps(report, indent=1))  # after every dtype: a time-out keeps the rest
    out.write_text(json.dumps(report, indent=1))
    if any("E_tot_eV_per_atom" in r for r in runs):
        plot({**report, "runs": [r for r in runs if "E_tot_eV_per_atom" in r]}, out.with_suffix(".png"))
    print("wrote", out)
    return report


if __name__ == "__main__":
    main()
