"""Export a training run's best EMA checkpoint as a bundled model folder with its card.

    python -m atomsim.training.export examples/train_universal.yaml \\
        --dest potentials/pretrained/egnn-universal-v1 --log train_universal.log

Why a separate step: the card needs what a training process does not know about itself (the
exact launch command, the held-out errors of the checkpoint kept, per chemistry family, the
training cost over all resumes, how the errors compare with the goal), and a run that was
stopped (time budget, SIGKILL) has only its ``best/`` checkpoint and ``train_state.pt``.

The folder gets model.safetensors, config.json (card included), MODEL_CARD.md, parity.png,
learning_curve.png and reference.json (the model's own numbers, for regression tests).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np

GOAL = {"energy_mae_meV_per_atom": 25.0, "force_mae_meV_per_A": 80.0}
ACCEPTABLE = {"energy_mae_meV_per_atom": 40.0, "force_mae_meV_per_A": 120.0}
E_KEY, F_KEY = "energy_mae_meV_per_atom", "force_mae_meV_per_A"
NEAR_EQ_MAX_FORCE = 5.0  # eV/Å: the near-equilibrium subset of the test split (near_equilibrium_errors)

LIMITATIONS = [
    "It reproduces SevenNet-0, not DFT: SevenNet-0's own errors against PBE/PBE+U (about 25 meV/atom "
    "and 70 meV/Å on its test set) come on top of the distillation errors in the table.",
    "Invariant EGNN: messages see interatomic distances only, so bond angles enter only through "
    "distances over several hops (depth x cutoff); covalent and molecular chemistries suffer most.",
    "Training structures are small periodic cells (1-48 atoms), many far from equilibrium; no "
    "isolated molecules, no liquids beyond short MD snapshots, no charged or magnetic-state labels.",
    "5 Å cutoff, no long-range electrostatics or dispersion beyond it.",
    "Outside the training distribution (very short distances, unusual coordination) it extrapolates "
    "without warning; only unknown elements are rejected.",
]


def history_of(run_dir: Path) -> list[dict]:
    """Per-epoch records from ``train_state.pt`` (or ``history.json`` of a finished run)."""
    import torch

    state = run_dir / "train_state.pt"
    if state.is_file():
        return json.loads(torch.load(state, weights_only=True)["history"])
    hist = run_dir / "history.json"
    return json.loads(hist.read_text()) if hist.is_file() else []


def learning_curve_plot(history: list[dict], path: Path, title: str) -> None:
    """Validation energy and force MAE (EMA weights) against epoch, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = np.array([h["epoch"] for h in history])
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.6), dpi=90)
    for a, key, lab, goal, ok in ((ax[0], "val_E_mae_meV_atom", "energy MAE (meV/atom)", 25, 40),
                                  (ax[1], "val_F_mae_meV_A", "force MAE (meV/Å)", 80, 120)):
        a.loglog(ep, [h.get(key, np.nan) for h in history], "o-", ms=3, label="validation (EMA)")
        a.axhline(goal, color="g", ls="--", lw=0.8, label="goal")
        a.axhline(ok, color="orange", ls="--", lw=0.8, label="acceptable")
        a.set_xlabel("epoch")
        a.set_ylabel(lab)
        a.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(str(path))
    plt.close(fig)


def fit_learning_curve(history: list[dict], key: str, last: int = 10) -> Optional[dict]:
    """Power law err ~ a * epoch^-b over the last ``last`` epochs: where more epochs would lead."""
    pts = [(h["epoch"], h[key]) for h in history if key in h][-last:]
    if len(pts) < 4:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    b, a = np.polyfit(x, y, 1)
    return {"exponent": float(-b), "epochs_fitted": f"{pts[0][0]}-{pts[-1][0]}",
            "extrapolated_2x_epochs": float(np.exp(a + b * np.log(2 * pts[-1][0]))),
            "extrapolated_4x_epochs": float(np.exp(a + b * np.log(4 * pts[-1][0])))}


def near_equilibrium_errors(rows, max_force: float = NEAR_EQ_MAX_FORCE) -> dict:
    """Errors on the test structures whose largest reference force is below ``max_force`` (eV/Å).

    Why: SevenNet-0's own error (the goal's yardstick) is measured on MPtrj, relaxation trajectories
    near equilibrium; the distillation set also holds strongly rattled and compressed cells where the
    teacher extrapolates (|F| up to ~50 eV/Å). This subset is reported NEXT TO the full test split, which
    stays the headline figure; the baseline row is the error of predicting zero forces.
    """
    keep = [r for r in rows if r[1] and float(np.linalg.norm(r[4], axis=1).max()) < max_force]
    if not keep:
        return {}
    fr = np.concatenate([r[4].ravel() for r in keep])
    fm = np.concatenate([r[5].ravel() for r in keep])
    return {"max_reference_force_eV_per_A": max_force, "n_structures": len(keep), "of_structures": len(rows),
            "n_atoms": int(sum(r[1] for r in keep)),
            "energy_mae_meV_per_atom": float(np.mean([abs(r[2] - r[3]) for r in keep]) * 1000),
            "force_mae_meV_per_A": float(np.abs(fr - fm).mean() * 1000),
            "zero_force_baseline_mae_meV_per_A": float(np.abs(fr).mean() * 1000)}


def grade(m: dict) -> str:
    """'goal', 'acceptable' or 'below acceptable' for overall test metrics."""
    for name, lim in (("goal", GOAL), ("acceptable", ACCEPTABLE)):
        if all(m[k] <= v for k, v in lim.items()):
            return name
    return "below acceptable"


def export(config_path: str, dest: str, log_path: Optional[str] = None, command: Optional[str] = None,
           checkpoint: Optional[str] = None) -> dict:
    """Evaluate the run's best checkpoint on val/test (per family) and write the bundled folder."""
    from atomsim.potentials.checkpoint import load_checkpoint, save_checkpoint, write_reference

    from .trainer import evaluate, family_table, load_config, load_training_samples, parity_plot, split_indices

    cfg = load_config(config_path)
    run = Path(cfg.output)
    model = load_checkpoint(checkpoint or run / "best")
    samples = load_training_samples(cfg)
    split = split_indices(len(samples), cfg)
    parts = {k: [samples[i] for i in split[k]] for k in ("train", "val", "test")}
    test = evaluate(model, parts["test"], per_family=True)
    rows = test.pop("_pairs")
    val = evaluate(model, parts["val"], per_system=False, per_family=True)
    val.pop("_pairs")
    history = history_of(run)
    active_s = float(history[-1].get("active_s", history[-1].get("elapsed_s", 0.0))) if history else 0.0
    threads = cfg.threads or 1
    cpu_s = float(history[-1].get("cpu_s", 0.0)) if history else 0.0
    best_epoch = min(history, key=lambda h: cfg.energy_weight * h.get("val_E_mae_meV_atom", np.inf) ** 2
                     + cfg.force_weight * h.get("val_F_mae_meV_A", np.inf) ** 2)["epoch"] if history else None
    status = grade(test["all"])
    curve = {k: fit_learning_curve(history, k) for k in ("val_E_mae_meV_atom", "val_F_mae_meV_A")}
    t = test["all"]
    card = dict(cfg.card)
    card["name"] = cfg.name
    card["status"] = (
        f"Held-out test: {t['energy_mae_meV_per_atom']:.1f} meV/atom, {t['force_mae_meV_per_A']:.0f} meV/Å "
        f"({status}; goal <= {GOAL['energy_mae_meV_per_atom']:.0f} meV/atom and "
        f"{GOAL['force_mae_meV_per_A']:.0f} meV/Å, acceptable <= {ACCEPTABLE['energy_mae_meV_per_atom']:.0f} "
        f"and {ACCEPTABLE['force_mae_meV_per_A']:.0f}). "
        + ("" if status != "below acceptable" else
           f"Misses the acceptable level by {t['energy_mae_meV_per_atom'] / ACCEPTABLE[E_KEY]:.1f}x "
           f"in energy and {t['force_mae_meV_per_A'] / ACCEPTABLE[F_KEY]:.1f}x in force."))
    card["training_command"] = command or f"atomsim train {config_path}"
    card["export_command"] = f"python -m atomsim.training.export {config_path} --dest {dest}"
    card["training"] = {
        "epochs": len(history), "best epoch (EMA, validation)": best_epoch,
        "training time": (f"{cpu_s / 3600:.2f} core-hours of process CPU time" if cpu_s else
                          "process CPU time not recorded by this run") + f"; {active_s / 3600:.2f} h of wall "
                         f"time while running ({threads} thread(s), SIGSTOP pauses excluded; on a shared machine the "
                         "wall time can be far more than the CPU time)",
        "train/val/test structures": f"{len(parts['train'])}/{len(parts['val'])}/{len(parts['test'])}"
                                     + (f" (+ training-only extra_train_data: {', '.join(cfg.extra_train_data)})"
                                        if cfg.extra_train_data else ""),
        "split": f"by structure, seed {cfg.seed}",
        "loss": (f"{cfg.loss}: {cfg.energy_weight} x E/atom + {cfg.force_weight} x F + {cfg.stress_weight} x stress"
                 + (f" (Huber deltas {cfg.huber_delta_energy} eV/atom, {cfg.huber_delta_force} eV/Å, "
                    f"{cfg.huber_delta_stress} eV/Å^3)" if cfg.loss == "huber" else "")),
        "optimiser": f"AdamW lr {cfg.lr} ({cfg.schedule}), batch {cfg.batch_size} structures, "
                     f"EMA {cfg.ema_decay}, {cfg.dtype}",
    }
    card["learning_curve"] = {k: v for k, v in curve.items() if v} or "too few epochs to fit"
    card["held_out_errors_by_family"] = family_table({"val": val, "test": test})
    card["family_rule"] = ("first match wins: noble gas present -> noble gases; H present or only "
                           "N/O/halogens -> molecular/H-containing; O -> oxides; F/Cl/Br/I -> halides; "
                           "all metals -> metals; else covalent (B, C, N, Si, P, S, Ge, As, Se, Sb, Te)")
    card["limitations"] = LIMITATIONS
    card["metrics"] = test
    card["test_near_equilibrium"] = near_equilibrium_errors(rows)
    out = Path(dest)
    save_checkpoint(model, out, card)
    parity_plot(rows, out / "parity.png", f"{cfg.name}: held-out test split ({len(rows)} structures)")
    if history:
        learning_curve_plot(history, out / "learning_curve.png", f"{cfg.name}: validation error per epoch")
    write_reference(model, out)
    if log_path and Path(log_path).is_file():
        lines = Path(log_path).read_text().splitlines()
        (out / "training_log_tail.txt").write_text("\n".join(lines[-40:]) + "\n")
    return {"status": status, "test": t, "test_near_equilibrium": card["test_near_equilibrium"],
            "val": val["all"], "epochs": len(history), "active_s": active_s,
            "cpu_s": cpu_s,
            "families": {k: v for k, v in test.items() if k.startswith("family: ")}, "learning_curve": curve}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m atomsim.training.export", description=__doc__.splitlines()[0])
    p.add_argument("config", help="the training YAML of the run")
    p.add_argument("--dest", required=True, help="model folder to write, e.g. potentials/pretrained/NAME")
    p.add_argument("--log", help="the run's log (its tail is kept next to the model)")
    p.add_argument("--command", help="the exact training command, for the card")
    p.add_argument("--checkpoint", help="checkpoint folder (default: <output>/best)")
    a = p.parse_args(argv)
    res = export(a.config, a.dest, a.log, a.command, a.checkpoint)
    print(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
