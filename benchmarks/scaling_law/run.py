"""Scaling laws of the EGNN on the SevenNet-0 distillation data: held-out error vs parameters N and data D.

    .venv/bin/python benchmarks/scaling_law/run.py --out /work/train_runs/scaling \\
        [--cache /work/train_runs/universal/data_cache.npz] [--widths 16 24 32 48 64] \\
        [--fractions 0.0625 0.125 0.25 0.5 1] [--fraction-width 32] [--grid 16:0.25 64:0.25] \\
        [--epochs 10] [--deadline 2026-12-02T07:58:00Z]
    .venv/bin/python benchmarks/scaling_law/run.py --out /work/train_runs/scaling --analyze

The seed paper's question at laptop scale: L(N) over widths at fixed data, L(D) over nested prefixes of
the training split at fixed width, every run capped by EPOCHS (cosine schedule ending at the cap), so
no run is cut short by wall time. All runs use the split of examples/train_universal.yaml (seed 0,
80/10/10 by structure) and are scored on the SAME held-out test split, never used for training or
model selection: the test score is the final EMA model's (no checkpoint selection at all).

Each finished run is appended to ``<out>/runs.jsonl``; a restart skips finished runs and resumes an
interrupted one from its ``train_state.pt``. ``--deadline``: a run whose estimated wall time would end
after it is skipped (not truncated), cheapest runs keep going. ``--analyze`` fits
L = a x^-alpha + c and the pure power law a x^-alpha (curve_fit covariance and a bootstrap over runs),
a joint L(N, D) = c + a N^-alpha + b D^-beta for the compute-optimal choice and the extrapolation to
the accuracy goals, and writes benchmarks/results/scaling_law_sevennet.{json,png}.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATA = "/work/shared/data/sevennet0-distill-v1/train.extxyz.xz"
RESULT = ROOT / "benchmarks" / "results" / "scaling_law_sevennet"
METRICS = {"F": ("test_F_mae_meV_A", "force MAE (meV/Å)"),
           "E": ("test_E_mae_meV_atom", "energy MAE (meV/atom)"),
           "loss": ("test_loss", "test loss (training objective)")}
GOALS = {"F": (120.0, 80.0), "E": (40.0, 25.0)}  # acceptable, goal
# training CPU ms per structure per epoch (batch 16, depth 3, one thread), measured on this data:
# the deadline estimate is calibrated against finished runs
MS_PER_STRUCT = {16: 1.29, 32: 1.71, 64: 2.88, 128: 6.47}


# --------------------------------------------------------------------------- data
def load_data(data: str, cache: Optional[str], log: Callable[[str], None]) -> tuple[list, dict]:
    """All samples with neighbor graphs; reuses a parse cache when it holds this file's frames.

    The cache key includes the file's mtime, which changes when the data folder is copied, so a
    key mismatch is settled by content: the first frames parsed afresh must equal the cached ones.
    """
    from atomsim.training.data import cache_key, load_samples
    from atomsim.training.trainer import read_samples

    sha = hashlib.sha256(Path(data).read_bytes()).hexdigest()
    info = {"data": data, "sha256": sha}
    if cache and Path(cache).is_file():
        key = cache_key(data, cutoff=5.0, energy_key="energy", forces_key="forces", stress_key="stress",
                        version=1)
        stored = str(np.load(cache)["key"])
        samples = load_samples(cache, stored)
        if samples is not None and stored != key:
            fresh = read_samples(data, 5.0, index=":25")
            same = len(samples) > 25 and all(
                a.energy == b.energy and np.array_equal(a.forces.numpy(), b.forces.numpy())
                and np.allclose(a.vectors.numpy(), b.vectors.numpy()) for a, b in zip(fresh, samples))
            if not same:
                raise ValueError(f"--cache {cache} does not hold the frames of {data}; drop --cache")
            info["cache_check"] = "key differs (file mtime); first 25 frames re-parsed and equal to the cache"
        if samples is not None:
            info["cache"] = cache
            log(f"data: {len(samples)} structures from {cache} (sha256 of the data {sha[:12]}...)")
            return samples, info
    samples = read_samples(data, 5.0)
    log(f"data: {len(samples)} structures parsed from {data}")
    return samples, info


# --------------------------------------------------------------------------- one run
def run_config(args, width: int, fraction: float, output: Path):
    """The recipe of examples/train_universal.yaml with the epoch cap and the sweep's width/fraction."""
    from atomsim.training.trainer import TrainConfig

    return TrainConfig(
        data=args.data, output=str(output), name=output.name,
        model={"width": width, "depth": args.depth, "n_rbf": 8, "cutoff": 5.0, "readout_hidden": 32,
               "equivariant": bool(getattr(args, "equivariant", False))},
        energy_weight=50.0, force_weight=10.0, stress_weight=100.0, loss="huber", huber_delta_energy=0.05,
        huber_delta_force=0.3, huber_delta_stress=0.02, batch_size=args.batch_size, lr=2e-3,
        schedule="cosine",
        epochs=args.epochs, ema_decay=0.99, val_fraction=0.1, test_fraction=0.1, val_max_structures=200,
        train_fraction=fraction, patience=10**6, seed=args.seed, dtype="float32", threads=1, cache=False)


def test_scores(model, test: Sequence, cfg) -> dict:
    """Final-model errors on the test split: E/atom, force and stress MAE, and the training objective."""
    from atomsim.training.trainer import batch_loss, collate, predict

    dtype = model.dtype
    totals = {"structures": len(test), "atoms": sum(s.n_atoms for s in test),
              "stress": sum(s.stress is not None for s in test)}
    de, df, ds, loss = [], [], [], 0.0
    for k in range(0, len(test), 16):
        chunk = test[k:k + 16]
        b = collate(chunk, dtype)
        e, f, s = predict(model, b, training=False, want_stress=True)
        de.append(((e.detach() - b.energy) / b.n_atoms).abs().numpy())
        df.append((f.detach() - b.forces).abs().numpy().ravel())
        ds.append((s.detach() - b.stress)[b.has_stress].abs().numpy().ravel())
        loss += float(batch_loss(model, b, cfg, totals, training=False).detach())
    de, df, ds = np.concatenate(de), np.concatenate(df), np.concatenate(ds)
    return {"test_structures": len(test), "test_atoms": totals["atoms"],
            "test_E_mae_meV_atom": 1000 * float(de.mean()),
            "test_E_rmse_meV_atom": 1000 * float(np.sqrt((de**2).mean())),
            "test_F_mae_meV_A": 1000 * float(df.mean()),
            "test_F_rmse_meV_A": 1000 * float(np.sqrt((df**2).mean())),
            "test_S_mae_meV_A3": 1000 * float(ds.mean()), "test_loss": loss}


def run_id(width: int, depth: int, fraction: float, epochs: int, batch: int, equivariant: bool = False) -> str:
    return f"{'eq_' if equivariant else ''}w{width}_d{depth}_f{fraction:g}_e{epochs}_b{batch}"


def run_one(samples: list, args, width: int, fraction: float, log: Callable[[str], None]) -> dict:
    """Train one epoch-capped run (resuming its state if interrupted) and score the final EMA model."""
    from atomsim.potentials.egnn import count_parameters
    from atomsim.training.trainer import train

    rid = run_id(width, args.depth, fraction, args.epochs, args.batch_size, getattr(args, "equivariant", False))
    cfg = run_config(args, width, fraction, Path(args.out) / rid)
    t0, c0 = time.time(), time.process_time()
    res = train(cfg, resume=True, samples=samples, log=lambda msg: log(f"[{rid}] {msg}"))
    hist = res["history"]
    if res["stopped"] != "epochs" or len(hist) != args.epochs:
        raise RuntimeError(f"{rid}: stopped by {res['stopped']} after {len(hist)} epochs, not the epoch cap")
    c1 = time.process_time()
    scores = test_scores(res["ema"], res["test"], cfg)
    train_s = res["train"]
    row = {"id": rid, "variant": "equivariant" if cfg.model.equivariant else "invariant",
           "width": width, "depth": args.depth, "parameters": count_parameters(res["ema"]),
           "fraction": fraction, "n_train": len(train_s),
           "n_train_atoms": int(sum(s.n_atoms for s in train_s)),
           "epochs": len(hist), "steps": hist[-1]["step"], "batch_size": args.batch_size,
           # training CPU over all resumes (the trainer's own counter; includes the capped validation)
           "cpu_s": hist[-1]["cpu_s"], "cpu_s_this_process": round(c1 - c0, 2),
           "eval_cpu_s": round(time.process_time() - c1, 2), "wall_s": round(time.time() - t0, 1),
           "final_train_loss": hist[-1]["train_loss"], "val_structures": len(res["val"]),
           "val_F_mae_meV_A": hist[-1].get("val_F_mae_meV_A"),
           "val_E_mae_meV_atom": hist[-1].get("val_E_mae_meV_atom"),
           **scores, "loadavg_end": list(os.getloadavg()),
           "finished_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    return row


def estimate_cpu_s(width: int, n_train: int, epochs: int, calib: float) -> float:
    """Training CPU seconds from :data:`MS_PER_STRUCT` (interpolated in width), times a calibration."""
    ws, ms = np.array(sorted(MS_PER_STRUCT)), np.array([MS_PER_STRUCT[w] for w in sorted(MS_PER_STRUCT)])
    per = float(np.interp(width, ws, ms)) if width <= ws[-1] else ms[-1] * (width / ws[-1]) ** 2
    return calib * per * 1e-3 * n_train * epochs + 5.0


def plan(args) -> list[tuple[int, float]]:
    """(width, fraction) in priority order: the L(N) and L(D) runs cheapest first, then the grid; so a
    cut-off (--deadline) loses the most expensive runs, and as few runs as possible."""
    runs: list[tuple[int, float]] = [(w, args.width_fraction) for w in args.widths]
    runs += [(args.fraction_width, f) for f in args.fractions]
    runs.sort(key=lambda r: estimate_cpu_s(r[0], int(1e4 * r[1]), 1, 1.0))
    if args.first:  # explicit priorities (e.g. what a loaded machine can still finish by the deadline)
        first = [(int(w), float(f)) for w, f in (g.split(":") for g in args.first)]
        runs = first + [r for r in runs if r not in first]
    for g in args.grid:
        w, f = g.split(":")
        runs.append((int(w), float(f)))
    seen, out = set(), []
    for r in runs:
        if r not in seen:
            seen.add(r)
            out.append(r)
    return out


def sweep(args) -> None:
    """Run every planned run not yet in runs.jsonl, skipping those that would end after --deadline."""
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done_file = out / "runs.jsonl"

    def log(msg: str) -> None:
        print(f"{datetime.now(timezone.utc).strftime('%H:%M:%S')} {msg}", flush=True)

    meta = {"command": " ".join([sys.executable, *sys.argv]),
            "started_utc": datetime.now(timezone.utc).isoformat(),
            "loadavg_start": list(os.getloadavg()), "machine": machine(), "versions": versions(torch)}
    (out / f"sweep_meta_{int(time.time())}.json").write_text(json.dumps(meta, indent=1))
    samples, info = load_data(args.data, args.cache, log)
    (out / "data_info.json").write_text(json.dumps(info, indent=1))
    done = set()
    if done_file.exists():
        done = {json.loads(line)["id"] for line in done_file.read_text().splitlines()}
    deadline = None
    if args.deadline:
        deadline = datetime.fromisoformat(args.deadline.replace("Z", "+00:00")).timestamp()
    n_pool = len(samples) - 2 * round(0.1 * len(samples))
    calib, share = 1.0, 0.3  # measured CPU / table estimate; CPU / wall of this process
    todo = plan(args)
    log(f"plan: {len(todo)} runs, {args.epochs} epochs each: {todo}")
    for width, fraction in todo:
        rid = run_id(width, args.depth, fraction, args.epochs, args.batch_size, getattr(args, "equivariant", False))
        if rid in done:
            log(f"[{rid}] already in {done_file}, skipped")
            continue
        n_train = max(1, int(round(fraction * n_pool)))
        est = estimate_cpu_s(width, n_train, args.epochs, calib)
        if deadline and time.time() + est / share > deadline:
            log(f"[{rid}] skipped: ~{est:.0f} CPU s at {share:.2f} CPU/wall would end after {args.deadline}")
            continue
        log(f"[{rid}] start: width {width}, {n_train} train structures, estimated {est:.0f} CPU s")
        row = run_one(samples, args, width, fraction, log)
        calib = 0.5 * calib + 0.5 * row["cpu_s_this_process"] / max(est / calib, 1e-9)
        share = max(0.05, min(1.0, row["cpu_s_this_process"] / max(row["wall_s"], 1e-9)))
        with done_file.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        log(f"[{rid}] done: {row['parameters']:,} params, {row['n_train']} structures, "
            f"{row['cpu_s']:.0f} CPU s, "
            f"test E {row['test_E_mae_meV_atom']:.1f} meV/atom F {row['test_F_mae_meV_A']:.1f} meV/Å "
            f"S {row['test_S_mae_meV_A3']:.2f} meV/Å^3 (CPU/wall {share:.2f}, "
            f"load {row['loadavg_end'][0]:.1f})")
    log("sweep finished")


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"platform": platform.platform(), "cpu_model": cpu, "cpu_count": os.cpu_count(),
            "device": "CPU only (no GPU used for any run)"}


def versions(torch) -> dict:
    import scipy

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__}


# --------------------------------------------------------------------------- fits
def _sat_log(x, la, alpha, c):
    """log(a x^-alpha + c) with a = exp(la): fitting in log space weighs every run by relative error."""
    return np.log(np.exp(la) * np.power(x, -alpha) + c)


def fit_saturating(xs: Sequence[float], ys: Sequence[float], x0: float) -> dict:
    """L = a (x/x0)^-alpha + c by curve_fit in log space; stderr from the covariance."""
    from scipy.optimize import curve_fit

    x, y = np.asarray(xs, float) / x0, np.asarray(ys, float)
    p0 = (np.log(max(y.max() - 0.5 * y.min(), 1e-9)), 0.5, 0.5 * y.min())
    p, cov = curve_fit(_sat_log, x, np.log(y), p0=p0, bounds=([-50, 0, 0], [50, 4, y.min()]), maxfev=50000)
    err = np.sqrt(np.clip(np.diag(cov), 0, None)) if np.all(np.isfinite(cov)) else np.full(3, np.nan)
    rms = float(np.sqrt(np.mean((_sat_log(x, *p) - np.log(y)) ** 2)))
    return {"form": "a*(x/x0)^-alpha + c", "x0": x0, "a": float(np.exp(p[0])), "alpha": float(p[1]),
            "c": float(p[2]), "alpha_stderr": float(err[1]), "c_stderr": float(err[2]),
            "a_rel_stderr": float(err[0]), "rms_log_residual": rms}


def fit_power(xs: Sequence[float], ys: Sequence[float], x0: float) -> dict:
    """Pure power law L = A (x/x0)^-alpha: a straight line in log-log (no floor)."""
    from scipy.stats import linregress

    r = linregress(np.log(np.asarray(xs, float) / x0), np.log(np.asarray(ys, float)))
    return {"form": "A*(x/x0)^-alpha", "x0": x0, "A": float(np.exp(r.intercept)), "alpha": float(-r.slope),
            "alpha_stderr": float(r.stderr), "A_rel_stderr": float(r.intercept_stderr),
            "r2": float(r.rvalue**2)}


def bootstrap(xs: Sequence[float], ys: Sequence[float], x0: float, n: int = 400, seed: int = 0) -> dict:
    """16/50/84th percentiles of alpha (both forms) and c over fits to runs resampled with replacement."""
    rng = np.random.default_rng(seed)
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    sat, pure, floor = [], [], []
    for _ in range(n):
        k = rng.integers(0, len(x), len(x))
        if len(np.unique(x[k])) < 3:
            continue
        pure.append(fit_power(x[k], y[k], x0)["alpha"])
        try:
            f = fit_saturating(x[k], y[k], x0)
        except (RuntimeError, ValueError):
            continue
        sat.append(f["alpha"])
        floor.append(f["c"])

    def pct(v: list) -> Optional[list]:
        return [float(q) for q in np.percentile(v, [16, 50, 84])] if v else None
    return {"n_resamples": n, "n_ok_saturating": len(sat), "alpha_saturating_p16_50_84": pct(sat),
            "c_p16_50_84": pct(floor), "alpha_power_p16_50_84": pct(pure)}


def _joint_log(nd, lc, la, alpha, lb, beta):
    n, d = nd
    return np.log(np.exp(lc) + np.exp(la) * n ** -alpha + np.exp(lb) * d ** -beta)


def fit_joint(rows: Sequence[dict], key: str, n0: float, d0: float) -> dict:
    """L(N, D) = c + a (N/n0)^-alpha + b (D/d0)^-beta over every run (Chinchilla form), log space."""
    from scipy.optimize import curve_fit

    n = np.array([r["parameters"] for r in rows], float) / n0
    d = np.array([r["n_train"] for r in rows], float) / d0
    y = np.log(np.array([r[key] for r in rows], float))
    best = None
    for a0 in (0.3, 1.0):
        try:
            p0 = (y.min() - 0.7, y.min() - 1.5, a0, y.min() - 1.5, a0)
            p, cov = curve_fit(_joint_log, (n, d), y, p0=p0,
                               bounds=([-20, -20, 0, -20, 0], [20, 20, 4, 20, 4]), maxfev=50000)
        except RuntimeError:
            continue
        rss = float(np.sum((_joint_log((n, d), *p) - y) ** 2))
        if best is None or rss < best[2]:
            best = (p, cov, rss)
    if best is None:
        return {"error": "joint fit did not converge"}
    p, cov, rss = best
    err = np.sqrt(np.clip(np.diag(cov), 0, None)) if np.all(np.isfinite(cov)) else np.full(5, np.nan)
    return {"form": "c + a*(N/n0)^-alpha + b*(D/d0)^-beta", "n0": n0, "d0": d0, "c": float(np.exp(p[0])),
            "c_rel_stderr": float(err[0]), "a": float(np.exp(p[1])), "alpha": float(p[2]),
            "alpha_stderr": float(err[2]), "b": float(np.exp(p[3])), "beta": float(p[4]),
            "beta_stderr": float(err[4]), "rms_log_residual": float(np.sqrt(rss / len(y))), "n_runs": len(y)}


def joint_value(j: dict, n: float, d: float) -> float:
    return j["c"] + j["a"] * (n / j["n0"]) ** -j["alpha"] + j["b"] * (d / j["d0"]) ** -j["beta"]


def cost_model(rows: Sequence[dict]) -> dict:
    """Training CPU s per structure-epoch = k0 (N/1e4)^gamma, fitted on runs of >= 1/4 of the data
    (smaller runs are dominated by per-epoch overheads: validation, species fit)."""
    from scipy.stats import linregress

    big = [r for r in rows if r["fraction"] >= 0.25] or list(rows)
    x = np.log(np.array([r["parameters"] for r in big], float) / 1e4)
    y = np.log(np.array([r["cpu_s"] / (r["n_train"] * r["epochs"]) for r in big], float))
    if len(set(x.tolist())) < 2:
        return {"k0": float(np.exp(y.mean())), "gamma": 0.0, "note": "one model size only"}
    r = linregress(x, y)
    return {"form": "cpu_s = k0 * (N/1e4)^gamma * structures * epochs", "k0": float(np.exp(r.intercept)),
            "gamma": float(r.slope), "gamma_stderr": float(r.stderr), "n_runs": len(big)}


def cpu_of(cost: dict, n: float, d: float, epochs: int) -> float:
    return cost["k0"] * (n / 1e4) ** cost["gamma"] * d * epochs


def compute_optimal(j: dict, cost: dict, epochs: int, budgets: Sequence[float]) -> list[dict]:
    """For each CPU budget, the N (and the D it leaves) minimising the joint fit at this epoch cap."""
    ns = np.geomspace(1e3, 1e8, 1000)
    b = np.asarray(budgets, float)[:, None]
    ds = b / (cost["k0"] * (ns / 1e4) ** cost["gamma"] * epochs)[None, :]
    vals = j["c"] + j["a"] * (ns / j["n0"])[None, :] ** -j["alpha"] + j["b"] * (ds / j["d0"]) ** -j["beta"]
    k = np.argmin(vals, axis=1)
    r = np.arange(len(b))
    return [{"cpu_s": float(b[q, 0]), "core_hours": float(b[q, 0]) / 3600, "N_opt": float(ns[k[q]]),
             "D_opt_structures": float(ds[q, k[q]]), "predicted": float(vals[q, k[q]])} for q in r]


def optimal_exponents(j: dict, cost: dict) -> dict:
    """N_opt ~ C^x and D_opt ~ C^y from minimising a N^-alpha + b D^-beta at cost ~ N^gamma D (analytic)."""
    al, be, ga = j["alpha"], j["beta"], cost["gamma"]
    den = al + ga * be
    return {"N_opt_exponent": be / den, "D_opt_exponent": al / den} if den > 0 else {}


def bootstrap_joint(rows: Sequence[dict], key: str, n0: float, d0: float, cost: dict, epochs: int,
                    targets: Sequence[float], n: int = 200, seed: int = 0) -> dict:
    """Percentiles (16/50/84) of the joint fit's exponents, floor and the CPU to each target, over
    fits to runs resampled with replacement (the runs' scatter is the only error estimate we have)."""
    rng = np.random.default_rng(seed)
    rows = list(rows)
    out: dict[str, list] = {"alpha": [], "beta": [], "c": [], "N_opt_exponent": []}
    cpu: dict[str, list] = {f"{t:g}": [] for t in targets}
    for _ in range(n):
        pick = [rows[k] for k in rng.integers(0, len(rows), len(rows))]
        if len({(r["parameters"], r["n_train"]) for r in pick}) < 6:
            continue
        j = fit_joint(pick, key, n0, d0)
        if "error" in j:
            continue
        for k in ("alpha", "beta", "c"):
            out[k].append(j[k])
        out["N_opt_exponent"].append(optimal_exponents(j, cost).get("N_opt_exponent", np.nan))
        for t in targets:
            c = cheapest_for(j, cost, epochs, t)
            cpu[f"{t:g}"].append(c["cpu_s"] if c["reachable"] else np.inf)
    res = {k: [float(q) for q in np.nanpercentile(v, [16, 50, 84])] if v else None for k, v in out.items()}
    # "nearest": a resample whose floor misses the target counts as infinite cost, not as NaN
    res["cpu_s_to_target_p16_50_84"] = {
        t: [float(q) for q in np.percentile(v, [16, 50, 84], method="nearest")] if v else None
        for t, v in cpu.items()}
    res["fraction_of_resamples_reaching_target"] = {t: float(np.mean(np.isfinite(v))) if v else None
                                                    for t, v in cpu.items()}
    res["n_ok"] = len(out["alpha"])
    return res


def cheapest_for(j: dict, cost: dict, epochs: int, target: float) -> dict:
    """Least CPU (per the cost model) for which the joint fit predicts <= target, at this epoch cap."""
    if j["c"] >= target:
        return {"reachable": False,
                "why": f"fitted floor c = {j['c']:.1f} >= target {target:g} at {epochs} epochs"}
    rows = compute_optimal(j, cost, epochs, np.geomspace(10, 1e12, 400))
    ok = [row for row in rows if row["predicted"] <= target]
    if ok:
        return {"reachable": True, **ok[0], "extrapolation": True}
    return {"reachable": False, "why": "not within 1e12 CPU s"}


def invert(fit: dict, target: float) -> Optional[float]:
    """x at which a fitted curve reaches target (None: never, the floor is above it)."""
    if fit["form"].startswith("A*"):
        return fit["x0"] * (fit["A"] / target) ** (1 / fit["alpha"]) if fit["alpha"] > 0 else None
    if fit["c"] >= target or fit["alpha"] <= 0:
        return None
    return fit["x0"] * (fit["a"] / (target - fit["c"])) ** (1 / fit["alpha"])


# --------------------------------------------------------------------------- analysis
def analyze(args) -> None:
    """Fits, plot and JSON from runs.jsonl (written by :func:`sweep`)."""
    out = Path(args.out)
    rows_by_id: dict[str, dict] = {}
    for line in (out / "runs.jsonl").read_text().splitlines():
        r = json.loads(line)
        rows_by_id[r["id"]] = r
    rows = [r for r in rows_by_id.values() if r["epochs"] == args.epochs and r["depth"] == args.depth
            and r.get("batch_size", 16) == args.batch_size]
    n_series = sorted((r for r in rows if r["fraction"] == args.width_fraction),
                      key=lambda r: r["parameters"])
    d_series = sorted((r for r in rows if r["width"] == args.fraction_width), key=lambda r: r["n_train"])
    if len(n_series) < 3 or len(d_series) < 3:
        raise SystemExit(f"need >= 3 runs per sweep: {len(n_series)} widths, {len(d_series)} fractions")
    n0, d0 = float(n_series[0]["parameters"]), float(d_series[0]["n_train"])
    fits: dict = {}
    # L(D) again over the runs with enough optimizer steps to learn forces at all (the small-D runs sit
    # at the trivial model: a plateau, then a fall, which no single power law describes)
    upper = [r for r in d_series if r["n_train"] >= args.ld_min]
    sweeps = [(n_series, "L(N)", "parameters", n0), (d_series, "L(D)", "n_train", d0)]
    if len(upper) >= 3:
        sweeps.append((upper, f"L(D>={args.ld_min})", "n_train", d0))
    for frac in sorted({r["fraction"] for r in rows} - {args.width_fraction}):  # L(N) at other data sizes
        at = sorted((r for r in rows if r["fraction"] == frac), key=lambda r: r["parameters"])
        if len(at) >= 3:
            sweeps.append((at, f"L(N;D={at[0]['n_train']})", "parameters", n0))
    for series, name, xkey, x0 in sweeps:
        xs = [r[xkey] for r in series]
        for m, (key, _) in METRICS.items():
            ys = [r[key] for r in series]
            entry = {"x": xs, "y": ys, "power": fit_power(xs, ys, x0), "bootstrap": bootstrap(xs, ys, x0)}
            try:
                entry["saturating"] = fit_saturating(xs, ys, x0)
            except (RuntimeError, ValueError) as exc:
                entry["saturating"] = {"error": str(exc)}
            fits[f"{name} {m}"] = entry
    cost = cost_model(rows)
    joint = {m: fit_joint(rows, METRICS[m][0], n0, d0) for m in ("F", "E")}
    cmax = max(r["cpu_s"] for r in rows)
    budgets = [cmax * f for f in (0.1, 0.3, 1, 3, 10, 100, 1000)]
    optimal = {m: compute_optimal(joint[m], cost, args.epochs, budgets)
               for m in joint if "error" not in joint[m]}
    frontier = pareto(rows)
    goals = extrapolate(fits, joint, cost, args)
    exponents = {m: optimal_exponents(joint[m], cost) for m in joint if "error" not in joint[m]}
    joint_bs = {m: bootstrap_joint(rows, METRICS[m][0], n0, d0, cost, args.epochs, GOALS[m])
                for m in joint if "error" not in joint[m]}
    reference = reference_run()
    anchored_goals = anchored(fits, cost, reference)
    baselines = baseline_errors(args)
    meta = sorted(out.glob("sweep_meta_*.json"))
    result = {
        "benchmark": "scaling_law_sevennet",
        "data": json.loads((out / "data_info.json").read_text()) if (out / "data_info.json").exists() else {},
        "split": "examples/train_universal.yaml's: seed 0, by structure, 80/10/10; test = 1196 structures "
                 "never used for training or selection; L(D) uses nested prefixes of the 9564-structure "
                 "train split",
        "recipe": "width W, depth 3, n_rbf 8, cutoff 5 Å, readout 32; Huber E/F/S loss (50/10/100); "
                  f"AdamW lr 2e-3, batch {args.batch_size}, cosine to 2% ending at the epoch cap "
                  f"({args.epochs} epochs), "
                  "EMA 0.99, float32, 1 thread; validation on 200 val structures (monitoring only); "
                  "test score = final EMA model",
        "hardware": "all runs on CPU (one thread each, nice 19, shared 2-core machine); no GPU",
        "sweep_commands": [json.loads(p.read_text())["command"] for p in meta],
        "sweep_meta": [json.loads(p.read_text()) for p in meta],
        "analyze_command": " ".join([sys.executable, *sys.argv]), "loadavg_analyze": list(os.getloadavg()),
        "runs": sorted(rows, key=lambda r: (r["width"], r["n_train"])), "fits": fits, "joint_fit": joint,
        "cost_model": cost, "compute_optimal": optimal, "pareto_F": frontier, "goals": goals,
        "reference_full_run": reference, "optimal_exponents": exponents, "joint_bootstrap": joint_bs,
        "baselines": baselines, "goals_anchored_on_full_run": anchored_goals,
        "total_cpu_s": float(sum(r["cpu_s"] + r["eval_cpu_s"] for r in rows)),
    }
    Path(args.result).parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_finite(result), indent=1, default=float, allow_nan=False)
    Path(args.result).with_suffix(".json").write_text(text + "\n")
    plot(n_series, d_series, fits, rows, baselines, args.result)
    report(result, n_series, d_series, args.result)


def plot(n_series: list, d_series: list, fits: dict, rows: list, baselines: dict, result: str) -> None:
    """Force and energy MAE vs N and vs D with both fits and the goals; error vs CPU for every run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 3, figsize=(13, 7.5), dpi=90)
    for i, m in enumerate(("F", "E")):
        key, label = METRICS[m]
        for j, (series, name, xkey, xlab) in enumerate(
                ((n_series, "L(N)", "parameters", f"parameters N (D = {n_series[0]['n_train']} structures)"),
                 (d_series, "L(D)", "n_train", f"training structures D (width {d_series[0]['width']})"))):
            a = ax[i, j]
            x = np.array([r[xkey] for r in series], float)
            a.loglog(x, [r[key] for r in series], "o", color="k", label="runs (test split)")
            xx = np.geomspace(x.min() / 1.5, x.max() * 30, 100)
            f = fits[f"{name} {m}"]
            sat, pw, bs = f["saturating"], f["power"], f["bootstrap"]
            if "error" not in sat:
                a.loglog(xx, sat["a"] * (xx / sat["x0"]) ** -sat["alpha"] + sat["c"], "-",
                         label=f"a x^-{sat['alpha']:.2f}±{sat['alpha_stderr']:.2f} + {sat['c']:.0f}")
            a.loglog(xx, pw["A"] * (xx / pw["x0"]) ** -pw["alpha"], "--",
                     label=f"A x^-{pw['alpha']:.3f}±{pw['alpha_stderr']:.3f} (pure power)")
            more = [k for k in fits if name == "L(N)" and k.startswith("L(N;") and k.endswith(f" {m}")]
            for q, k in enumerate(more):
                other = fits[k]
                xo = np.array(other["x"], float)
                a.loglog(xo, other["y"], "s", color=f"C{4 + q}",
                         label=f"runs at {k.split(';')[1].split(')')[0]}")
                op = other["power"]
                a.loglog(xo, op["A"] * (xo / op["x0"]) ** -op["alpha"], "-", color=f"C{4 + q}", lw=0.8,
                         label=f"x^-{op['alpha']:.3f}±{op['alpha_stderr']:.3f}")
            for k in (k for k in fits if name == "L(D)" and k.startswith("L(D>=") and k.endswith(f" {m}")):
                up = fits[k]["power"]
                xu = xx[xx >= min(fits[k]["x"]) / 1.5]
                a.loglog(xu, up["A"] * (xu / up["x0"]) ** -up["alpha"], ":", color="C3",
                         label=f"{k.split(' ')[0]}: x^-{up['alpha']:.3f}±{up['alpha_stderr']:.3f}")
            for t, ls, what in zip(GOALS[m], (":", "-."), ("acceptable", "goal")):
                a.axhline(t, color="grey", ls=ls, lw=0.8, label=f"{what} {t:g}")
            base = baselines["zero_force_F_mae_meV_A" if m == "F"
                             else "reference_energies_only_E_mae_meV_atom"]
            a.axhline(base, color="red", ls=":", lw=0.8, label=f"trivial model {base:.0f}")
            a.set_xlabel(xlab)
            a.set_ylabel(f"test {label}")
            q = bs["alpha_power_p16_50_84"]
            a.set_title(f"{name}, {m}" + (f"  (bootstrap alpha p16-84: {q[0]:.2f}-{q[2]:.2f})" if q else ""),
                        fontsize=9)
            a.legend(fontsize=7)
        a = ax[i, 2]
        for w in sorted({r["width"] for r in rows}):
            rs = sorted((r for r in rows if r["width"] == w), key=lambda r: r["cpu_s"])
            a.loglog([r["cpu_s"] for r in rs], [r[key] for r in rs], "o-", ms=4, label=f"width {w}")
        a.set_xlabel("training CPU s (1 thread)")
        a.set_ylabel(f"test {label}")
        a.set_title("error vs CPU, every run (line: one width, growing D)", fontsize=9)
        a.legend(fontsize=7)
    fig.suptitle("EGNN on sevennet0-distill-v1: held-out test error, 10-epoch cosine runs, CPU", fontsize=11)
    fig.tight_layout()
    fig.savefig(Path(result).with_suffix(".png"))
    plt.close(fig)


def report(result: dict, n_series: list, d_series: list, path: str) -> None:
    """Markdown table and fit summary on stdout (pasted into docs/scaling_laws.md)."""
    print("| run | width | params | structures | atoms | epochs | CPU s | E MAE meV/atom | F MAE meV/Å "
          "| S MAE meV/Å^3 | test loss |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in result["runs"]:
        print(f"| {r['id']} | {r['width']} | {r['parameters']:,} | {r['n_train']} | {r['n_train_atoms']:,} | "
              f"{r['epochs']} | {r['cpu_s']:.0f} | {r['test_E_mae_meV_atom']:.1f} | "
              f"{r['test_F_mae_meV_A']:.1f} | "
              f"{r['test_S_mae_meV_A3']:.2f} | {r['test_loss']:.3f} |")
    for name, f in result["fits"].items():
        sat, pw, bs = f["saturating"], f["power"], f["bootstrap"]
        line = f"{name}: pure alpha {pw['alpha']:.3f} ± {pw['alpha_stderr']:.3f} (r2 {pw['r2']:.3f}"
        if bs["alpha_power_p16_50_84"]:
            line += ", bootstrap p16-84 {:.3f}-{:.3f}".format(bs["alpha_power_p16_50_84"][0],
                                                              bs["alpha_power_p16_50_84"][2])
        line += ")"
        if "error" not in sat:
            line += f"; saturating alpha {sat['alpha']:.2f} ± {sat['alpha_stderr']:.2f}, " \
                    f"c {sat['c']:.1f} ± " \
                    f"{sat['c_stderr']:.1f}"
        print(line)
    for m, j in result["joint_fit"].items():
        print(f"joint {m}: {j}")
    print(f"cost: {result['cost_model']}")
    for m, rows in result["compute_optimal"].items():
        for r in rows:
            print(f"optimal {m}: {r['cpu_s']:.0f} CPU s -> N {r['N_opt']:.3g}, "
                  f"D {r['D_opt_structures']:.3g}, "
                  f"predicted {r['predicted']:.1f}")
    print(f"optimal exponents: {result['optimal_exponents']}")
    for m, b in result["joint_bootstrap"].items():
        print(f"joint bootstrap {m}: {b}")
    print(f"baselines: {result['baselines']}")
    print("pareto (F):", [(p["id"], round(p["cpu_s"]), round(p["F"], 1)) for p in result["pareto_F"]])
    for k, v in result["goals"].items():
        print(f"goal {k}: {v}")
    for k, v in result["goals_anchored_on_full_run"].items():
        print(f"anchored {k}: {v}")
    print(f"total CPU s (train + test eval) {result['total_cpu_s']:.0f}; wrote {path}.json/.png")


def _finite(obj):
    """NaN/inf (undetermined covariances, unreachable targets) as null: strict JSON readers reject them."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj


def pareto(rows: Sequence[dict]) -> list[dict]:
    """Runs on the CPU-time vs force-error frontier: no cheaper run has a lower error."""
    best, out = float("inf"), []
    for r in sorted(rows, key=lambda r: r["cpu_s"]):
        if r["test_F_mae_meV_A"] < best:
            best = r["test_F_mae_meV_A"]
            out.append({"id": r["id"], "cpu_s": r["cpu_s"], "F": best, "E": r["test_E_mae_meV_atom"]})
    return out


def extrapolate(fits: dict, joint: dict, cost: dict, args) -> dict:
    """Data / parameters / CPU the fitted curves need for the accuracy goals (extrapolations)."""
    out = {}
    for m, targets in GOALS.items():
        for t in targets:
            e: dict = {}
            for name in ("L(D)", "L(N)"):
                f = fits[f"{name} {m}"]
                for form in ("saturating", "power"):
                    if "error" not in f[form]:
                        x = invert(f[form], t)
                        e[f"{name} {form}"] = None if x is None else float(x)
            if "error" not in joint[m]:
                e["joint"] = cheapest_for(joint[m], cost, args.epochs, t)
            out[f"{m} <= {t:g}"] = e
    return out


def baseline_errors(args) -> dict:
    """Test errors of the trivial models: zero forces, and energies from the per-element references
    alone (least squares on the whole train split): where 'learned nothing' lies on the plot."""
    from atomsim.training.trainer import fit_species_energies, split_indices

    samples, _ = load_data(args.data, args.cache, lambda _msg: None)
    cfg = run_config(args, args.fraction_width, 1.0, Path(args.out) / "baseline")
    split = split_indices(len(samples), cfg)
    test, train = [samples[k] for k in split["test"]], [samples[k] for k in split["train"]]
    species = sorted({int(z) for s in samples for z in s.numbers.tolist()})
    col = {z: k for k, z in enumerate(species)}
    e0 = fit_species_energies(train, species)
    de = [abs(s.energy - sum(e0[col[int(z)]] for z in s.numbers.tolist())) / s.n_atoms for s in test]
    f = np.concatenate([s.forces.numpy().ravel() for s in test])
    return {"zero_force_F_mae_meV_A": 1000 * float(np.abs(f).mean()),
            "reference_energies_only_E_mae_meV_atom": 1000 * float(np.mean(de))}


def anchored(fits: dict, cost: dict, reference: dict) -> dict:
    """Goals from the converged full-data run (70 epochs) scaled by the measured pure-power exponents.

    Why: the 10-epoch runs are far from converged, so their fitted floors say little about converged
    error; the full run is one converged-ish point, and the exponents say how error moves with D or N.
    D (or N) needed = ref * (L_ref / target)^(1/alpha), with alpha +- its stderr for the range.
    CPU = cost model * D * 70 epochs; labels ~0.3 CPU s per new structure (the data set README's
    3568 process-s for 12000 jobs). Pure extrapolation, orders of magnitude beyond the data.
    """
    out: dict = {}
    for m, targets in GOALS.items():
        lref = reference["test_F_mae_meV_A" if m == "F" else "test_E_mae_meV_atom"]
        for name, xref in (("L(D)", reference["n_train"]), ("L(N)", reference["parameters"])):
            # the L(D) exponent from the runs that learn forces at all, when there are enough of them
            upper = [k for k in fits if name == "L(D)" and k.startswith("L(D>=") and k.endswith(f" {m}")]
            f = fits[upper[0] if upper else f"{name} {m}"]["power"]
            for t in targets:
                row = {}
                for tag, al in (("alpha-1sd", f["alpha"] - f["alpha_stderr"]), ("alpha", f["alpha"]),
                                ("alpha+1sd", f["alpha"] + f["alpha_stderr"])):
                    if al <= 0:
                        row[tag] = None
                        continue
                    x = xref * (lref / t) ** (1 / al)
                    if name == "L(D)":
                        train_h = cpu_of(cost, reference["parameters"], x, reference["epochs"]) / 3600
                        label_h = 0.3 * max(x - reference["n_train"], 0) / 3600
                        row[tag] = {"structures": float(x), "train_core_hours": float(train_h),
                                    "label_core_hours": float(label_h)}
                    else:
                        row[tag] = {"parameters": float(x), "train_core_hours": float(
                            cpu_of(cost, x, reference["n_train"], reference["epochs"]) / 3600)}
                row["exponent_from"] = upper[0] if upper else f"{name} {m}"
                out[f"{m} <= {t:g} via {name} at fixed {'N' if name == 'L(D)' else 'D'}"] = row
    return out


def reference_run() -> dict:
    """The full-data width-64 run of examples/train_universal.yaml (70 epochs), for the epoch effect."""
    card = ROOT / "benchmarks" / "results" / "train_universal_wip" / "train.log"
    return {"source": "benchmarks/results/train_universal_wip (same split, same test set)", "width": 64,
            "parameters": 83841, "n_train": 9564, "epochs": 70, "test_E_mae_meV_atom": 65.05,
            "test_F_mae_meV_A": 291.3, "log_present": card.exists()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=DATA, help="the sevennet0-distill-v1 extxyz(.xz)")
    ap.add_argument("--cache", default=None, help="a parse cache (data_cache.npz) of the same file to reuse")
    ap.add_argument("--out", required=True, help="run folders and runs.jsonl (outside the repository)")
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 24, 32, 48, 64])
    ap.add_argument("--width-fraction", type=float, default=0.25, help="train fraction of the L(N) sweep")
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--equivariant", action="store_true",
                    help="the E(n)-equivariant variant (use its own --out: the fits assume one variant)")
    ap.add_argument("--fractions", type=float, nargs="+",
                    default=[1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1])
    ap.add_argument("--fraction-width", type=int, default=32, help="model width of the L(D) sweep")
    ap.add_argument("--first", nargs="*", default=[], help="width:fraction runs to do before the others")
    ap.add_argument("--grid", nargs="*", default=[], help="extra width:fraction runs (joint L(N, D) fit)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=4, help="structures per step (more steps per epoch)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--deadline", default=None, help="UTC ISO time; runs that would end later are skipped")
    ap.add_argument("--ld-min", type=int, default=1000, help="smallest D of the second L(D) fit")
    ap.add_argument("--result", default=str(RESULT), help="path stem of the results JSON/PNG")
    ap.add_argument("--analyze", action="store_true", help="fit, plot and write the results from runs.jsonl")
    args = ap.parse_args()
    if args.analyze:
        analyze(args)
    else:
        sweep(args)


if __name__ == "__main__":
    main()
