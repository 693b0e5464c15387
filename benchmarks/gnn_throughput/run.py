"""Throughput, matmul-peak fraction and memory of the default EGNN in MD, before/after the fused kernel.

    .venv/bin/python benchmarks/gnn_throughput/run.py            # ~3 min on a quiet 2-core machine
        [--sizes 4000 32000] [--threads 1 2] [--kernels reference numba] [--steps 5] [--repeats 3]
        [--memory-atoms 23328] [--model egnn-emt-v1]

Per (threads, size, kernel) a fresh subprocess runs NVE on fcc Cu through ``atomsim.Simulation``
(neighbor list with skin, integrator, thermo: what `atomsim run` does) and reports atom-steps/s
(median of repeats, each timing ``--steps`` steps after 1 warm-up step). ``kernel`` is the
message-passing backend (ATOMSIM_KERNELS): ``reference`` = torch gather/index_add + autograd (the
"before"), ``numba`` = the fused CPU kernel (kernels/message_passing_cpu.py, the default on CPU).
The two kernels alternate for each (threads, size), so their ratio is measured under the same load.
The reference runs fewer steps (it is ~5x slower).

FLOPs per atom-step are counted from the model shape and the measured edges within the cutoff:
``model_flops`` = matmul FLOPs of the forward pass x 2 (the force backward of a matmul costs one
more matmul; weight gradients are not needed in MD) -- the figure the goals are stated in;
``executed_flops`` adds what the fused kernel recomputes in the backward instead of storing
(one more edge matmul per layer). Both are compared with the fp32 matmul rate (torch.mm of a
1536^2 matrix, best of 5) measured in the same process at the same thread count.

Memory: peak RSS growth of one MD step on a ``--memory-atoms`` cell (>= 20,000 atoms), after a
100-atom warm-up run in the same process (so JIT loading and library start-up are not counted),
per atom; the total RSS per atom is reported too. Numbers on a loaded machine are noisy:
``os.getloadavg()`` is recorded at every run. JSON: benchmarks/results/gnn_throughput.json (the
figures before the kernel are kept under "before").
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
OUT = ROOT / "benchmarks" / "results" / "gnn_throughput.json"
# Before the fused CPU kernel (reference path only), quiet 2-core Intel Xeon (AVX-512), as filed:
BEFORE = {"quiet_machine_reference_path": {
    "atom_steps_per_s": {"1t_4000": 3707, "1t_32000": 3655, "2t_4000": 5993, "2t_32000": 5893},
    "matmul_peak_gflops_1t": [156, 185], "fraction_of_peak": [0.034, 0.041],
    "peak_rss_bytes_per_atom_at_19652": 177e3}}


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


def matmul_peak_gflops(n: int = 1536, repeats: int = 5) -> float:
    """fp32 torch.mm rate at the current thread count (best of ``repeats``)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def flops_per_atom_step(cfg, edges_per_atom: float) -> dict:
    """Matmul FLOPs of one energy + force evaluation per atom.

    model: forward x 2 (input-gradient backward = one matmul per forward matmul);
    executed: + the fused kernel's recomputation of the edge matmuls in the backward.
    """
    F, K, H, L = cfg.width, cfg.n_rbf, cfg.readout_hidden, cfg.depth
    per_edge = 2 * K * F + 2 * F * F  # rbf @ w_rbf, silu(pre) @ w2
    per_node = 2 * 2 * F * F + 2 * 2 * F * F + 2 * F * F  # W_src, W_dst, node MLP (2F->F, F->F)
    forward = L * (edges_per_atom * per_edge + per_node) + 2 * F * H + 2 * H
    model = 2.0 * forward
    return {"model": model, "executed_fused": model + L * edges_per_atom * per_edge}


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(args) -> None:
    from atomsim.kernels.threads import configure_threads

    configure_threads(args.threads)  # torch, numba, BLAS, OpenMP: one count
    from atomsim.engine.config import load_config
    from atomsim.engine.simulation import Simulation

    load = os.getloadavg()

    def make(n_atoms: int, tmp: str, steps: int):
        cfgfile = Path(tmp) / f"in{n_atoms}.yaml"
        cfgfile.write_text(_yaml(n_atoms, args.model, str(Path(tmp) / f"run{n_atoms}"), steps, args.threads))
        return Simulation.from_config(load_config(str(cfgfile)))

    with tempfile.TemporaryDirectory() as tmp:
        if args.memory_only:
            make(100, tmp, 2).run(2)  # warm-up: JIT/kernels loaded, allocator primed
            rss0 = _rss()
            t = time.perf_counter()
            sim = make(args.n_atoms, tmp, 1)
            sim.run(1)
            rss1 = _rss()
            n = sim.state.n_atoms_global
            print(json.dumps({"kernel": args.kernel, "threads": args.threads, "n_atoms": n,
                              "rss_before_B": rss0, "rss_peak_B": rss1,
                              "bytes_per_atom_increment": (rss1 - rss0) / n, "bytes_per_atom_total": rss1 / n,
                              "setup_and_one_step_s": time.perf_counter() - t, "load_avg": load}))
            return
        sim = make(args.n_atoms, tmp, 1 + args.steps * args.repeats)
        sim.run(1)  # warm-up: first neighbor build, allocator, JIT (median of repeats drops the rest)
        rates = [sim.run(args.steps)["atom_steps_per_s"] for _ in range(args.repeats)]
        n = sim.state.n_atoms_global
        from atomsim.kernels.neighbors import neighbor_list  # the model drops skin edges: count within r_c

        edges = len(neighbor_list(sim.state.positions.numpy(), sim.state.cell.numpy(), sim.state.pbc,
                                  sim.potential.cutoff)[0])
        fl = flops_per_atom_step(sim.potential.config, edges / n)
        peak = matmul_peak_gflops()
        med = statistics.median(rates)
        executed = fl["executed_fused"] if args.kernel == "numba" else fl["model"]
        print(json.dumps({"kernel": args.kernel, "threads": args.threads, "n_atoms": n,
                          "atom_steps_per_s": rates, "median_atom_steps_per_s": med, "step_s": n / med,
                          "edges_per_atom": edges / n, "model_flops_per_atom_step": fl["model"],
                          "executed_flops_per_atom_step": executed,
                          "achieved_model_gflops": fl["model"] * med / 1e9,
                          "achieved_executed_gflops": executed * med / 1e9,
                          "matmul_peak_gflops": peak, "fraction_of_peak": fl["model"] * med / 1e9 / peak,
                          "executed_fraction_of_peak": executed * med / 1e9 / peak,
                          "load_avg": [load, os.getloadavg()]}))


def _available_memory_bytes():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4000, 32000])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--kernels", nargs="+", default=["reference", "numba"], choices=["reference", "numba"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reference-steps", type=int, default=1, help="steps per repeat for the slow reference")
    ap.add_argument("--reference-repeats", type=int, default=2)
    ap.add_argument("--memory-atoms", type=int, default=23328, help="0 skips the memory runs")
    ap.add_argument("--model", default="egnn-emt-v1")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--kernel", default="numba", help=argparse.SUPPRESS)
    ap.add_argument("--n-atoms", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.threads = args.threads[0]
        return worker(args)

    def spawn(extra, threads, kernel):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                   ATOMSIM_KERNELS=kernel)
        ref = kernel == "reference"
        steps, repeats = (args.reference_steps, args.reference_repeats) if ref else (args.steps, args.repeats)
        cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--steps", str(steps),
               "--repeats", str(repeats), "--threads", str(threads), "--kernel", kernel, *extra]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-3000:])
        return json.loads(out.stdout.strip().splitlines()[-1])

    import numba
    import torch

    from atomsim.potentials import load_potential

    t_start = time.perf_counter()
    model = load_potential(args.model)
    previous = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else None
    results = {"benchmark": "gnn_throughput", "command": " ".join([sys.executable, *sys.argv]),
               "model": args.model, "model_config": model.config.to_dict(),
               "parameters": sum(p.numel() for p in model.parameters()),
               "machine": {"platform": platform.platform(), "cpu_model": _cpu_model(),
                           "cpu_count": os.cpu_count(), "load_avg_at_start": os.getloadavg(),
                           "note": "load_avg per run in runs[*].load_avg; 2 threads on a loaded 2-core "
                                   "machine measure contention, not scaling"},
               "versions": {"python": platform.python_version(), "torch": torch.__version__,
                            "numba": numba.__version__},
               "runs": [], "speedup": {}, "memory": {}}
    for threads in args.threads:
        for n in args.sizes:
            for kernel in args.kernels:
                r = spawn(["--n-atoms", str(n)], threads, kernel)
                results["runs"].append(r)
                print(f"{kernel:>9} {threads} thread(s) {r['n_atoms']:>7} atoms: "
                      f"{r['median_atom_steps_per_s']:>9,.0f} atom-steps/s ({r['step_s']:.3f} s/step), "
                      f"{r['model_flops_per_atom_step'] / 1e6:.2f} MFLOP/atom-step -> "
                      f"{r['achieved_model_gflops']:.1f} GFLOP/s = {100 * r['fraction_of_peak']:.1f}% of "
                      f"{r['matmul_peak_gflops']:.0f} GFLOP/s matmul peak "
                      f"(executed incl. recompute: {100 * r['executed_fraction_of_peak']:.1f}%); "
                      f"load {r['load_avg'][0][0]:.1f}", flush=True)
    by = {(r["kernel"], r["threads"], r["n_atoms"]): r["median_atom_steps_per_s"] for r in results["runs"]}
    for (kernel, threads, n), rate in sorted(by.items()):
        key = f"{threads}t_{n}"
        if kernel == "numba" and ("reference", threads, n) in by:
            results["speedup"][f"numba_over_reference_{key}"] = rate / by[("reference", threads, n)]
        if threads == 2 and (kernel, 1, n) in by:
            results["speedup"][f"{kernel}_2_over_1_thread_{n}"] = rate / by[(kernel, 1, n)]
    for name, value in results["speedup"].items():
        print(f"{name}: {value:.2f}x")
    if args.memory_atoms:
        avail = _available_memory_bytes()
        for kernel in args.kernels:
            need = (180e3 if kernel == "reference" else 40e3) * args.memory_atoms  # generous estimates
            if avail is not None and need > 0.6 * avail:
                results["memory"][kernel] = {"skipped": f"~{need / 2**30:.1f} GiB needed, "
                                                        f"{avail / 2**30:.1f} GiB available"}
                print(f"memory ({kernel}): skipped, {results['memory'][kernel]['skipped']}")
                continue
            m = spawn(["--n-atoms", str(args.memory_atoms), "--memory-only"], 1, kernel)
            results["memory"][kernel] = m
            print(f"memory ({kernel}) at {m['n_atoms']} atoms: +{m['bytes_per_atom_increment'] / 1e3:.1f} kB/atom "
                  f"peak RSS growth in one MD step (total RSS {m['bytes_per_atom_total'] / 1e3:.1f} kB/atom)",
                  flush=True)
    results["machine"]["load_avg_at_end"] = os.getloadavg()
    results["wall_s"] = time.perf_counter() - t_start
    results["before"] = BEFORE
    if previous is not None:  # the last run of this script, or (first time) the pre-kernel file
        results["before"] = previous.get("before", {**BEFORE, "previous_file": previous})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out} ({results['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
