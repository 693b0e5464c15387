"""Laptop-scale scaling-law study: test loss vs parameters N and vs training structures D.

    .venv/bin/python benchmarks/scaling_law/run.py --data emt_train.extxyz
        [--widths 8 16 32 64] [--depth 2] [--sizes 100 200 400 800 1600] [--size-width 32]
        [--minutes-per-run 4] [--epochs 40] [--test 300]

The paper's question (does error fall as a power law in model and data size?)
asked with the same EGNN family and the same EMT data (``atomsim datagen``).
Every run trains with the same recipe (atomsim.training.trainer) under the
same per-run time/epoch budget and is scored on one fixed held-out test set:
L = E_RMSE(eV/atom)^2 + w_F * F_RMSE(eV/Å)^2, the training loss's weighting.
Fits L(N) = a N^-alpha + c and L(D) = b D^-beta + c' (scipy curve_fit), plots
both (benchmarks/results/scaling_law.png) and writes the points, fits and the
exact command to benchmarks/results/scaling_law.json.

Runs are meant to be epoch-limited (same epochs for all); the per-run time cap is a
safety net. On a loaded machine the cap binds and larger models get fewer epochs,
which bends L(N): check the "epochs" column of the JSON before reading the exponents.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def power_law(x, a, alpha, c):
    return a * np.power(x, -alpha) + c


def fit(xs, ys) -> dict:
    """L(x) = a x^-alpha + c; falls back to a pure power law (c = 0) if the 3-parameter fit fails."""
    from scipy.optimize import curve_fit

    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    try:
        p, cov = curve_fit(power_law, xs, ys, p0=(ys[0] * xs[0] ** 0.5, 0.5, 0.5 * ys.min()),
                           bounds=([0, 0, 0], [np.inf, 5, np.inf]), maxfev=20000)
        err = np.sqrt(np.diag(cov)).tolist() if np.all(np.isfinite(cov)) else None
        return {"form": "a*x^-alpha + c", "a": p[0], "alpha": p[1], "c": p[2], "stderr": err}
    except Exception as exc:  # too few / too noisy points
        slope, icpt = np.polyfit(np.log(xs), np.log(ys), 1)
        return {"form": "a*x^-alpha (log-log fit)", "a": float(np.exp(icpt)), "alpha": float(-slope), "c": 0.0,
                "note": f"3-parameter fit failed: {exc}"}


def run_one(samples, test, *, width, depth, n_train, args) -> dict:
    import torch

    from atomsim.potentials.egnn import count_parameters
    from atomsim.training.trainer import TrainConfig, evaluate, train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(data=args.data, output=tmp, model={"width": width, "depth": depth, "n_rbf": 8,
                          "cutoff": args.cutoff, "readout_hidden": max(8, width // 2)},
                          epochs=args.epochs, max_minutes=args.minutes_per_run, batch_size=8, lr=2e-3,
                          val_fraction=0.1, test_fraction=0.0, patience=1000, seed=args.seed,
                          force_weight=args.force_weight, threads=args.threads)
        t = time.time()
        res = train(cfg, samples=samples[:n_train], log=lambda *_: None)
        m = evaluate(res["ema"], test, per_system=False)["all"]
    loss = (m["energy_rmse_meV_per_atom"] / 1000) ** 2 + args.force_weight * (m["force_rmse_meV_per_A"] / 1000) ** 2
    row = {"width": width, "depth": depth, "parameters": count_parameters(res["ema"]), "n_train": n_train,
           "epochs": len(res["history"]), "train_s": round(time.time() - t, 1), "test_loss": loss,
           "test_E_mae_meV_atom": m["energy_mae_meV_per_atom"], "test_F_mae_meV_A": m["force_mae_meV_per_A"]}
    print(json.dumps(row), flush=True)
    del torch
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="labelled extxyz (atomsim datagen)")
    ap.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 400, 800, 1600])
    ap.add_argument("--size-width", type=int, default=32, help="model width for the data-size sweep")
    ap.add_argument("--minutes-per-run", type=float, default=8.0, help="safety cap; runs should end by --epochs")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--test", type=int, default=300, help="held-out structures (the last ones of a shuffle)")
    ap.add_argument("--cutoff", type=float, default=5.0)
    ap.add_argument("--force-weight", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from atomsim.training.trainer import read_samples

    samples = read_samples(args.data, args.cutoff, index=f":{max(args.sizes) + args.test}")
    order = np.random.default_rng(args.seed).permutation(len(samples))
    test = [samples[k] for k in order[-args.test:]]
    pool = [samples[k] for k in order[:-args.test]]
    need = max(max(args.sizes), 1)
    if len(pool) < need:
        raise ValueError(f"--data: {len(pool)} structures after the test split, --sizes needs {need}")
    n_full = min(len(pool), max(args.sizes))
    t0 = time.time()
    model_rows = [run_one(pool, test, width=w, depth=args.depth, n_train=n_full, args=args) for w in args.widths]
    data_rows = [run_one(pool, test, width=args.size_width, depth=args.depth, n_train=n, args=args)
                 for n in args.sizes]
    fit_n = fit([r["parameters"] for r in model_rows], [r["test_loss"] for r in model_rows])
    fit_d = fit([r["n_train"] for r in data_rows], [r["test_loss"] for r in data_rows])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.8), dpi=90)
    for a, rows, key, f, lab in ((ax[0], model_rows, "parameters", fit_n, "parameters N"),
                                 (ax[1], data_rows, "n_train", fit_d, "training structures D")):
        x = np.array([r[key] for r in rows], float)
        y = np.array([r["test_loss"] for r in rows])
        a.loglog(x, y, "o")
        xx = np.geomspace(x.min(), x.max(), 50)
        a.loglog(xx, power_law(xx, f["a"], f["alpha"], f["c"]), "-",
                 label=f"{f['a']:.3g} x^-{f['alpha']:.2f} + {f['c']:.2g}")
        a.set_xlabel(lab)
        a.set_ylabel("test loss")
        a.legend(fontsize=8)
    fig.tight_layout()
    res_dir = ROOT / "benchmarks" / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(res_dir / "scaling_law.png")
    out = {"benchmark": "scaling_law", "command": " ".join([sys.executable, *sys.argv]),
           "loss": f"E_RMSE^2 + {args.force_weight} * F_RMSE^2 on {len(test)} held-out structures",
           "model_sweep": model_rows, "data_sweep": data_rows, "fit_L_of_N": fit_n, "fit_L_of_D": fit_d,
           "total_s": round(time.time() - t0, 1),
           "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
           "versions": {"python": platform.python_version(), "torch": torch.__version__}}
    (res_dir / "scaling_law.json").write_text(json.dumps(out, indent=2, default=float) + "\n")
    print(f"L(N): alpha = {fit_n['alpha']:.3f}; L(D): beta = {fit_d['alpha']:.3f}; "
          f"wrote {res_dir / 'scaling_law.json'}")


if __name__ == "__main__":
    main()
