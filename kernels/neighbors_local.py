"""The neighbor list of one MPI rank's local frame: open boundaries, chosen receiver rows, int32 only.

Why: under domain decomposition the ghosts carry the periodic images, so the local list has no
cell shifts at all, and a message-passing model needs only the rows of some receivers (owned
atoms; with a full halo also the inner ghosts). The general builder lists every row with int64
senders and (E, 3) int64 shifts (32 B per edge) and the caller then masks copies of them: at a
rebuild that was the largest transient of a GNN rank. Here the wanted rows are listed once, into
exactly sized int32 senders (4 B per edge), sorted by sender within a row (the order the general
builder gives a local frame), and the edge vectors are written in the model dtype in one pass.
"""
from __future__ import annotations

from typing import Optional

import numba
import numpy as np
import torch
from torch import Tensor

__all__ = ["local_csr", "local_edge_vectors", "edges_within"]


@numba.njit(cache=True)
def _bins(pos, lo, width, nb):
    n = pos.shape[0]
    bins = np.empty(n, np.int64)
    for i in range(n):
        b = 0
        for d in range(3):
            k = int((pos[i, d] - lo[d]) / width[d])
            k = min(max(k, 0), nb[d] - 1)
            b = b * nb[d] + k
        bins[i] = b
    return bins


@numba.njit(cache=True)
def _pass(pos, want, bins, order, start, nb, rc2, fill, row_ptr, senders):
    """fill=False: row_ptr[i + 1] = neighbours of i. fill=True: write rows sorted by sender."""
    for i in range(pos.shape[0]):
        if not want[i]:
            continue
        b = bins[i]
        b2 = b % nb[2]
        b1 = (b // nb[2]) % nb[1]
        b0 = b // (nb[1] * nb[2])
        cur = row_ptr[i] if fill else 0
        first = cur
        for c0 in range(max(b0 - 1, 0), min(b0 + 2, nb[0])):
            for c1 in range(max(b1 - 1, 0), min(b1 + 2, nb[1])):
                for c2 in range(max(b2 - 1, 0), min(b2 + 2, nb[2])):
                    nbin = (c0 * nb[1] + c1) * nb[2] + c2
                    for q in range(start[nbin], start[nbin + 1]):
                        j = order[q]
                        dx = pos[j, 0] - pos[i, 0]
                        dy = pos[j, 1] - pos[i, 1]
                        dz = pos[j, 2] - pos[i, 2]
                        if j != i and dx * dx + dy * dy + dz * dz < rc2:
                            if fill:
                                senders[cur] = j
                            cur += 1
        if fill:
            senders[first:cur].sort()
        else:
            row_ptr[i + 1] = cur


def local_csr(positions: np.ndarray, want: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """(row_ptr int64 (n + 1,), senders int32 (E,)): pairs closer than ``cutoff`` (strictly), open
    boundaries, rows only for atoms with ``want`` True (other rows empty), sorted by sender."""
    pos = np.ascontiguousarray(positions, dtype=np.float64)
    n = pos.shape[0]
    if n >= 2**31:
        raise ValueError(f"a local frame of {n} atoms does not fit int32 senders")
    row_ptr = np.zeros(n + 1, np.int64)
    if n == 0 or not want.any():
        return row_ptr, np.zeros(0, np.int32)
    lo, hi = pos.min(axis=0), pos.max(axis=0)
    nb = np.maximum(np.floor((hi - lo) / cutoff), 1).astype(np.int64)
    nb = np.minimum(nb, max(int(round(n ** (1 / 3))) * 4, 1))  # a sparse cloud needs no more bins than atoms
    width = np.where(hi > lo, (hi - lo) / nb, 1.0)  # every bin at least cutoff wide: 27 bins suffice
    bins = _bins(pos, lo, width, nb)
    order = np.argsort(bins, kind="stable")
    start = np.searchsorted(bins[order], np.arange(int(nb.prod()) + 1)).astype(np.int64)
    want = np.ascontiguousarray(want, dtype=np.bool_)
    rc2 = float(cutoff) ** 2
    _pass(pos, want, bins, order, start, nb, rc2, False, row_ptr, np.zeros(0, np.int32))
    np.cumsum(row_ptr, out=row_ptr)
    senders = np.empty(int(row_ptr[-1]), np.int32)
    _pass(pos, want, bins, order, start, nb, rc2, True, row_ptr, senders)
    return row_ptr, senders


@numba.njit(cache=True)
def _vectors(pos, row_ptr, senders, out):
    for a in range(row_ptr.shape[0] - 1):
        for e in range(row_ptr[a], row_ptr[a + 1]):
            b = senders[e]
            for k in range(3):  # float64 difference, stored in out's dtype
                out[e, k] = pos[b, k] - pos[a, k]


def _rows(row_ptr: Tensor) -> Tensor:
    """The row of each edge (expanding ``row_ptr`` reads the edge count to the host: once per call)."""
    counts = row_ptr[1:] - row_ptr[:-1]
    return torch.arange(counts.shape[0], device=row_ptr.device).repeat_interleave(counts)


def local_edge_vectors(positions: Tensor, row_ptr: Tensor, senders: Tensor, dtype: torch.dtype,
                       rows: Optional[Tensor] = None) -> Tensor:
    """x_sender - x_row in float64, written straight into ``dtype`` (no shifts: the frame is open);
    ``rows``: :func:`_rows` of ``row_ptr`` when the caller has it already."""
    if positions.device.type == "cpu" and dtype in (torch.float32, torch.float64):
        out = np.empty((senders.shape[0], 3), dtype=np.float32 if dtype == torch.float32 else np.float64)
        _vectors(np.ascontiguousarray(positions.detach().to(torch.float64).numpy()), row_ptr.numpy(),
                 senders.numpy(), out)
        return torch.from_numpy(out)
    rows = _rows(row_ptr) if rows is None else rows
    pos = positions.detach()
    return (pos.index_select(0, senders.long()) - pos.index_select(0, rows)).to(dtype)


@numba.njit(cache=True)
def _within(pos, row_ptr, senders, rc2, single, fill, out_ptr, out_snd, out_vec):
    """fill=False: out_ptr[a + 1] = edges of row a with |r|^2 < rc2 (r rounded to the model dtype first,
    as the fused kernel reads it). fill=True: write those edges' senders and vectors."""
    for a in range(row_ptr.shape[0] - 1):
        cur = out_ptr[a] if fill else 0
        for e in range(row_ptr[a], row_ptr[a + 1]):
            b = senders[e]
            x = pos[b, 0] - pos[a, 0]
            y = pos[b, 1] - pos[a, 1]
            z = pos[b, 2] - pos[a, 2]
            if single:
                x = np.float64(np.float32(x))
                y = np.float64(np.float32(y))
                z = np.float64(np.float32(z))
            if x * x + y * y + z * z < rc2:
                if fill:
                    out_snd[cur] = b
                    out_vec[cur, 0] = x
                    out_vec[cur, 1] = y
                    out_vec[cur, 2] = z
                cur += 1
        if not fill:
            out_ptr[a + 1] = cur


def edges_within(positions: Tensor, row_ptr: Tensor, senders: Tensor, cutoff: float,
                 dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """(row_ptr, int32 senders, edge vectors in ``dtype``) of the list's edges shorter than ``cutoff``.

    Why: a Verlet list carries a skin (~45% of its edges for the bundled model) whose messages and
    gradients are exactly zero; the model's per-step edge arrays (vectors, their gradients, the
    receivers) then cost ~55% of the list's size. Rows keep the list's order.
    """
    if positions.device.type == "cpu" and dtype in (torch.float32, torch.float64):
        pos = np.ascontiguousarray(positions.detach().to(torch.float64).numpy())
        ptr, snd = row_ptr.numpy(), senders.numpy()
        single = dtype == torch.float32
        out_ptr = np.zeros(ptr.shape[0], np.int64)
        rc2 = float(cutoff) ** 2
        _within(pos, ptr, snd, rc2, single, False, out_ptr, snd[:0], np.zeros((0, 3)))
        np.cumsum(out_ptr, out=out_ptr)
        out_snd = np.empty(int(out_ptr[-1]), np.int32)
        out_vec = np.empty((out_snd.shape[0], 3), np.float32 if single else np.float64)
        _within(pos, ptr, snd, rc2, single, True, out_ptr, out_snd, out_vec)
        return torch.from_numpy(out_ptr), torch.from_numpy(out_snd), torch.from_numpy(out_vec)
    rows = _rows(row_ptr)
    vec = local_edge_vectors(positions, row_ptr, senders, dtype, rows=rows)
    keep = (vec.to(torch.float64) ** 2).sum(1) < float(cutoff) ** 2
    kept = torch.bincount(rows[keep], minlength=row_ptr.shape[0] - 1)
    out_ptr = torch.zeros_like(row_ptr)
    torch.cumsum(kept, 0, out=out_ptr[1:])
    return out_ptr, senders[keep], vec[keep]
