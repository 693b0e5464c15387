"""Cell-list neighbor list written against the array API (numpy here, cupy on a GPU).

Why: one vectorised implementation that the CPU test suite checks under numpy
and that runs unchanged on CUDA under cupy. Same algorithm and the same bin
grid (``cell_grid.make_grid``) as the Numba list, so the two agree pair for pair:

1. fractional coordinates, wrapped on periodic axes (wrap counts kept for S);
2. atoms binned and stably sorted by bin, bin start offsets by ``searchsorted``;
3. for batches of stencil offsets (neighbour bin + periodic image), every
   (atom, offset) expands to the atoms of that neighbour bin (a ragged expand
   done with ``cumulative_sum`` + ``searchsorted``), distances are tested and
   survivors kept;
4. one final sort by (i, j, S) -- the same order as the Numba list.

Batches are sized so at most ``max_candidates`` candidate pairs are alive at
once, which bounds device memory at large N and makes small cells (thousands
of periodic images, few atoms) one batch instead of thousands of tiny ones.

``to_torch`` hands the results to torch without copying (DLPack).
"""
from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace
from array_api_compat import device as xp_device

from atomsim.kernels.cell_grid import as_cell, effective_cell, make_grid

__all__ = ["neighbor_list", "neighbor_list_csr", "to_torch"]


def _host(x) -> np.ndarray:
    """Device array -> numpy (tiny arrays only: bounds and scalars)."""
    if hasattr(x, "get"):  # cupy
        return x.get()
    return np.asarray(x)


def _take(xp, x, idx):
    return xp.take(x, idx, axis=0)


def _stencil(search: np.ndarray) -> np.ndarray:
    """All (d0, d1, d2) with |dc| <= search[c], in the Numba kernel's order."""
    r = [np.arange(-m, m + 1) for m in search]
    return np.stack(np.meshgrid(*r, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.int64)


def bin_sorted(xp, pos, cell_h: np.ndarray, pbc_h: np.ndarray, cutoff: float):
    """Steps 1-2, shared with the CuPy raw-kernel list: (grid, wrap, order, start, bs, xs).

    wrap: (N, 3) wrap counts by atom; order: atoms sorted by bin (stable);
    start: (bins + 1,) offsets into ``order``; bs / xs: bin coordinates and
    wrapped positions in that order.
    """
    dev = xp_device(pos)
    n = int(pos.shape[0])
    i64 = xp.int64
    eff = effective_cell(cell_h, pbc_h)
    inv = xp.asarray(np.linalg.inv(eff), device=dev)
    eff_x = xp.asarray(eff, device=dev)
    frac = xp.matmul(pos, inv)
    fmin = fmax = None
    if not pbc_h.all():
        fmin, fmax = _host(xp.min(frac, axis=0)), _host(xp.max(frac, axis=0))
    grid = make_grid(cell_h, pbc_h, cutoff, n, fmin, fmax)

    # 1. wrap periodic axes
    per = xp.asarray(pbc_h, device=dev)
    wrap_f = xp.where(per, xp.floor(frac), xp.zeros_like(frac))
    frac = frac - wrap_f
    over = per & (frac >= 1.0)
    frac = xp.where(over, frac - 1.0, frac)
    wrap_f = xp.where(over, wrap_f + 1.0, wrap_f)
    wrap = xp.astype(wrap_f, i64)
    xw = xp.matmul(frac, eff_x)

    # 2. bins, stable sort by bin
    nb_h = grid.n_bins
    nb = xp.asarray(nb_h, dtype=i64, device=dev)
    u = (frac - xp.asarray(grid.origin, device=dev)) / xp.asarray(grid.span, device=dev)
    u = u * xp.astype(nb, xp.float64)
    b = xp.astype(xp.floor(xp.clip(u, 0.0, None)), i64)
    b = xp.minimum(b, nb - 1)
    flat = (b[:, 0] * int(nb_h[1]) + b[:, 1]) * int(nb_h[2]) + b[:, 2]
    order = xp.argsort(flat, stable=True)
    flat_s = _take(xp, flat, order)
    total = int(grid.total_bins)
    start = xp.searchsorted(flat_s, xp.arange(total + 1, dtype=i64, device=dev))
    bs = _take(xp, b, order)
    xs = _take(xp, xw, order)
    return grid, wrap, order, start, bs, xs


def neighbor_list(positions, cell, pbc, cutoff: float, half: bool = False,
                  max_candidates: int = 1 << 24):
    """``(i, j, S)`` like ``kernels.neighbors.neighbor_list``, as arrays of ``positions``' library.

    ``positions``: (N, 3) float64 numpy or cupy array; ``cell`` and ``pbc`` may be
    host values. Sorted by i, then j, then S; S int64.
    """
    xp = array_namespace(positions)
    dev = xp_device(positions)
    pos = xp.asarray(positions, dtype=xp.float64)
    n = int(pos.shape[0])
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions must have shape (n_atoms, 3), got {tuple(pos.shape)}")
    cell_h = as_cell(_host(cell))
    pbc_h = np.broadcast_to(np.asarray(_host(pbc), dtype=bool), (3,)).copy()
    cutoff = float(cutoff)
    if not np.isfinite(cutoff) or cutoff <= 0:
        raise ValueError(f"neighbor cutoff must be a positive number of Å, got {cutoff}")
    i64 = xp.int64
    if n == 0:
        z = xp.zeros((0,), dtype=i64, device=dev)
        return z, z, xp.zeros((0, 3), dtype=i64, device=dev)

    grid, wrap, order, start, bs, xs = bin_sorted(xp, pos, cell_h, pbc_h, cutoff)
    nb_h = grid.n_bins
    nb = xp.asarray(nb_h, dtype=i64, device=dev)
    per = xp.asarray(pbc_h, device=dev)
    eff_x = xp.asarray(grid.cell, device=dev)
    occupancy = start[1:] - start[:-1]
    est = float(_host(xp.sum(occupancy * occupancy))) / n  # mean candidates per (atom, offset)

    # 3. candidates per batch of stencil offsets
    search = grid.search
    w1, w2 = int(2 * search[1] + 1), int(2 * search[2] + 1)
    ns = int((2 * search[0] + 1) * w1 * w2)
    stencil = _stencil(search)
    k_batch = int(max(1, min(len(stencil), max_candidates // max(1.0, n * (est + 1.0)))))
    rc2 = float(cutoff) ** 2  # as the Numba list
    cell_f = eff_x
    out_i, out_j, out_code = [], [], []
    for k0 in range(0, len(stencil), k_batch):
        D = xp.asarray(stencil[k0:k0 + k_batch], device=dev)  # (K, 3)
        K = int(D.shape[0])
        c = xp.reshape(bs, (1, n, 3)) + xp.reshape(D, (K, 1, 3))  # (K, n, 3)
        s = xp.where(per, c // nb, xp.zeros_like(c))
        c = c - s * nb
        valid = xp.all((c >= 0) & (c < nb), axis=2)
        c = xp.clip(c, 0, None)
        c = xp.minimum(c, nb - 1)
        nbin = xp.reshape((c[..., 0] * int(nb_h[1]) + c[..., 1]) * int(nb_h[2]) + c[..., 2], (-1,))
        valid = xp.reshape(valid, (-1,))
        lo = _take(xp, start, nbin)
        cnt = xp.where(valid, _take(xp, start, nbin + 1) - lo, xp.zeros_like(lo))
        ends = xp.cumulative_sum(cnt)
        n_cand = int(_host(ends[-1]))
        if n_cand == 0:
            continue
        e = xp.arange(n_cand, dtype=i64, device=dev)
        owner = xp.searchsorted(ends, e, side="right")  # index into (K * n)
        q = _take(xp, lo, owner) + e - (_take(xp, ends, owner) - _take(xp, cnt, owner))
        p = owner % n
        s_flat = xp.reshape(s, (-1, 3))
        s_e = _take(xp, s_flat, owner)  # (n_cand, 3)
        d = _take(xp, xs, q) - _take(xp, xs, p) + xp.matmul(xp.astype(s_e, xp.float64), cell_f)
        close = xp.sum(d * d, axis=1) < rc2
        ii = _take(xp, order, p)
        jj = _take(xp, order, q)
        zero = xp.all(s_e == 0, axis=1)
        if half:
            s_pos = (s_e[:, 0] > 0) | ((s_e[:, 0] == 0) & ((s_e[:, 1] > 0) | ((s_e[:, 1] == 0) & (s_e[:, 2] > 0))))
            keep = close & ((ii < jj) | ((ii == jj) & s_pos))
        else:
            keep = close & ~((ii == jj) & zero)
        idx = xp.nonzero(keep)[0]
        if int(idx.shape[0]) == 0:
            continue
        s_k = _take(xp, s_e, idx)
        code = ((s_k[:, 0] + int(search[0])) * w1 + (s_k[:, 1] + int(search[1]))) * w2 + (s_k[:, 2] + int(search[2]))
        out_i.append(_take(xp, ii, idx))
        out_j.append(_take(xp, jj, idx))
        out_code.append(code)
    if not out_i:
        z = xp.zeros((0,), dtype=i64, device=dev)
        return z, z, xp.zeros((0, 3), dtype=i64, device=dev)
    i_all = xp.concat(out_i)
    j_all = xp.concat(out_j)
    code_all = xp.concat(out_code)

    # 4. sort by (i, j, shift code); one int64 key when it fits
    if float(n) * n * ns < 2.0**62:
        perm = xp.argsort((i_all * n + j_all) * ns + code_all, stable=True)
    else:
        perm = xp.argsort(j_all * ns + code_all, stable=True)
        perm = _take(xp, perm, xp.argsort(_take(xp, i_all, perm), stable=True))
    i_all = _take(xp, i_all, perm)
    j_all = _take(xp, j_all, perm)
    code_all = _take(xp, code_all, perm)
    s2 = code_all % w2 - int(search[2])
    s1 = (code_all // w2) % w1 - int(search[1])
    s0 = code_all // (w1 * w2) - int(search[0])
    S = xp.stack([s0, s1, s2], axis=1) + _take(xp, wrap, i_all) - _take(xp, wrap, j_all)
    return i_all, j_all, S


def neighbor_list_csr(positions, cell, pbc, cutoff: float, half: bool = False, **kw):
    """``(row_ptr, j, S)``: the list above in receiver-sorted CSR form."""
    xp = array_namespace(positions)
    i, j, S = neighbor_list(positions, cell, pbc, cutoff, half, **kw)
    n = int(positions.shape[0])
    bounds = xp.arange(n + 1, dtype=xp.int64, device=xp_device(positions))
    row_ptr = xp.searchsorted(i, bounds)
    return row_ptr, j, S


def to_torch(*arrays):
    """Zero-copy hand-off to torch (DLPack): cupy -> CUDA tensors, numpy -> CPU tensors."""
    import torch

    return tuple(torch.from_dlpack(a) for a in arrays)
