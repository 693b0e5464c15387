"""Re-run every statistical test's body (tests/test_integrators_ensembles.py) over many seeds.

Each test fails by chance at most FAMILY_ALPHA of the time (Bonferroni over its checks). This
script measures how often it actually fails with other seeds, and whether its z-scores are
N(0, 1) (RMS ~ 1, |z| > 2 in ~4.6 % of cases): a too-small error bar shows up there long before
it shows up as failures. Not part of CI (a seed of all five tests costs ~2-3 CPU minutes).

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/seed_sweep/run_sweep.py --seeds 20

Tests run one after the other, cheapest first (all seeds of one test, then the next), and the JSON
is rewritten after each run, so a sweep stopped early still reports every finished seed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))


# CPU seconds per seed on one core (pytest --durations, lightly loaded box): 13, 13, 16, 34, 64
CPU_ORDER = ["langevin_canonical_ke", "nose_hoover_canonical_ke", "anisotropic_barostat", "langevin_vs_ase",
             "npt_virial_and_nvt"]


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    return x


def summarize(name: str, runs: list, alpha: float) -> dict:
    """Failure rate vs nominal, and the spread of the z-scores (which should be N(0, 1))."""
    fails = [r for r in runs if not r["passed"]]
    n = len(runs)
    zs = [z for r in runs for k, z in r["result"]["z"].items()
          if not k.startswith("nvt_pressure_at_mean_volume")]  # a band test: 0 inside, not N(0, 1)
    ps = [p for r in runs for p in r["result"]["p"].values()]
    out = {
        "n_seeds": n, "seeds": [r["seed"] for r in runs], "failures": len(fails),
        "failed_seeds": [r["seed"] for r in fails],
        "failure_rate": len(fails) / n if n else None,
        "nominal_false_alarm_rate": alpha,
        # chance of seeing at least this many failures if the true rate were the nominal one
        "p_at_least_this_many_failures": float(stats.binom.sf(len(fails) - 1, n, alpha)) if n else None,
        "cpu_s_per_seed": float(np.mean([r["cpu_s"] for r in runs])) if n else None,
    }
    if zs:
        zs = np.asarray(zs)
        out["z"] = {"n": len(zs), "rms": float(np.sqrt(np.mean(zs**2))), "mean": float(zs.mean()),
                    "max_abs": float(np.abs(zs).max()),
                    "fraction_abs_gt_2": float(np.mean(np.abs(zs) > 2)), "nominal_fraction_abs_gt_2": 0.0455,
                    "ks_pvalue_vs_normal": float(stats.kstest(zs, "norm").pvalue)}
    if ps:
        ps = np.asarray(ps)
        out["p"] = {"n": len(ps), "min": float(ps.min()), "fraction_below_0.05": float(np.mean(ps < 0.05)),
                    "ks_pvalue_vs_uniform": float(stats.kstest(ps, "uniform").pvalue)}
    return out


def merge(paths: list, out: str) -> None:
    """One report from several: runs of the same test are pooled (a seed counted once)."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    runs: dict = {}
    for rep in reports:
        for name, rs in rep["runs"].items():
            seen = {r["seed"] for r in runs.get(name, [])}
            runs.setdefault(name, []).extend(r for r in rs if r["seed"] not in seen)
    alpha = reports[0]["family_alpha"]
    merged = {**reports[0], "command": " + ".join(r["command"] for r in reports),
              "elapsed_s": sum(r.get("elapsed_s", 0.0) for r in reports),
              "ci_seeds": {k: v for r in reports for k, v in r["ci_seeds"].items()},
              "tests": {n: summarize(n, rs, alpha) for n, rs in runs.items()}, "runs": runs}
    Path(out).write_text(json.dumps(merged, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=20, help="seeds per test (1000, 1001, ...)")
    ap.add_argument("--first-seed", type=int, default=1000)
    ap.add_argument("--tests", nargs="*", default=None, help="subset of STATISTICAL_TESTS names")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/seed_sweep.json"))
    ap.add_argument("--merge", nargs="+", metavar="JSON", default=None,
                    help="combine the runs of several sweep reports (e.g. two processes) into --out")
    args = ap.parse_args()
    if args.merge:
        merge(args.merge, args.out)
        return

    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    from test_integrators_ensembles import STATISTICAL_TESTS, check

    from stats_util import FAMILY_ALPHA

    names = args.tests or sorted(STATISTICAL_TESTS,
                                 key=lambda n: CPU_ORDER.index(n) if n in CPU_ORDER else 99)
    runs: dict = {n: [] for n in names}
    t_start = time.time()
    report = {
        "what": "failure rate of each statistical test of tests/test_integrators_ensembles.py over seeds",
        "command": " ".join(["python", "benchmarks/seed_sweep/run_sweep.py", *sys.argv[1:]]),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                    "cpu": platform.processor() or platform.machine(),
                    "omp_threads": os.environ.get("OMP_NUM_THREADS")},
        "family_alpha": FAMILY_ALPHA,
        "ci_seeds": {n: STATISTICAL_TESTS[n][1] for n in names},
    }
    with threadpool_limits(1):
        for name in names:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                fn = STATISTICAL_TESTS[name][0]
                c0 = time.process_time()
                res = _jsonable(fn(seed))
                cpu = time.process_time() - c0
                try:
                    check(res)
                    passed, why = True, None
                except AssertionError as exc:
                    passed, why = False, str(exc)[:300]
                runs[name].append({"seed": seed, "passed": passed, "why": why, "cpu_s": cpu, "result": res})
                print(f"{name} seed {seed}: {'pass' if passed else 'FAIL'} z={res['z']} p={res['p']} "
                      f"({cpu:.0f} s cpu)", flush=True)
                report["elapsed_s"] = time.time() - t_start
                report["tests"] = {n: summarize(n, runs[n], FAMILY_ALPHA) for n in names}
                report["runs"] = runs
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
