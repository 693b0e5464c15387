"""Performance model of one MD step: fitted on measured points, extrapolated to 10^5 ranks / 10^10 atoms.

Per rank and step (n owned atoms, g ghosts, P ranks):

    model      c_own n + c_gh g                          (fitted; full halo: ghosts within the
                                                          receiver depth count as owned work)
    neighbor   (c_nb (n + g) + c_gb g) / rebuild_every   (fitted on timed list/ghost rebuilds)
    halo+rev   E (t_ex + k g) + M alpha + B / beta + t_wait [P > 1]
                                                         (t_ex, k, t_wait fitted; alpha, beta from the
                                                          ping-pong probe; E exchanges, M off-rank
                                                          messages, B off-rank bytes per step)
    integ+io   c_int n + t_io + 3 alpha_ar(P)            (allreduce cost from the probe, x log2 P)
    sync       t_sync [P > 1]                            (fitted: waiting on the slowest rank)

Ghost count: g = rho ((L + 2h)^3 - L^3), L = (n / rho)^(1/3), halo depth h = cutoff + skin
(per-layer) or layers x cutoff + skin (full), the shell of a cube of side L. Memory per rank:
m0 + m_atom (n + g) (peak RSS, fitted). Every constant, its source and the assumptions are
returned with the predictions, so the JSON says what the numbers rest on.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
from scipy.optimize import nnls

# An HPC fabric for the at-scale predictions (assumed, typical InfiniBand HDR/NDR numbers): this
# 2-core box's shared-memory MPI, busy with other jobs, is not what a 10^5-rank machine has.
FABRIC = {"name": "HPC fabric (assumed: InfiniBand-class)", "latency_s": 2e-6, "bandwidth_B_per_s": 12e9,
          "allreduce_latency_per_log2P_s": 3e-6}
H100 = {"hbm_B_per_s": 3.35e12, "tf32_flops": 494e12, "memory_B": 80e9}


# ---------------------------------------------------------------- geometry --

def ghost_count(n_owned: float, density: float, depth: float) -> float:
    """Atoms in the shell of depth h around a cube holding n_owned atoms at the given density."""
    L = (n_owned / density) ** (1.0 / 3.0)
    return density * ((L + 2.0 * depth) ** 3 - L ** 3)


def halo_partners(n_owned: float, density: float, depth: float, ranks: int) -> int:
    """Ranks a sub-box exchanges with: the (2k+1)^3 - 1 neighbours within k = ceil(h/L) boxes."""
    L = (n_owned / density) ** (1.0 / 3.0)
    k = math.ceil(depth / L)
    return int(min(ranks - 1, (2 * k + 1) ** 3 - 1))


def depths(point: dict) -> dict:
    rc, skin, layers = point["cutoff_A"], point["skin_A"], point["layers"]
    return {"per-layer": rc + skin, "full": layers * rc + skin, "full_receivers": (layers - 1) * rc + skin}


# ------------------------------------------------------------------- fit --

def _slowest(p: dict) -> dict:
    return max(p["per_rank"], key=lambda r: r["step_total_s"])


def _nnls(X: Sequence[Sequence[float]], y: Sequence[float]) -> np.ndarray:
    """Non-negative least squares on relative errors (each row scaled by 1/y)."""
    X, y = np.asarray(X, float), np.asarray(y, float)
    w = 1.0 / np.maximum(np.abs(y), 1e-12)
    coef, _ = nnls(X * w[:, None], y * w)
    return coef


def _linear_marginal(n: Sequence[float], y: Sequence[float]):
    """y = c n + t by least squares on relative errors; c >= 0, t free (a single size: t = 0)."""
    n, y = np.asarray(n, float), np.asarray(y, float)
    if np.unique(n).size < 2:
        return float(max(np.mean(y / n), 0.0)), 0.0
    w = 1.0 / np.maximum(np.abs(y), 1e-12)
    (c, t), *_ = np.linalg.lstsq(np.stack([n, np.ones_like(n)], 1) * w[:, None], y * w, rcond=None)
    if c < 0:
        return float(max(np.mean(y / n), 0.0)), 0.0
    return float(c), float(t)


def _exchanges(p: dict) -> int:
    return 2 + 2 * int(_slowest(p)["halo_calls_per_step"])


def on_cpu_clock(p: dict) -> dict:
    """The point in dedicated-core time: every rank's parts scaled by its CPU seconds / wall seconds.

    On a shared machine a rank gets a fraction of a core (the rest goes to other jobs); its CPU
    seconds per step are what the step costs on a core of its own (MPI busy-polling included).
    """
    q = dict(p)
    ranks = []
    for r in p["per_rank"]:
        s = r["step_cpu_s"] / r["step_total_s"] if r.get("step_cpu_s") and r["step_total_s"] > 0 else 1.0
        r2 = dict(r)
        r2["breakdown_s"] = {k: v * s for k, v in r["breakdown_s"].items()}
        r2["rebuild_s"] = {k: v * s for k, v in r["rebuild_s"].items()}
        r2["step_total_s"] = r["step_total_s"] * s
        r2["core_share"] = s
        ranks.append(r2)
    q["per_rank"] = ranks
    q["step_time_s"] = max(r["step_total_s"] for r in ranks)
    return q


def fit(points: List[dict], network: dict, gpu_cost: Optional[dict] = None,
        results_dir: Optional[Path] = None, clock: str = "wall") -> dict:
    """Fit on the non-held-out, non-oversubscribed points; check fitted + held-out; predict at scale.

    ``clock="cpu"``: fit and check dedicated-core step times (see on_cpu_clock), the ones that
    carry over to a machine where each rank has its own core.
    """
    if clock == "cpu":
        points = [on_cpu_clock(p) for p in points]
    usable = [p for p in points if not p["oversubscribed"]]
    fitted = [p for p in usable if not p.get("heldout")]
    held = [p for p in usable if p.get("heldout")]
    if not fitted:
        raise ValueError("performance model: no fitted points (all oversubscribed or held out)")
    pp = network["pingpong"]
    alpha, beta = pp["latency_s"], pp["bandwidth_B_per_s"]
    ar = {x["doubles"]: x["median_s"] for x in network["allreduce"]["points"]}
    alpha_ar2 = ar.get(10, min(ar.values()))  # the energy/virial allreduce: 10 doubles, at 2 ranks

    S = [_slowest(p) for p in fitted]
    # per-layer: the layers run on edges into owned atoms, so cost ~ n_owned (+ a per-step constant);
    # ghosts only carry features in. The cost per atom grows with n while the activations outgrow the
    # caches, so c_own is the MARGINAL cost per atom (slope) and t_model may be negative (the
    # in-cache discount of small blocks): the slope is what carries over to large blocks
    c_own, t_model = _linear_marginal([r["n_owned"] for r in S], [r["breakdown_s"]["model"] for r in S])
    # below the measured sizes the line would go to zero: never cheaper per atom than the smallest block
    c_min = min(r["breakdown_s"]["model"] / max(r["n_owned"], 1) for r in S)
    c_gh = 0.0
    c_nb, = _nnls([[r["n_owned"] + r["n_ghost"]] for r in S], [r["rebuild_s"]["neighbor"] for r in S])
    c_gb, t_gb = _nnls([[r["n_ghost"], 1.0] for r in S], [r["rebuild_s"]["ghosts"] for r in S])
    comm_rows, net_measured = [], []
    for p, r in zip(fitted, S):
        E = _exchanges(p)
        net = r["offrank_messages_per_step"] * alpha + r["bytes_sent_offrank_per_step"] / beta
        comm_rows.append([E, E * r["n_ghost"], float(p["ranks"] > 1)])
        net_measured.append(net)
    comm_y = [r["breakdown_s"]["halo"] - r["rebuild_s"]["ghosts"] / p["rebuild_every"] + r["breakdown_s"]["reverse"]
              for p, r in zip(fitted, S)]
    comm_y = [y - n for y, n in zip(comm_y, net_measured)]  # alpha-beta cost from the probe, not fitted
    t_ex, k_row, t_wait = _nnls(comm_rows, comm_y)
    f_net = 1.0
    c_int, t_io = _nnls([[r["n_owned"], 1.0] for r in S],
                        [r["breakdown_s"]["integrate"] + r["breakdown_s"]["io"] for r in S])
    multi = [r["breakdown_s"]["sync"] for p, r in zip(fitted, S) if p["ranks"] > 1]
    single = [r["breakdown_s"]["sync"] for p, r in zip(fitted, S) if p["ranks"] == 1]
    t_sync1 = float(np.median(single)) if single else 0.0
    t_sync = float(np.median(multi)) if multi else t_sync1
    m_rows = [[1.0, r["n_owned"] + r["n_ghost"]] for r in S]
    m0, m_atom = _nnls(m_rows, [r["peak_rss_MB"] * 2**20 for r in S])

    p0 = fitted[0]
    coef = {"c_own_s_per_atom": float(c_own), "c_ghost_s_per_atom": float(c_gh), "t_model_s": float(t_model),
            "c_own_min_s_per_atom": float(c_min),
            "t_wait_exchange_s": float(t_wait),
            "c_neighbor_s_per_atom_per_build": float(c_nb), "c_ghost_build_s_per_ghost": float(c_gb),
            "t_ghost_build_s": float(t_gb), "t_exchange_s": float(t_ex), "k_exchange_s_per_ghost": float(k_row),
            "f_network": float(f_net), "c_integrate_io_s_per_atom": float(c_int), "t_io_s": float(t_io),
            "t_sync_1rank_s": t_sync1, "t_sync_multirank_s": t_sync, "memory_base_B": float(m0),
            "memory_B_per_local_atom": float(m_atom), "probed_latency_s": alpha, "probed_bandwidth_B_per_s": beta,
            "probed_allreduce_2ranks_s": alpha_ar2}
    shape = {k: p0[k] for k in ("cutoff_A", "skin_A", "layers", "width", "density_per_A3", "rebuild_every",
                                "timestep_fs", "potential", "dtype")}
    shape["halo_calls_per_step"] = int(S[0]["halo_calls_per_step"])

    def predict_measured(p: dict, from_geometry: bool = False) -> float:
        """Fitted points: their measured ghosts/bytes; held-out: ghosts from the shell formula, bytes
        and messages scaled from the fitted point with the same rank count (a prediction, not a re-fit)."""
        r = _slowest(p)
        E = _exchanges(p)
        n, g = r["n_owned"], r["n_ghost"]
        msgs, nbytes = r["offrank_messages_per_step"], r["bytes_sent_offrank_per_step"]
        if from_geometry:
            depth = depths(p)["per-layer" if p["halo"] == "per-layer" else "full"]
            g = ghost_count(n, p["density_per_A3"], depth)
            same = [(q, _slowest(q)) for q in fitted if q["ranks"] == p["ranks"]]
            if same:
                q, rq = min(same, key=lambda x: abs(x[1]["n_owned"] - n))
                msgs = rq["offrank_messages_per_step"]
                nbytes = rq["bytes_sent_offrank_per_step"] * g / max(
                    ghost_count(rq["n_owned"], q["density_per_A3"], depth), 1.0)
        net = msgs * alpha + nbytes / beta
        multi = p["ranks"] > 1
        return (max(c_own * n + t_model, c_min * n) + c_gh * g + (c_nb * (n + g) + c_gb * g + t_gb) / p["rebuild_every"]
                + E * (t_ex + k_row * g) + f_net * net + c_int * n + t_io
                + (t_sync + t_wait if multi else t_sync1))

    check = {"fitted": [], "heldout": []}
    for key, group in (("fitted", fitted), ("heldout", held)):
        for p in group:
            pred = predict_measured(p, from_geometry=(key == "heldout"))
            check[key].append({"ranks": p["ranks"], "atoms_per_rank": p["atoms_per_rank"],
                               "measured_s": p["step_time_s"], "predicted_s": pred,
                               "rel_error": pred / p["step_time_s"] - 1.0})
    check["fitted_max_rel_error"] = max(abs(x["rel_error"]) for x in check["fitted"])
    check["heldout_max_rel_error"] = max((abs(x["rel_error"]) for x in check["heldout"]), default=None)
    # geometry check: the shell formula against the measured ghost counts
    d = depths(p0)
    check["ghost_formula"] = [{"ranks": p["ranks"], "n_owned": _slowest(p)["n_owned"],
                               "measured": _slowest(p)["n_ghost"],
                               "formula": ghost_count(_slowest(p)["n_owned"], p["density_per_A3"],
                                                      d["per-layer" if p["halo"] == "per-layer" else "full"]),
                               } for p in usable]

    model = {"clock": clock, "coefficients": coef, "shape": shape, "check": check}
    gpu = gpu_cost or gpu_per_atom_cost(shape, coef, results_dir)
    model["gpu"] = gpu
    model["predictions"] = predict_grid(model)
    model["ten_billion"] = ten_billion(model)
    model["assumptions"] = ASSUMPTIONS
    return model


ASSUMPTIONS = [
    "CPU rank = one core of this machine's CPU, 1 thread: c_own etc. are fitted on dedicated-core times "
    "(each rank's CPU seconds per step), not on the wall clock of this shared 2-core box.",
    "GPU rank = one H100: model cost per atom = edges/atom x layers x measured fused-kernel time per edge "
    "(x1.5 for node/readout/scatter work) + 10% of that per ghost + 2 ms per step of launches/host work; "
    "neighbor list at the measured H100 cell-list rate; 20 us per exchange for device-side packing.",
    "Ghosts fill the shell of depth h around a cubic sub-box at the crystal's density; all ghosts come from other "
    "ranks once P >= 27 (3D grid), exchanging with (2k+1)^3-1 neighbours, k = ceil(h/L).",
    "Full halo: ghosts within (layers-1) x cutoff + skin of the sub-box also run the message-passing layers "
    "(they are receivers), so they cost c_own each; per-layer: only owned atoms are receivers.",
    "At scale the network is an assumed HPC fabric (2 us latency, 12 GB/s per rank, allreduce 3 us x log2 P) "
    "(alpha-beta cost, not fitted); the probed values of this box are reported beside it.",
    "Waiting on the slowest rank (t_sync at the step's allreduce + t_wait inside exchanges, fitted at 2 ranks on a "
    "shared machine) is kept constant with P; "
    "real jitter grows slowly with P (optimistic).",
    "Neighbor list + ghost rebuild every rebuild_every steps; 1 fs time step for ns/day.",
    "Memory per rank: m0 + m_atom (n + g) (peak RSS fitted here); GPU: same bytes per local atom on the device "
    "+ 2 GB context, 80 GB per H100.",
]


# ---------------------------------------------------------------- GPU cost --

def gpu_per_atom_cost(shape: dict, coef: dict, results_dir: Optional[Path] = None) -> dict:
    """Seconds per atom-step on one H100 for the model's shape, with the source it comes from.

    Measured (benchmarks/results/kernels_message_passing_h100.json: fused Triton edge kernel,
    forward+backward, MD mode) when that file is present; else a bandwidth estimate.
    """
    F, L = max(int(shape.get("width") or 64), 1), max(int(shape["layers"]), 1)
    edges = 4.0 / 3.0 * math.pi * shape["cutoff_A"] ** 3 * shape["density_per_A3"]  # within the cutoff
    pairs = 4.0 / 3.0 * math.pi * (shape["cutoff_A"] + shape["skin_A"]) ** 3 * shape["density_per_A3"]
    neigh = json_find(results_dir, "neighbors_gpu_h100.json")
    pairs_per_s = 2.1e9
    src_nb = "assumed 2.1e9 pairs/s"
    if neigh is not None:
        src_nb = "benchmarks/results/neighbors_gpu_h100.json (raw CuPy cell list at 1M atoms: ~2.1e9 pairs/s)"
    kern = json_find(results_dir, "kernels_message_passing_h100.json")
    per_edge_layer, src = None, None
    if kern is not None:
        per_edge_layer, src = _edge_cost_from_kernels(kern, F)
    if per_edge_layer is None:
        # forward + input-gradient backward of the edge MLP touches ~12 F-wide fp32 rows per edge per layer
        per_edge_layer = 12 * F * 4 / (0.5 * H100["hbm_B_per_s"])
        src = ("estimate: 12 x F x 4 B moved per edge per layer (fwd+bwd) at 50% of the H100's 3.35 TB/s "
               "(no measured H100 GNN step in benchmarks/results)")
    per_atom = edges * L * per_edge_layer * 1.5  # x1.5: node updates, readout, force scatter
    nb = pairs / pairs_per_s / shape["rebuild_every"]
    return {"s_per_atom_step": per_atom + nb, "model_s_per_atom": per_atom, "neighbor_s_per_atom": nb,
            "edges_per_atom": edges, "source_model": src, "source_neighbor": src_nb,
            "step_overhead_s": 2e-3,
            "step_overhead_note": "assumed: ~2 ms of kernel launches + host work per step (eager PyTorch)",
            "memory_B_per_local_atom": coef["memory_B_per_local_atom"], "memory_context_B": 2e9,
            "memory_B": H100["memory_B"]}


def json_find(results_dir: Optional[Path], name: str) -> Optional[dict]:
    """A measured result the caller points at (the suite passes its output folder); None when absent."""
    if results_dir is None:
        return None
    f = Path(results_dir) / name
    if not f.exists():
        return None
    try:
        return json.loads(f.read_text())
    except Exception:
        return None


def _edge_cost_from_kernels(kern: dict, F: int):
    """Seconds per edge per layer at width F from the kernel benchmark's fp32 MD-mode rows.

    Takes the fused kernel's forward+backward time of the row with the nearest width (largest E
    among those) and scales it by F / F_row (the kernel is memory-bound: traffic ~ F).
    """
    best = None
    for r in kern.get("results") or []:
        try:
            if r.get("mode") != "md" or r.get("dtype") != "fp32":
                continue
            t_ms = r["fused"]["fwd_bwd_ms"]
            E, w = float(r["E"]), int(r["F"])
        except (KeyError, TypeError, ValueError):
            continue
        key = (abs(w - F), -E)
        if best is None or key < best[0]:
            best = (key, t_ms * 1e-3 / E, w, E, t_ms)
    if best is None:
        return None, None
    _, per_edge, w, E, t_ms = best
    return per_edge * F / w, (f"measured: benchmarks/results/kernels_message_passing_h100.json, fused Triton edge "
                              f"kernel fp32 MD mode, F={w}, E={E:.0e}: {t_ms:.1f} ms fwd+bwd = {per_edge * 1e9:.2f} "
                              f"ns/edge/layer, scaled x{F}/{w} to the model's width; x1.5 for node updates, "
                              f"readout and force scatter (assumed)")


# ------------------------------------------------------------- predictions --

def step_time(model: dict, n: float, P: int, scheme: str = "per-layer", device: str = "cpu",
              network: str = "fabric") -> dict:
    """Predicted seconds per step (and memory per rank) for n atoms per rank on P ranks."""
    c, s = model["coefficients"], model["shape"]
    rho, rc, skin, layers, F = s["density_per_A3"], s["cutoff_A"], s["skin_A"], s["layers"], s["width"] or 64
    h = rc + skin if scheme == "per-layer" else layers * rc + skin
    g = ghost_count(n, rho, h)
    recv = n if scheme == "per-layer" else n + ghost_count(n, rho, (layers - 1) * rc + skin)
    calls = s["halo_calls_per_step"] if scheme == "per-layer" else 0
    if scheme == "per-layer" and calls == 0 and layers > 1:
        calls = layers - 1
    E = 2 + 2 * calls
    itemsize = 4 if "32" in s["dtype"] else 8
    partners = halo_partners(n, rho, h, P) if P > 1 else 0
    off_frac = 0.0 if P == 1 else min(1.0, (P - 1) / 26.0) if P < 27 else 1.0
    B = off_frac * g * (24 + 24 + calls * 2 * F * itemsize)
    M = partners * E
    if network == "fabric":
        alpha, beta = FABRIC["latency_s"], FABRIC["bandwidth_B_per_s"]
        ar = FABRIC["allreduce_latency_per_log2P_s"] * math.log2(max(P, 2))
    else:
        alpha, beta = c["probed_latency_s"], c["probed_bandwidth_B_per_s"]
        ar = c["probed_allreduce_2ranks_s"] * math.log2(max(P, 2))
    net = c["f_network"] * (M * alpha + B / beta) + (3 * ar if P > 1 else 0.0)
    if device == "gpu":
        gp = model["gpu"]
        compute = gp["model_s_per_atom"] * recv + gp["model_s_per_atom"] * 0.1 * g + gp["step_overhead_s"]
        neighbor = gp["neighbor_s_per_atom"] * (n + g)
        local = E * 2e-5  # device-side pack/unpack per exchange (assumed)
        sync = 0.0
        mem = gp["memory_context_B"] + gp["memory_B_per_local_atom"] * (recv + g)
    else:
        compute = (max(c["c_own_s_per_atom"] * recv + c["t_model_s"], c.get("c_own_min_s_per_atom", 0.0) * recv)
                   + c["c_ghost_s_per_atom"] * g)
        neighbor = (c["c_neighbor_s_per_atom_per_build"] * (n + g) + c["c_ghost_build_s_per_ghost"] * g
                    + c["t_ghost_build_s"]) / s["rebuild_every"]
        local = (E * (c["t_exchange_s"] + c["k_exchange_s_per_ghost"] * g)
                 + c["c_integrate_io_s_per_atom"] * n + c["t_io_s"])
        sync = c["t_sync_multirank_s"] + c["t_wait_exchange_s"] if P > 1 else c["t_sync_1rank_s"]
        mem = c["memory_base_B"] + c["memory_B_per_local_atom"] * (recv + g)
    total = compute + neighbor + local + net + sync
    return {"step_s": total, "compute_s": compute, "neighbor_s": neighbor, "comm_s": net + local, "sync_s": sync,
            "ghosts_per_rank": g, "memory_per_rank_B": mem, "bytes_offrank_per_step": B, "messages_per_step": M}


def ns_per_day(step_s: float, timestep_fs: float) -> float:
    return 86400.0 / step_s * timestep_fs * 1e-6


def predict_grid(model: dict) -> dict:
    """Weak scaling (fixed atoms/rank, P = 1..1e5) and the atoms x ranks grid, CPU and GPU, both schemes."""
    out = {"weak": [], "grid": []}
    ranks = [1, 2, 8, 64, 100, 1000, 10_000, 100_000]
    for device, n in (("cpu", 4000), ("cpu", 32_000), ("gpu", 200_000)):
        for scheme in ("per-layer", "full"):
            t1 = step_time(model, n, 1, scheme, device)["step_s"]
            for P in ranks:
                r = step_time(model, n, P, scheme, device)
                out["weak"].append({"device": device, "scheme": scheme, "atoms_per_rank": n, "ranks": P,
                                    "step_s": r["step_s"], "efficiency": t1 / r["step_s"],
                                    "memory_per_rank_GB": r["memory_per_rank_B"] / 1e9,
                                    "ghosts_per_rank": r["ghosts_per_rank"]})
    for device in ("cpu", "gpu"):
        for scheme in ("per-layer", "full"):
            for N in (1e6, 1e7, 1e8, 1e9, 1e10):
                for P in (100, 1000, 10_000, 100_000):
                    n = N / P
                    if n < 100:
                        continue
                    r = step_time(model, n, P, scheme, device)
                    out["grid"].append({"device": device, "scheme": scheme, "atoms": N, "ranks": P,
                                        "atoms_per_rank": n, "step_s": r["step_s"],
                                        "ns_per_day": ns_per_day(r["step_s"], model["shape"]["timestep_fs"]),
                                        "memory_per_rank_GB": r["memory_per_rank_B"] / 1e9,
                                        "comm_fraction": r["comm_s"] / r["step_s"]})
    return out


def ten_billion(model: dict, atoms: float = 1e10) -> dict:
    """What 1e10 atoms of this model need: fewest ranks that fit memory (CPU 4 GB/core, GPU 80 GB)."""
    out = {}
    for device, mem_cap in (("cpu", 4e9), ("gpu", model["gpu"]["memory_B"] * 0.9)):
        for scheme in ("per-layer", "full"):
            best = None
            for P in [int(x) for x in np.unique(np.round(np.logspace(2, 7, 101)))]:
                r = step_time(model, atoms / P, P, scheme, device)
                if r["memory_per_rank_B"] <= mem_cap:
                    best = (P, r)
                    break
            if best is None:
                out[f"{device}/{scheme}"] = {"fits": False}
                continue
            P, r = best
            faster = step_time(model, atoms / (4 * P), 4 * P, scheme, device)
            out[f"{device}/{scheme}"] = {
                "fits": True, "ranks": P, "atoms_per_rank": atoms / P,
                "memory_per_rank_GB": r["memory_per_rank_B"] / 1e9, "step_s": r["step_s"],
                "ns_per_day": ns_per_day(r["step_s"], model["shape"]["timestep_fs"]),
                "ranks_x4": 4 * P, "step_s_x4": faster["step_s"],
                "ns_per_day_x4": ns_per_day(faster["step_s"], model["shape"]["timestep_fs"]),
                "memory_cap_GB": mem_cap / 1e9}
    return out
