"""Throughput of the default EGNN model in MD (the `atomsim run` loop), FLOPs, peak fraction, memory.

    .venv/bin/python benchmarks/gnn_throughput/run.py [--sizes 4000 32000] [--threads 1 2]
        [--steps 10] [--repeats 3] [--memory-atoms 100000] [--model default]

Per (threads, size) a fresh subprocess runs NVE on fcc Cu through
``atomsim.Simulation`` (neighbor list with skin, integrator, thermo: what
`atomsim run` does) and reports atom-steps/s (median of repeats, each
repeat timing ``--steps`` steps after 2 warm-up steps). FLOPs per atom-step are
counted analytically from the model shape and the measured edges per atom
(matmuls only; the force backward costs ~1x the forward since weight gradients
are not needed), and compared with the fp32 matmul rate measured in the same
process. Peak memory: max RSS growth over one force evaluation of a
``--memory-atoms`` cell, per atom. JSON goes to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _repeat_for(n_atoms: int) -> list[int]:
    """fcc conventional cells (4 atoms each) giving about n_atoms atoms."""
    k = max(1, round((n_atoms / 4) ** (1 / 3)))
    return [k, k, k]


def _yaml(n_atoms: int, model: str, outdir: str, steps: int, threads: int) -> str:
    r = _repeat_for(n_atoms)
    return f"""system:
  structure: {{lattice: fcc, symbols: Cu, repeat: [{r[0]}, {r[1]}, {r[2]}]}}
  temperature_K: 300
  seed: 1
potential: {{model: {model}, dtype: float32, device: cpu}}
dynamics: {{integrator: nve, timestep_fs: 1.0, steps: {steps}}}
neighbor: {{skin: 1.0}}
parallel: {{threads: {threads}}}
output: {{directory: {outdir}, thermo_every: 1000000, trajectory_every: 0, restart_every: 0, progress: false}}
"""


def matmul_peak_gflops(threads: int, n: int = 1536, repeats: int = 5) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def flops_per_atom_step(cfg, edges_per_atom: float) -> float:
    """Matmul FLOPs of one energy+force evaluation per atom (forward x 2 for the input-gradient backward)."""
    F, K, H, L = cfg.width, cfg.n_rbf, cfg.readout_hidden, cfg.depth
    per_edge = 2 * K * F + 2 * F * F  # rbf @ w_rbf, silu(pre) @ w2
    per_node = 2 * 2 * F * F + 2 * 2 * F * F + 2 * F * F  # W_src, W_dst, node MLP (2F->F, F->F)
    forward = L * (edges_per_atom * per_edge + per_node) + 2 * F * H + 2 * H
    return 2.0 * forward


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from atomsim.engine.config import load_config
    from atomsim.engine.simulation import Simulation

    with tempfile.TemporaryDirectory() as tmp:
        cfgfile = Path(tmp) / "in.yaml"
        total = 2 + args.steps * args.repeats
        cfgfile.write_text(_yaml(args.n_atoms, args.model, str(Path(tmp) / "run"), total, args.threads))
        sim = Simulation.from_config(load_config(str(cfgfile)))
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if args.memory_only:
            t = time.perf_counter()
            sim.run(1)
            rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            print(json.dumps({"n_atoms": sim.state.n_atoms_global, "rss_before_B": rss0, "rss_peak_B": rss1,
                              "bytes_per_atom_increment": (rss1 - rss0) / sim.state.n_atoms_global,
                              "bytes_per_atom_total": rss1 / sim.state.n_atoms_global,
                              "one_step_s": time.perf_counter() - t}))
            return
        sim.run(2)  # warm-up: first neighbor build, allocator
        rates = [sim.run(args.steps)["atom_steps_per_s"] for _ in range(args.repeats)]
        n = sim.state.n_atoms_global
        from atomsim.kernels.neighbors import neighbor_list  # the model drops skin edges: count within r_c

        edges = len(neighbor_list(sim.state.positions.numpy(), sim.state.cell.numpy(), sim.state.pbc,
                                  sim.potential.cutoff)[0])
        fl = flops_per_atom_step(sim.potential.config, edges / n)
        peak = matmul_peak_gflops(args.threads)
        med = statistics.median(rates)
        print(json.dumps({"threads": args.threads, "n_atoms": n, "atom_steps_per_s": rates,
                          "median_atom_steps_per_s": med, "step_s": n / med, "edges_per_atom": edges / n,
                          "flops_per_atom_step": fl, "achieved_gflops": fl * med / 1e9,
                          "matmul_peak_gflops": peak, "fraction_of_peak": fl * med / 1e9 / peak}))


def _available_memory_bytes():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4000, 32000])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-atoms", type=int, default=100000)
    ap.add_argument("--model", default="default")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n-atoms", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.threads = args.threads[0]
        return worker(args)

    def spawn(extra, threads):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--steps", str(args.steps),
               "--repeats", str(args.repeats), "--threads", str(threads), *extra]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-3000:])
        return json.loads(out.stdout.strip().splitlines()[-1])

    import torch

    from atomsim.potentials import load_potential

    model = load_potential(args.model)
    results = {"benchmark": "gnn_throughput", "command": " ".join([sys.executable, *sys.argv]),
               "model": args.model, "model_config": model.config.to_dict(),
               "parameters": sum(p.numel() for p in model.parameters()),
               "machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "cpu_count": os.cpu_count(), "load_avg_at_start": os.getloadavg()},
               "versions": {"python": platform.python_version(), "torch": torch.__version__},
               "runs": [], "memory": None}
    for threads in args.threads:
        for n in args.sizes:
            r = spawn(["--n-atoms", str(n)], threads)
            results["runs"].append(r)
            print(f"{threads} thread(s) {r['n_atoms']:>7} atoms: {r['median_atom_steps_per_s']:,.0f} atom-steps/s "
                  f"({r['step_s']:.3f} s/step), {r['flops_per_atom_step'] / 1e6:.2f} MFLOP/atom-step, "
                  f"{100 * r['fraction_of_peak']:.1f}% of {r['matmul_peak_gflops']:.0f} GFLOP/s matmul peak",
                  flush=True)
    if args.memory_atoms:
        # probe at 1/8 of the size first: a shared machine must not be pushed into swap/OOM
        probe = spawn(["--n-atoms", str(max(1000, args.memory_atoms // 8)), "--memory-only"], max(args.threads))
        need = probe["bytes_per_atom_total"] * args.memory_atoms
        avail = _available_memory_bytes()
        if avail is not None and need > 0.6 * avail:
            print(f"memory: {args.memory_atoms} atoms would need ~{need / 2**30:.1f} GiB, only "
                  f"{avail / 2**30:.1f} GiB available: reporting the {probe['n_atoms']}-atom probe")
            m = dict(probe, note=f"{args.memory_atoms} atoms skipped: ~{need / 2**30:.1f} GiB needed, "
                                 f"{avail / 2**30:.1f} GiB available")
        else:
            m = spawn(["--n-atoms", str(args.memory_atoms), "--memory-only"], max(args.threads))
        m["probe"] = probe
        results["memory"] = m
        print(f"memory at {m['n_atoms']} atoms: peak RSS {m['bytes_per_atom_total']:.0f} B/atom "
              f"(+{m['bytes_per_atom_increment']:.0f} B/atom during one step)")
    results["machine"]["load_avg_at_end"] = os.getloadavg()
    out = ROOT / "benchmarks" / "results" / "gnn_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
