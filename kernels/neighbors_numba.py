"""Numba cell-list kernels: binning, counting pass, filling pass.

Why two passes: the first counts each atom's neighbours, a prefix sum gives
exact CSR row offsets, the second writes pairs straight into their rows. No
N x max_neighbours padding, no per-thread buffers to merge, and the output is
deterministic for any thread count.

Loops are ``prange`` over bins: every atom of a bin shares the same stencil of
neighbour bins (with their periodic image shifts), and candidates are read from
positions stored contiguously in bin order. Each row is then sorted by
(j, image shift) via one int64 key per pair, so the pair order is the same
whatever the binning or thread count.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def bin_atoms(positions, inv_cell, cell, pbc, origin, span, n_bins):
    """Fractional coords -> wrap counts, wrapped positions and flat bin index per atom."""
    n = positions.shape[0]
    wrap = np.zeros((n, 3), dtype=np.int64)
    xw = np.empty((n, 3), dtype=np.float64)
    bins = np.empty(n, dtype=np.int64)
    for a in prange(n):
        f = np.empty(3)
        for c in range(3):
            f[c] = (positions[a, 0] * inv_cell[0, c] + positions[a, 1] * inv_cell[1, c]
                    + positions[a, 2] * inv_cell[2, c])
        b = np.empty(3, dtype=np.int64)
        for c in range(3):
            if pbc[c]:
                w = np.floor(f[c])
                f[c] -= w
                if f[c] >= 1.0:  # -tiny wrapped to 1.0 by rounding
                    f[c] -= 1.0
                    w += 1.0
                wrap[a, c] = np.int64(w)
            u = (f[c] - origin[c]) / span[c] * n_bins[c]
            k = np.int64(np.floor(u)) if u > 0 else np.int64(0)
            if k >= n_bins[c]:
                k = n_bins[c] - 1
            b[c] = k
        for c in range(3):
            xw[a, c] = f[0] * cell[0, c] + f[1] * cell[1, c] + f[2] * cell[2, c]
        bins[a] = (b[0] * n_bins[1] + b[1]) * n_bins[2] + b[2]
    return wrap, xw, bins


@njit(cache=True)
def counting_sort(bins, total_bins):
    """Stable sort of atoms by bin: (order, bin_start) with atoms ascending within a bin."""
    n = bins.shape[0]
    start = np.zeros(total_bins + 1, dtype=np.int64)
    for a in range(n):
        start[bins[a] + 1] += 1
    for b in range(total_bins):
        start[b + 1] += start[b]
    cursor = start[:-1].copy()
    order = np.empty(n, dtype=np.int64)
    for a in range(n):
        b = bins[a]
        order[cursor[b]] = a
        cursor[b] += 1
    return order, start


@njit(cache=True, inline="always")
def _stencil_cell(bc, d, nb, periodic):
    """Neighbour bin index along one axis and its image shift; -1 if outside a non-periodic box."""
    c = bc + d
    if periodic:
        s = c // nb
        return c - s * nb, s
    if c < 0 or c >= nb:
        return -1, 0
    return c, 0


@njit(cache=True, parallel=True)
def _pairs_pass(xs, order, start, cell, pbc, n_bins, search, rc2, half, fill, row_cursor, keys):
    """One pass over all bins. fill=False: row_cursor[i] += count. fill=True: write keys."""
    nb0, nb1, nb2 = n_bins[0], n_bins[1], n_bins[2]
    m0, m1, m2 = search[0], search[1], search[2]
    w1 = 2 * m1 + 1
    w2 = 2 * m2 + 1
    ns = (2 * m0 + 1) * w1 * w2
    total = nb0 * nb1 * nb2
    for home in prange(total):
        h_start = start[home]
        h_end = start[home + 1]
        if h_start == h_end:
            continue
        b0 = home // (nb1 * nb2)
        b1 = (home // nb2) % nb1
        b2 = home % nb2
        for d0 in range(-m0, m0 + 1):
            c0, s0 = _stencil_cell(b0, d0, nb0, pbc[0])
            if c0 < 0:
                continue
            for d1 in range(-m1, m1 + 1):
                c1, s1 = _stencil_cell(b1, d1, nb1, pbc[1])
                if c1 < 0:
                    continue
                for d2 in range(-m2, m2 + 1):
                    c2, s2 = _stencil_cell(b2, d2, nb2, pbc[2])
                    if c2 < 0:
                        continue
                    nbin = (c0 * nb1 + c1) * nb2 + c2
                    q_start = start[nbin]
                    q_end = start[nbin + 1]
                    if q_start == q_end:
                        continue
                    sx = s0 * cell[0, 0] + s1 * cell[1, 0] + s2 * cell[2, 0]
                    sy = s0 * cell[0, 1] + s1 * cell[1, 1] + s2 * cell[2, 1]
                    sz = s0 * cell[0, 2] + s1 * cell[1, 2] + s2 * cell[2, 2]
                    zero_shift = s0 == 0 and s1 == 0 and s2 == 0
                    # image shift of j, lexicographically positive? (half lists, i == j)
                    s_pos = s0 > 0 or (s0 == 0 and (s1 > 0 or (s1 == 0 and s2 > 0)))
                    scode = ((s0 + m0) * w1 + (s1 + m1)) * w2 + (s2 + m2)
                    for p in range(h_start, h_end):
                        i = order[p]
                        xi = xs[p, 0] - sx
                        yi = xs[p, 1] - sy
                        zi = xs[p, 2] - sz
                        cnt = 0
                        cur = row_cursor[i]
                        for q in range(q_start, q_end):
                            dx = xs[q, 0] - xi
                            dy = xs[q, 1] - yi
                            dz = xs[q, 2] - zi
                            if dx * dx + dy * dy + dz * dz < rc2:
                                j = order[q]
                                if half:
                                    if j < i or (j == i and not s_pos):
                                        continue
                                elif j == i and zero_shift:
                                    continue
                                if fill:
                                    keys[cur + cnt] = j * ns + scode
                                cnt += 1
                        row_cursor[i] = cur + cnt


@njit(cache=True, parallel=True)
def _sort_decode(keys, row_ptr, wrap, search, j_out, s_out):
    """Sort each row's keys, then decode j and the shift S = s + wrap_i - wrap_j."""
    n = row_ptr.shape[0] - 1
    m0, m1, m2 = search[0], search[1], search[2]
    w1 = 2 * m1 + 1
    w2 = 2 * m2 + 1
    ns = (2 * m0 + 1) * w1 * w2
    for i in prange(n):
        a = row_ptr[i]
        b = row_ptr[i + 1]
        if b - a > 1:
            keys[a:b].sort()
        for e in range(a, b):
            k = keys[e]
            j = k // ns
            code = k - j * ns
            s2 = code % w2 - m2
            s1 = (code // w2) % w1 - m1
            s0 = code // (w1 * w2) - m0
            j_out[e] = j
            s_out[e, 0] = s0 + wrap[i, 0] - wrap[j, 0]
            s_out[e, 1] = s1 + wrap[i, 1] - wrap[j, 1]
            s_out[e, 2] = s2 + wrap[i, 2] - wrap[j, 2]


@njit(cache=True)
def _row_ptr(counts):
    n = counts.shape[0]
    rp = np.empty(n + 1, dtype=np.int64)
    rp[0] = 0
    for a in range(n):
        rp[a + 1] = rp[a] + counts[a]
    return rp


@njit(cache=True, parallel=True)
def _gather_rows(xw, order):
    n = order.shape[0]
    xs = np.empty((n, 3), dtype=np.float64)
    for p in prange(n):
        a = order[p]
        xs[p, 0] = xw[a, 0]
        xs[p, 1] = xw[a, 1]
        xs[p, 2] = xw[a, 2]
    return xs


def build_csr(positions, grid, cutoff: float, half: bool):
    """Cell-list neighbour list on ``grid``: (row_ptr, j, S) with rows sorted by (j, S)."""
    n = positions.shape[0]
    wrap, xw, bins = bin_atoms(positions, grid.inv_cell, grid.cell, grid.pbc, grid.origin,
                               grid.span, grid.n_bins)
    order, start = counting_sort(bins, grid.total_bins)
    xs = _gather_rows(xw, order)
    rc2 = float(cutoff) ** 2
    counts = np.zeros(n, dtype=np.int64)
    dummy = np.empty(0, dtype=np.int64)
    _pairs_pass(xs, order, start, grid.cell, grid.pbc, grid.n_bins, grid.search, rc2, half,
                False, counts, dummy)
    row_ptr = _row_ptr(counts)
    n_pairs = int(row_ptr[-1])
    keys = np.empty(n_pairs, dtype=np.int64)
    cursor = row_ptr[:-1].copy()
    _pairs_pass(xs, order, start, grid.cell, grid.pbc, grid.n_bins, grid.search, rc2, half,
                True, cursor, keys)
    j = np.empty(n_pairs, dtype=np.int64)
    S = np.empty((n_pairs, 3), dtype=np.int64)
    _sort_decode(keys, row_ptr, wrap, grid.search, j, S)
    return row_ptr, j, S


def bin_order(positions, grid):
    """Permutation that lists atoms bin by bin (ascending index inside a bin)."""
    _, _, bins = bin_atoms(positions, grid.inv_cell, grid.cell, grid.pbc, grid.origin,
                           grid.span, grid.n_bins)
    order, _ = counting_sort(bins, grid.total_bins)
    return order


@njit(cache=True, parallel=True)
def max_displacement_sq(positions, reference):
    """max_a |x_a - ref_a|^2, a parallel reduction (the cheap skin check)."""
    n = positions.shape[0]
    best = 0.0
    for a in prange(n):
        dx = positions[a, 0] - reference[a, 0]
        dy = positions[a, 1] - reference[a, 1]
        dz = positions[a, 2] - reference[a, 2]
        best = max(best, dx * dx + dy * dy + dz * dz)
    return best
