"""Invariant vs E(n)-equivariant EGNN (EGNNConfig.equivariant) at equal CPU time per atom-step.

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/egnn_variants/run.py speed
        [--shapes 32x3 48x3 64x3] [--atoms 2000] [--calls 3] [--repeats 3]
    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/egnn_variants/run.py train
        --data train.extxyz.xz [--shapes 32x3 64x3] [--structures 2000] [--epochs 4]

``speed``: for each variant and width x depth, parameters and atom-steps per CPU second (and per
wall second; on a shared machine the CPU time is the fair measure) of the MD force call
(engine/forces.py SerialForces: forward + backward for forces and virial, float32, neighbor list
with skin reused) on a ~2,000-atom rattled rock-salt Li-Fe-P-O cell, 1 thread. The variants are
timed interleaved (repeat r runs every shape once) and the median is kept, so machine load hits
all alike. ``train``: short equal-epoch runs of ``atomsim train``'s trainer (atomsim/training/
trainer.py) on the first N structures (after the seeded shuffle) of the SevenNet-0 distillation
set, each variant and shape from the same split and seed, and the held-out (test split) energy and
force MAE. Both write into benchmarks/results/egnn_variants.json (machine, versions, command,
load average) and print the table.
"""
from __future__ import annotations

import argparse
import json
import lzma
import os
import platform
import statistics
import sys
import time
from io import StringIO
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RESULT = ROOT / "benchmarks" / "results" / "egnn_variants.json"
VARIANTS = ("invariant", "equivariant")


def _machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import ase

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "ase": ase.__version__, "platform": platform.platform()}


def _shape(text: str) -> tuple[int, int]:
    w, d = text.lower().split("x")
    return int(w), int(d)


def _cell(n_atoms: int):
    """Rattled rock-salt Li-Fe-P-O (cations Li Fe P Li, anions O), about n_atoms atoms."""
    from ase import Atoms

    frac = np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0],
                     [.5, 0, 0], [0, .5, 0], [0, 0, .5], [.5, .5, .5]])
    unit = Atoms("LiFePLiOOOO", scaled_positions=frac, cell=np.eye(3) * 4.4, pbc=True)
    k = max(1, round((n_atoms / 8) ** (1 / 3)))
    reps = (k, k, max(1, round(n_atoms / (8 * k * k))))
    atoms = unit.repeat(reps)
    atoms.positions += np.random.default_rng(0).normal(0, 0.1, atoms.positions.shape)
    return atoms


def _model(variant: str, width: int, depth: int, species, seed: int = 0):
    from atomsim.potentials.egnn import build_egnn

    torch.manual_seed(seed)
    return build_egnn(species, width=width, depth=depth, equivariant=variant == "equivariant").float()


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _update(section: str, payload: dict) -> dict:
    data = json.loads(RESULT.read_text()) if RESULT.exists() else {}
    data[section] = payload
    data["machine"] = _machine()
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(data, indent=1) + "\n")
    return data


def speed(args) -> None:
    from atomsim.engine.forces import SerialForces
    from atomsim.engine.state import MDState

    torch.set_num_threads(1)
    atoms = _cell(args.atoms)
    species = sorted(set(int(z) for z in atoms.numbers))
    shapes = [_shape(s) for s in args.shapes]
    rng = np.random.default_rng(1)
    runs = {}
    for variant in VARIANTS:
        for w, d in shapes:
            model = _model(variant, w, d, species)
            state = MDState.from_atoms(atoms)
            forces = SerialForces(model, skin=1.0)
            forces.compute(state)  # warm-up: list build, first-call allocations
            runs[(variant, w, d)] = {"model": model, "state": state, "forces": forces, "times": [], "cpu": []}
    load0 = _load()
    for r in range(args.repeats):
        for run in runs.values():
            st = run["state"]
            t, c = time.perf_counter(), time.process_time()
            for _ in range(args.calls):
                with torch.no_grad():
                    st.positions += torch.from_numpy(rng.normal(0, 0.002, tuple(st.positions.shape)))
                run["forces"].compute(st)
            run["times"].append((time.perf_counter() - t) / args.calls)
            run["cpu"].append((time.process_time() - c) / args.calls)
        print(f"repeat {r + 1}/{args.repeats} done", flush=True)
    from atomsim.potentials.egnn import count_parameters

    rows = []
    for (variant, w, d), run in runs.items():
        sec, cpu = statistics.median(run["times"]), statistics.median(run["cpu"])
        rows.append({"variant": variant, "width": w, "depth": d, "parameters": count_parameters(run["model"]),
                     "atom_steps_per_cpu_s": round(len(atoms) / cpu, 1), "cpu_s_per_step": round(cpu, 4),
                     "atom_steps_per_s": round(len(atoms) / sec, 1), "s_per_step": round(sec, 4),
                     "times_s": [round(t, 4) for t in run["times"]], "cpu_s": [round(t, 4) for t in run["cpu"]]})
    payload = {"command": " ".join(sys.argv), "n_atoms": len(atoms), "system": atoms.get_chemical_formula(),
               "threads": 1, "dtype": "float32", "calls_per_repeat": args.calls, "repeats": args.repeats,
               "load_average_before": load0, "load_average_after": _load(), "rows": rows}
    _update("speed", payload)
    print(f"{len(atoms)} atoms ({atoms.get_chemical_formula()}), 1 thread, float32; load {load0}")
    for row in rows:
        print(f"  {row['variant']:<12} {row['width']:>4} x {row['depth']}  {row['parameters']:>8,} params  "
              f"{row['atom_steps_per_cpu_s']:>9,.0f} atom-steps per CPU s  ({row['atom_steps_per_s']:,.0f} per wall s)")


def _subset(path: str, n: int, seed: int, out: Path) -> Path:
    """The first n structures of a seeded shuffle, written as plain extxyz (read through lzma)."""
    from ase.io import read, write

    opener = lzma.open if path.endswith(".xz") else open
    with opener(path, "rt") as fh:
        frames = read(StringIO(fh.read()), index=":", format="extxyz")
    order = np.random.default_rng(seed).permutation(len(frames))[:n]
    write(str(out), [frames[k] for k in sorted(order)], format="extxyz")
    return out


def _merge_train_row(row: dict, run: dict) -> None:
    """Replace this (variant, width, depth, epochs) row in the JSON's train rows (runs may go in parallel)."""
    data = json.loads(RESULT.read_text()) if RESULT.exists() else {}
    rows = [r for r in data.get("train", {}).get("rows", [])
            if (r["variant"], r["width"], r["depth"], r.get("epochs_asked"))
            != (row["variant"], row["width"], row["depth"], row["epochs_asked"])]
    _update("train", {"rows": rows + [{**row, "run": run}]})


def train(args) -> None:
    import functools

    from atomsim.potentials.checkpoint import load_checkpoint
    from atomsim.potentials.egnn import EGNNConfig, count_parameters
    from atomsim.training import trainer

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    subset = work / f"subset_{args.structures}_seed{args.seed}.extxyz"
    if not subset.exists():
        _subset(args.data, args.structures, args.seed, subset)
        print(f"wrote {subset}", flush=True)
    samples = None
    load0 = _load()
    for w, d in [_shape(s) for s in args.shapes]:
        for variant in args.variants:
            cfg = trainer.TrainConfig(
                data=str(subset), output=str(work / f"{variant}_{w}x{d}"), name=f"{variant}-{w}x{d}",
                model={"width": w, "depth": d}, energy_weight=50.0, force_weight=10.0, stress_weight=0.0,
                batch_size=8, lr=2e-3, epochs=args.epochs, patience=args.epochs, seed=0, threads=1,
                dtype="float32", cache=False)
            if samples is None:
                samples = trainer.load_training_samples(cfg)
            # The trainer's YAML has no model.equivariant key yet: build its EGNNConfig with the switch.
            trainer.EGNNConfig = functools.partial(EGNNConfig, equivariant=variant == "equivariant")
            try:
                t = time.time()
                result = trainer.train(cfg, samples=samples)
                seconds = time.time() - t
            finally:
                trainer.EGNNConfig = EGNNConfig
            best = Path(cfg.output) / "best"
            model = load_checkpoint(best) if best.exists() else result["ema"]
            assert model.config.equivariant == (variant == "equivariant")
            metrics = trainer.evaluate(model, result["test"])
            metrics.pop("_pairs", None)
            row = {"variant": variant, "width": w, "depth": d, "parameters": count_parameters(model),
                   "epochs_asked": args.epochs, "epochs": len(result["history"]), "train_seconds": round(seconds, 1),
                   "test_structures": len(result["test"]), "train_structures": len(result["train"]),
                   "energy_mae_meV_per_atom": round(metrics["all"]["energy_mae_meV_per_atom"], 2),
                   "force_mae_meV_per_A": round(metrics["all"]["force_mae_meV_per_A"], 1),
                   "val_history": [{k: h.get(k) for k in ("epoch", "val_E_mae_meV_atom", "val_F_mae_meV_A")}
                                   for h in result["history"]]}
            print(f"{variant} {w}x{d}: E {row['energy_mae_meV_per_atom']} meV/atom, "
                  f"F {row['force_mae_meV_per_A']} meV/Å ({seconds:.0f} s)", flush=True)
            _merge_train_row(row, {"command": " ".join(sys.argv), "data": args.data, "structures": args.structures,
                                   "subset_seed": args.seed, "threads": 1, "load_average_before": load0,
                                   "load_average_after": _load()})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--shapes", nargs="+", default=["32x3", "48x3", "64x3"], help="WIDTHxDEPTH")
    s.add_argument("--atoms", type=int, default=2000)
    s.add_argument("--calls", type=int, default=3, help="force calls per timing")
    s.add_argument("--repeats", type=int, default=3)
    t = sub.add_parser("train")
    t.add_argument("--shapes", nargs="+", default=["32x3", "64x3"], help="WIDTHxDEPTH")
    t.add_argument("--structures", type=int, default=2000)
    t.add_argument("--epochs", type=int, default=4)
    t.add_argument("--seed", type=int, default=0, help="subset shuffle seed")
    t.add_argument("--data", required=True, help="extxyz(.xz) with energy/forces labels")
    t.add_argument("--workdir", default="/tmp/egnn_variants")
    t.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    args = p.parse_args()
    speed(args) if args.what == "speed" else train(args)


if __name__ == "__main__":
    main()
