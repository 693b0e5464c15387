"""Numba cell-list kernels: binning, counting pass, filling pass.

Why two passes: the first counts each atom's neighbours, a prefix sum gives
exact CSR row offsets, the second writes pairs straight into their rows. No
N x max_neighbours padding, no per-thread buffers to merge, and the output is
deterministic for any thread count.

Loops are ``prange`` over bins. Per bin, a small stencil table lists the
neighbour bins (with their periodic image shift vectors); positions are stored
structure-of-arrays in bin order so the candidate loop reads contiguous memory
(and the counting loop vectorises). A row is complete as soon as its atom has
been through the stencil, so it is sorted by (j, shift) -- one int64 key per
pair, insertion sort (rows are short and often nearly sorted) -- and decoded
while still in cache.

Every kernel is compiled twice: ``prange`` (parallel) and plain (serial). Small
systems use the serial one: waking a thread pool costs more than the work, and
much more on an oversubscribed machine.
"""
from __future__ import annotations

import types

import numpy as np
from numba import njit, prange

# Below these sizes the serial twin is used.
PARALLEL_MIN_ATOMS = 2048
PARALLEL_MIN_ATOMS_DISPLACEMENT = 65536


def numba_twins(fn):
    """(parallel, serial) compiled versions of one kernel, cached under distinct names.

    Why both: waking numba's thread pool costs more than a small input's work, so
    callers pick the serial twin below a size threshold (the LJ kernels use it too).
    """
    par = njit(cache=True, parallel=True)(fn)
    ser_fn = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                                fn.__defaults__, fn.__closure__)
    ser_fn.__qualname__ = fn.__qualname__ + "_serial"
    ser = njit(cache=True)(ser_fn)
    return par, ser


def _pick(twins, n: int, threshold: int | None = None):
    if threshold is None:
        threshold = PARALLEL_MIN_ATOMS  # read at call time (tests lower it)
    return twins[0] if n >= threshold else twins[1]


def _bin_atoms(positions, inv_cell, cell, pbc, origin, span, n_bins):
    """Fractional coords -> wrap counts, wrapped positions and flat bin index per atom."""
    n = positions.shape[0]
    wrap = np.zeros((n, 3), dtype=np.int64)
    xw = np.empty((n, 3), dtype=np.float64)
    bins = np.empty(n, dtype=np.int64)
    for a in prange(n):
        x0, x1, x2 = positions[a, 0], positions[a, 1], positions[a, 2]
        f0 = x0 * inv_cell[0, 0] + x1 * inv_cell[1, 0] + x2 * inv_cell[2, 0]
        f1 = x0 * inv_cell[0, 1] + x1 * inv_cell[1, 1] + x2 * inv_cell[2, 1]
        f2 = x0 * inv_cell[0, 2] + x1 * inv_cell[1, 2] + x2 * inv_cell[2, 2]
        flat = 0
        for c in range(3):
            f = f0 if c == 0 else (f1 if c == 1 else f2)
            if pbc[c]:
                w = np.floor(f)
                f -= w
                if f >= 1.0:  # -tiny wrapped to 1.0 by rounding
                    f -= 1.0
                    w += 1.0
                wrap[a, c] = np.int64(w)
            u = (f - origin[c]) / span[c] * n_bins[c]
            k = np.int64(np.floor(u)) if u > 0 else np.int64(0)
            if k >= n_bins[c]:
                k = n_bins[c] - 1
            flat = flat * n_bins[c] + k
            if c == 0:
                f0 = f
            elif c == 1:
                f1 = f
            else:
                f2 = f
        for c in range(3):
            xw[a, c] = f0 * cell[0, c] + f1 * cell[1, c] + f2 * cell[2, c]
        bins[a] = flat
    return wrap, xw, bins


def _gather_soa(xw, order):
    """Positions in bin order, one array per axis (contiguous candidate loops)."""
    n = order.shape[0]
    xs = np.empty(n, dtype=np.float64)
    ys = np.empty(n, dtype=np.float64)
    zs = np.empty(n, dtype=np.float64)
    for p in prange(n):
        a = order[p]
        xs[p] = xw[a, 0]
        ys[p] = xw[a, 1]
        zs[p] = xw[a, 2]
    return xs, ys, zs


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
def _axis_cell(bc, d, nb, periodic):
    """Neighbour bin index along one axis and its image shift; -1 if outside a non-periodic box."""
    c = bc + d
    if periodic:
        s = c // nb
        return c - s * nb, s
    if c < 0 or c >= nb:
        return -1, 0
    return c, 0


@njit(cache=True, inline="always")
def _insertion_sort(a, lo, hi):
    for k in range(lo + 1, hi):
        v = a[k]
        m = k - 1
        while m >= lo and a[m] > v:
            a[m + 1] = a[m]
            m -= 1
        a[m + 1] = v


def _pairs_pass(xs, ys, zs, order, start, cell, pbc, n_bins, search, rc2, half, fill,
                counts, row_ptr, wrap, j_out, s_out):
    """fill=False: counts[i] = number of neighbours. fill=True: write sorted rows of (j, S)."""
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
        # stencil table of this bin: candidate range, image shift vector, shift code
        t_q0 = np.empty(ns, dtype=np.int64)
        t_q1 = np.empty(ns, dtype=np.int64)
        t_sx = np.empty(ns, dtype=np.float64)
        t_sy = np.empty(ns, dtype=np.float64)
        t_sz = np.empty(ns, dtype=np.float64)
        t_code = np.empty(ns, dtype=np.int64)
        t_pos = np.empty(ns, dtype=np.bool_)  # shift lexicographically positive (half lists)
        t_zero = np.empty(ns, dtype=np.bool_)
        nt = 0
        for d0 in range(-m0, m0 + 1):
            c0, s0 = _axis_cell(b0, d0, nb0, pbc[0])
            if c0 < 0:
                continue
            for d1 in range(-m1, m1 + 1):
                c1, s1 = _axis_cell(b1, d1, nb1, pbc[1])
                if c1 < 0:
                    continue
                for d2 in range(-m2, m2 + 1):
                    c2, s2 = _axis_cell(b2, d2, nb2, pbc[2])
                    if c2 < 0:
                        continue
                    nbin = (c0 * nb1 + c1) * nb2 + c2
                    if start[nbin] == start[nbin + 1]:
                        continue
                    t_q0[nt] = start[nbin]
                    t_q1[nt] = start[nbin + 1]
                    t_sx[nt] = s0 * cell[0, 0] + s1 * cell[1, 0] + s2 * cell[2, 0]
                    t_sy[nt] = s0 * cell[0, 1] + s1 * cell[1, 1] + s2 * cell[2, 1]
                    t_sz[nt] = s0 * cell[0, 2] + s1 * cell[1, 2] + s2 * cell[2, 2]
                    t_code[nt] = ((s0 + m0) * w1 + (s1 + m1)) * w2 + (s2 + m2)
                    t_pos[nt] = s0 > 0 or (s0 == 0 and (s1 > 0 or (s1 == 0 and s2 > 0)))
                    t_zero[nt] = s0 == 0 and s1 == 0 and s2 == 0
                    nt += 1
        if fill:
            # visit neighbour bins in order of their first atom index: rows come out
            # nearly sorted by j (fully sorted when atoms are stored in bin order)
            t_first = np.empty(nt, dtype=np.int64)
            for t in range(nt):
                t_first[t] = order[t_q0[t]] * ns + t_code[t]
            perm = np.argsort(t_first)
            t_q0 = t_q0[perm]
            t_q1 = t_q1[perm]
            t_sx = t_sx[perm]
            t_sy = t_sy[perm]
            t_sz = t_sz[perm]
            t_code = t_code[perm]
            t_pos = t_pos[perm]
            t_zero = t_zero[perm]
        for p in range(h_start, h_end):
            i = order[p]
            if not fill:
                cnt = 0
                for t in range(nt):
                    xi = xs[p] - t_sx[t]
                    yi = ys[p] - t_sy[t]
                    zi = zs[p] - t_sz[t]
                    q1 = t_q1[t]
                    if half:
                        sp = t_pos[t]
                        for q in range(t_q0[t], q1):
                            dx = xs[q] - xi
                            dy = ys[q] - yi
                            dz = zs[q] - zi
                            jq = order[q]
                            ok = (dx * dx + dy * dy + dz * dz < rc2) and (jq > i or (jq == i and sp))
                            cnt += ok
                    else:
                        for q in range(t_q0[t], q1):
                            dx = xs[q] - xi
                            dy = ys[q] - yi
                            dz = zs[q] - zi
                            cnt += dx * dx + dy * dy + dz * dz < rc2
                if not half:
                    cnt -= 1  # the atom itself (zero shift, distance 0)
                counts[i] = cnt
            else:
                a = row_ptr[i]
                cur = a
                for t in range(nt):
                    xi = xs[p] - t_sx[t]
                    yi = ys[p] - t_sy[t]
                    zi = zs[p] - t_sz[t]
                    code = t_code[t]
                    sp = t_pos[t]
                    sz0 = t_zero[t]
                    for q in range(t_q0[t], t_q1[t]):
                        dx = xs[q] - xi
                        dy = ys[q] - yi
                        dz = zs[q] - zi
                        if dx * dx + dy * dy + dz * dz < rc2:
                            jq = order[q]
                            if half:
                                if jq < i or (jq == i and not sp):
                                    continue
                            elif jq == i and sz0:
                                continue
                            j_out[cur] = jq * ns + code
                            cur += 1
                if cur - a <= 128:
                    _insertion_sort(j_out, a, cur)  # nearly sorted: ~linear
                else:
                    j_out[a:cur].sort()  # long rows (small cells): O(n log n)
                for e in range(a, cur):
                    k = j_out[e]
                    j = k // ns
                    code = k - j * ns
                    j_out[e] = j
                    s_out[e, 0] = code // (w1 * w2) - m0 + wrap[i, 0] - wrap[j, 0]
                    s_out[e, 1] = (code // w2) % w1 - m1 + wrap[i, 1] - wrap[j, 1]
                    s_out[e, 2] = code % w2 - m2 + wrap[i, 2] - wrap[j, 2]


def _newton_pass(xs, ys, zs, order, start, cell, pbc, n_bins, search, rc2, fill, counts, row_ptr, wrap,
                 j_out, s_out):
    """Half list by bin order, as LAMMPS's newton-on half lists: of the two images (p, q, S) and
    (q, p, -S) of a pair (p, q: places in bin order) the one with q > p is kept, or with q == p
    the one with S lexicographically positive. Only candidates after p are visited (half the
    distance checks of the i < j list), and rows are left in stencil order (no sort, no key):
    fill=True writes int32 j and small-int S straight into ``j_out``/``s_out``.
    fill=False: counts[i] = row length.
    """
    nb0, nb1, nb2 = n_bins[0], n_bins[1], n_bins[2]
    m0, m1, m2 = search[0], search[1], search[2]
    ns = (2 * m0 + 1) * (2 * m1 + 1) * (2 * m2 + 1)
    total = nb0 * nb1 * nb2
    for home in prange(total):
        h_start = start[home]
        h_end = start[home + 1]
        if h_start == h_end:
            continue
        b0 = home // (nb1 * nb2)
        b1 = (home // nb2) % nb1
        b2 = home % nb2
        t_q0 = np.empty(ns, dtype=np.int64)
        t_q1 = np.empty(ns, dtype=np.int64)
        t_sx = np.empty(ns, dtype=np.float64)
        t_sy = np.empty(ns, dtype=np.float64)
        t_sz = np.empty(ns, dtype=np.float64)
        t_s = np.empty((ns, 3), dtype=np.int64)
        t_pos = np.empty(ns, dtype=np.bool_)
        nt = 0
        for d0 in range(-m0, m0 + 1):
            c0, s0 = _axis_cell(b0, d0, nb0, pbc[0])
            if c0 < 0:
                continue
            for d1 in range(-m1, m1 + 1):
                c1, s1 = _axis_cell(b1, d1, nb1, pbc[1])
                if c1 < 0:
                    continue
                for d2 in range(-m2, m2 + 1):
                    c2, s2 = _axis_cell(b2, d2, nb2, pbc[2])
                    if c2 < 0:
                        continue
                    nbin = (c0 * nb1 + c1) * nb2 + c2
                    if start[nbin + 1] <= h_start:  # empty, or every candidate before this bin's atoms
                        continue
                    t_q0[nt] = start[nbin]
                    t_q1[nt] = start[nbin + 1]
                    t_sx[nt] = s0 * cell[0, 0] + s1 * cell[1, 0] + s2 * cell[2, 0]
                    t_sy[nt] = s0 * cell[0, 1] + s1 * cell[1, 1] + s2 * cell[2, 1]
                    t_sz[nt] = s0 * cell[0, 2] + s1 * cell[1, 2] + s2 * cell[2, 2]
                    t_s[nt, 0] = s0
                    t_s[nt, 1] = s1
                    t_s[nt, 2] = s2
                    t_pos[nt] = s0 > 0 or (s0 == 0 and (s1 > 0 or (s1 == 0 and s2 > 0)))
                    nt += 1
        for p in range(h_start, h_end):
            i = order[p]
            cur = row_ptr[i] if fill else 0
            cnt = 0
            for t in range(nt):
                xi = xs[p] - t_sx[t]
                yi = ys[p] - t_sy[t]
                zi = zs[p] - t_sz[t]
                q0 = t_q0[t]
                if q0 <= p:
                    q0 = p if (t_pos[t] and p < t_q1[t]) else p + 1
                q1 = t_q1[t]
                if not fill:
                    for q in range(q0, q1):
                        dx = xs[q] - xi
                        dy = ys[q] - yi
                        dz = zs[q] - zi
                        cnt += dx * dx + dy * dy + dz * dz < rc2
                else:
                    for q in range(q0, q1):
                        dx = xs[q] - xi
                        dy = ys[q] - yi
                        dz = zs[q] - zi
                        if dx * dx + dy * dy + dz * dz < rc2:
                            j = order[q]
                            j_out[cur] = j
                            s_out[cur, 0] = t_s[t, 0] + wrap[i, 0] - wrap[j, 0]
                            s_out[cur, 1] = t_s[t, 1] + wrap[i, 1] - wrap[j, 1]
                            s_out[cur, 2] = t_s[t, 2] + wrap[i, 2] - wrap[j, 2]
                            cur += 1
            if not fill:
                counts[i] = cnt


def _expand_rows(row_ptr):
    """i array of a CSR list: row index repeated over each row."""
    n = row_ptr.shape[0] - 1
    out = np.empty(row_ptr[n], dtype=np.int64)
    for r in prange(n):
        for e in range(row_ptr[r], row_ptr[r + 1]):
            out[e] = r
    return out


def _max_displacement_sq(positions, reference):
    """max_a |x_a - ref_a|^2 (the cheap skin check)."""
    n = positions.shape[0]
    best = 0.0
    for a in prange(n):
        dx = positions[a, 0] - reference[a, 0]
        dy = positions[a, 1] - reference[a, 1]
        dz = positions[a, 2] - reference[a, 2]
        best = max(best, dx * dx + dy * dy + dz * dz)
    return best


_BIN = numba_twins(_bin_atoms)
_GATHER = numba_twins(_gather_soa)
_PAIRS = numba_twins(_pairs_pass)
_NEWTON = numba_twins(_newton_pass)
_EXPAND = numba_twins(_expand_rows)
_MAXDISP = numba_twins(_max_displacement_sq)


@njit(cache=True)
def _prefix(counts):
    n = counts.shape[0]
    rp = np.empty(n + 1, dtype=np.int64)
    rp[0] = 0
    for a in range(n):
        rp[a + 1] = rp[a] + counts[a]
    return rp


def bin_atoms(positions, grid):
    n = positions.shape[0]
    return _pick(_BIN, n)(positions, grid.inv_cell, grid.cell, grid.pbc, grid.origin, grid.span,
                          grid.n_bins)


def build_csr(positions, grid, cutoff: float, half: bool):
    """Cell-list neighbour list on ``grid``: (row_ptr, j, S) with rows sorted by (j, S)."""
    n = positions.shape[0]
    wrap, xw, bins = bin_atoms(positions, grid)
    order, start = counting_sort(bins, grid.total_bins)
    xs, ys, zs = _pick(_GATHER, n)(xw, order)
    rc2 = float(cutoff) ** 2
    pairs = _pick(_PAIRS, n)
    counts = np.empty(n, dtype=np.int64)
    e_i = np.empty(0, dtype=np.int64)
    e_s = np.empty((0, 3), dtype=np.int64)
    args = (xs, ys, zs, order, start, grid.cell, grid.pbc, grid.n_bins, grid.search, rc2, half)
    pairs(*args, False, counts, e_i, wrap, e_i, e_s)
    row_ptr = _prefix(counts)
    n_pairs = int(row_ptr[-1])
    j = np.empty(n_pairs, dtype=np.int64)
    S = np.empty((n_pairs, 3), dtype=np.int64)
    pairs(*args, True, counts, row_ptr, wrap, j, S)
    return row_ptr, j, S


def build_csr_newton(positions, grid, cutoff: float):
    """Compact half list by bin order (``_newton_pass``): (row_ptr int64, j int32, S int8/16/32).

    Each unordered pair once, but not necessarily i < j and rows not sorted: for kernels that
    apply Newton's third law (the direct pair path); ~7 bytes per pair, nothing wider built.
    """
    n = positions.shape[0]
    wrap, xw, bins = bin_atoms(positions, grid)
    order, start = counting_sort(bins, grid.total_bins)
    xs, ys, zs = _pick(_GATHER, n)(xw, order)
    rc2 = float(cutoff) ** 2
    kernel = _pick(_NEWTON, n)
    counts = np.empty(n, dtype=np.int64)
    j_dtype = np.int32 if n < 2**31 else np.int64
    args = (xs, ys, zs, order, start, grid.cell, grid.pbc, grid.n_bins, grid.search, rc2)
    kernel(*args, False, counts, counts, wrap, np.empty(0, j_dtype), np.empty((0, 3), np.int8))
    row_ptr = _prefix(counts)
    spread = (wrap.max(0) - wrap.min(0)) if n else np.zeros(3, np.int64)
    bound = int((np.asarray(grid.search) + spread).max())  # |S| <= search + wrap spread per axis
    s_dtype = np.int8 if bound < 2**7 else (np.int16 if bound < 2**15 else np.int32)
    n_pairs = int(row_ptr[-1])
    j = np.empty(n_pairs, dtype=j_dtype)
    S = np.empty((n_pairs, 3), dtype=s_dtype)
    kernel(*args, True, counts, row_ptr, wrap, j, S)
    return row_ptr, j, S


def expand_rows(row_ptr):
    return _pick(_EXPAND, row_ptr.shape[0] - 1)(row_ptr)


def bin_order(positions, grid):
    """Permutation that lists atoms bin by bin (ascending index inside a bin)."""
    _, _, bins = bin_atoms(positions, grid)
    order, _ = counting_sort(bins, grid.total_bins)
    return order


def max_displacement_sq(positions, reference) -> float:
    n = positions.shape[0]
    return float(_pick(_MAXDISP, n, max(PARALLEL_MIN_ATOMS, PARALLEL_MIN_ATOMS_DISPLACEMENT))(
        positions, reference))
