"""Run the halo benchmark matrix and write benchmarks/results/halo.json (figures printed too).

    .venv/bin/python benchmarks/halo/run_all.py [--cells-counts 14] [--cells-time 8] [--steps 3]

Counts (ghosts, edges, bytes per step) at ~10k atoms per rank (14^3 x 4 = 10,976)
for both schemes; timings and weak scaling 1 -> 2 ranks at 2,048 atoms per rank,
where the full halo's model activations still fit in memory (4.3 GB per rank).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = Path(__file__).with_name("bench_halo.py")
MPIEXEC = Path(sys.executable).parent / "mpiexec"


def launch(n, scheme, cells, steps, counts_only, tmp) -> dict:
    out = Path(tmp) / f"{scheme}-{n}-{cells}-{int(counts_only)}.json"
    cmd = [str(MPIEXEC), "-n", str(n), sys.executable, str(BENCH), "--scheme", scheme, "--cells", str(cells),
           "--steps", str(steps), "--out", str(out)] + (["--counts-only"] if counts_only else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, timeout=1800)
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells-counts", type=int, default=14)
    ap.add_argument("--cells-time", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "halo.json"))
    args = ap.parse_args()
    runs = {"counts": {}, "timing": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 2):
            for scheme in ("per-layer", "full"):
                runs["counts"][f"{scheme}/{n}"] = launch(n, scheme, args.cells_counts, 0, True, tmp)
        for n in (1, 2):
            for scheme in ("per-layer", "full"):
                runs["timing"][f"{scheme}/{n}"] = launch(n, scheme, args.cells_time, args.steps, False, tmp)
    summary = {}
    c = runs["counts"]
    g_pl = max(r["n_ghost"] for r in c["per-layer/2"]["per_rank"])
    g_full = max(r["n_ghost"] for r in c["full/2"]["per_rank"])
    summary["atoms_per_rank_counts"] = c["full/2"]["per_rank"][0]["n_owned"]
    summary["ghosts_per_rank"] = {"per-layer": g_pl, "full": g_full, "ratio": g_pl / g_full}
    summary["edges_per_rank"] = {s: max(r["n_edges"] for r in c[f"{s}/2"]["per_rank"]) for s in ("per-layer", "full")}
    summary["bytes_sent_per_rank_per_step"] = {s: max(r["bytes_per_step"] for r in c[f"{s}/2"]["per_rank"])
                                               for s in ("per-layer", "full")}
    t = runs["timing"]
    summary["atoms_per_rank_timing"] = t["full/1"]["per_rank"][0]["n_owned"]
    for s in ("per-layer", "full"):
        t1 = t[f"{s}/1"]["per_rank"][0]["per_step_median_s"]
        t2 = max((r["per_step_median_s"] for r in t[f"{s}/2"]["per_rank"]), key=lambda x: x["total"])
        summary[f"time_per_step_s/{s}"] = {"1_rank": t1, "2_ranks_slowest": t2}
        summary[f"weak_scaling_efficiency_1to2/{s}"] = t1["total"] / t2["total"]
        summary[f"peak_rss_MB/{s}"] = max(r["peak_rss_MB"] for r in t[f"{s}/2"]["per_rank"])
    result = {"summary": summary, "runs": runs,
              "command": f"{sys.executable} benchmarks/halo/run_all.py " + " ".join(sys.argv[1:])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
