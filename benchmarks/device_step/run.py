"""CPU throughput of the MD step before and after the device-resident step, in one interleaved run.

Why: the deferred skin / blow-up checks (engine/device_checks.py, engine/deferred_loop.py) exist
for GPUs, and ``device: cpu`` must not pay for them. Three variants of the same ``Simulation``
runs (what ``atomsim run`` does), 1 thread each:

- ``before``: the commit before the change (``--old``), from a ``git worktree`` put first on
  ``PYTHONPATH`` (its ``atomsim`` package assembled from the worktree's folders);
- ``after``: the change (``--new``, a commit assembled the same way, so that uncommitted work in a
  shared checkout does not count; default: this checkout), defaults (``neighbor.check_every: auto``
  = per-step checks on CPU);
- ``after_deferred``: the same with ``neighbor.check_every: 20`` (the device-resident path a GPU
  takes, run on the CPU).

Systems: the bundled GNN (``default``, its default dtype), fcc Cu at 4,000 and 32,000 atoms, and
LJ argon at 32,000 atoms (cutoff 8.5 Å). Each variant runs in its own process: set-up and one
step untimed, then ``--repeats`` timed chunks (medians reported, wall clock and per CPU second
of the process); the variants of a system run back to back (before, after, after_deferred) so
that the load of a shared machine hits all three alike. The load average is recorded per run.

    .venv/bin/python benchmarks/device_step/run.py --old 817b347 --new 98a3a5a --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CU = {"lattice": "fcc", "symbols": "Cu", "a": 3.61, "cubic": True}
CASES = {
    "gnn_4k": {"system": {"structure": {**CU, "repeat": [10, 10, 10]}, "temperature_K": 300, "seed": 1},
               "potential": {"model": "egnn-emt-v1", "device": "cpu"},
               "dynamics": {"integrator": "nve", "timestep_fs": 1.0}, "chunk": 6},
    "gnn_32k": {"system": {"structure": {**CU, "repeat": [20, 20, 20]}, "temperature_K": 300, "seed": 1},
                "potential": {"model": "egnn-emt-v1", "device": "cpu"},
                "dynamics": {"integrator": "nve", "timestep_fs": 1.0}, "chunk": 2},
    "lj_32k": {"system": {"structure": {"lattice": "fcc", "symbols": "Ar", "a": 5.26, "cubic": True,
                                        "repeat": [20, 20, 20]}, "temperature_K": 60, "seed": 1},
               "potential": {"model": "lj", "params": {"epsilon": 0.0104, "sigma": 3.4, "cutoff": 8.5},
                             "dtype": "float64", "device": "cpu"},
               "dynamics": {"integrator": "nve", "timestep_fs": 2.0}, "chunk": 40},
}
VARIANTS = {"before": None, "after": "auto", "after_deferred": 20}

WORKER = r"""
import json, os, sys, tempfile, time
spec = json.loads(sys.argv[1])
from rich.console import Console
import atomsim
from atomsim.engine.config import RunConfig
from atomsim.engine.simulation import Simulation
cfg = {k: v for k, v in spec["case"].items() if k != "chunk"}
chunk, repeats = spec["case"]["chunk"], spec["repeats"]
with tempfile.TemporaryDirectory() as tmp:
    cfg["dynamics"] = {**cfg["dynamics"], "steps": 1 + chunk * repeats}
    cfg["neighbor"] = {"skin": 1.0}
    if spec["check_every"] is not None:
        cfg["neighbor"]["check_every"] = spec["check_every"]
    cfg["parallel"] = {"threads": 1}
    cfg["output"] = {"directory": tmp, "thermo_every": 1000, "trajectory_every": 0, "restart_every": 0,
                     "progress": False}
    sim = Simulation(RunConfig.model_validate(cfg), console=Console(quiet=True))
    sim.run(1)  # set-up, first list build, JIT caches: not timed
    rows = []
    for _ in range(repeats):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        out = sim.run(chunk)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        rows.append({"atom_steps_per_s": out["atom_steps_per_s"],
                     "atom_steps_per_cpu_s": out["n_atoms"] * chunk / cpu, "wall_s": wall,
                     "n_neighbor_builds": out["n_neighbor_builds"],
                     "deferred_checks": out.get("deferred_checks"), "load_average": list(os.getloadavg())})
print(json.dumps({"rows": rows, "etotal_eV": out["thermo"]["etotal_eV"], "n_atoms": out["n_atoms"],
                  "module": atomsim.__file__}))
"""


def assemble(ref: str, dest: Path) -> str:
    """``git worktree`` of ``ref`` at ``dest/src`` and an importable ``atomsim`` in ``dest/site`` (the
    folder mapping of pyproject.toml, by symlinks); returns the full commit hash."""
    src = dest / "src"
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(src), ref], check=True,
                   capture_output=True)
    pkg = dest / "site" / "atomsim"
    shutil.copytree(src / "atomsim", pkg, symlinks=True)
    for sub in ("engine", "kernels", "potentials", "integrators"):
        (pkg / sub).symlink_to(src / sub, target_is_directory=True)
    return subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def run_variant(case: str, variant: str, site: str, repeats: int) -> dict:
    """One process of ``variant``; ``site``: the folder holding its ``atomsim`` (None: this checkout)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    if site is not None:
        env["PYTHONPATH"] = site
    spec = {"case": CASES[case], "repeats": repeats, "check_every": VARIANTS[variant]}
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(spec)], capture_output=True, text=True,
                          env=env, cwd=tempfile.gettempdir(), timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{case} ({variant}) failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    expect = site if site is not None else str(ROOT)
    assert res["module"].startswith(expect), f"{variant} run imported {res['module']}"
    return res


def plot(report: dict, path: Path) -> None:
    """Bars: median atom-steps per CPU second of each variant, per system (the load-robust figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(report["summary"])
    fig, axes = plt.subplots(1, len(cases), figsize=(3.6 * len(cases), 3.4))
    for ax, c in zip(list(getattr(axes, "flat", [axes])), cases):
        med = report["summary"][c]["median_atom_steps_per_cpu_s"]
        names = list(med)
        ax.bar(names, [med[v] for v in names], color=["#888888", "#1f77b4", "#2ca02c"][: len(names)])
        ax.set_title(f"{c} ({report['summary'][c]['n_atoms']:,} atoms)", fontsize=9)
        ax.set_ylabel("atom-steps per CPU s (1 thread)", fontsize=8)
        ax.tick_params(axis="x", labelsize=7, rotation=15)
    load = report["machine"]["load_average"][0]
    fig.suptitle(f"device-resident step on CPU: before / after / deferred checks (load {load:.1f})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", default="817b347", help="the commit before the change")
    ap.add_argument("--new", default=None, help="the commit with the change (default: this checkout)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "device_step_cpu.json"))
    ap.add_argument("--replot", action="store_true", help="only redraw the PNG from --out")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads(Path(args.out).read_text()), Path(args.out).with_suffix(".png"))
        return
    sys.path.insert(0, str(ROOT))
    from atomsim.bench.weak_scaling import machine_info

    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True).stdout.strip()

    new_commit, dirty = git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    cases = [c for c in args.cases.split(",") if c]
    t0 = time.perf_counter()
    load_start = list(os.getloadavg())
    tmp = Path(tempfile.mkdtemp(prefix="device_step_"))
    try:
        old_commit = assemble(args.old, tmp / "old")
        sites = {"before": str(tmp / "old" / "site")}
        if args.new is not None:
            new_commit, dirty = assemble(args.new, tmp / "new"), False
            sites["after"] = sites["after_deferred"] = str(tmp / "new" / "site")
        runs = {c: {} for c in cases}
        for c in cases:
            for v in VARIANTS:
                res = run_variant(c, v, sites.get(v), args.repeats)
                runs[c][v] = res
                med = statistics.median(r["atom_steps_per_s"] for r in res["rows"])
                print(f"{c} {v}: {med:.4g} atom-steps/s (median of {args.repeats}), load "
                      f"{res['rows'][-1]['load_average'][0]:.1f}", flush=True)
    finally:
        for which in ("old", "new"):
            src = tmp / which / "src"
            if src.exists():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(src)],
                               capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    summary = {}
    for c, by in runs.items():
        med = {v: statistics.median(r["atom_steps_per_s"] for r in by[v]["rows"]) for v in by}
        cpu = {v: statistics.median(r["atom_steps_per_cpu_s"] for r in by[v]["rows"]) for v in by}
        summary[c] = {"n_atoms": by["after"]["n_atoms"], "median_atom_steps_per_s": med,
                      "median_atom_steps_per_cpu_s": cpu,
                      "ratio_after_over_before": med["after"] / med["before"],
                      "ratio_deferred_over_before": med["after_deferred"] / med["before"],
                      "ratio_after_over_before_cpu": cpu["after"] / cpu["before"],
                      "ratio_deferred_over_before_cpu": cpu["after_deferred"] / cpu["before"],
                      "etotal_eV": {v: by[v]["etotal_eV"] for v in by}}
        s = summary[c]
        print(f"{c}: after/before {s['ratio_after_over_before']:.3f} (per CPU s "
              f"{s['ratio_after_over_before_cpu']:.3f}), deferred/before "
              f"{s['ratio_deferred_over_before']:.3f} (per CPU s {s['ratio_deferred_over_before_cpu']:.3f})")
    report = {
        "benchmark": "device-resident step on CPU: before / after / after with deferred checks, 1 thread, "
                     "same Simulation runs, variants back to back per system",
        "command": " ".join([os.path.relpath(sys.executable, ROOT), os.path.relpath(__file__, ROOT),
                             *sys.argv[1:]]),
        "old_commit": old_commit, "new_commit": new_commit, "new_worktree_dirty": dirty,
        "variants": {k: f"neighbor.check_every: {v}" if v else "the old commit" for k, v in VARIANTS.items()},
        "cases": CASES, "repeats": args.repeats, "runs": runs, "summary": summary,
        "load_average_start": load_start, "wall_s": time.perf_counter() - t0, "machine": machine_info(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    plot(report, Path(args.out).with_suffix(".png"))
    print(f"wrote {args.out} and its .png")


if __name__ == "__main__":
    main()
