"""CPU cost of one training epoch on the SevenNet-0 distillation set, per model shape, batch size
and message-passing kernel (1 thread).

Measured in process CPU seconds on a random subset of the training structures and scaled to the
full training split (9,564 structures), so the figure holds on a shared, loaded machine where wall
time does not. Usage:

    python benchmarks/train_epoch/run.py --data /path/train.extxyz.xz --structures 480
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch


def epoch_cost(samples, width: int, depth: int, batch: int, kernels: str) -> dict:
    from atomsim.training.trainer import TrainConfig, batch_loss, collate, init_model

    os.environ["ATOMSIM_KERNELS"] = kernels
    cfg = TrainConfig(data="x", model=dict(width=width, depth=depth), batch_size=batch, stress_weight=100.0,
                      loss="huber", kernels=kernels)
    torch.manual_seed(0)
    model = init_model(cfg, samples).float()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    parts = {"collate": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    for k in range(0, len(samples), batch):
        chunk = samples[k:k + batch]
        totals = {"structures": len(chunk), "atoms": sum(s.n_atoms for s in chunk), "stress": len(chunk)}
        t0 = time.process_time()
        b = collate(chunk, torch.float32)
        t1 = time.process_time()
        opt.zero_grad()
        loss = batch_loss(model, b, cfg, totals)
        t2 = time.process_time()
        loss.backward()
        t3 = time.process_time()
        opt.step()
        t4 = time.process_time()
        for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts[key] += dt
    cpu = sum(parts.values())
    return {"width": width, "depth": depth, "batch_size": batch, "kernels": kernels,
            "structures": len(samples), "cpu_s": cpu, "parts_cpu_s": parts}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--structures", type=int, default=480)
    ap.add_argument("--train-structures", type=int, default=9564, help="size of the training split")
    ap.add_argument("--shapes", nargs="+", default=["64x2", "64x3"])
    ap.add_argument("--batches", nargs="+", type=int, default=[16, 32])
    ap.add_argument("--kernels", nargs="+", default=["reference", "numba"])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "train_epoch.json"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    from atomsim.training.data import read_frames
    from atomsim.training.trainer import atoms_to_sample

    t = time.time()
    frames = read_frames(a.data)
    idx = np.random.default_rng(1).permutation(len(frames))[: a.structures]
    samples = [atoms_to_sample(frames[i], 5.0) for i in idx]
    print(f"read {len(frames)} frames in {time.time() - t:.1f} s; timing {len(samples)} structures "
          f"({sum(s.n_atoms for s in samples)} atoms)", flush=True)
    rows = []
    for shape in a.shapes:
        w, d = (int(x) for x in shape.split("x"))
        for bs in a.batches:
            for kern in a.kernels:
                r = epoch_cost(samples, w, d, bs, kern)
                r["epoch_cpu_min"] = r["cpu_s"] * a.train_structures / len(samples) / 60
                rows.append(r)
                print(f"width {w} depth {d} batch {bs:3d} kernels {kern:9s}: {r['epoch_cpu_min']:.2f} CPU-min "
                      f"per epoch ({', '.join(f'{k} {v:.2f}' for k, v in r['parts_cpu_s'].items())} s)", flush=True)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    doc = {"benchmark": "train_epoch", "command": "python benchmarks/train_epoch/run.py " + " ".join(
               f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
               for k, v in vars(a).items() if k != "out"),
           "machine": {"cpu": cpu, "cores": os.cpu_count()}, "threads": 1, "load_average": os.getloadavg(),
           "versions": {"torch": torch.__version__, "numpy": np.__version__}, "rows": rows,
           "note": "process CPU seconds on a subset, scaled to the training split; NUMBA_NUM_THREADS=1"}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
