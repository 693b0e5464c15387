"""Neighbor-list benchmark: atomsim (Numba cell list) vs vesin vs matscipy vs ASE.

Systems: fcc Cu a = 3.61 Å, cutoff 5 Å, ~4k / 32k / 256k / 1M atoms
(cubic cell), a 27k-atom primitive-cell (triclinic) crystal, and the 4-atom
cubic cell (cutoff > box: many periodic images). Every code returns the full
list ('ijS'); each code's pairs are checked identical (as sets) to atomsim's.

Timing: wall clock, median of --repeats runs, codes interleaved inside each
repeat so load from other processes hits them alike; CPU time is recorded too
(for one thread it is less sensitive to a busy machine). Peak memory: the rise
of the process's peak RSS (VmHWM, reset through /proc/self/clear_refs) over
the RSS before the call -- it counts C++/Numba allocations, which tracemalloc
does not see. ASE is skipped from 256k atoms up (pure numpy, tens of seconds).

    .venv/bin/python benchmarks/neighbors/bench_neighbors.py            # full run
    .venv/bin/python benchmarks/neighbors/bench_neighbors.py --quick    # 4k + small cases

Writes benchmarks/results/neighbors_<host>.json and a PNG of time vs N.
"""
from __future__ import annotations

import os
import sys

if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
    # Fixed mmap threshold: freed large arrays go back to the OS, so the peak-RSS
    # rise measured per call is that call's own (glibc's dynamic threshold would
    # keep freed buffers mapped and hide later peaks). Re-exec once with it set.
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "1048576"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from ase.build import bulk  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CUTOFF = 5.0


# ---------------------------------------------------------------- systems
def fcc_cubic(n_target: int):
    rep = max(1, round((n_target / 4) ** (1 / 3)))
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(rep)
    return f"fcc-cubic-{len(atoms)}", atoms


def systems(sizes, include_special=True):
    out = []
    for n in sizes:
        name, atoms = fcc_cubic(n)
        out.append(dict(name=name, kind="fcc-cubic", atoms=atoms))
    if include_special:
        prim = bulk("Cu", "fcc", a=3.61).repeat(30)  # 27,000 atoms, 60° triclinic cell
        out.append(dict(name=f"fcc-primitive-triclinic-{len(prim)}", kind="triclinic", atoms=prim))
        small = bulk("Cu", "fcc", a=3.61, cubic=True)  # 4 atoms, box 3.61 Å < cutoff
        out.append(dict(name="fcc-cubic-4-small-cell", kind="small-cell", atoms=small))
    return out


# ---------------------------------------------------------------- codes
def run_atomsim(threads):
    import numba

    from atomsim.kernels.neighbors import neighbor_list

    def f(pos, cell, pbc, cutoff):
        numba.set_num_threads(threads)
        return neighbor_list(pos, cell, pbc, cutoff)
    return f


def run_atomsim_xp(pos, cell, pbc, cutoff):
    from atomsim.kernels.neighbors_array_api import neighbor_list

    return neighbor_list(pos, cell, pbc, cutoff)


def run_vesin(threads):
    from vesin import NeighborList

    def f(pos, cell, pbc, cutoff):
        nl = NeighborList(cutoff=cutoff, full_list=True, sorted=True, n_threads=threads)
        return nl.compute(pos, cell, pbc, "ijS")
    return f


def run_matscipy(pos, cell, pbc, cutoff):
    from matscipy.neighbours import neighbour_list

    return neighbour_list("ijS", positions=pos, cell=cell, pbc=pbc, cutoff=cutoff)


def run_ase(pos, cell, pbc, cutoff):
    from ase.neighborlist import primitive_neighbor_list

    return primitive_neighbor_list("ijS", pbc, cell, pos, cutoff, self_interaction=False)


def codes(threads_list, have_vesin, have_matscipy):
    out = []
    for t in threads_list:
        out.append((f"atomsim-numba-{t}t", t, run_atomsim(t)))
    for t in threads_list:
        if have_vesin:
            out.append((f"vesin-{t}t", t, run_vesin(t)))
    if have_matscipy:
        out.append(("matscipy-1t", 1, run_matscipy))
    out.append(("ase-1t", 1, run_ase))
    out.append(("atomsim-arrayapi-numpy-1t", 1, run_atomsim_xp))
    return out


def skip_reason(code: str, n_atoms: int, kind: str):
    if code.startswith("ase") and n_atoms >= 256_000:
        return "ASE skipped at >= 256k atoms (pure numpy, far too slow)"
    if code.startswith("atomsim-arrayapi") and n_atoms > 40_000:
        return "array-API (numpy) version timed only up to 32k atoms (it targets cupy)"
    return None


# ---------------------------------------------------------------- helpers
def canonical_keys(i, j, S, n, smax):
    """One int64 per pair, sorted: equal arrays <=> equal pair sets."""
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    S = np.asarray(S, dtype=np.int64) + smax
    w = 2 * smax + 1
    if float(n) * n * w**3 >= 2.0**62:
        raise OverflowError("pair keys do not fit in int64")
    key = ((i * n + j) * w + S[:, 0]) * w * w + S[:, 1] * w + S[:, 2]
    key.sort()
    return key


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    return -1


def peak_extra_mb(fn, *args):
    """Rise of peak RSS during fn(*args) over the RSS before it, in MB (None if unsupported)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
    except OSError:
        return None
    before = _status_kb("VmRSS:")
    out = fn(*args)
    peak = _status_kb("VmHWM:")
    del out
    return (peak - before) / 1024.0


def machine_info():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import ase
    import numba

    info = dict(host=socket.gethostname(), platform=platform.platform(), cpu=model,
                n_cpus=os.cpu_count(), python=sys.version.split()[0], numpy=np.__version__,
                numba=numba.__version__, numba_threading_layer=None, ase=ase.__version__)
    for mod in ("vesin", "matscipy", "array_api_compat"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional comparison codes
            info[mod] = None
    return info


# ---------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4000, 32000, 256000, 1000000])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="4k atoms + the special cases, 3 repeats")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--tag", default=None, help="file name suffix (default: host name)")
    ap.add_argument("--codes", nargs="+", default=None,
                    help="only codes whose name starts with one of these (e.g. atomsim-numba vesin)")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes = [4000]
    try:
        import vesin  # noqa: F401
        have_vesin = True
    except ImportError:
        have_vesin = False
    try:
        import matscipy.neighbours  # noqa: F401
        have_matscipy = True
    except ImportError:
        have_matscipy = False
    import numba

    info = machine_info()
    info["numba_max_threads"] = numba.config.NUMBA_NUM_THREADS
    info["loadavg_start"] = os.getloadavg()
    code_list = codes(args.threads, have_vesin, have_matscipy)
    if args.codes:
        code_list = [c for c in code_list if any(c[0].startswith(p) for p in args.codes)]

    # JIT warm-up (compile or load the cache) outside every timing
    warm = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(12)
    for name, _threads, fn in code_list:
        if not skip_reason(name, len(warm), "fcc-cubic"):
            fn(warm.positions, warm.cell.array, warm.pbc, CUTOFF)
    try:
        info["numba_threading_layer"] = numba.threading_layer()
    except ValueError:
        pass
    results = []
    for sysd in systems(args.sizes):
        atoms = sysd["atoms"]
        pos, cell, pbc = atoms.positions, atoms.cell.array, atoms.pbc
        n = len(atoms)
        ref = run_atomsim(1)(pos, cell, pbc, CUTOFF)
        n_pairs = len(ref[0])
        smax = int(np.abs(ref[2]).max()) + 2
        ref_keys = canonical_keys(*ref, n, smax)
        del ref
        print(f"\n== {sysd['name']}: {n} atoms, {n_pairs} pairs (cutoff {CUTOFF} Å)", flush=True)
        active = []
        for name, threads, fn in code_list:
            why = skip_reason(name, n, sysd["kind"])
            if why:
                results.append(dict(system=sysd["name"], kind=sysd["kind"], n_atoms=n, code=name,
                                    threads=threads, skipped=why))
                continue
            out = fn(pos, cell, pbc, CUTOFF)
            same = len(out[0]) == n_pairs and np.array_equal(canonical_keys(*out, n, smax), ref_keys)
            del out
            active.append(dict(name=name, threads=threads, fn=fn, same=bool(same), wall=[], cpu=[]))
        del ref_keys
        for _ in range(args.repeats):
            for a in active:
                c0, t0 = time.process_time(), time.perf_counter()
                out = a["fn"](pos, cell, pbc, CUTOFF)
                t1, c1 = time.perf_counter(), time.process_time()
                del out
                a["wall"].append(t1 - t0)
                a["cpu"].append(c1 - c0)
        for a in active:
            mem = peak_extra_mb(a["fn"], pos, cell, pbc, CUTOFF)
            med = statistics.median(a["wall"])
            row = dict(system=sysd["name"], kind=sysd["kind"], n_atoms=n, n_pairs=n_pairs,
                       code=a["name"], threads=a["threads"], pairs_identical=a["same"],
                       wall_s=a["wall"], cpu_s=a["cpu"], median_wall_s=med,
                       median_cpu_s=statistics.median(a["cpu"]),
                       pairs_per_s=n_pairs / med, ns_per_atom=1e9 * med / n, peak_extra_mb=mem)
            results.append(row)
            print(f"  {a['name']:28s} {med * 1e3:10.2f} ms  cpu {row['median_cpu_s'] * 1e3:10.2f} ms  "
                  f"{row['pairs_per_s'] / 1e6:8.1f} Mpairs/s  {row['ns_per_atom']:8.1f} ns/atom  "
                  f"mem {mem if mem is None else round(mem)} MB  same={a['same']}", flush=True)
        save(args, info, results)  # after every system: a timeout still leaves numbers
    summary = save(args, info, results)
    print("\nTargets:")
    for k, v in summary.items():
        print(f"  {k}: {v}")
    tag = args.tag or info["host"]
    print(f"\nwrote {args.out / f'neighbors_{tag}.json'}")
    plot(results, args.out / f"neighbors_{tag}.png", info)


def save(args, info, results):
    info["loadavg_end"] = os.getloadavg()
    summary = targets(results)
    tag = args.tag or info["host"]
    args.out.mkdir(parents=True, exist_ok=True)
    doc = dict(benchmark="neighbors", command=" ".join([sys.executable] + sys.argv),
               cutoff_A=CUTOFF, repeats=args.repeats, machine=info,
               note=("wall time is the median over repeats; the machine may be shared and noisy "
                     "(see loadavg); cpu_s is process CPU time"),
               targets=summary, results=results)
    (args.out / f"neighbors_{tag}.json").write_text(json.dumps(doc, indent=1))
    return summary


def _median_of(results, system_kind, code, n=None):
    rows = [r for r in results if r.get("kind") == system_kind and r["code"] == code
            and "median_wall_s" in r and (n is None or r["n_atoms"] == n)]
    return rows


def targets(results):
    """The CPU targets (1 thread vs vesin, 2-thread speed-up, flat per-atom time), evaluated on this run."""
    out = {}
    fcc = sorted({r["n_atoms"] for r in results if r["kind"] == "fcc-cubic"})

    def t(code, n):
        rows = _median_of(results, "fcc-cubic", code, n)
        return rows[0]["median_wall_s"] if rows else None

    for n in fcc:
        if n < 20_000:
            continue
        a, v = t("atomsim-numba-1t", n), t("vesin-1t", n)
        if a and v:
            out[f"1 thread atomsim <= vesin at {n}"] = dict(atomsim_s=a, vesin_s=v, ratio=a / v, met=a <= v)
    big = [n for n in fcc if n >= 200_000]
    for n in big[:1]:
        a1, a2 = t("atomsim-numba-1t", n), t("atomsim-numba-2t", n)
        if a1 and a2:
            out[f"2 threads >= 1.7x faster than 1 at {n}"] = dict(speedup=a1 / a2, met=a1 / a2 >= 1.7)
    per_atom = {n: t("atomsim-numba-1t", n) / n for n in fcc if n >= 30_000 and t("atomsim-numba-1t", n)}
    if len(per_atom) >= 2:
        vals = list(per_atom.values())
        spread = max(vals) / min(vals) - 1
        out["1 thread time per atom flat within 25% from 32k up"] = dict(
            ns_per_atom={str(k): 1e9 * v for k, v in per_atom.items()}, spread=spread, met=spread <= 0.25)
    out["all pairs identical"] = all(r.get("pairs_identical", True) for r in results)
    return out


def plot(results, path, info):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    codes_ = sorted({r["code"] for r in results if "median_wall_s" in r})
    for code in codes_:
        rows = sorted(_median_of(results, "fcc-cubic", code), key=lambda r: r["n_atoms"])
        if not rows:
            continue
        ns = [r["n_atoms"] for r in rows]
        ts = [r["median_wall_s"] for r in rows]
        style = "-o" if code.startswith("atomsim") else "--s"
        ax.loglog(ns, ts, style, label=code)
        ax2.semilogx(ns, [1e9 * t / n for t, n in zip(ts, ns)], style, label=code)
    ax.set_xlabel("atoms (fcc Cu, cutoff 5 Å)")
    ax.set_ylabel("median wall time (s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax2.set_xlabel("atoms")
    ax2.set_ylabel("ns per atom")
    ax2.set_yscale("log")
    ax2.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"Full neighbor list, {info['cpu']} ({info['n_cpus']} cpus, shared)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
