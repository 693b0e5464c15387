"""Numba CPU kernels for the Lennard-Jones pair energy and its edge gradient.

Why: on CPU the torch version of LJ makes ~15 passes over E-long temporaries
(r2, c6, c12, masks, ...) in forward and backward; these kernels make one pass
each, walking the receiver-sorted edges row by row (``row_ptr``), so per-node
sums need no atomics and the threads never share an output row. The formulas
are the same as ``lj._pair_coefficients`` (and ASE's), term by term.

Each kernel is compiled twice, parallel (``prange``) and serial: small graphs
or one thread use the serial twin, since waking numba's thread pool costs more
than the work (20x more for a 100-atom MD step on a busy 2-core machine).

``lj_direct`` is the engine's direct path (``Potential.direct_forces``): one
pass over a half (or full) CSR pair list that computes energy, per-atom
energies, forces (Newton's third law), the virial and optionally per-atom
virials straight from positions + integer cell shifts, the way LAMMPS's
``pair lj/cut`` does; no edge arrays, no autograd.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from atomsim.kernels.neighbors_numba import numba_twins

PARALLEL_MIN_NODES = 2048


def _lj_forward(vec, row_ptr, senders, types, n_types, eps_t, sig2_t, e0_t, rc2, ro2,
               smooth, shift, energies, k):
    """energies[i] = sum over i's edges of 0.5*phi; k[e] with d(0.5 phi)/d vec_e = k[e] * vec_e."""
    n_nodes = row_ptr.shape[0] - 1
    denom = (rc2 - ro2) ** 3
    for i in prange(n_nodes):
        acc = 0.0
        ti = types[i] * n_types
        for e in range(row_ptr[i], row_ptr[i + 1]):
            x = vec[e, 0]
            y = vec[e, 1]
            z = vec[e, 2]
            r2 = x * x + y * y + z * z
            if r2 > rc2:
                k[e] = 0.0
                continue
            p = ti + types[senders[e]]
            eps = eps_t[p]
            s = sig2_t[p] / r2
            c6 = s * s * s
            c12 = c6 * c6
            en = 4.0 * eps * (c12 - c6)
            du = -24.0 * eps * (2.0 * c12 - c6) / r2
            if smooth:
                if r2 < ro2:
                    fc = 1.0
                    dfc = 0.0
                elif r2 < rc2:
                    fc = (rc2 - r2) ** 2 * (rc2 + 2.0 * r2 - 3.0 * ro2) / denom
                    dfc = 6.0 * (rc2 - r2) * (ro2 - r2) / denom
                else:
                    fc = 0.0
                    dfc = 0.0
                du = fc * du + 2.0 * dfc * en
                en = en * fc
            elif shift:
                en = en - e0_t[p]
            acc += 0.5 * en
            k[e] = 0.5 * du
        energies[i] = acc


def _lj_backward(vec, row_ptr, k, grad_nodes, grad_vec):
    """grad_vec[e] = grad_nodes[receiver(e)] * k[e] * vec[e]."""
    n_nodes = row_ptr.shape[0] - 1
    for i in prange(n_nodes):
        g = grad_nodes[i]
        for e in range(row_ptr[i], row_ptr[i + 1]):
            w = g * k[e]
            grad_vec[e, 0] = w * vec[e, 0]
            grad_vec[e, 1] = w * vec[e, 1]
            grad_vec[e, 2] = w * vec[e, 2]


def _lj_direct(n_chunks, chunk_rows, pos, cell, row_ptr, senders, shifts, types, n_types, eps_t, sig2_t,
               e0_t, rc2, ro2, smooth, shift, half, n_local, want_virial, want_atom_virial,
               f_buf, e_buf, v_buf, av_buf):
    """Energy, forces, virial of the pairs in rows ``chunk_rows[c]:chunk_rows[c+1]`` into chunk c's buffers.

    Edge e of row i: r = x[senders[e]] - x[i] + shifts[e] @ cell, g = dphi/dr / r * r.
    ``half``: each pair once; pair energy split half/half between its atoms; weight 1,
    1/2 when one atom is a ghost (>= n_local: its owner holds the mirror pair), 0 for two ghosts.
    Full list: 0.5*phi to the receiver, weight 1/2, rows >= n_local skipped (edges into ghosts).
    F_i += w g, F_j -= w g; virial += w r (x) g; per-atom virial: half of that to each end.
    Threads never share a buffer: the caller sums the ``n_chunks`` slices.
    """
    denom = (rc2 - ro2) ** 3
    c00 = cell[0, 0]
    c01 = cell[0, 1]
    c02 = cell[0, 2]
    c10 = cell[1, 0]
    c11 = cell[1, 1]
    c12_ = cell[1, 2]
    c20 = cell[2, 0]
    c21 = cell[2, 1]
    c22 = cell[2, 2]
    for c in prange(n_chunks):
        f = f_buf[c]
        en_out = e_buf[c]
        av = av_buf[c]
        v00 = 0.0
        v01 = 0.0
        v02 = 0.0
        v11 = 0.0
        v12 = 0.0
        v22 = 0.0
        r_end = chunk_rows[c + 1]
        if not half and r_end > n_local:
            r_end = n_local
        for i in range(chunk_rows[c], r_end):
            xi = pos[i, 0]
            yi = pos[i, 1]
            zi = pos[i, 2]
            ti = types[i] * n_types
            fxi = 0.0
            fyi = 0.0
            fzi = 0.0
            ei = 0.0
            for e in range(row_ptr[i], row_ptr[i + 1]):
                j = senders[e]
                dx = pos[j, 0] - xi
                dy = pos[j, 1] - yi
                dz = pos[j, 2] - zi
                s0 = shifts[e, 0]
                s1 = shifts[e, 1]
                s2 = shifts[e, 2]
                if s0 != 0 or s1 != 0 or s2 != 0:
                    dx += s0 * c00 + s1 * c10 + s2 * c20
                    dy += s0 * c01 + s1 * c11 + s2 * c21
                    dz += s0 * c02 + s1 * c12_ + s2 * c22
                r2 = dx * dx + dy * dy + dz * dz
                if r2 > rc2:
                    continue
                p = ti + types[j] if n_types > 1 else 0
                eps = eps_t[p]
                inv_r2 = 1.0 / r2
                s = sig2_t[p] * inv_r2
                c6 = s * s * s
                c12 = c6 * c6
                en = 4.0 * eps * (c12 - c6)
                du = -24.0 * eps * (2.0 * c12 - c6) * inv_r2
                if smooth:
                    if r2 < ro2:
                        fc = 1.0
                        dfc = 0.0
                    elif r2 < rc2:
                        fc = (rc2 - r2) ** 2 * (rc2 + 2.0 * r2 - 3.0 * ro2) / denom
                        dfc = 6.0 * (rc2 - r2) * (ro2 - r2) / denom
                    else:
                        fc = 0.0
                        dfc = 0.0
                    du = fc * du + 2.0 * dfc * en
                    en = en * fc
                elif shift:
                    en = en - e0_t[p]
                if half:
                    if i < n_local and j < n_local:
                        w = 1.0
                    elif i < n_local or j < n_local:
                        w = 0.5
                    else:
                        continue
                    ei += 0.5 * en
                    en_out[j] += 0.5 * en
                else:
                    w = 0.5
                    ei += 0.5 * en
                wd = w * du
                gx = wd * dx
                gy = wd * dy
                gz = wd * dz
                fxi += gx
                fyi += gy
                fzi += gz
                f[j, 0] -= gx
                f[j, 1] -= gy
                f[j, 2] -= gz
                if want_virial:
                    v00 += dx * gx
                    v01 += dx * gy
                    v02 += dx * gz
                    v11 += dy * gy
                    v12 += dy * gz
                    v22 += dz * gz
                if want_atom_virial:
                    hxx = 0.5 * dx * gx
                    hxy = 0.5 * dx * gy
                    hxz = 0.5 * dx * gz
                    hyy = 0.5 * dy * gy
                    hyz = 0.5 * dy * gz
                    hzz = 0.5 * dz * gz
                    for side in range(2):
                        a = i if side == 0 else np.int64(j)
                        av[a, 0] += hxx
                        av[a, 1] += hxy
                        av[a, 2] += hxz
                        av[a, 3] += hxy
                        av[a, 4] += hyy
                        av[a, 5] += hyz
                        av[a, 6] += hxz
                        av[a, 7] += hyz
                        av[a, 8] += hzz
            f[i, 0] += fxi
            f[i, 1] += fyi
            f[i, 2] += fzi
            en_out[i] += ei
        v_buf[c, 0] = v00
        v_buf[c, 1] = v01
        v_buf[c, 2] = v02
        v_buf[c, 3] = v01
        v_buf[c, 4] = v11
        v_buf[c, 5] = v12
        v_buf[c, 6] = v02
        v_buf[c, 7] = v12
        v_buf[c, 8] = v22


def _sum_chunks(buf, out):
    """out[a] = sum_c buf[c, a] (rows of the per-thread buffers, in a fixed order)."""
    n_chunks = buf.shape[0]
    n = buf.shape[1]
    m = buf.shape[2]
    for a in prange(n):
        for k in range(m):
            acc = 0.0
            for c in range(n_chunks):
                acc += buf[c, a, k]
            out[a, k] = acc


_FORWARD = numba_twins(_lj_forward)
_BACKWARD = numba_twins(_lj_backward)
_DIRECT = numba_twins(_lj_direct)
_SUM = numba_twins(_sum_chunks)


def _pick(twins, n_nodes: int, n_threads: int):
    """Parallel twin only for big graphs and more than one thread (capped at ``n_threads``)."""
    n_threads = min(int(n_threads), numba.config.NUMBA_NUM_THREADS)
    if n_threads > 1 and n_nodes >= PARALLEL_MIN_NODES:
        numba.set_num_threads(n_threads)
        return twins[0]
    return twins[1]


def lj_forward(n_threads: int, vec, row_ptr, *args) -> None:
    """See ``_lj_forward``; ``n_threads``: the most threads to use (torch's setting)."""
    _pick(_FORWARD, row_ptr.shape[0] - 1, n_threads)(vec, row_ptr, *args)


def lj_backward(n_threads: int, vec, row_ptr, *args) -> None:
    """See ``_lj_backward``."""
    _pick(_BACKWARD, row_ptr.shape[0] - 1, n_threads)(vec, row_ptr, *args)


def _chunk_rows(row_ptr: np.ndarray, n_chunks: int) -> np.ndarray:
    """Row boundaries giving each chunk about the same number of edges (the work)."""
    if n_chunks == 1:
        return np.array([0, row_ptr.shape[0] - 1], dtype=np.int64)
    n_edges = int(row_ptr[-1])
    targets = (np.arange(n_chunks + 1) * n_edges) // n_chunks
    rows = np.searchsorted(row_ptr, targets, side="left").astype(np.int64)
    rows[0], rows[-1] = 0, row_ptr.shape[0] - 1
    return np.maximum.accumulate(rows)


def lj_direct(n_threads: int, positions: np.ndarray, cell: np.ndarray, row_ptr: np.ndarray,
              senders: np.ndarray, shifts: np.ndarray, types: np.ndarray, n_types: int, eps_t, sig2_t, e0_t,
              rc2: float, ro2: float, smooth: bool, shift: bool, half: bool, n_local: int,
              want_virial: bool, want_atom_virial: bool):
    """(energies (n,), forces (n, 3), virial (3, 3), atom virials (n, 3, 3) or None), all float64.

    ``n_threads`` chunks of rows (balanced by edges), each into its own buffers, then summed:
    no races, and the result does not depend on scheduling (only on the chunk count).
    """
    n = positions.shape[0]
    n_threads = min(int(n_threads), numba.config.NUMBA_NUM_THREADS)
    parallel = n_threads > 1 and n >= PARALLEL_MIN_NODES
    n_chunks = n_threads if parallel else 1
    if parallel:
        numba.set_num_threads(n_threads)
    kernel = _DIRECT[0] if parallel else _DIRECT[1]
    f_buf = np.zeros((n_chunks, n, 3))
    e_buf = np.zeros((n_chunks, n))
    v_buf = np.zeros((n_chunks, 9))
    av_buf = np.zeros((n_chunks, n if want_atom_virial else 0, 9))
    kernel(n_chunks, _chunk_rows(row_ptr, n_chunks), positions, cell, row_ptr, senders, shifts, types,
           n_types, eps_t, sig2_t, e0_t, rc2, ro2, smooth, shift, half, n_local, want_virial,
           want_atom_virial, f_buf, e_buf, v_buf, av_buf)
    if n_chunks == 1:
        forces, energies = f_buf[0], e_buf[0]
        atom_virials = av_buf[0] if want_atom_virial else None
    else:
        summ = _SUM[0]
        forces = np.empty((n, 3))
        summ(f_buf, forces)
        energies = np.empty((n, 1))
        summ(e_buf[:, :, None], energies)
        energies = energies[:, 0]
        atom_virials = None
        if want_atom_virial:
            atom_virials = np.empty((n, 9))
            summ(av_buf, atom_virials)
    virial = v_buf.sum(0).reshape(3, 3)
    if atom_virials is not None:
        atom_virials = atom_virials.reshape(n, 3, 3)
    return energies, forces, virial, atom_virials


__all__ = ["lj_forward", "lj_backward", "lj_direct", "PARALLEL_MIN_NODES"]
