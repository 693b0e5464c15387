"""Force error of the fused kernels in bf16 / fp16 against float32, on an EGNN (GPU).

Uses the bundled default model when ``atomsim.load_potential('default')`` gives an
EGNN, else a randomly initialised EGNN of the default shape (said in the output).
Energies/forces of a rattled fcc Cu supercell: float32 reference path (torch ops),
float32 fused, and bf16 / fp16 fused (model weights, node features and edge vectors
in that dtype, fp32 accumulation inside the kernels). Prints and writes JSON.

    python benchmarks/gpu/mixed_precision_forces.py --out mixed_precision.json
"""
from __future__ import annotations

import argparse
import copy
import json
import os

import numpy as np
import torch
from ase.build import bulk
from ase.neighborlist import neighbor_list

from atomsim.potentials.base import build_graph, evaluate_potential


def load_model(device):
    try:
        from atomsim import load_potential
        from atomsim.potentials.egnn import EGNNPotential

        model = load_potential("egnn-emt-v1")
        if isinstance(model, EGNNPotential):
            return model.to(device).float(), "bundled default model"
    except Exception as exc:  # no bundled model yet: fall back, and say so
        reason = f"{type(exc).__name__}: {exc}"[:200]
    else:
        reason = "default model is not an EGNN"
    from atomsim.potentials.egnn import build_egnn

    torch.manual_seed(0)
    return build_egnn([29], width=128, depth=3).to(device), f"random EGNN width 128 ({reason})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="mixed_precision_forces.json")
    ap.add_argument("--repeat", type=int, default=4, help="fcc Cu supercell repeat")
    ap.add_argument("--device", default="cuda", help="cpu: smoke run under TRITON_INTERPRET=1")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device(args.device)
    model, which = load_model(dev)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(args.repeat)
    atoms.rattle(0.05, seed=1)
    i, j, S = neighbor_list("ijS", atoms, model.cutoff)
    order = np.argsort(i, kind="stable")
    t = lambda x, dt: torch.as_tensor(x, dtype=dt, device=dev)  # noqa: E731
    pos, cell = t(atoms.positions, torch.float64), t(atoms.cell.array, torch.float64)
    numbers = t(atoms.numbers, torch.int64)
    ii, jj, SS = (t(x[order], torch.int64) for x in (i, j, S))
    runs = {}
    for label, backend, dtype in (("fp32_reference", "reference", torch.float32),
                                  ("fp32_fused", "triton", torch.float32),
                                  ("bf16_fused", "triton", torch.bfloat16),
                                  ("fp16_fused", "triton", torch.float16)):
        if dev.type == "cpu" and dtype == torch.bfloat16:
            continue  # the Triton interpreter has no bf16
        os.environ["ATOMSIM_KERNELS"] = backend
        m = copy.deepcopy(model).to(dtype)
        graph = build_graph(pos, cell, ii, jj, SS, len(atoms), dtype)
        runs[label] = evaluate_potential(m, numbers, graph)
    ref = runs["fp32_reference"]
    f_ref = ref.forces.cpu()
    rms = float(f_ref.pow(2).mean().sqrt())
    report = {"model": which, "n_atoms": len(atoms), "n_edges": int(len(i)),
              "force_rms_eV_per_A": rms, "runs": {},
              "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"}
    for label, r in runs.items():
        df = r.forces.cpu() - f_ref
        report["runs"][label] = {
            "energy_eV": r.energy, "energy_err_meV_per_atom": 1e3 * abs(r.energy - ref.energy)
            / len(atoms),
            "force_rmse_eV_per_A": float(df.pow(2).mean().sqrt()),
            "force_max_err_eV_per_A": float(df.abs().max()),
            "force_rmse_relative": float(df.pow(2).mean().sqrt()) / max(rms, 1e-30)}
    print(json.dumps(report, indent=1))
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
