"""Restart write/read bandwidth: sharded (engine/parallel_io.py) vs the gathered single file.

For each system size and rank count: every rank owns a slab of atoms (grid [N, 1, 1]) and writes its
restart shard (ids, positions, velocities, masses, numbers, list reference positions: 96 B/atom);
rank 0 writes the manifest. Then every rank reads back its own atoms (``ShardedRestart.to_state``
with its sub-domain), after the shards' pages were dropped from the page cache
(``posix_fadvise(DONTNEED)`` on each shard: the read goes to the disk, or to whatever cache the
virtual disk below has). Bandwidth = shard bytes / slowest rank's wall time. Interleaved with it,
the gathered path of ``output.parallel: gather``: gather to rank 0 + ``numpy.savez`` + fsync, the
old resume (every rank loads the whole .npz), and the disk's own pace for the same bytes (one write +
fsync, one cold read per rank). Median of ``--repeats``.

    .venv/bin/python benchmarks/parallel_io/bench_parallel_io.py            # drives 1 and 2 ranks
    (writes benchmarks/results/parallel_io.json)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results" / "parallel_io.json"


def _drop_cache(paths) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _slab(n: int, rank: int, size: int, rng) -> tuple[dict, np.ndarray]:
    """This rank's atoms of an n-atom box at Cu density, slab x in [rank/size, (rank+1)/size)."""
    L = (n / 0.0847) ** (1 / 3)
    cell = np.eye(3) * L
    lo, hi = rank * n // size, (rank + 1) * n // size
    m = hi - lo
    frac = rng.random((m, 3))
    frac[:, 0] = (rank + frac[:, 0] * 0.999) / size
    pos = frac @ cell
    arrays = {"ids": np.arange(lo, hi, dtype=np.int64), "positions": pos,
              "velocities": rng.normal(size=(m, 3)) * 0.01, "masses": np.full(m, 63.546),
              "numbers": np.full(m, 29, dtype=np.int64), "nl_positions": pos + 1e-3}
    return arrays, cell


def worker(args) -> None:
    from atomsim.engine import parallel_io as pio
    from atomsim.engine.comm import world_comm
    from atomsim.engine.restart import Restart, ShardedRestart, write_restart

    comm = world_comm()
    rank, size = comm.rank, comm.size
    root = Path(comm.bcast(tempfile.mkdtemp(prefix="pario-", dir=args.dir) if rank == 0 else None))
    out = []
    for n in args.atoms:
        arrays, cell = _slab(n, rank, size, np.random.default_rng(rank))
        pbc = (True, True, True)
        rows = {"write_s": [], "read_s": [], "gather_write_s": [], "npz_read_s": [], "raw_write_s": [],
                "raw_read_s": []}
        nbytes = npz_bytes = 0
        for rep in range(args.repeats):
            meta = {"restart_version": 1, "step": rep, "config_hash": "bench", "physics_config": {},
                    "integrator": "nve", "integrator_state": {}, "n_neighbor_builds": 0,
                    "neighbor_cell": cell.tolist()}
            # sharded write
            comm.barrier()
            t = time.perf_counter()
            path = pio.write_sharded_restart(comm, root, arrays, meta, cell, pbc)
            rows["write_s"].append(comm.allreduce_max(time.perf_counter() - t))
            m = json.loads(path.read_text())
            nbytes = sum(s["bytes"] for s in m["shards"])
            _drop_cache([root / m["folder"] / pio.shard_name(rank, size)])
            # sharded read: each rank its own sub-domain's atoms
            comm.barrier()
            t = time.perf_counter()
            r = ShardedRestart(path)
            owner = pio.SubDomain(cell, pbc, comm, (size, 1, 1)) if size > 1 else None
            st = r.to_state(owner=owner)
            rows["read_s"].append(comm.allreduce_max(time.perf_counter() - t))
            assert int(comm.allreduce_sum(st.n_local)) == n
            del st, r
            # gathered: rank 0 gathers everything and writes one .npz; every rank reads it whole
            comm.barrier()
            t = time.perf_counter()
            g = comm.gather_by_id(arrays["ids"], **{k: v for k, v in arrays.items() if k != "ids"})
            if rank == 0:
                full = {k: g[k] for k in ("positions", "velocities", "masses", "numbers", "ids")}
                full.update(cell=cell, pbc=np.array(pbc))
                npz = write_restart(root, full, "nve", {}, {"positions": g["nl_positions"], "cell": cell}, rep, {})
                npz_bytes = npz.stat().st_size
            del g
            rows["gather_write_s"].append(comm.allreduce_max(time.perf_counter() - t))
            if rank == 0:
                _drop_cache([root / "restart.npz"])
            comm.barrier()
            t = time.perf_counter()
            Restart(root / "restart.npz")
            rows["npz_read_s"].append(comm.allreduce_max(time.perf_counter() - t))
            # the disk's own pace: the shard's bytes as one write + fsync, then one cold read
            raw = root / f"raw.{rank}"
            blob = np.random.default_rng(rep).bytes(nbytes // size)
            comm.barrier()
            t = time.perf_counter()
            with open(raw, "wb") as fh:
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
            rows["raw_write_s"].append(comm.allreduce_max(time.perf_counter() - t))
            _drop_cache([raw])
            comm.barrier()
            t = time.perf_counter()
            raw.read_bytes()
            rows["raw_read_s"].append(comm.allreduce_max(time.perf_counter() - t))
            raw.unlink()
            del blob
        med = {k: statistics.median(v) for k, v in rows.items()}
        res = {"atoms": n, "ranks": size, "shard_bytes": nbytes, "npz_bytes": npz_bytes,
               "bytes_per_atom": nbytes / n, **{k: round(v, 4) for k, v in med.items()},
               "write_MB_s": round(nbytes / med["write_s"] / 1e6, 1),
               "read_MB_s": round(nbytes / med["read_s"] / 1e6, 1),
               "gather_write_MB_s": round(npz_bytes / med["gather_write_s"] / 1e6, 1),
               "npz_read_MB_s": round(npz_bytes / med["npz_read_s"] / 1e6, 1),
               "raw_disk_write_MB_s": round(nbytes / med["raw_write_s"] / 1e6, 1),
               "raw_disk_read_MB_s": round(nbytes / med["raw_read_s"] / 1e6, 1), "repeats": rows}
        out.append(res)
        if rank == 0:
            print(f"{n:>9} atoms {size} rank(s): sharded write {res['write_MB_s']:7.0f} MB/s  read "
                  f"{res['read_MB_s']:7.0f} MB/s | gathered npz write {res['gather_write_MB_s']:7.0f} MB/s "
                  f" read (each rank, whole file) {res['npz_read_MB_s']:7.0f} MB/s | raw disk write "
                  f"{res['raw_disk_write_MB_s']:7.0f} read {res['raw_disk_read_MB_s']:7.0f} MB/s", flush=True)
    if rank == 0:
        Path(args.out).write_text(json.dumps(out))
        shutil.rmtree(root, ignore_errors=True)


def _machine() -> dict:
    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()}


def _versions() -> dict:
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    for pkg in ("numpy", "safetensors", "h5py", "mpi4py", "torch"):
        try:
            out[pkg] = version(pkg)
        except Exception:
            out[pkg] = None
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--atoms", type=lambda s: int(float(s)), nargs="+", default=[100_000, 1_000_000, 3_000_000])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="folder for the files (default: the system's temp folder)")
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    mpiexec = Path(sys.executable).parent / "mpiexec"
    load_before = os.getloadavg()
    runs = []
    for ranks in args.ranks:
        part = Path(tempfile.mktemp(suffix=".json"))
        cmd = [sys.executable, __file__, "--worker", "--out", str(part), "--repeats", str(args.repeats),
               "--atoms", *map(str, args.atoms)] + (["--dir", args.dir] if args.dir else [])
        if ranks > 1:
            cmd = [str(mpiexec), "-n", str(ranks), *cmd]
        subprocess.run(cmd, env=env, check=True)
        runs += json.loads(part.read_text())
        part.unlink()
    result = {"benchmark": "parallel_io", "what": __doc__.split("\n\n")[0],
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": _machine(),
              "versions": _versions(), "load_average_before": load_before,
              "load_average_after": os.getloadavg(), "temp_dir": args.dir or tempfile.gettempdir(),
              "goal_MB_s": 500, "results": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
