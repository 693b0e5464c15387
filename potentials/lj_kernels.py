"""Numba CPU kernels for the Lennard-Jones pair energy and its edge gradient.

Why: on CPU the torch version of LJ makes ~15 passes over E-long temporaries
(r2, c6, c12, masks, ...) in forward and backward; these kernels make one pass
each, walking the receiver-sorted edges row by row (``row_ptr``), so per-node
sums need no atomics and the threads never share an output row. The formulas
are the same as ``lj._pair_coefficients`` (and ASE's), term by term.

Each kernel is compiled twice, parallel (``prange``) and serial: small graphs
or one thread use the serial twin, since waking numba's thread pool costs more
than the work (20x more for a 100-atom MD step on a busy 2-core machine).
"""
from __future__ import annotations

import numba
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


_FORWARD = numba_twins(_lj_forward)
_BACKWARD = numba_twins(_lj_backward)


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


__all__ = ["lj_forward", "lj_backward", "PARALLEL_MIN_NODES"]
