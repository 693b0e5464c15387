"""Halo benchmark: ghosts, memory, bytes sent and time per step for the full and per-layer schemes.

One launch = one scheme on N ranks (weak scaling: each rank owns an
fcc Cu block of ``--cells`` conventional cells cubed, the box grows along x
with the rank count, grid [N, 1, 1]). The model is the bundled EGNN's shape
(width 64, depth 3, cutoff 5 Å unless told otherwise) with random weights:
the cost does not depend on the weights.

``--counts-only`` builds the decomposition, ghosts and local pair list and
measures the exchanges (positions, forces, per-layer features) without the
model: the ghost and edge counts at ~10k atoms per rank, where the full halo's
model activations would not fit this machine's memory.

    OMP_NUM_THREADS=1 .venv/bin/mpiexec -n 2 .venv/bin/python benchmarks/halo/bench_halo.py \
        --scheme per-layer --cells 8 --steps 5 --out /tmp/x.json
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scheme", choices=["full", "per-layer"], required=True)
    ap.add_argument("--cells", type=int, default=8, help="conventional fcc cells per rank along each axis")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--cutoff", type=float, default=5.0)
    ap.add_argument("--skin", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--counts-only", action="store_true")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from ase.build import bulk
    from mpi4py import MPI  # the library version for the record

    from atomsim.engine.comm import world_comm
    from atomsim.engine.parallel_forces import ParallelForces
    from atomsim.engine.state import MDState
    from atomsim.engine.step import evaluate_forces, md_step
    from atomsim.integrators.verlet import VelocityVerlet
    from atomsim.potentials.egnn import build_egnn

    comm = world_comm()
    comm.install_abort_handler()
    size, rank = comm.size, comm.rank
    c = args.cells
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((c * size, c, c))
    rng = np.random.default_rng(0)
    atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
    atoms.set_velocities(rng.normal(0, 0.01, atoms.positions.shape))
    torch.manual_seed(0)
    model = build_egnn([29], width=args.width, depth=args.depth, cutoff=args.cutoff)
    model.requires_grad_(False)  # MD: no parameter gradients

    state = MDState.from_atoms(atoms, comm=comm)
    prov = ParallelForces(model, comm, skin=args.skin, halo=args.scheme, grid=[size, 1, 1])
    prov.prepare(state)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    prov.rebuild(state)  # first build: includes Numba JIT / cache load
    t0 = time.perf_counter()
    prov.rebuild(state)
    t_rebuild = time.perf_counter() - t0
    n_own, n_ghost = state.n_local, prov.ghosts.n
    n_edges = prov.nlist.n_edges
    F = args.width

    result = {"n_owned": n_own, "n_ghost": n_ghost, "n_edges": n_edges, "rebuild_s": t_rebuild}
    plan = prov.ghosts.plan
    if args.counts_only:
        owned = state.positions.clone()
        b0 = plan.bytes_sent
        prov.ghosts.positions(owned, state.cell)  # position refresh
        b_pos = plan.bytes_sent - b0
        plan.reverse(torch.zeros((n_ghost, 3), dtype=torch.float64), n_own)  # force reverse
        b_force = plan.bytes_sent - b0 - b_pos
        b_feat = 0
        if args.scheme == "per-layer":  # forward + backward exchange between layers (depth - 1), float32
            b1 = plan.bytes_sent
            feats = torch.zeros((n_own, F), dtype=torch.float32)
            plan.forward(feats)
            plan.reverse(torch.zeros((n_ghost, F), dtype=torch.float32), n_own)
            b_feat = (plan.bytes_sent - b1) * (args.depth - 1)
        result.update({"bytes_per_step": b_pos + b_force + b_feat, "bytes_positions": b_pos,
                       "bytes_forces": b_force, "bytes_features": b_feat,
                       "ghost_feature_MB_per_layer": n_ghost * F * 4 / 2**20})
    else:
        integ = VelocityVerlet(1.0)
        no_limit = float("inf")  # measured, not guarded
        evaluate_forces(state, prov, virial=True, max_force=no_limit)  # warm-up (same lists)
        steps = []
        for _ in range(args.steps):
            tim0 = dict(prov.timers)
            b0 = plan.bytes_sent
            parts = {}
            ta = time.perf_counter()
            md_step(state, integ, prov, virial=True, max_force=no_limit, timers=parts)
            td = time.perf_counter()
            row = {k: prov.timers[k] - tim0[k] for k in prov.timers}
            row["integrate"] = parts["integrate"] + parts["safety"]
            row["total"] = td - ta
            row["bytes"] = plan.bytes_sent - b0
            row["rebuilt"] = prov.n_builds
            steps.append(row)
        result["per_step_median_s"] = {k: statistics.median(r[k] for r in steps)
                                       for k in ("neighbor", "halo", "model", "reverse", "integrate", "total")}
        result["bytes_per_step"] = statistics.median(r["bytes"] for r in steps)
        result["n_builds"] = prov.n_builds
    result["load_average_1min"] = __import__("os").getloadavg()[0]
    result["peak_rss_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["rss_before_MB"] = rss0
    per_rank = comm.gather(result, root=0)
    if rank == 0:
        import platform

        out = {
            "benchmark": "halo", "scheme": args.scheme, "ranks": size, "args": vars(args),
            "atoms_total": len(atoms), "per_rank": per_rank,
            "command": "OMP_NUM_THREADS=1 mpiexec -n %d python %s" % (size, " ".join(sys.argv)),
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "cpus": __import__("os").cpu_count()},
            "versions": {"torch": torch.__version__, "numpy": np.__version__,
                         "mpi": MPI.Get_library_version().splitlines()[0]},
        }
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)
        print(json.dumps({k: out[k] for k in ("scheme", "ranks", "atoms_total")}),
              json.dumps(per_rank[0]), flush=True)


if __name__ == "__main__":
    main()
