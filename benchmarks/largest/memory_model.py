"""The performance model's memory and I/O terms from the end-to-end runs (benchmarks/largest/run_largest.py).

    python benchmarks/largest/memory_model.py            # prints the tables docs/scaling.md quotes

Takes the weak-scaling model (benchmarks/results/bench_weak_default.json, atomsim/bench/perf_model.py),
replaces its memory coefficients by the largest bundled-GNN run's measurement (peak RSS per rank =
m0 + m_atom (owned + ghosts), m0 the run's own baseline before the build) and predicts again what 10^10
atoms need. The restart term: bytes per atom of a sharded restart and the write/read pace per rank
measured on this machine, extrapolated as written below (a file system that keeps up is assumed,
not measured). Writes benchmarks/results/largest_model.json.
"""
from __future__ import annotations

import json
from pathlib import Path

from atomsim.bench.perf_model import step_time, ten_billion

RESULTS = Path(__file__).resolve().parent.parent / "results"


def largest_run(system: str) -> dict:
    """The entry with the most atoms (10 steps or more) of results/largest_<system>.json."""
    runs = json.loads((RESULTS / f"largest_{system}.json").read_text())["runs"]
    return max(runs.values(), key=lambda r: r["n_atoms"])


def memory_terms(run: dict) -> dict:
    """m0 (bytes per rank) and m_atom (bytes per local = owned + ghost atom), the worst rank's."""
    mem = run["memory"]
    m0 = mem["run_report"]["baseline_B"]
    per_local = [(p - m0) / (n + g) for p, n, g in zip(mem["peak_rss_B_per_rank"], mem["owned_per_rank"],
                                                       mem["ghosts_per_rank"])]
    per_owned = [(p - m0) / n for p, n in zip(mem["peak_rss_B_per_rank"], mem["owned_per_rank"])]
    return {"memory_base_B": m0, "memory_B_per_local_atom": max(per_local),
            "above_baseline_B_per_owned_atom": max(per_owned),
            "peak_rss_B_per_owned_atom": mem["peak_rss_B_per_owned_atom"], "n_atoms": run["n_atoms"]}


def main() -> None:
    weak = json.loads((RESULTS / "bench_weak_default.json").read_text())
    model = weak["model"]
    out = {"source_model": "benchmarks/results/bench_weak_default.json (model)", "systems": {}}
    for system in ("lj", "gnn"):
        try:
            run = largest_run(system)
        except (FileNotFoundError, ValueError):
            continue
        io = run["io"]
        per_rank_B = io["restart_bytes"] / run["ranks"]
        out["systems"][system] = {
            "memory": memory_terms(run),
            "restart_bytes_per_atom": io["restart_bytes_per_atom"],
            "restart_write_MB_per_s_per_rank": io["restart_write_MB_per_s"] / run["ranks"],
            "restart_read_MB_per_s_per_rank_warm": io["restart_read_MB_per_s_warm_cache"] / run["resume_ranks"],
            "restart_bytes_per_rank": per_rank_B,
        }
    if "gnn" in out["systems"]:
        m = out["systems"]["gnn"]["memory"]
        coef = dict(model["coefficients"])
        coef.update(memory_base_B=m["memory_base_B"], memory_B_per_local_atom=m["memory_B_per_local_atom"])
        gpu = dict(model["gpu"], memory_B_per_local_atom=m["memory_B_per_local_atom"])
        new = dict(model, coefficients=coef, gpu=gpu)
        out["ten_billion_before"] = model["ten_billion"]
        out["ten_billion"] = ten_billion(new)
        # the earlier memory floor's rank counts, with the memory now measured
        out["ten_billion_same_ranks"] = {}
        for k, r in model["ten_billion"].items():
            if r.get("fits"):
                device, scheme = k.split("/")
                now = step_time(new, 1e10 / r["ranks"], r["ranks"], scheme, device)
                out["ten_billion_same_ranks"][k] = {"ranks": r["ranks"], "memory_per_rank_GB_before":
                                                    r["memory_per_rank_GB"],
                                                    "memory_per_rank_GB": now["memory_per_rank_B"] / 1e9}
    for s in out["systems"].values():  # 1e10 atoms: one restart's bytes
        s["restart_1e10_atoms_TB"] = s["restart_bytes_per_atom"] * 1e10 / 1e12
    (RESULTS / "largest_model.json").write_text(json.dumps(out, indent=1))
    for system, s in out["systems"].items():
        m = s["memory"]
        print(f"{system}: {m['n_atoms']} atoms: m0 {m['memory_base_B'] / 2**20:.0f} MiB per rank, "
              f"{m['memory_B_per_local_atom']:.0f} B per local (owned + ghost) atom, "
              f"{m['above_baseline_B_per_owned_atom']:.0f} B per owned atom above m0, "
              f"{m['peak_rss_B_per_owned_atom']:.0f} B per owned atom peak; restart {s['restart_bytes_per_atom']:.0f} "
              f"B/atom, write {s['restart_write_MB_per_s_per_rank']:.0f} MB/s per rank, read "
              f"{s['restart_read_MB_per_s_per_rank_warm']:.0f} MB/s per rank (warm cache)")
    if "ten_billion" in out:
        print("| 1e10 atoms | ranks | atoms/rank | memory/rank GB | s/step | ns/day (1 fs) | before: ranks |")
        print("|---|---|---|---|---|---|---|")
        for k, r in out["ten_billion"].items():
            b = out["ten_billion_before"].get(k, {})
            if r.get("fits"):
                print(f"| {k} | {r['ranks']:,} | {r['atoms_per_rank']:,.0f} | {r['memory_per_rank_GB']:.1f} | "
                      f"{r['step_s']:.3g} | {r['ns_per_day']:.3g} | {b.get('ranks', '-'):,} |")
        for k, r in out["ten_billion_same_ranks"].items():
            print(f"{k}: on {r['ranks']:,} ranks {r['memory_per_rank_GB_before']:.1f} -> "
                  f"{r['memory_per_rank_GB']:.2f} GB per rank")


if __name__ == "__main__":
    main()
