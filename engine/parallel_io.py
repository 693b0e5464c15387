"""Whole-system output from a decomposed run: gather to rank 0, or per-rank shards at scale.

Trajectory frames and restarts describe the whole system sorted by atom id,
so a file written on N ranks reads back on any M (``read_restart_owned``
keeps the atoms a rank owns). Up to ``GATHER_LIMIT`` atoms everything is
gathered to rank 0 (one ordinary file); beyond it each rank writes its own
shard ``<name>.rank<r>-of-<N>.npz`` and rank 0 an index, so no rank ever holds
the whole system.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Optional

import numpy as np

GATHER_LIMIT = 5_000_000  # atoms; above this, per-rank shards


def gather_by_id(comm, ids: np.ndarray, **arrays) -> Optional[Dict[str, np.ndarray]]:
    """Rank 0 gets every rank's rows concatenated and sorted by id (others get None). Collective."""
    parts = comm.gather({"ids": np.asarray(ids), **{k: np.asarray(v) for k, v in arrays.items()}}, root=0)
    if comm.Get_rank() != 0:
        return None
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(out["ids"], kind="stable")
    return {k: v[order] for k, v in out.items()}


def write_shards(comm, path, arrays: Dict[str, np.ndarray], meta: dict) -> Path:
    """Each rank writes its rows (sorted by id) atomically; rank 0 writes ``path`` as the index."""
    path = Path(path)
    rank, size = comm.Get_rank(), comm.Get_size()
    order = np.argsort(np.asarray(arrays["ids"]), kind="stable")
    shard = path.with_name(f"{path.stem}.rank{rank}-of-{size}.npz")
    tmp = shard.with_name(shard.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **{k: np.asarray(v)[order] for k, v in arrays.items()})
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, shard)
    n = comm.allreduce(int(order.shape[0]))
    comm.Barrier()  # every shard is in place before the index names them
    if rank == 0:
        index = {"format": "atomsim-shards", "n_shards": size, "n_atoms": n, "meta": meta,
                 "shards": [path.with_name(f"{path.stem}.rank{r}-of-{size}.npz").name for r in range(size)]}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(index))
        os.replace(tmp, path)
    comm.Barrier()
    return path


def read_shards_owned(path, keep) -> Dict[str, np.ndarray]:
    """Rows of every shard for which ``keep(arrays) -> bool mask`` holds (the atoms this rank owns)."""
    path = Path(path)
    index = json.loads(path.read_text())
    parts = []
    for name in index["shards"]:
        with np.load(path.with_name(name), allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        mask = keep(data)
        parts.append({k: v[mask] for k, v in data.items()})
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(out["ids"], kind="stable")
    return {k: v[order] for k, v in out.items()}
