"""End-to-end MD throughput on one GPU through the engine's own step, in one time-boxed run.

Why one script: GPU time is scarce and taken in single calls; this runs the GPU tests, then
measures what a user gets -- atom-steps/s of ``engine/step.py`` ``md_step`` with the serial
force provider (``engine/forces.py``), the neighbor list on the device and velocity Verlet --
for the bundled default model (EGNN) and LJ, in float32 and bfloat16, at 1e4, 1e5, 1e6, 1e7
atoms (growing while memory and the time budget allow), with the step breakdown (neighbor,
model, integrate, reductions, I/O), peak GPU memory and bytes per atom; eager vs CUDA graph
(``engine/graph_capture.py``) at the small sizes, and last, if time is left, torch.compile
(mode="reduce-overhead") at the smallest; the device neighbor list by measurement
(CuPy raw kernels vs the torch cell list, ``kernels/neighbors_torch.py``).
It stops itself before ``--budget-s`` and writes whatever it has (JSON after every point).

    python benchmarks/gpu/md_end_to_end.py --out $OUT              # GPU, <= 8 min
    python benchmarks/gpu/md_end_to_end.py --smoke --out /tmp/e2e   # CPU, seconds (the test runs it)

Timing: the integrator is synchronised after each half step, the force provider's own
timers end at its host reads, so the breakdown adds up to the step on a GPU as on a CPU.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from atomsim.bench.weak_scaling import machine_info
from atomsim.engine.forces import SerialForces
from atomsim.engine.graph_capture import StaticGraphForces
from atomsim.engine.state import MDState
from atomsim.engine.step import evaluate_forces, md_step
from atomsim.integrators.base import make_integrator
from atomsim.kernels.neighbor_list import NeighborList
from atomsim.potentials.edge_precision import Float32Edges
from atomsim.potentials.lj import LennardJones
from atomsim.potentials.registry import load_potential

ROOT = Path(__file__).resolve().parents[2]
GPU_TESTS = ("tests/test_neighbors_torch.py", "tests/test_graph_capture.py", "tests/test_neighbors_gpu.py",
             "tests/test_triton_kernels.py")
# fcc lattice constant (Å), atomic number, mass (amu) per model
SYSTEMS = {"egnn": (3.61, 29, 63.546), "lj": (5.26, 18, 39.948)}


class Clock:
    """The script's wall-time guard: every phase asks before it starts."""

    def __init__(self, budget_s: float):
        self.t0 = time.perf_counter()
        self.budget = float(budget_s)

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SyncedIntegrator:
    """An integrator whose half steps end with a device synchronisation (honest timers)."""

    def __init__(self, inner, device):
        self.inner, self.device = inner, device

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def initial_integrate(self, state):
        self.inner.initial_integrate(state)
        sync(self.device)

    def final_integrate(self, state):
        self.inner.final_integrate(state)
        sync(self.device)


def fcc_state(n_target: int, model: str, device: torch.device, seed: int = 0) -> MDState:
    """Near-cubic fcc block of about ``n_target`` atoms, small random velocities (no ASE at 1e7)."""
    a, z, mass = SYSTEMS[model]
    r = max(1, round((n_target / 4) ** (1 / 3)))
    basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    cells = np.stack(np.meshgrid(*[np.arange(r)] * 3, indexing="ij"), -1).reshape(-1, 1, 3)
    pos = ((cells + basis[None]) * a).reshape(-1, 3)
    rng = np.random.default_rng(seed)
    pos = pos + rng.normal(0, 0.03, pos.shape)
    n = len(pos)
    t = lambda x, dt=torch.float64: torch.as_tensor(x, dtype=dt, device=device)  # noqa: E731
    vel = rng.normal(0, 0.005, (n, 3))
    vel -= vel.mean(0)
    return MDState(positions=t(pos), velocities=t(vel), masses=t(np.full(n, mass)),
                   numbers=t(np.full(n, z), torch.int64), ids=t(np.arange(n), torch.int64),
                   cell=t(np.eye(3) * a * r), pbc=(True, True, True), n_atoms_global=n)


def make_potential(model: str, dtype: str, device: torch.device):
    """``dtype`` may carry ``+f32edges``: the 16-bit model fed float32 edge vectors."""
    name, _, edges = dtype.partition("+")
    if model == "egnn":
        pot = load_potential("egnn-emt-v1").to(device=device, dtype=getattr(torch, name))
        return Float32Edges(pot) if edges == "f32edges" else pot
    pot = LennardJones(epsilon=0.0104, sigma=3.40, rc=8.5, dtype=dtype)
    return pot.to(device)


def neighbor_backend_choice(device: torch.device, sizes, clock: Clock) -> dict:
    """Time one list build per backend on the device (same pairs) and pick the faster."""
    cands = ["torch"]
    if device.type == "cuda":
        try:
            import cupy  # noqa: F401

            cands.append("cupy")
        except ImportError:
            pass
    else:
        cands.append("numba")
    rows = []
    for n in sizes:
        st = fcc_state(n, "egnn", device)
        for b in cands:
            if clock.left() < 30:
                break
            nl = NeighborList(6.0, 0.0, backend=b)
            try:
                nl.build(st.positions, st.cell, st.pbc)  # warm-up (compilation, caches)
                sync(device)
                t0 = time.perf_counter()
                nl.build(st.positions + 0.01, st.cell, st.pbc)
                sync(device)
                dt = time.perf_counter() - t0
                rows.append({"backend": b, "n_atoms": st.n_local, "n_pairs": nl.n_edges, "build_s": dt,
                             "pairs_per_s": nl.n_edges / dt})
            except Exception as exc:  # noqa: BLE001 - record, try the next
                rows.append({"backend": b, "n_atoms": st.n_local,
                             "error": f"{type(exc).__name__}: {exc}"[:300]})
            del nl
        del st
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ok = [r for r in rows if "build_s" in r]
    big = max((r["n_atoms"] for r in ok), default=0)
    at_big = [r for r in ok if r["n_atoms"] == big]
    chosen = min(at_big, key=lambda r: r["build_s"])["backend"] if at_big else "torch"
    if device.type == "cpu":
        chosen = "numba"  # the engine's CPU default; the torch list is measured, not used
    return {"rows": rows, "chosen": chosen}


def run_point(model: str, dtype: str, n_target: int, device: torch.device, steps: int, nb_backend: str,
              clock: Clock, mode: str = "engine", thermo_every: int = 10, io_every: int = 20,
              target_s: float = 6.0) -> dict:
    """One (model, dtype, size): set-up, first forces, then ``steps`` timed md_steps."""
    if device.type == "cuda":
        gc.collect()  # a failed (out-of-memory) point's tensors die with its traceback
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t_setup = time.perf_counter()
    pot = make_potential(model, dtype, device)
    state = fcc_state(n_target, model, device)
    if mode == "engine":
        direct = pot.direct_list()
        nlist = NeighborList(float(pot.cutoff), 1.0, half=direct == "half", compact=True, backend=nb_backend)
        provider = SerialForces(pot, skin=1.0, neighbor_list=nlist)
    else:  # "eager" / "cuda-graph": the static-buffer provider of engine/graph_capture.py
        provider = StaticGraphForces(pot, skin=1.0, mode=mode.replace("+deferred", ""))
    integ = SyncedIntegrator(make_integrator("nve", timestep_fs=1.0), device)
    t_first = time.perf_counter()
    evaluate_forces(state, provider, virial=False, max_force=1e4)
    sync(device)
    first_forces_s = time.perf_counter() - t_first
    setup_s = time.perf_counter() - t_setup
    timers = {"integrate": 0.0, "forces": 0.0, "safety": 0.0}
    provider.timers = {k: 0.0 for k in provider.timers}
    extra = {"reductions": 0.0, "io": 0.0}
    t_warm = time.perf_counter()
    md_step(state, integ, provider, virial=False, max_force=1e4)  # warm-up (graph capture, autotune)
    sync(device)
    warmup_step_s = time.perf_counter() - t_warm
    steps = max(2, min(steps, int(target_s / max(warmup_step_s, 1e-6))))  # ~target_s of timed steps
    for k in timers:
        timers[k] = 0.0
    provider.timers = {k: 0.0 for k in provider.timers}
    done = 0
    # "+deferred": skin and blow-up checks as device maxima read every 20 steps (engine/device_checks.py;
    # no replay here: a benchmark, a stale read only makes the next step check on the host)
    checks, host_next, stale_reads = None, False, 0
    if mode.endswith("+deferred"):
        from atomsim.engine.device_checks import DeferredChecks

        checks = DeferredChecks(device, provider.stale_threshold, 1e4)
    t0 = time.perf_counter()
    per_step = None
    for s in range(steps):
        use = checks if checks is not None and not host_next else None
        md_step(state, integ, provider, virial=False, max_force=1e4, timers=timers, checks=use)
        host_next = False
        if checks is not None and (s + 1) % 20 == 0:  # the run loop's check interval on a GPU
            verdict = checks.read()
            if not verdict.ok:  # stale list: the next step runs the host check (and rebuilds)
                stale_reads += 1
                host_next = True
        done += 1
        if (s + 1) % thermo_every == 0:
            t1 = time.perf_counter()
            state.kinetic_energy()  # the thermo row's reductions (the energy is already on the host)
            extra["reductions"] += time.perf_counter() - t1
        if (s + 1) % io_every == 0:
            t1 = time.perf_counter()
            frame = (state.positions.cpu().numpy(), state.velocities.cpu().numpy())  # a trajectory frame
            extra["io"] += time.perf_counter() - t1
            del frame
        per_step = (time.perf_counter() - t0) / done
        if clock.left() < 2 * per_step + 5:
            break
    sync(device)
    wall = time.perf_counter() - t0
    n = state.n_local
    breakdown = {"neighbor": provider.timers.get("neighbor", 0.0), "model": provider.timers.get("model", 0.0),
                 "integrate": timers["integrate"], "reductions": timers["safety"] + extra["reductions"],
                 "io": extra["io"]}
    row = {"model": model, "dtype": dtype, "mode": mode, "n_atoms": n, "steps": done, "wall_s": wall,
           "setup_s": setup_s, "first_forces_s": first_forces_s, "warmup_step_s": warmup_step_s,
           "atom_steps_per_s": n * done / wall, "step_ms": 1e3 * wall / done,
           "breakdown_s": breakdown, "model_fraction": breakdown["model"] / wall,
           "neighbor_backend": nb_backend if mode == "engine" else "torch (static buffers)",
           "neighbor_builds": provider.n_builds, "energy_eV": float(state.energy)}
    if mode != "engine":
        row["capture_mode"] = provider.capture.mode
        row["deferred_stale_reads"] = stale_reads if checks is not None else None
        row["fallback_reason"] = provider.capture.fallback_reason
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        row["peak_gpu_bytes"] = int(peak)
        row["bytes_per_atom"] = peak / n
    else:
        import resource

        row["peak_rss_bytes"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return row


def run_simulation(model: str, dtype: str, n_target: int, device: torch.device, steps: int,
                   workdir: Path) -> dict:
    """The whole run loop (``engine/simulation.py`` Simulation.run: deferred device checks, thermo
    every 20 steps, no trajectory): what ``atomsim run`` gets; its own timing breakdown."""
    from rich.console import Console

    from atomsim.engine.config import RunConfig
    from atomsim.engine.simulation import Simulation

    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    a, sym = (3.61, "Cu") if model == "egnn" else (5.26, "Ar")
    r = max(1, round((n_target / 4) ** (1 / 3)))
    pot = {"model": "egnn-emt-v1"} if model == "egnn" else {
        "model": "lj", "params": {"epsilon": 0.0104, "sigma": 3.40, "cutoff": 8.5}}
    cfg = RunConfig.model_validate({
        "system": {"structure": {"lattice": "fcc", "symbols": sym, "a": a, "cubic": True,
                                 "repeat": [r, r, r]}, "temperature_K": 300.0, "seed": 1},
        "potential": {**pot, "dtype": dtype, "device": device.type},
        "dynamics": {"integrator": "nve", "timestep_fs": 1.0, "steps": steps + 1},
        "neighbor": {"skin": 1.0},
        "output": {"directory": str(workdir), "thermo_every": 20, "trajectory_every": 0, "restart_every": 0,
                   "progress": False}})
    t0 = time.perf_counter()
    sim = Simulation(cfg, console=Console(quiet=True))
    sim.run(1)  # set-up, first forces, warm-up step
    setup_s = time.perf_counter() - t0
    summary = sim.run(steps)
    row = {"model": model, "dtype": dtype, "mode": "simulation", "n_atoms": int(summary["n_atoms"]),
           "steps": int(summary["steps"]), "wall_s": summary["wall_s"], "setup_s": setup_s,
           "atom_steps_per_s": summary["atom_steps_per_s"],
           "step_ms": 1e3 * summary["wall_s"] / max(summary["steps"], 1),
           "breakdown_s": summary["timings_s"], "deferred_checks": summary["deferred_checks"],
           "neighbor_builds": summary["n_neighbor_builds"]}
    if device.type == "cuda":
        row["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated(device))
        row["bytes_per_atom"] = row["peak_gpu_bytes"] / row["n_atoms"]
    return row


def run_tests(files, clock: Clock, timeout_s: float) -> dict:
    """The GPU tests (those that skip without CUDA run for real here), one pytest, time-boxed."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files]
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                             timeout=max(10.0, min(timeout_s, clock.left() - 60)))
        tail = (res.stdout + res.stderr)[-3000:]
        rc = res.returncode
    except subprocess.TimeoutExpired as exc:
        tail, rc = f"timed out: {str(exc.stdout)[-2000:]}", None
    print(tail, flush=True)
    return {"command": " ".join(cmd), "returncode": rc, "wall_s": time.perf_counter() - t0,
            "summary": tail.strip().splitlines()[-1] if tail.strip() else "", "output_tail": tail}


def sweep(report: dict, out: Path, device: torch.device, sizes, configs, steps: int, clock: Clock,
          nb_backend: str, reserve_s: float) -> None:
    """Every (model, dtype) at one size, then the next size (breadth first: a time-out still leaves
    every configuration measured at the sizes reached); a configuration stops growing when the
    next size would not fit in memory or in the time left. JSON after every point."""
    total_mem = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    prev: dict = {}
    active = list(configs)
    for n in sizes:
        for model, dtype in list(active):
            last = prev.get((model, dtype))
            if last is not None:
                grow = n / last["n_atoms"]
                # set-up (lattice, list build, first forces) and the timed steps both scale ~ linearly
                need_s = grow * (last["first_forces_s"] + last["warmup_step_s"] * min(steps, 8)) + 15
                if clock.left() - reserve_s < need_s:
                    report["stopped"].append(f"{model} {dtype} {n}: needs ~{need_s:.0f} s, "
                                             f"{clock.left() - reserve_s:.0f} s left")
                    active.remove((model, dtype))
                    continue
                peak = last.get("peak_gpu_bytes") or 0
                if total_mem and peak * grow > 0.9 * total_mem:
                    report["stopped"].append(f"{model} {dtype} {n}: would need ~"
                                             f"{last['peak_gpu_bytes'] * grow / 2**30:.0f} GiB")
                    active.remove((model, dtype))
                    continue
            elif clock.left() - reserve_s < 20:
                report["stopped"].append(f"{model} {dtype} {n}: no time left")
                active.remove((model, dtype))
                continue
            try:
                row = run_point(model, dtype, n, device, steps, nb_backend, clock)
            except torch.cuda.OutOfMemoryError as exc:
                report["stopped"].append(f"{model} {dtype} {n}: out of memory ({str(exc)[:160]})")
                active.remove((model, dtype))
                torch.cuda.empty_cache()
                continue
            except Exception as exc:  # noqa: BLE001 - keep measuring the others
                report["errors"].append(f"{model} {dtype} {n}: {type(exc).__name__}: {exc}"[:400])
                active.remove((model, dtype))
                continue
            report["points"].append(row)
            print(f"{model:5s} {dtype:9s} {row['n_atoms']:>9d} atoms  {row['atom_steps_per_s']:.3e} "
                  f"atom-steps/s  step {row['step_ms']:.2f} ms  model {100 * row['model_fraction']:.0f}%  "
                  f"peak {row.get('peak_gpu_bytes', row.get('peak_rss_bytes', 0)) / 2**20:.0f} MiB",
                  flush=True)
            prev[(model, dtype)] = row
            write(report, out)


def largest(report: dict, total_mem) -> None:
    """Largest measured system per (model, dtype) and its bytes/atom; the fit estimate is labelled so."""
    out = {}
    for r in report["points"]:
        if r["mode"] != "engine":
            continue
        key = f"{r['model']}_{r['dtype']}"
        if key not in out or r["n_atoms"] > out[key]["n_atoms_measured"]:
            e = {"n_atoms_measured": r["n_atoms"], "bytes_per_atom": r.get("bytes_per_atom")}
            if total_mem and r.get("bytes_per_atom"):
                e["n_atoms_fit_estimate"] = int(0.9 * total_mem / r["bytes_per_atom"])
                e["estimate_note"] = "extrapolated: 0.9 x GPU memory / measured bytes per atom (not run)"
            out[key] = e
    report["largest"] = out


def write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report["elapsed_s"] = time.perf_counter() - report.pop("_t0", time.perf_counter()) \
        if "_t0" in report else report.get("elapsed_s")
    (out / report["json_name"]).write_text(json.dumps(report, indent=1, default=str))


def plot(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in report["points"] if r["mode"] == "engine"]
    if not pts:
        return
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    keys = sorted({(r["model"], r["dtype"]) for r in pts})
    for m, d in keys:
        rows = sorted((r for r in pts if (r["model"], r["dtype"]) == (m, d)), key=lambda r: r["n_atoms"])
        x = [r["n_atoms"] for r in rows]
        axes[0].plot(x, [r["atom_steps_per_s"] for r in rows], "o-", label=f"{m} {d}")
        bpa = [r.get("bytes_per_atom", r.get("peak_rss_bytes", 0) / r["n_atoms"]) for r in rows]
        axes[2].plot(x, bpa, "o-", label=f"{m} {d}")
    mem = "peak GPU bytes / atom" if report["device"] == "cuda" else "process peak RSS / atom (CPU)"
    for ax, yl in ((axes[0], "atom-steps / s"), (axes[2], mem)):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("atoms")
        ax.set_ylabel(yl)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    parts = ("neighbor", "model", "integrate", "reductions", "io")
    labels = [f"{r['model']} {r['dtype']}\n{r['n_atoms']:.0e}" for r in pts]
    bottom = np.zeros(len(pts))
    for p in parts:
        frac = np.array([r["breakdown_s"][p] / r["wall_s"] for r in pts])
        axes[1].bar(range(len(pts)), frac, bottom=bottom, label=p)
        bottom += frac
    axes[1].set_xticks(range(len(pts)), labels, fontsize=6, rotation=90)
    axes[1].set_ylabel("fraction of step")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"md_step end to end on {report['device_name']} ({report['mode']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / report["json_name"].replace(".json", ".png"), dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU-sized: tiny systems, few steps, no tests")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--budget-s", type=float, default=None, help="wall-time guard (default 450; smoke 120)")
    ap.add_argument("--tests", default=",".join(GPU_TESTS), help="comma-separated test files; '' skips")
    ap.add_argument("--sizes", default=None, help="comma-separated atom counts")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--dtypes", default="float32,bfloat16,bfloat16+f32edges",
                    help="'+f32edges' (bundled model only): bf16 model, float32 edge vectors")
    ap.add_argument("--models", default="egnn,lj")
    ap.add_argument("--no-compile", action="store_true",
                    help="skip the torch.compile(mode='reduce-overhead') point (run last, if time is left)")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    clock = Clock(args.budget_s if args.budget_s is not None else (120 if args.smoke else 450))
    sizes = [int(float(s)) for s in (args.sizes or ("32" if args.smoke else "1e4,1e5,1e6,1e7")).split(",")]
    steps = args.steps or (2 if args.smoke else 20)
    out = Path(args.out)
    name = "md_end_to_end_smoke.json" if args.smoke else "md_end_to_end_gpu.json"
    report = {"benchmark": "md_end_to_end", "json_name": name, "mode": "smoke" if args.smoke else "full",
              "command": " ".join([sys.executable, *sys.argv]), "device": device.type,
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "machine": machine_info(), "budget_s": clock.budget, "points": [], "stopped": [], "errors": [],
              "note": ("smoke run on CPU: tiny sizes, not a performance figure" if device.type == "cpu"
                       else "measured on this GPU by this run")}
    if device.type == "cuda":
        report["gpu_total_bytes"] = torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    tests = [t for t in args.tests.split(",") if t] if not args.smoke else []
    if tests:
        report["gpu_tests"] = run_tests(tests, clock, timeout_s=150)
    write(report, out)
    nb_sizes = [sizes[0]] if args.smoke else [s for s in (100_000, 1_000_000) if s <= max(sizes)]
    report["neighbor_backends"] = neighbor_backend_choice(device, nb_sizes, clock)
    nb = report["neighbor_backends"]["chosen"]
    print("neighbor backends:", json.dumps(report["neighbor_backends"]["rows"]), "-> using", nb, flush=True)
    write(report, out)
    # Order: the sweep (the main result) first, keeping `after_s` for the small-size extras, which
    # reuse its compiled kernels: eager vs CUDA graph, the whole run loop, torch.compile last.
    small = [s for s in sizes if s <= 100_000][:2] or sizes[:1]
    dtypes = args.dtypes.split(",")
    static_dtypes = sorted((d for d in dtypes if "+" not in d), key=lambda d: d != "bfloat16")
    models = args.models.split(",")

    def order(c):  # the headline first: the bundled model in bf16; LJ in bf16 last
        model, dtype = c
        late = ("bfloat16" not in dtype) if model == "egnn" else (dtype == "bfloat16")
        return (model != "egnn", late, dtype)

    configs = sorted(((m, d) for m in models for d in dtypes if m == "egnn" or "+" not in d), key=order)
    after_s = 20 if args.smoke else 90
    sweep(report, out, device, sizes, configs, steps, clock, nb, reserve_s=after_s)
    largest(report, report.get("gpu_total_bytes"))
    write(report, out)

    def static_point(n: int, dtype: str, mode: str) -> None:
        try:
            row = run_point("egnn", dtype, n, device, steps, nb, clock, mode=mode, target_s=3.0)
            report["points"].append(row)
            print(f"static {mode:10s} {dtype:9s} {row['n_atoms']:>8d}  {row['atom_steps_per_s']:.3e} "
                  f"atom-steps/s (ran {row['capture_mode']})", flush=True)
        except Exception as exc:  # noqa: BLE001
            report["errors"].append(f"static {mode} {dtype} {n}: {type(exc).__name__}: {exc}"[:400])
        write(report, out)

    for n in small:
        for dtype in static_dtypes[: 1 if args.smoke else None]:
            for mode in ("eager", "cuda-graph", "cuda-graph+deferred"):
                if clock.left() < (5 if args.smoke else 45):
                    break
                static_point(n, dtype, mode)
    # the full run loop (Simulation.run) for the bundled model: what a user gets
    for n in small[:1] if args.smoke else small:
        if clock.left() < (3 if args.smoke else 25):
            break
        dtype = static_dtypes[0]
        try:
            work = Path(tempfile.mkdtemp(prefix="atomsim_e2e_"))  # thermo.csv etc.: not into $OUT
            row = run_simulation("egnn", dtype, n, device, steps if args.smoke else 40, work)
            report["points"].append(row)
            print(f"Simulation.run {dtype:9s} {row['n_atoms']:>8d}  {row['atom_steps_per_s']:.3e} "
                  f"atom-steps/s, checks {row['deferred_checks']}", flush=True)
        except Exception as exc:  # noqa: BLE001
            report["errors"].append(f"simulation {dtype} {n}: {type(exc).__name__}: {exc}"[:400])
        write(report, out)
    report["elapsed_s"] = clock.budget - clock.left()
    write(report, out)
    try:
        plot(report, out)
    except Exception as exc:  # noqa: BLE001 - the JSON is what counts
        report["errors"].append(f"plot: {exc}")
        write(report, out)
    if not args.no_compile and clock.left() > (1 if args.smoke else 15):
        static_point(small[0], static_dtypes[0], "compile")  # last: unbounded compile time, all else written
        report["elapsed_s"] = clock.budget - clock.left()
        write(report, out)
    print(f"done in {report['elapsed_s']:.0f} s; wrote {out / name}", flush=True)
    return report


if __name__ == "__main__":
    main()
