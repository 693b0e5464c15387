"""Fused Triton kernels for the EGNN edge message + receiver aggregation.

Same math and arguments as
:func:`atomsim.kernels.message_passing.edge_message_aggregate_reference` (the
specification). Why fuse: the unfused op writes ~5 (E x F) tensors per layer
and keeps 4 of them for the backward pass; here no (E x F) tensor ever
touches device memory -- each program recomputes its edges' activations
on chip (FlashAttention-style) in the forward and in the backward.

Kernels (one program = one block of BLOCK_E consecutive receiver-sorted edges):
- ``_fwd_kernel``: gather a[j], b[i]; Bessel basis and envelope of |r|;
  pre = a[j] + b[i] + rbf @ w_rbf + b1; h = silu(pre) kept on chip as a
  (BLOCK_E x F) tile; for each tile of BN output features z = h @ w2 + b2,
  m = silu(z) * env, then a segment sum over the block's receivers as a
  one-hot (segments x edges) ``tl.dot`` and one atomic add per (receiver,
  feature) -- so only receivers whose edges span two blocks see >1 atomic.
- ``_bwd_edge_kernel`` (persistent over edge blocks): recomputes pre, h, z;
  dz = g * env * silu'(z); dh = dz @ w2^T; dpre = dh * silu'(pre);
  grads of b (segment sum, as forward), a (atomic add at the senders),
  edge vectors (through Bessel basis and envelope) and, when asked,
  w_rbf / b1 (per-program partials summed on the host side of the launch).
- ``_bwd_w2_kernel`` (only when w2 / b2 need grads, i.e. training):
  per output-feature tile, recomputes h and dz and accumulates h^T dz.

Precision: loads in the input dtype (fp32 / fp16 / bf16), elementwise math and
all accumulation in fp32, ``tl.dot`` operands in the input dtype. For fp32
inputs the matmuls follow ``torch.backends.cuda.matmul.allow_tf32`` (TF32 if
allowed, else IEEE fp32), like torch's own matmul in the reference path. The
segment sums split messages into hi + lo parts so the one-hot product keeps
~fp32 accuracy in every mode.

Measured (H100, benchmarks/kernels/README.md): E=5M, F=128 bf16 forward+backward 2.1-2.45x
faster than the reference with 1/21 of its peak memory; the backward kernel (255 registers,
some spills) dominates. Widths above TUNING['max_fused_width'] (256) use the reference path.

Autograd: first derivatives (forces, weight gradients) use the fused
backward. A second derivative (``create_graph=True``: training on forces)
falls back to recomputing the op with differentiable torch ops, so double
backward is correct but not fused. Determinism: a receiver whose edges span
>2 edge blocks, and the sender gradient ``da``, are summed with atomics, so
those sums can differ in the last bit from run to run.
"""
from __future__ import annotations

import collections
import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from .graph import csr_row_ptr
from .message_passing import edge_message_aggregate_reference, gradient_edges, needed_inputs, reference_backward

_ENV_P = 6  # polynomial envelope exponent (kernels.radial.polynomial_envelope default)
_ENV_A = -(_ENV_P + 1) * (_ENV_P + 2) / 2.0
_ENV_B = float(_ENV_P * (_ENV_P + 2))
_ENV_C = -_ENV_P * (_ENV_P + 1) / 2.0


# ---------------------------------------------------------------------------------------------
# device helpers
# ---------------------------------------------------------------------------------------------
@triton.jit
def _sincos(x):
    """sin(x), cos(x) for 0 <= x < ~1e3: Cody-Waite reduction to [-pi/4, pi/4] and short
    Taylor polynomials (abs. error ~1e-7). Why not tl.sin/tl.cos: libdevice inlines its
    Payne-Hanek slow path for huge arguments at every call, which costs a local-memory array
    and most of the registers of the backward kernel."""
    q = tl.floor(x * 0.6366197723675814 + 0.5)  # nearest multiple of pi/2
    r = x - q * 1.5703125
    r = r - q * 4.837512969970703125e-4
    r = r - q * 7.54978995489188216e-8
    r2 = r * r
    s = r * (1.0 + r2 * (-1.6666666666666666e-1 + r2 * (8.333333333333333e-3 + r2 * (
        -1.984126984126984e-4 + r2 * 2.7557319223985893e-6))))
    c = 1.0 + r2 * (-0.5 + r2 * (4.1666666666666664e-2 + r2 * (-1.388888888888889e-3 + r2 * (
        2.48015873015873e-5 + r2 * -2.755731922398589e-7))))
    quad = q.to(tl.int32) & 3
    sin_x = tl.where(quad == 0, s, tl.where(quad == 1, c, tl.where(quad == 2, -s, -c)))
    cos_x = tl.where(quad == 0, c, tl.where(quad == 1, -s, tl.where(quad == 2, -c, s)))
    return sin_x, cos_x


@triton.jit
def _edge_geometry(r_ptr, offs_e, emask, offs_k, kmask, cutoff, pref,
                   ENV_A: tl.constexpr, ENV_B: tl.constexpr, ENV_C: tl.constexpr):
    """Load edge vectors; return (rx, ry, rz, d, rbf (BLOCK_E, KP) fp32, env, x)."""
    rx = tl.load(r_ptr + offs_e * 3 + 0, mask=emask, other=1.0).to(tl.float32)
    ry = tl.load(r_ptr + offs_e * 3 + 1, mask=emask, other=0.0).to(tl.float32)
    rz = tl.load(r_ptr + offs_e * 3 + 2, mask=emask, other=0.0).to(tl.float32)
    d = tl.sqrt(rx * rx + ry * ry + rz * rz)
    freq = (offs_k + 1).to(tl.float32) * (3.141592653589793 / cutoff)
    arg = d[:, None] * freq[None, :]
    sin_arg, cos_arg = _sincos(arg)
    rbf = pref * sin_arg / d[:, None]
    rbf = tl.where(kmask[None, :], rbf, 0.0)
    x = d / cutoff
    x2 = x * x
    x6 = x2 * x2 * x2
    env = 1.0 + ENV_A * x6 + ENV_B * x6 * x + ENV_C * x6 * x2
    env = tl.where(x < 1.0, env, 0.0)
    return rx, ry, rz, d, rbf, env, x


@triton.jit
def _recompute_pre(a_ptr, b_ptr, wr_ptr, b1_ptr, snd, rcv, rbf, offs_f, fmask, offs_k, kmask,
                   emask, F, PREC: tl.constexpr):
    """pre = a[j] + b[i] + rbf @ w_rbf + b1, (BLOCK_E, FP) fp32; zero outside the valid tile."""
    m2 = emask[:, None] & fmask[None, :]
    A = tl.load(a_ptr + snd[:, None] * F + offs_f[None, :], mask=m2, other=0.0).to(tl.float32)
    B = tl.load(b_ptr + rcv[:, None] * F + offs_f[None, :], mask=m2, other=0.0).to(tl.float32)
    wr = tl.load(wr_ptr + offs_k[:, None] * F + offs_f[None, :],
                 mask=kmask[:, None] & fmask[None, :], other=0.0)
    b1 = tl.load(b1_ptr + offs_f, mask=fmask, other=0.0).to(tl.float32)
    pre = A + B + tl.dot(rbf.to(wr.dtype), wr, input_precision=PREC) + b1[None, :]
    return tl.where(m2, pre, 0.0)


@triton.jit
def _tile_offsets(F, K, FP: tl.constexpr, KP: tl.constexpr):
    """Feature and radial-basis offsets padded to powers of two, with their valid masks."""
    offs_f = tl.arange(0, FP)
    offs_k = tl.arange(0, KP)
    return offs_f, offs_f < F, offs_k, offs_k < K


@triton.jit
def _edge_hidden(a_ptr, b_ptr, r_ptr, snd_ptr, rcv_ptr, wr_ptr, b1_ptr, blk, E, offs_f, fmask,
                 offs_k, kmask, F, cutoff, pref, ENV_A: tl.constexpr, ENV_B: tl.constexpr,
                 ENV_C: tl.constexpr, BLOCK_E: tl.constexpr, PREC: tl.constexpr, DT: tl.constexpr):
    """Edge block ``blk`` up to the hidden layer, as every kernel starts it: (offs_e, emask, snd, rcv,
    rx, ry, rz, d, rbf, env (0 on padding edges), x, pre, h = silu(pre) in the weights' dtype DT)."""
    offs_e = blk * BLOCK_E + tl.arange(0, BLOCK_E)
    emask = offs_e < E
    snd = tl.load(snd_ptr + offs_e, mask=emask, other=0).to(tl.int64)
    rcv = tl.load(rcv_ptr + offs_e, mask=emask, other=0).to(tl.int64)
    rx, ry, rz, d, rbf, env, x = _edge_geometry(r_ptr, offs_e, emask, offs_k, kmask, cutoff, pref,
                                                ENV_A, ENV_B, ENV_C)
    env = tl.where(emask, env, 0.0)
    pre = _recompute_pre(a_ptr, b_ptr, wr_ptr, b1_ptr, snd, rcv, rbf, offs_f, fmask, offs_k, kmask,
                         emask, F, PREC)
    h = (pre * tl.sigmoid(pre)).to(DT)
    return offs_e, emask, snd, rcv, rx, ry, rz, d, rbf, env, x, pre, h


@triton.jit
def _segments(rcv_ptr, offs_e, emask, BLOCK_E: tl.constexpr, SEG: tl.constexpr):
    """Runs of equal receivers in the block: one-hot (SEG x BLOCK_E) segment/edge matrix,
    the receiver of each segment slot (-1 if unused) and the number of segments (may be > SEG,
    then the caller falls back to per-edge atomics)."""
    rcv = tl.load(rcv_ptr + offs_e, mask=emask, other=-1)
    prev = tl.load(rcv_ptr + offs_e - 1, mask=emask & (offs_e > 0), other=-2)
    first = tl.arange(0, BLOCK_E) == 0
    new_seg = ((rcv != prev) | first) & emask
    seg = tl.cumsum(new_seg.to(tl.int32), axis=0) - 1
    n_seg = tl.max(seg, axis=0) + 1
    slots = tl.arange(0, SEG)
    onehot = (seg[None, :] == slots[:, None]) & emask[None, :]
    seg_rcv = tl.max(tl.where(onehot, rcv[None, :], -1), axis=1)
    return onehot, seg_rcv, n_seg


@triton.jit
def _segment_sum_atomic(out_ptr, onehot, seg_rcv, n_seg, rcv, emask, vals, offs_n, nmask, F,
                        PREC: tl.constexpr, DT: tl.constexpr, SEG: tl.constexpr):
    """out[receiver] += vals summed per receiver run: one atomic per (segment, feature) via a
    one-hot tl.dot when the block has <= SEG runs, else one atomic per (edge, feature).

    The one-hot operand is exact in every format; the values are split into hi + lo parts
    (16-bit formats, TF32) so the sum keeps ~fp32 accuracy."""
    if n_seg <= SEG:
        oh = onehot.to(DT)
        if DT == tl.float32:
            if PREC == "ieee":
                acc = tl.dot(oh, vals, input_precision="ieee")
            else:  # TF32 keeps 10 mantissa bits: add the truncated remainder in a second pass
                hi = (vals.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)
                acc = tl.dot(oh, hi, input_precision="tf32")
                acc = tl.dot(oh, vals - hi, acc=acc, input_precision="tf32")
        else:
            hi = vals.to(DT)
            acc = tl.dot(oh, hi)
            acc = tl.dot(oh, (vals - hi.to(tl.float32)).to(DT), acc=acc)
        seg_ptrs = out_ptr + seg_rcv.to(tl.int64)[:, None] * F + offs_n[None, :]
        tl.atomic_add(seg_ptrs, acc, mask=(seg_rcv >= 0)[:, None] & nmask[None, :],
                      sem="relaxed")
    else:
        edge_ptrs = out_ptr + rcv[:, None] * F + offs_n[None, :]
        tl.atomic_add(edge_ptrs, vals, mask=emask[:, None] & nmask[None, :], sem="relaxed")


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------
@triton.jit
def _fwd_kernel(a_ptr, b_ptr, r_ptr, snd_ptr, rcv_ptr, wr_ptr, b1_ptr, w2_ptr, b2_ptr, out_ptr,
                E, F, K, cutoff, pref,
                ENV_A: tl.constexpr, ENV_B: tl.constexpr, ENV_C: tl.constexpr,
                BLOCK_E: tl.constexpr, FP: tl.constexpr, KP: tl.constexpr, BN: tl.constexpr,
                PREC: tl.constexpr, SEG: tl.constexpr):
    pid = tl.program_id(0)
    DT: tl.constexpr = w2_ptr.dtype.element_ty
    offs_f, fmask, offs_k, kmask = _tile_offsets(F, K, FP, KP)
    offs_e, emask, snd, rcv, rx, ry, rz, d, rbf, env, x, pre, h = _edge_hidden(
        a_ptr, b_ptr, r_ptr, snd_ptr, rcv_ptr, wr_ptr, b1_ptr, pid, E, offs_f, fmask, offs_k, kmask,
        F, cutoff, pref, ENV_A, ENV_B, ENV_C, BLOCK_E, PREC, DT)
    onehot, seg_rcv, n_seg = _segments(rcv_ptr, offs_e, emask, BLOCK_E, SEG)
    for n0 in range(0, FP, BN):
        offs_n = n0 + tl.arange(0, BN)
        nmask = offs_n < F
        w2 = tl.load(w2_ptr + offs_f[:, None] * F + offs_n[None, :],
                     mask=fmask[:, None] & nmask[None, :], other=0.0)
        b2 = tl.load(b2_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)
        z = tl.dot(h, w2, input_precision=PREC) + b2[None, :]
        msg = z * tl.sigmoid(z) * env[:, None]
        msg = tl.where(emask[:, None] & nmask[None, :], msg, 0.0)
        _segment_sum_atomic(out_ptr, onehot, seg_rcv, n_seg, rcv, emask, msg, offs_n, nmask, F,
                            PREC, DT, SEG)


# ---------------------------------------------------------------------------------------------
# backward: node and edge-vector gradients (+ w_rbf, b1)
# ---------------------------------------------------------------------------------------------
@triton.jit
def _bwd_edge_kernel(a_ptr, b_ptr, r_ptr, snd_ptr, rcv_ptr, wr_ptr, b1_ptr, w2_ptr, b2_ptr, g_ptr,
                     da_ptr, db_ptr, dr_ptr, dwr_ptr, db1_ptr,
                     E, F, K, cutoff, pref, n_blocks,
                     ENV_A: tl.constexpr, ENV_B: tl.constexpr, ENV_C: tl.constexpr,
                     BLOCK_E: tl.constexpr, FP: tl.constexpr, KP: tl.constexpr, BN: tl.constexpr,
                     PREC: tl.constexpr, SEG: tl.constexpr,
                     NEED_A: tl.constexpr, NEED_B: tl.constexpr, NEED_R: tl.constexpr,
                     NEED_W: tl.constexpr, RELOAD_PRE: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    DT: tl.constexpr = w2_ptr.dtype.element_ty
    offs_f, fmask, offs_k, kmask = _tile_offsets(F, K, FP, KP)
    wr = tl.load(wr_ptr + offs_k[:, None] * F + offs_f[None, :],
                 mask=kmask[:, None] & fmask[None, :], other=0.0)
    dwr_acc = tl.zeros((KP, FP), dtype=tl.float32)
    db1_acc = tl.zeros((FP,), dtype=tl.float32)
    for blk in range(pid, n_blocks, nprog):
        offs_e, emask, snd, rcv, rx, ry, rz, d, rbf, env, x, pre, h = _edge_hidden(
            a_ptr, b_ptr, r_ptr, snd_ptr, rcv_ptr, wr_ptr, b1_ptr, blk, E, offs_f, fmask, offs_k,
            kmask, F, cutoff, pref, ENV_A, ENV_B, ENV_C, BLOCK_E, PREC, DT)
        dh = tl.zeros((BLOCK_E, FP), dtype=tl.float32)
        denv = tl.zeros((BLOCK_E,), dtype=tl.float32)
        for n0 in range(0, FP, BN):
            offs_n = n0 + tl.arange(0, BN)
            nmask = offs_n < F
            m2n = emask[:, None] & nmask[None, :]
            w2 = tl.load(w2_ptr + offs_f[:, None] * F + offs_n[None, :],
                         mask=fmask[:, None] & nmask[None, :], other=0.0)
            b2 = tl.load(b2_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)
            z = tl.dot(h, w2, input_precision=PREC) + b2[None, :]
            sz = tl.sigmoid(z)
            gout = tl.load(g_ptr + rcv[:, None] * F + offs_n[None, :], mask=m2n,
                           other=0.0).to(tl.float32)
            denv += tl.sum(gout * z * sz, axis=1)
            dz = gout * env[:, None] * (sz + z * sz * (1.0 - sz))
            dz = tl.where(m2n, dz, 0.0)
            dh = tl.dot(dz.to(DT), tl.trans(w2), acc=dh, input_precision=PREC)
        if RELOAD_PRE:  # gather pre again (L1/L2 hits) rather than keep it live in the loop
            pre = _recompute_pre(a_ptr, b_ptr, wr_ptr, b1_ptr, snd, rcv, rbf, offs_f, fmask,
                                 offs_k, kmask, emask, F, PREC)
        sp = tl.sigmoid(pre)
        dpre = dh * (sp + pre * sp * (1.0 - sp))
        dpre = tl.where(emask[:, None] & fmask[None, :], dpre, 0.0)
        if NEED_B:
            onehot, seg_rcv, n_seg = _segments(rcv_ptr, offs_e, emask, BLOCK_E, SEG)
            _segment_sum_atomic(db_ptr, onehot, seg_rcv, n_seg, rcv, emask, dpre, offs_f, fmask,
                                F, PREC, DT, SEG)
        if NEED_A:
            tl.atomic_add(da_ptr + snd[:, None] * F + offs_f[None, :], dpre,
                          mask=emask[:, None] & fmask[None, :], sem="relaxed")
        if NEED_W:
            dwr_acc = tl.dot(tl.trans(rbf.to(DT)), dpre.to(DT), acc=dwr_acc,
                             input_precision=PREC)
            db1_acc += tl.sum(dpre, axis=0)
        if NEED_R:
            drbf = tl.dot(dpre.to(DT), tl.trans(wr), input_precision=PREC)  # (BLOCK_E, KP)
            freq = (offs_k + 1).to(tl.float32) * (3.141592653589793 / cutoff)
            arg = d[:, None] * freq[None, :]
            sin_arg, cos_arg = _sincos(arg)
            inv_d = 1.0 / d
            drbf_dd = pref * (freq[None, :] * cos_arg - sin_arg * inv_d[:, None]) \
                * inv_d[:, None]
            drbf_dd = tl.where(kmask[None, :], drbf_dd, 0.0)
            x2 = x * x
            x5 = x2 * x2 * x
            denv_dd = (6.0 * ENV_A * x5 + 7.0 * ENV_B * x5 * x + 8.0 * ENV_C * x5 * x2) / cutoff
            denv_dd = tl.where(x < 1.0, denv_dd, 0.0)
            dd = tl.sum(drbf * drbf_dd, axis=1) + denv * denv_dd
            scale = tl.where(emask, dd * inv_d, 0.0)
            tl.store(dr_ptr + offs_e * 3 + 0, scale * rx, mask=emask)
            tl.store(dr_ptr + offs_e * 3 + 1, scale * ry, mask=emask)
            tl.store(dr_ptr + offs_e * 3 + 2, scale * rz, mask=emask)
    if NEED_W:
        tl.store(dwr_ptr + pid * KP * FP + offs_k[:, None] * FP + offs_f[None, :], dwr_acc)
        tl.store(db1_ptr + pid * FP + offs_f, db1_acc)


# ---------------------------------------------------------------------------------------------
# backward: w2, b2 (training only)
# ---------------------------------------------------------------------------------------------
@triton.jit
def _bwd_w2_kernel(a_ptr, b_ptr, r_ptr, snd_ptr, rcv_ptr, wr_ptr, b1_ptr, w2_ptr, b2_ptr, g_ptr,
                   dw2_ptr, db2_ptr,
                   E, F, K, cutoff, pref, n_blocks,
                   ENV_A: tl.constexpr, ENV_B: tl.constexpr, ENV_C: tl.constexpr,
                   BLOCK_E: tl.constexpr, FP: tl.constexpr, KP: tl.constexpr, BN: tl.constexpr,
                   PREC: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    n0 = tl.program_id(1) * BN
    DT: tl.constexpr = w2_ptr.dtype.element_ty
    offs_f, fmask, offs_k, kmask = _tile_offsets(F, K, FP, KP)
    offs_n = n0 + tl.arange(0, BN)
    nmask = offs_n < F
    dw2_acc = tl.zeros((FP, BN), dtype=tl.float32)
    db2_acc = tl.zeros((BN,), dtype=tl.float32)
    w2 = tl.load(w2_ptr + offs_f[:, None] * F + offs_n[None, :],
                 mask=fmask[:, None] & nmask[None, :], other=0.0)
    b2 = tl.load(b2_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)
    for blk in range(pid, n_blocks, nprog):
        offs_e, emask, snd, rcv, rx, ry, rz, d, rbf, env, x, pre, h = _edge_hidden(
            a_ptr, b_ptr, r_ptr, snd_ptr, rcv_ptr, wr_ptr, b1_ptr, blk, E, offs_f, fmask, offs_k,
            kmask, F, cutoff, pref, ENV_A, ENV_B, ENV_C, BLOCK_E, PREC, DT)
        m2n = emask[:, None] & nmask[None, :]
        z = tl.dot(h, w2, input_precision=PREC) + b2[None, :]
        sz = tl.sigmoid(z)
        gout = tl.load(g_ptr + rcv[:, None] * F + offs_n[None, :], mask=m2n,
                       other=0.0).to(tl.float32)
        dz = gout * env[:, None] * (sz + z * sz * (1.0 - sz))
        dz = tl.where(m2n, dz, 0.0)
        dw2_acc = tl.dot(tl.trans(h), dz.to(DT), acc=dw2_acc, input_precision=PREC)
        db2_acc += tl.sum(dz, axis=0)
    tl.store(dw2_ptr + pid * FP * F + offs_f[:, None] * F + offs_n[None, :], dw2_acc,
             mask=nmask[None, :])
    tl.store(db2_ptr + pid * F + offs_n, db2_acc, mask=nmask)


# ---------------------------------------------------------------------------------------------
# host side
# ---------------------------------------------------------------------------------------------
def _next_pow2(n: int, minimum: int = 16) -> int:
    return max(minimum, 1 << (int(n) - 1).bit_length())


# Launch parameters (the benchmark's --sweep varies them). tile: BLOCK_E x FP elements kept on
# chip per program; seg: receiver runs per block summed by the one-hot dot (more -> atomics);
# persist: persistent programs per multiprocessor in the backward kernels.
# Defaults measured on an H100 (benchmarks/results/kernels_sweep_h100.json): at F=128 bf16 a
# 32-edge block (tile 4096) beat 64 edges (fwd 3.6 vs 6.2 ms, fwd+bwd 18.8 vs 21.9 ms, E=5M).
# max_fused_width: wider layers use the reference path -- at F=512 the fused backward (one
# program holding 512-wide rows) spilled so badly it ran 13x slower than the reference.
TUNING = {"tile": 4096, "min_block_e": 32, "max_block_e": 64, "bn": 64, "seg": 16, "persist": 2,
          "max_fused_width": 256,
          "warps_fwd": 8, "warps_bwd": 8, "warps_w2": 8, "stages": 3, "reload_pre": True,
          "fp32_exact": "tf32x3"}
_BLOCK_E_OVERRIDE: int | None = None  # tests set a small block to exercise block boundaries
LAUNCHES: collections.Counter = collections.Counter()  # kernel launches by name (tests, profiling)


def _launch_config(F: int) -> tuple[int, int, int]:
    """(BLOCK_E, FP, BN): keep the on-chip (BLOCK_E x FP) tiles at TUNING['tile'] elements."""
    FP = _next_pow2(F)
    block_e = _BLOCK_E_OVERRIDE or max(TUNING["min_block_e"],
                                       min(TUNING["max_block_e"], TUNING["tile"] // FP))
    bn = min(FP, TUNING["bn"] if FP <= 256 else TUNING["bn"] // 2)
    return block_e, FP, bn


def _precision(dtype: torch.dtype) -> str:
    """tl.dot input precision for fp32 operands (ignored for 16-bit). Follows torch's TF32 flag:
    'tf32' when allowed, else 'tf32x3' (three TF32 products: ~fp32 accuracy on the tensor
    cores; Triton's 'ieee' fp32 dot runs on FMA units and spills badly at these tile sizes).
    TUNING['fp32_exact'] = 'ieee' selects the IEEE path; the CPU interpreter is IEEE anyway."""
    if dtype != torch.float32:
        return "ieee"
    if torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return TUNING["fp32_exact"]


def _n_persistent(n_blocks: int, device: torch.device) -> int:
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, min(n_blocks, TUNING["persist"] * sms))
    return max(1, min(n_blocks, 4))


def _prepare(a, b, edge_vectors, senders, receivers, w_rbf, b1, w2, b2):
    dt = a.dtype
    return (a.contiguous(), b.to(dt).contiguous(), edge_vectors.contiguous(),
            senders.contiguous(), receivers.contiguous(), w_rbf.to(dt).contiguous(),
            b1.contiguous(), w2.to(dt).contiguous(), b2.contiguous())


def _common(F: int, K: int, dtype: torch.dtype) -> dict:
    block_e, FP, bn = _launch_config(F)
    # software pipelining keeps `stages` w2 tiles in shared memory: fewer for wide layers
    stages = TUNING["stages"] if FP * bn * dtype.itemsize <= 32768 else 2
    return dict(ENV_A=_ENV_A, ENV_B=_ENV_B, ENV_C=_ENV_C, BLOCK_E=block_e, FP=FP,
                KP=_next_pow2(K), BN=bn, PREC=_precision(dtype), num_stages=stages)


def _forward(a, b, ev, snd, rcv, w_rbf, b1, w2, b2, cutoff: float) -> Tensor:
    N, F = a.shape
    E = snd.shape[0]
    K = w_rbf.shape[0]
    out = torch.zeros((N, F), dtype=torch.float32, device=a.device)
    if E == 0:
        return out.to(a.dtype)
    common = _common(F, K, a.dtype)
    grid = (triton.cdiv(E, common["BLOCK_E"]),)
    LAUNCHES["fwd"] += 1
    _fwd_kernel[grid](a, b, ev, snd, rcv, w_rbf, b1, w2, b2, out,
                      E, F, K, float(cutoff), math.sqrt(2.0 / cutoff),
                      SEG=TUNING["seg"], num_warps=TUNING["warps_fwd"], **common)
    return out.to(a.dtype)


def _backward(g, a, b, ev, snd, rcv, w_rbf, b1, w2, b2, cutoff: float, needs):
    """Fused first-derivative backward; ``needs`` = needs_input_grad for
    (a, b, edge_vectors, w_rbf, b1, w2, b2)."""
    need_a, need_b, need_r, need_wr, need_b1, need_w2, need_b2 = needs
    N, F = a.shape
    E = snd.shape[0]
    K = w_rbf.shape[0]
    dev = a.device
    f32 = torch.float32
    common = _common(F, K, a.dtype)
    block_e, FP, KP, bn = common["BLOCK_E"], common["FP"], common["KP"], common["BN"]
    n_blocks = triton.cdiv(E, block_e) if E else 0
    g = g.contiguous()
    da = torch.zeros((N, F), dtype=f32, device=dev) if need_a else None
    db = torch.zeros((N, F), dtype=f32, device=dev) if need_b else None
    dr = torch.zeros((E, 3), dtype=f32, device=dev) if need_r else None
    need_w = need_wr or need_b1
    dwr = db1 = dw2 = db2 = None
    dummy = torch.empty(1, dtype=f32, device=dev)
    scal = (E, F, K, float(cutoff), math.sqrt(2.0 / cutoff), n_blocks)
    if n_blocks and (need_a or need_b or need_r or need_w):
        P = _n_persistent(n_blocks, dev)
        dwr_p = torch.empty((P, KP, FP), dtype=f32, device=dev) if need_w else dummy
        db1_p = torch.empty((P, FP), dtype=f32, device=dev) if need_w else dummy
        LAUNCHES["bwd_edge"] += 1
        _bwd_edge_kernel[(P,)](a, b, ev, snd, rcv, w_rbf, b1, w2, b2, g,
                               da if need_a else dummy, db if need_b else dummy,
                               dr if need_r else dummy, dwr_p, db1_p, *scal,
                               SEG=TUNING["seg"], NEED_A=need_a, NEED_B=need_b, NEED_R=need_r,
                               NEED_W=need_w, RELOAD_PRE=TUNING["reload_pre"],
                               num_warps=TUNING["warps_bwd"], **common)
        if need_w:
            dwr = dwr_p.sum(0)[:K, :F]
            db1 = db1_p.sum(0)[:F]
    if need_w2 or need_b2:
        if n_blocks:
            n_tiles = triton.cdiv(F, bn)
            P = _n_persistent(n_blocks, dev)
            P = max(1, P // n_tiles) if dev.type == "cuda" else P
            dw2_p = torch.zeros((P, FP, F), dtype=f32, device=dev)
            db2_p = torch.zeros((P, F), dtype=f32, device=dev)
            LAUNCHES["bwd_w2"] += 1
            _bwd_w2_kernel[(P, n_tiles)](a, b, ev, snd, rcv, w_rbf, b1, w2, b2, g, dw2_p, db2_p,
                                         *scal, num_warps=TUNING["warps_w2"], **common)
            dw2 = dw2_p.sum(0)[:F]
            db2 = db2_p.sum(0)
        else:
            dw2 = torch.zeros((F, F), dtype=f32, device=dev)
            db2 = torch.zeros((F,), dtype=f32, device=dev)
    if need_w and dwr is None:
        dwr = torch.zeros((K, F), dtype=f32, device=dev)
        db1 = torch.zeros((F,), dtype=f32, device=dev)
    return da, db, dr, dwr, db1, dw2, db2


class _FusedEdgeMessageAggregate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, edge_vectors, senders, receivers, w_rbf, b1, w2, b2, cutoff):
        args = _prepare(a, b, edge_vectors, senders, receivers, w_rbf, b1, w2, b2)
        ctx.save_for_backward(a, b, edge_vectors, senders, receivers, w_rbf, b1, w2, b2)
        ctx.cutoff = float(cutoff)
        ctx.grad_edges = gradient_edges((a, b, edge_vectors, w_rbf, b1, w2, b2))
        return _forward(*args, cutoff)

    @staticmethod
    def backward(ctx, g):
        a, b, ev, snd, rcv, w_rbf, b1, w2, b2 = ctx.saved_tensors
        idx = (0, 1, 2, 5, 6, 7, 8)
        needs = needed_inputs(tuple(bool(ctx.needs_input_grad[i]) for i in idx), ctx.grad_edges)
        originals = (a, b, ev, w_rbf, b1, w2, b2)
        if torch.is_grad_enabled():  # create_graph=True (e.g. a loss on forces): exact torch recomputation
            grads = reference_backward(g, originals, snd, rcv, ctx.cutoff, needs)
        else:
            args = _prepare(a, b, ev, snd, rcv, w_rbf, b1, w2, b2)
            raw = _backward(g, *args, ctx.cutoff, needs)
            grads = [None if r is None else r.to(t.dtype) for r, t in zip(raw, originals)]
        ga, gb, gr, gwr, gb1, gw2, gb2 = grads
        return ga, gb, gr, None, None, gwr, gb1, gw2, gb2, None


def edge_message_aggregate_triton(
    a: Tensor, b: Tensor, edge_vectors: Tensor, senders: Tensor, receivers: Tensor,
    w_rbf: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, cutoff: float,
    row_ptr: Tensor | None = None,
) -> Tensor:
    """Fused edge message + receiver sum (same contract as the reference).

    ``row_ptr`` is accepted for the shared signature; the kernels find the
    receiver segments of each edge block from the sorted ``receivers`` themselves
    (unsorted receivers still give the right sum, just with more atomics).
    Widths above ``TUNING['max_fused_width']`` (256) run the reference path.
    """
    if a.dim() != 2 or b.shape != a.shape:
        raise ValueError(f"a and b must be (n_nodes, F) of the same shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    if w2.shape != (a.shape[1], a.shape[1]) or w_rbf.shape[1] != a.shape[1]:
        raise ValueError(f"weights do not match F={a.shape[1]}: w_rbf {tuple(w_rbf.shape)}, "
                         f"w2 {tuple(w2.shape)}")
    if a.shape[1] > TUNING["max_fused_width"]:  # see TUNING: the fused backward is slower there
        return edge_message_aggregate_reference(a, b, edge_vectors, senders, receivers, w_rbf, b1,
                                                w2, b2, cutoff, row_ptr)
    del row_ptr  # see docstring
    return _FusedEdgeMessageAggregate.apply(a, b, edge_vectors, senders, receivers, w_rbf, b1,
                                            w2, b2, float(cutoff))


__all__ = ["edge_message_aggregate_triton", "csr_row_ptr"]
