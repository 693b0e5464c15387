"""CuPy raw-kernel cell list: the Numba algorithm as CUDA kernels (hot loop only).

Why beside the array-API version: expressed with whole-array operations, the
candidate loop materialises every candidate pair (hundreds per atom) in device
memory; as a kernel each thread keeps its atom's candidates in registers.
Binning (wrap, bins, sort) is the array-API code (``neighbors_array_api.bin_sorted``);
then, one thread per atom in bin order:

1. ``count``: neighbours per atom -> exclusive scan -> CSR row offsets;
2. ``fill``: (j, shift-code) keys written straight into the atom's row;
3. ``sort_decode``: each row sorted (insertion sort: rows are short) and
   decoded to i, j, S. Rows longer than ``_MAX_SORT_ROW`` (tiny cells with
   thousands of images) are ordered by one global sort instead.

Arithmetic mirrors the Numba kernel (same operation order, FMA contraction
off) so both give the same pairs, in the same order.
"""
from __future__ import annotations

import numpy as np

from atomsim.kernels.cell_grid import as_cell

_MAX_SORT_ROW = 512
_BLOCK = 128

_SOURCE = r"""
extern "C" {

__device__ __forceinline__ bool axis_cell(long long bc, long long d, long long nb, long long periodic,
                                          long long* c, long long* s) {
    long long x = bc + d;
    if (periodic) {
        long long q = x >= 0 ? x / nb : -((-x + nb - 1) / nb);
        *s = q;
        *c = x - q * nb;
        return true;
    }
    if (x < 0 || x >= nb) return false;
    *c = x;
    *s = 0;
    return true;
}

// geo = [nb0, nb1, nb2, m0, m1, m2, pbc0, pbc1, pbc2]; cell row-major (rows are vectors)
__global__ void nl_pairs(const double* __restrict__ xs, const long long* __restrict__ order,
                         const long long* __restrict__ start, const long long* __restrict__ bs,
                         const long long n, const long long* __restrict__ geo,
                         const double* __restrict__ cell, const double rc2, const int half,
                         const int fill, long long* __restrict__ counts,
                         const long long* __restrict__ row_ptr, long long* __restrict__ keys) {
    long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= n) return;
    const long long nb0 = geo[0], nb1 = geo[1], nb2 = geo[2];
    const long long m0 = geo[3], m1 = geo[4], m2 = geo[5];
    const long long w1 = 2 * m1 + 1, w2 = 2 * m2 + 1;
    const long long ns = (2 * m0 + 1) * w1 * w2;
    const long long i = order[p];
    const long long b0 = bs[3 * p], b1 = bs[3 * p + 1], b2 = bs[3 * p + 2];
    const double px = xs[3 * p], py = xs[3 * p + 1], pz = xs[3 * p + 2];
    long long cnt = 0;
    const long long base = fill ? row_ptr[i] : 0;
    for (long long d0 = -m0; d0 <= m0; ++d0) {
        long long c0, s0;
        if (!axis_cell(b0, d0, nb0, geo[6], &c0, &s0)) continue;
        for (long long d1 = -m1; d1 <= m1; ++d1) {
            long long c1, s1;
            if (!axis_cell(b1, d1, nb1, geo[7], &c1, &s1)) continue;
            for (long long d2 = -m2; d2 <= m2; ++d2) {
                long long c2, s2;
                if (!axis_cell(b2, d2, nb2, geo[8], &c2, &s2)) continue;
                const long long nbin = (c0 * nb1 + c1) * nb2 + c2;
                const long long q0 = start[nbin], q1 = start[nbin + 1];
                if (q0 == q1) continue;
                const double sx = s0 * cell[0] + s1 * cell[3] + s2 * cell[6];
                const double sy = s0 * cell[1] + s1 * cell[4] + s2 * cell[7];
                const double sz = s0 * cell[2] + s1 * cell[5] + s2 * cell[8];
                const double xi = px - sx, yi = py - sy, zi = pz - sz;
                const long long code = ((s0 + m0) * w1 + (s1 + m1)) * w2 + (s2 + m2);
                const bool spos = s0 > 0 || (s0 == 0 && (s1 > 0 || (s1 == 0 && s2 > 0)));
                const bool zero = s0 == 0 && s1 == 0 && s2 == 0;
                for (long long q = q0; q < q1; ++q) {
                    const double dx = xs[3 * q] - xi;
                    const double dy = xs[3 * q + 1] - yi;
                    const double dz = xs[3 * q + 2] - zi;
                    if (dx * dx + dy * dy + dz * dz < rc2) {
                        const long long jq = order[q];
                        if (half) {
                            if (jq < i || (jq == i && !spos)) continue;
                        } else if (jq == i && zero) {
                            continue;
                        }
                        if (fill) keys[base + cnt] = jq * ns + code;
                        ++cnt;
                    }
                }
            }
        }
    }
    if (!fill) counts[i] = cnt;
}

__global__ void nl_sort_decode(long long* __restrict__ keys, const long long* __restrict__ row_ptr,
                               const long long* __restrict__ wrap, const long long n,
                               const long long* __restrict__ geo, const int do_sort,
                               long long* __restrict__ i_out, long long* __restrict__ j_out,
                               long long* __restrict__ s_out) {
    long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n) return;
    const long long m0 = geo[3], m1 = geo[4], m2 = geo[5];
    const long long w1 = 2 * m1 + 1, w2 = 2 * m2 + 1;
    const long long ns = (2 * m0 + 1) * w1 * w2;
    const long long a = row_ptr[r], b = row_ptr[r + 1];
    if (do_sort) {
        for (long long k = a + 1; k < b; ++k) {
            const long long v = keys[k];
            long long m = k - 1;
            while (m >= a && keys[m] > v) { keys[m + 1] = keys[m]; --m; }
            keys[m + 1] = v;
        }
    }
    const long long wr0 = wrap[3 * r], wr1 = wrap[3 * r + 1], wr2 = wrap[3 * r + 2];
    for (long long e = a; e < b; ++e) {
        const long long k = keys[e];
        const long long j = k / ns;
        const long long code = k - j * ns;
        i_out[e] = r;
        j_out[e] = j;
        s_out[3 * e] = code / (w1 * w2) - m0 + wr0 - wrap[3 * j];
        s_out[3 * e + 1] = (code / w2) % w1 - m1 + wr1 - wrap[3 * j + 1];
        s_out[3 * e + 2] = code % w2 - m2 + wr2 - wrap[3 * j + 2];
    }
}

}
"""

_MODULE = None


def _kernels():
    global _MODULE
    if _MODULE is None:
        import cupy as cp

        _MODULE = cp.RawModule(code=_SOURCE, options=("--fmad=false",))
    return _MODULE.get_function("nl_pairs"), _MODULE.get_function("nl_sort_decode")


def neighbor_list(positions, cell, pbc, cutoff: float, half: bool = False):
    """``(i, j, S)`` as cupy int64 arrays; same pairs and order as the Numba list."""
    import cupy as cp

    from atomsim.kernels.neighbors_array_api import bin_sorted

    pos = cp.ascontiguousarray(cp.asarray(positions, dtype=cp.float64))
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions must have shape (n_atoms, 3), got {tuple(pos.shape)}")
    cell_h = as_cell(cp.asnumpy(cp.asarray(cell)) if isinstance(cell, cp.ndarray) else cell)
    pbc_h = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    cutoff = float(cutoff)
    if not np.isfinite(cutoff) or cutoff <= 0:
        raise ValueError(f"neighbor cutoff must be a positive number of Å, got {cutoff}")
    n = int(pos.shape[0])
    if n == 0:
        z = cp.zeros(0, dtype=cp.int64)
        return z, z.copy(), cp.zeros((0, 3), dtype=cp.int64)
    import array_api_compat

    xp = array_api_compat.array_namespace(pos)
    grid, wrap, order, start, bs, xs = bin_sorted(xp, pos, cell_h, pbc_h, cutoff)
    pairs, sort_decode = _kernels()
    xs = cp.ascontiguousarray(xs)
    bs = cp.ascontiguousarray(bs)
    wrap = cp.ascontiguousarray(wrap)
    order = cp.ascontiguousarray(order)
    start = cp.ascontiguousarray(start)
    geo = cp.asarray(np.concatenate([grid.n_bins, grid.search, grid.pbc.astype(np.int64)]).astype(np.int64))
    cell_d = cp.asarray(np.ascontiguousarray(grid.cell, dtype=np.float64))
    rc2 = np.float64(float(cutoff) ** 2)  # as the Numba list
    blocks = ((n + _BLOCK - 1) // _BLOCK,)
    counts = cp.empty(n, dtype=cp.int64)
    dummy = cp.empty(1, dtype=cp.int64)
    common = (xs, order, start, bs, np.int64(n), geo, cell_d, rc2, np.int32(bool(half)))
    pairs(blocks, (_BLOCK,), common + (np.int32(0), counts, dummy, dummy))
    row_ptr = cp.zeros(n + 1, dtype=cp.int64)
    cp.cumsum(counts, out=row_ptr[1:])
    n_pairs = int(row_ptr[-1].get())
    keys = cp.empty(max(n_pairs, 1), dtype=cp.int64)
    pairs(blocks, (_BLOCK,), common + (np.int32(1), counts, row_ptr, keys))
    i_out = cp.empty(max(n_pairs, 1), dtype=cp.int64)
    j_out = cp.empty(max(n_pairs, 1), dtype=cp.int64)
    s_out = cp.empty((max(n_pairs, 1), 3), dtype=cp.int64)
    long_rows = n_pairs and int(counts.max().get()) > _MAX_SORT_ROW
    if long_rows:  # few atoms, huge rows: one global sort by (row, key) instead
        row_of = cp.repeat(cp.arange(n, dtype=cp.int64), cp.asnumpy(counts).tolist())
        perm = cp.lexsort(cp.stack([keys[:n_pairs], row_of]))
        keys[:n_pairs] = keys[:n_pairs][perm]
    sort_decode(blocks, (_BLOCK,), (keys, row_ptr, wrap, np.int64(n), geo, np.int32(not long_rows),
                                    i_out, j_out, s_out))
    return i_out[:n_pairs], j_out[:n_pairs], s_out[:n_pairs]
