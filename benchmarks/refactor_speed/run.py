"""Before/after speed of a refactor: the same MD runs on an older commit and on this checkout, in one run.

Why: a restructuring (one MD step, a force-provider contract, a NeighborList
object) must not cost speed. Both versions run the same two systems through
``Simulation`` (what ``atomsim run`` does), 1 thread, interleaved A B A B so
that drifts in the load of a shared machine hit both, and the ratio of the
medians is reported, on the wall clock and per CPU second of the process (1 thread: on
a machine shared with other jobs the CPU seconds are what the run itself cost):

- LJ argon, fcc, 32,000 atoms, cutoff 8.5 Å, skin 1 Å (the serial-LJ benchmark's system);
- the bundled GNN (``default``), fcc Cu, 4,000 atoms.

The older commit is installed (no dependencies) into a temporary folder and
put first on ``PYTHONPATH`` for its runs; this checkout's editable install
serves the others.

    .venv/bin/python benchmarks/refactor_speed/run.py --old ebc8fe6 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CASES = {
    "lj_32k": {"system": {"structure": {"lattice": "fcc", "symbols": "Ar", "a": 5.26, "cubic": True,
                                        "repeat": [20, 20, 20]}, "temperature_K": 60, "seed": 1},
               "potential": {"model": "lj", "params": {"epsilon": 0.0104, "sigma": 3.4, "cutoff": 8.5},
                             "dtype": "float64", "device": "cpu"},
               "dynamics": {"integrator": "nve", "timestep_fs": 2.0, "steps": 30}},
    "gnn_4k": {"system": {"structure": {"lattice": "fcc", "symbols": "Cu", "a": 3.61, "cubic": True,
                                        "repeat": [10, 10, 10]}, "temperature_K": 300, "seed": 1},
               "potential": {"model": "egnn-emt-v1", "dtype": "float32", "device": "cpu"},
               "dynamics": {"integrator": "nve", "timestep_fs": 1.0, "steps": 10}},
}

WORKER = r"""
import json, sys, tempfile
import torch
from atomsim.engine.config import RunConfig
from atomsim.engine.simulation import Simulation
import atomsim
cfg = json.loads(sys.argv[1])
with tempfile.TemporaryDirectory() as tmp:
    cfg["neighbor"] = {"skin": 1.0}
    cfg["parallel"] = {"threads": 1}
    cfg["output"] = {"directory": tmp, "thermo_every": 10, "trajectory_every": 0, "restart_every": 0,
                     "progress": False}
    from rich.console import Console
    sim = Simulation(RunConfig.model_validate(cfg), console=Console(quiet=True))
    sim.run(1)  # set-up, first list build, JIT caches: not timed
    import time
    cpu0 = time.process_time()
    out = sim.run()
    cpu = time.process_time() - cpu0
print(json.dumps({"atom_steps_per_s": out["atom_steps_per_s"], "steps": out["steps"],
                  "atom_steps_per_cpu_s": out["n_atoms"] * out["steps"] / cpu,
                  "etotal_eV": out["thermo"]["etotal_eV"], "module": atomsim.__file__}))
"""


def install_old(ref: str, dest: Path) -> str:
    """``git worktree`` of ``ref`` installed (no deps) into ``dest``; returns the full commit hash."""
    src = dest / "src"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(src), ref], check=True,
                   capture_output=True)
    try:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                        str(dest / "site"), str(src)], check=True, capture_output=True)
        return subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], check=True, capture_output=True,
                              text=True).stdout.strip()
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(src)], capture_output=True)


def run_case(case: str, pythonpath: str | None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(CASES[case])], capture_output=True, text=True,
                          env=env, cwd=tempfile.gettempdir(), timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{case} ({'old' if pythonpath else 'new'}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", default="ebc8fe6", help="the commit to compare against")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "refactor_speed.json"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from atomsim.bench.weak_scaling import machine_info

    new_commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True).stdout.strip())
    cases = [c for c in args.cases.split(",") if c]
    with tempfile.TemporaryDirectory() as tmp:
        old_commit = install_old(args.old, Path(tmp))
        site = str(Path(tmp) / "site")
        runs = {c: {"old": [], "new": []} for c in cases}
        for r in range(args.repeats):
            for c in cases:
                for which in ("old", "new"):
                    res = run_case(c, site if which == "old" else None)
                    expect = site if which == "old" else str(ROOT)
                    assert res["module"].startswith(expect), f"{which} run imported {res['module']}"
                    runs[c][which].append(res)
                    print(f"repeat {r} {c} {which}: {res['atom_steps_per_s']:.4g} atom-steps/s, "
                          f"{res['atom_steps_per_cpu_s']:.4g} per CPU s", flush=True)
    summary = {}
    for c, v in runs.items():
        med = {w: statistics.median(x["atom_steps_per_s"] for x in v[w]) for w in v}
        cpu = {w: statistics.median(x["atom_steps_per_cpu_s"] for x in v[w]) for w in v}
        summary[c] = {"median_atom_steps_per_s": med, "ratio_new_over_old": med["new"] / med["old"],
                      "median_atom_steps_per_cpu_s": cpu, "ratio_new_over_old_cpu": cpu["new"] / cpu["old"],
                      "etotal_eV": {w: v[w][0]["etotal_eV"] for w in v}}
        print(f"{c}: old {med['old']:.4g}, new {med['new']:.4g} atom-steps/s, new/old {med['new'] / med['old']:.3f}; "
              f"per CPU s new/old {cpu['new'] / cpu['old']:.3f}")
    report = {
        "benchmark": "refactor speed check: the same Simulation runs on an older commit and this checkout, "
                     "1 thread, interleaved",
        "command": " ".join([os.path.relpath(sys.executable, ROOT), os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
        "old_commit": old_commit, "new_commit": new_commit, "new_worktree_dirty": dirty,
        "cases": CASES, "repeats": args.repeats, "runs": runs, "summary": summary, "machine": machine_info(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
