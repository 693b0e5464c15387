#!/usr/bin/env bash
# The benchmark suite as run for benchmarks/results/bench_weak_default.json (docs/scaling.md).
# Weak scaling of the bundled GNN (egnn-emt-v1, per-layer halo) on fcc Cu: fitted sizes 2000 and
# 4000 atoms/rank, held-out 3000; ranks 1 and 2 (cores) interleaved three times, 4 (oversubscribed) once;
# ping-pong/allreduce probe, performance model, throughput anchors (atomsim vs ASE, LJ vs LAMMPS).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1
.venv/bin/atomsim bench weak-scaling --ranks 1,2,4 --atoms-per-rank 2000,4000 --heldout 3000 \
    --steps 6 --repeats 3 --anchors --lj-script benchmarks/lj_vs_lammps/bench_lj.py --out benchmarks/results/bench_weak_default.json "$@"
