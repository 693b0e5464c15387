"""Fused Triton edge message + aggregation vs the torch reference: time and peak memory.

For each (E edges, F features, dtype, mode) it times forward and forward+backward
(median of repeats, CUDA-synchronised) and the peak device memory allocated during
forward+backward beyond the inputs, for both implementations, and reports the
achieved TFLOP/s (useful matmul work: fwd 2EF^2+2EKF, backward 1x that for the
node/edge grads and 1x more for weight grads) and GB/s of gathered traffic (per
edge: a[j] and b[i] rows, the edge vector and two indices, plus the node arrays)
against the card's peaks. Modes: ``md`` (grads of a, b, edge vectors: forces)
and ``train`` (also all weights). fp32 runs use TF32 matmuls in both paths
unless ``--ieee`` (torch.backends.cuda.matmul.allow_tf32).

    python benchmarks/kernels/bench_message_passing.py --out benchmarks/results/kernels_mp.json
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time

import torch

from atomsim.kernels.message_passing import edge_message_aggregate_reference
from atomsim.kernels.triton_message_passing import edge_message_aggregate_triton

# dense peaks (no sparsity) of SXM parts, from NVIDIA's data sheets
PEAKS = {
    "H100": {"bf16_tflops": 989.0, "tf32_tflops": 494.0, "fp32_tflops": 67.0, "hbm_tbps": 3.35},
    "H200": {"bf16_tflops": 989.0, "tf32_tflops": 494.0, "fp32_tflops": 67.0, "hbm_tbps": 4.8},
}
K_RBF = 8
CUTOFF = 5.0
DEGREE = 32  # edges per receiver: E / N


def make_problem(E: int, F: int, dtype: torch.dtype, device, seed: int = 0) -> dict:
    """Receiver-sorted random graph with DEGREE edges per node, inputs at EGNN init scale."""
    g = torch.Generator(device=device).manual_seed(seed)
    E = int(E)
    N = max(1, -(-E // DEGREE))
    recv = torch.arange(N, device=device).repeat_interleave(DEGREE)[:E]
    send = torch.randint(0, N, (E,), device=device, generator=g)
    ev = torch.randn(E, 3, device=device, generator=g)
    ev = ev / ev.norm(dim=1, keepdim=True) * (0.8 + (CUTOFF - 0.8) * torch.rand(
        E, 1, device=device, generator=g))
    r = lambda *s, scale=1.0: (torch.randn(*s, device=device, generator=g) * scale).to(dtype)  # noqa
    return dict(a=r(N, F), b=r(N, F), edge_vectors=ev.to(dtype), senders=send, receivers=recv,
                w_rbf=r(K_RBF, F, scale=K_RBF**-0.5), b1=r(F, scale=0.1),
                w2=r(F, F, scale=F**-0.5), b2=r(F, scale=0.1))


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _call(fn, p, leaves):
    return fn(leaves["a"], leaves["b"], leaves["edge_vectors"], p["senders"], p["receivers"],
              leaves["w_rbf"], leaves["b1"], leaves["w2"], leaves["b2"], CUTOFF)


def measure(fn, p: dict, mode: str, repeats: int) -> dict:
    """Median fwd and fwd+bwd times (ms) and peak extra memory (GiB) of one implementation."""
    wrt = ("a", "b", "edge_vectors") + (("w_rbf", "b1", "w2", "b2") if mode == "train" else ())
    keys = ("a", "b", "edge_vectors", "w_rbf", "b1", "w2", "b2")
    leaves = {k: p[k].detach().requires_grad_(k in wrt) for k in keys}
    G = torch.randn(p["a"].shape, device=p["a"].device).to(p["a"].dtype)

    def fwd():
        with torch.no_grad():
            return _call(fn, p, leaves)

    def fwd_bwd():
        for k in wrt:
            leaves[k].grad = None
        out = _call(fn, p, leaves)
        out.backward(G)

    def timed(f):
        f()  # warm-up (and compile)
        _sync()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            f()
            _sync()
            ts.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ts), ts

    t_fwd, _ = timed(fwd)
    t_fb, all_fb = timed(fwd_bwd)
    for k in wrt:
        leaves[k].grad = None
    _sync()
    on_gpu = p["a"].is_cuda
    base = torch.cuda.memory_allocated() if on_gpu else 0
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    fwd_bwd()
    _sync()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if on_gpu else float("nan")
    for k in wrt:
        leaves[k].grad = None
    return {"fwd_ms": t_fwd, "fwd_bwd_ms": t_fb, "fwd_bwd_ms_all": all_fb, "peak_extra_gib": peak}


def work(E: int, F: int, N: int, dtype: torch.dtype, mode: str) -> dict:
    """Useful FLOPs and gathered bytes of forward and forward+backward."""
    mm = 2.0 * E * F * F + 2.0 * E * K_RBF * F
    flops_fwd = mm
    flops_fb = mm * (2.0 if mode == "md" else 3.0)
    elt = torch.finfo(dtype).bits // 8
    per_edge = 2 * F * elt + 3 * elt + 16
    bytes_fwd = E * per_edge + 3 * N * F * elt
    bytes_fb = bytes_fwd + E * (per_edge + F * elt + 3 * elt) + 6 * N * F * 4  # G rows, grads
    return {"flops_fwd": flops_fwd, "flops_fwd_bwd": flops_fb, "bytes_fwd": bytes_fwd,
            "bytes_fwd_bwd": bytes_fb}


def ref_fits(E: int, F: int, dtype: torch.dtype) -> bool:
    """The reference keeps ~8 (E x F) tensors alive in fwd+bwd; skip it where that cannot fit."""
    if not torch.cuda.is_available():
        return True
    free, _ = torch.cuda.mem_get_info()
    return 8.5 * E * F * (torch.finfo(dtype).bits // 8) < 0.85 * free


def kernel_resources() -> list[dict]:
    """Registers / spills / shared memory of each compiled fused kernel (tuning aid)."""
    from atomsim.kernels import triton_message_passing as tmp

    rows = []
    for name in ("_fwd_kernel", "_bwd_edge_kernel", "_bwd_w2_kernel"):
        fn = getattr(tmp, name)
        caches = getattr(fn, "device_caches", None) or {}
        for dev_cache in caches.values():
            cache = dev_cache[0] if isinstance(dev_cache, tuple) else dev_cache
            for kern in getattr(cache, "values", lambda: [])():
                try:
                    rows.append({"kernel": name, "n_regs": int(kern.n_regs),
                                 "n_spills": int(kern.n_spills),
                                 "shared_bytes": int(getattr(kern.metadata, "shared", -1)),
                                 "num_warps": int(getattr(kern.metadata, "num_warps", -1))})
                except Exception as exc:  # best effort only
                    rows.append({"kernel": name, "error": str(exc)[:100]})
    return rows


def profile_once(p: dict, mode: str) -> str:
    """Per-kernel CUDA time of one fused forward+backward (where the time goes)."""
    from torch.profiler import ProfilerActivity, profile

    keys = ("a", "b", "edge_vectors", "w_rbf", "b1", "w2", "b2")
    wrt = ("a", "b", "edge_vectors") + (("w_rbf", "b1", "w2", "b2") if mode == "train" else ())
    leaves = {k: p[k].detach().requires_grad_(k in wrt) for k in keys}
    G = torch.randn(p["a"].shape, device=p["a"].device).to(p["a"].dtype)
    _call(edge_message_aggregate_triton, p, leaves).backward(G)
    _sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        _call(edge_message_aggregate_triton, p, leaves).backward(G)
        _sync()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=12)


SWEEP = [{}, {"tile": 4096, "bn": 32, "stages": 1}, {"tile": 4096}, {"reload_pre": False},
         {"bn": 32, "stages": 1}, {"warps_fwd": 4}, {"persist": 4},
         {"tile": 16384, "max_block_e": 128}, {"persist": 1}, {"seg": 32}]


def sweep(dev, repeats: int, budget_s: float, save=lambda rows: None) -> list[dict]:
    """Launch-parameter variants (kernels.triton_message_passing.TUNING) at the headline point."""
    from atomsim.kernels import triton_message_passing as tmp

    base = dict(tmp.TUNING)
    rows, t0 = [], time.perf_counter()
    for dtn, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        p = make_problem(5_000_000, 128, dtype, dev)
        for variant in SWEEP:
            if time.perf_counter() - t0 > budget_s:
                break
            tmp.TUNING.clear()
            tmp.TUNING.update(base, **variant)
            try:
                m = measure(edge_message_aggregate_triton, p, "md", repeats)
                m.pop("fwd_bwd_ms_all")
            except Exception as exc:
                m = {"error": f"{type(exc).__name__}: {str(exc)[-800:]}"}
            rows.append({"dtype": dtn, "variant": variant, **m})
            print(json.dumps(rows[-1]), flush=True)
            save(rows)  # a run cut short keeps what it measured
        del p
    tmp.TUNING.clear()
    tmp.TUNING.update(base)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/kernels_message_passing.json")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--budget-s", type=float, default=200.0,
                    help="stop starting new configurations after this many seconds")
    ap.add_argument("--ieee", action="store_true", help="fp32 matmuls in IEEE fp32, not TF32")
    ap.add_argument("--device", default="cuda", help="cuda; cpu only for a tiny smoke run")
    ap.add_argument("--sweep", action="store_true",
                    help="only time TUNING variants at E=5M, F=128 (md mode)")
    ap.add_argument("--profile", action="store_true", help="per-kernel times of the first rows")
    ap.add_argument("--configs", default="default",
                    help="'default' or a list like 5e6:128:bf16:md,1e6:64:fp32:train")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU (on CPU only a smoke run: --device cpu, TRITON_INTERPRET=1)")
    torch.backends.cuda.matmul.allow_tf32 = not args.ieee
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
    peaks = next((v for k, v in PEAKS.items() if k in name), None)
    import triton

    meta = {"command": " ".join([sys.executable] + sys.argv), "device": name, "peaks": peaks,
            "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "host": platform.node(),
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def save(key: str, rows: list) -> None:
        from atomsim.kernels import triton_message_passing as tmp

        doc = dict(meta, degree=DEGREE, cutoff=CUTOFF, repeats=args.repeats,
                   tuning=dict(tmp.TUNING), kernel_resources=kernel_resources())
        doc[key] = rows
        with open(args.out, "w") as fh:
            json.dump(doc, fh, indent=1)

    if args.sweep:
        sweep(dev, args.repeats, args.budget_s, save=lambda rows: save("sweep", rows))
        return
    dts = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if args.configs == "default":
        # headline first (the target point, E = 5M, F = 128), then the sweep; stops at --budget-s
        cfgs = [(5_000_000, 128, "bf16", "md"), (5_000_000, 128, "fp32", "md"),
                (5_000_000, 128, "bf16", "train"), (5_000_000, 128, "fp32", "train")]
        cfgs += [(E, F, dt, "md") for dt in ("bf16", "fp32") for F in (64, 256, 512)
                 for E in (1_000_000, 5_000_000)]
        cfgs += [(10_000_000, F, dt, "md") for dt in ("bf16", "fp32") for F in (128, 512)]
        cfgs += [(1_000_000, 128, dt, "md") for dt in ("bf16", "fp32")]
    else:
        cfgs = [(int(float(e)), int(f), dt, m) for e, f, dt, m in
                (c.split(":") for c in args.configs.split(","))]
    results: list[dict] = []
    t_start = time.perf_counter()
    for E, F, dtn, mode in cfgs:
        if time.perf_counter() - t_start > args.budget_s:
            print(f"budget reached: skipping E={E} F={F} {dtn} {mode}", flush=True)
            continue
        dtype = dts[dtn]
        p = make_problem(E, F, dtype, dev)
        N = p["a"].shape[0]
        from atomsim.kernels.triton_message_passing import _precision

        row = {"E": E, "F": F, "N": N, "K": K_RBF, "dtype": dtn, "mode": mode,
               "reference_fp32_matmul": "ieee" if args.ieee else "tf32",
               "fused_fp32_dot": _precision(torch.float32)}
        row.update(work(E, F, N, dtype, mode))
        try:
            row["fused"] = measure(edge_message_aggregate_triton, p, mode, args.repeats)
        except Exception as exc:  # report and go on: one bad shape must not lose the rest
            row["fused"] = {"error": f"{type(exc).__name__}: {str(exc)[-800:]}"}
        if ref_fits(E, F, dtype):
            try:
                row["reference"] = measure(edge_message_aggregate_reference, p, mode,
                                           args.repeats)
            except torch.OutOfMemoryError:
                row["reference"] = {"error": "out of memory"}
        else:
            row["reference"] = {"skipped": "would not fit in device memory"}
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        fu, re_ = row["fused"], row["reference"]
        for impl in (fu, re_):
            if "fwd_bwd_ms" in impl:
                impl["tflops_fwd_bwd"] = row["flops_fwd_bwd"] / impl["fwd_bwd_ms"] / 1e9
                impl["gbps_fwd_bwd"] = row["bytes_fwd_bwd"] / impl["fwd_bwd_ms"] / 1e6
        if "fwd_bwd_ms" in fu and "fwd_bwd_ms" in re_:
            row["speedup_fwd_bwd"] = re_["fwd_bwd_ms"] / fu["fwd_bwd_ms"]
            row["speedup_fwd"] = re_["fwd_ms"] / fu["fwd_ms"]
            row["memory_ratio"] = fu["peak_extra_gib"] / max(re_["peak_extra_gib"], 1e-9)
        results.append(row)
        short = lambda d: {k: (round(v, 3) if isinstance(v, float) else v)  # noqa: E731
                           for k, v in d.items() if k != "fwd_bwd_ms_all"}
        print(json.dumps({"E": E, "F": F, "dtype": dtn, "mode": mode, "fused": short(fu),
                          "reference": short(re_),
                          "speedup_fwd_bwd": round(row.get("speedup_fwd_bwd", math.nan), 2),
                          "memory_ratio": round(row.get("memory_ratio", math.nan), 3)}),
              flush=True)
        if args.profile and len(results) <= 2 and "error" not in fu:
            try:
                print(profile_once(p, mode), flush=True)
            except Exception as exc:
                print(f"profiler failed: {exc}", flush=True)
        del p
        save("results", results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
