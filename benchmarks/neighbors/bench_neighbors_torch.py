"""CPU build time of the torch-native cell list (kernels/neighbors_torch.py) against the Numba list.

Why: the torch list exists for GPUs (any torch device, static-shape buffers for CUDA graphs);
on CPU it is not expected to win, and this records by how much it loses, so nobody picks it
there by accident. The engine's list (fcc Cu, cutoff 5 Å + skin 1 Å, full list); the two codes
interleaved inside each repeat (median of --repeats), same threads for both; pair counts checked
equal. The GPU comparison (CuPy vs torch) is made by benchmarks/gpu/md_end_to_end.py.

    .venv/bin/python benchmarks/neighbors/bench_neighbors_torch.py --sizes 4000 32000 --threads 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from ase.build import bulk

from atomsim.bench.weak_scaling import machine_info
from atomsim.kernels import neighbors_torch as nt
from atomsim.kernels.neighbors import neighbor_list_csr
from atomsim.kernels.threads import configure_threads

ROOT = Path(__file__).resolve().parents[2]


def fcc(n_target: int):
    r = max(1, round((n_target / 4) ** (1 / 3)))
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(r)
    atoms.rattle(0.05, seed=1)
    return atoms.positions.copy(), atoms.cell.array.copy()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4000, 32000])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cutoff", type=float, default=6.0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "neighbors_torch_cpu.json")
    args = ap.parse_args(argv)
    configure_threads(args.threads)
    rows = []
    for n in args.sizes:
        pos, cell = fcc(n)
        tpos = torch.from_numpy(pos)
        ref = neighbor_list_csr(pos, cell, True, args.cutoff)  # compile / warm-up
        buf = nt.allocate(tpos, cell, True, args.cutoff)
        times = {"numba": [], "torch": [], "torch_static_update": []}
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            ref = neighbor_list_csr(pos, cell, True, args.cutoff)
            times["numba"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            got = nt.neighbor_list_csr(tpos, cell, True, args.cutoff)
            times["torch"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            nt.update(buf, tpos, cell, True, args.cutoff)
            times["torch_static_update"].append(time.perf_counter() - t0)
        assert np.array_equal(got[1].numpy(), ref[1]) and int(buf.n_edges) == len(ref[1])
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"n_atoms": len(pos), "n_pairs": len(ref[1]), "median_s": med, "all_s": times,
               "torch_over_numba": med["torch"] / med["numba"],
               "pairs_per_s": {k: len(ref[1]) / v for k, v in med.items()}}
        rows.append(row)
        print(f"{len(pos):>8d} atoms {len(ref[1]):>10d} pairs  numba {med['numba']:.3f} s  torch "
              f"{med['torch']:.3f} s ({row['torch_over_numba']:.1f}x)  torch static update "
              f"{med['torch_static_update']:.3f} s", flush=True)
    report = {"benchmark": "neighbors_torch_cpu", "command": " ".join([sys.executable, *sys.argv]),
              "system": "fcc Cu a=3.61 rattled 0.05, periodic, full list", "cutoff_A": args.cutoff,
              "threads": args.threads, "repeats": args.repeats, "machine": machine_info(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print("wrote", args.out)
    return report


if __name__ == "__main__":
    main()
