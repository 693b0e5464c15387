"""GPU neighbor-list benchmark: the array-API cell list under cupy.

Measures pairs/s of ``atomsim.kernels.neighbors_array_api.neighbor_list`` on
CUDA for fcc Cu (a = 3.61 Å, cutoff 5 Å) at ~32k / 256k / 1M atoms (full
list, 'ijS'), checks the pairs against the Numba CPU list (same order, so the
arrays must be equal element for element), and checks that the DLPack
hand-off to torch is zero-copy. Target: >= 5e8 pairs/s at >= 256k atoms.

Self-contained: runs from a plain checkout (maps ``atomsim.kernels`` to
./kernels when atomsim is not installed), and exits 0 with a JSON saying why
when cupy or a GPU is missing.

    python benchmarks/neighbors/bench_neighbors_gpu.py [--sizes 32000 256000 1000000]

JSON goes to $OUT (if set) else benchmarks/results/neighbors_gpu_<host>.json.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import socket
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CUTOFF = 5.0


def _import_kernels():
    """atomsim.kernels from the install, or from this checkout's ./kernels."""
    try:
        import atomsim.kernels.neighbors_array_api  # noqa: F401
    except ImportError:
        for name in [m for m in sys.modules if m == "atomsim" or m.startswith("atomsim.")]:
            del sys.modules[name]
        pkg = types.ModuleType("atomsim")
        pkg.__path__ = [str(ROOT / "atomsim")]
        sys.modules["atomsim"] = pkg
        kpkg = types.ModuleType("atomsim.kernels")
        kpkg.__path__ = [str(ROOT / "kernels")]
        sys.modules["atomsim.kernels"] = kpkg
        pkg.kernels = kpkg
    import atomsim.kernels.neighbors_array_api as xp_nl
    import atomsim.kernels.neighbors_cupy as raw_nl

    return xp_nl, raw_nl


def fcc_cubic(n_target: int):
    """fcc Cu, cubic cell, repeated to about n_target atoms (numpy only: no ASE needed)."""
    rep = max(1, round((n_target / 4) ** (1 / 3)))
    a = 3.61
    basis = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    g = np.stack(np.meshgrid(*[np.arange(rep)] * 3, indexing="ij"), -1).reshape(-1, 1, 3)
    pos = ((g + basis[None]) * a).reshape(-1, 3)
    return pos, np.eye(3) * a * rep


def out_path(host: str) -> Path:
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / f"neighbors_gpu_{host}.json"
    return ROOT / "benchmarks" / "results" / f"neighbors_gpu_{host}.json"


def write(doc, host):
    path = out_path(host)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))
    print(f"wrote {path}")


def gpu_available():
    """(cupy module, None) or (None, reason)."""
    try:
        import cupy as cp
    except Exception as exc:  # noqa: BLE001 - any import failure means "no cupy here"
        return None, f"cupy not importable: {exc!r}"
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            return None, "no CUDA device"
        (cp.arange(4) + 1).sum().item()
    except Exception as exc:  # noqa: BLE001
        return None, f"CUDA not usable: {exc!r}"
    return cp, None


def check_random_systems(cp, gpu_nl, numba_nl, n_systems=40, seed=0):
    """cupy list == Numba list (itself tested against ASE) on awkward random systems."""
    rng = np.random.default_rng(seed)
    bad = []
    for k in range(n_systems):
        kind = k % 4
        pbc = rng.random(3) < 0.6
        if kind == 0:
            cell = np.diag(rng.uniform(3, 9, 3))
        elif kind == 1:  # strongly skewed triclinic
            cell = np.diag(rng.uniform(3, 9, 3)) + np.tril(rng.uniform(-6, 6, (3, 3)), -1)
        elif kind == 2:  # thinner than the cutoff
            cell = np.diag(rng.uniform(0.8, 2.0, 3)) + np.triu(rng.uniform(-1, 1, (3, 3)), 1)
        else:  # cluster, zero cell
            cell, pbc = np.zeros((3, 3)), np.zeros(3, bool)
        n = int(rng.integers(0, 200 if kind != 2 else 20))
        pos = rng.uniform(-0.3, 1.3, (n, 3)) @ (cell if kind != 3 else np.eye(3) * 8)
        cutoff = float(rng.uniform(0.5, 4.0))
        for half in (False, True):
            a = numba_nl(pos, cell, pbc, cutoff, half=half)
            b = [x.get() for x in gpu_nl(cp.asarray(pos), cell, pbc, cutoff, half=half)]
            if not all(np.array_equal(x, y) for x, y in zip(a, b)):
                bad.append(dict(system=k, half=half, n=n, pairs_numba=len(a[0]), pairs_gpu=len(b[0])))
    return bad or True


def time_gpu(cp, fn, repeats):
    ts = []
    for _ in range(repeats):
        cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        out = fn()
        cp.cuda.Device().synchronize()
        ts.append(time.perf_counter() - t0)
        del out
    return ts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32000, 256000, 1000000])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-candidates", type=int, nargs="+", default=[1 << 24, 1 << 26],
                    help="candidate-batch sizes to try (device memory vs fewer launches)")
    ap.add_argument("--no-check", action="store_true", help="skip the comparison with the Numba list")
    args = ap.parse_args(argv)
    host = socket.gethostname()
    doc = dict(benchmark="neighbors_gpu", command=" ".join([sys.executable] + sys.argv),
               cutoff_A=CUTOFF, host=host, platform=platform.platform(), results=[])
    cp, why = gpu_available()
    if cp is None:
        print(f"GPU benchmark skipped: {why}")
        doc["skipped"] = why
        write(doc, host)
        return 0
    xp_nl, raw_nl = _import_kernels()
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    doc["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    doc["cupy"] = cp.__version__
    try:
        import array_api_compat

        doc["array_api_compat"] = array_api_compat.__version__
    except ImportError:
        pass
    try:
        from atomsim.kernels.neighbors import neighbor_list as numba_nl
    except Exception as exc:  # noqa: BLE001 - numba missing: still time the GPU
        numba_nl = None
        doc["numba_check_unavailable"] = repr(exc)

    variants = {f"arrayapi-batch{mc}": (lambda p, c, b, r, half=False, mc=mc:
                                          xp_nl.neighbor_list(p, c, b, r, half=half, max_candidates=mc))
                for mc in args.max_candidates}
    variants["rawkernel"] = raw_nl.neighbor_list
    if numba_nl is not None and not args.no_check:
        for name in ("rawkernel", f"arrayapi-batch{args.max_candidates[0]}"):
            try:
                res = check_random_systems(cp, variants[name], numba_nl)
            except Exception as exc:  # noqa: BLE001 - record and go on
                res = f"error: {exc!r}"
            doc[f"random_systems_identical_to_numba_{name}"] = res
            print(f"{name}: random systems (triclinic, mixed pbc, small cells, clusters; full+half) "
                  f"identical to the Numba list: {res}", flush=True)
    # warm-up: cupy kernel compilation (cached per process) outside the timings
    pos_w, cell_w = fcc_cubic(4000)
    for fn in variants.values():
        try:
            fn(cp.asarray(pos_w), cell_w, True, CUTOFF)
        except Exception as exc:  # noqa: BLE001
            print(f"warm-up failed: {exc!r}")
    for n_target in args.sizes:
        pos, cell = fcc_cubic(n_target)
        n = len(pos)
        pos_d = cp.asarray(pos)
        ref = None
        if numba_nl is not None and not args.no_check:
            ref = numba_nl(pos, cell, True, CUTOFF)
        for name, fn in variants.items():
            row = dict(n_atoms=n, variant=name)
            try:
                i, j, S = fn(pos_d, cell, True, CUTOFF)
                n_pairs = int(i.shape[0])
                row["n_pairs"] = n_pairs
                if ref is not None:
                    row["pairs_identical_to_numba"] = bool(
                        np.array_equal(ref[0], i.get()) and np.array_equal(ref[1], j.get())
                        and np.array_equal(ref[2], S.get()))
                try:
                    import torch

                    ti = torch.from_dlpack(i)
                    row["dlpack_zero_copy"] = bool(ti.data_ptr() == i.data.ptr and ti.is_cuda)
                except Exception as exc:  # noqa: BLE001 - torch optional here
                    row["dlpack_zero_copy"] = f"not checked: {exc!r}"
                del i, j, S
                cp.get_default_memory_pool().free_all_blocks()
                ts = time_gpu(cp, functools.partial(fn, pos_d, cell, True, CUTOFF), args.repeats)
                med = statistics.median(ts)
                row.update(wall_s=ts, median_s=med, pairs_per_s=n_pairs / med,
                           pool_bytes=int(cp.get_default_memory_pool().total_bytes()))
                print(f"{n:9d} atoms  {name:24s} {med * 1e3:9.2f} ms  {n_pairs / med:.3e} pairs/s  "
                      f"identical={row.get('pairs_identical_to_numba')}  dlpack={row['dlpack_zero_copy']}",
                      flush=True)
            except Exception as exc:  # noqa: BLE001 - record (e.g. out of memory) and go on
                row["error"] = repr(exc)
                print(f"{n} atoms, {name}: {exc!r}", flush=True)
            doc["results"].append(row)
            cp.get_default_memory_pool().free_all_blocks()
        del ref
    best = [r for r in doc["results"] if r.get("n_atoms", 0) >= 256_000 and "pairs_per_s" in r]
    if best:
        top = max(r["pairs_per_s"] for r in best)
        doc["target_5e8_pairs_per_s_at_256k_plus"] = dict(best_pairs_per_s=top, met=top >= 5e8)
        print(f"best at >= 256k atoms: {top:.3e} pairs/s (target 5e8)")
    write(doc, host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
