"""Torch-native cell list: the neighbor list on any torch device (CPU, CUDA), in two modes.

Why: on a GPU the engine's list should be built where the positions live, with
torch alone (no CuPy needed), and a step that does not rebuild should have
fixed tensor shapes so it can be captured in a CUDA graph. Same bin grid as the
Numba list (``cell_grid.make_grid``), same distance arithmetic (wrapped
positions minus the image's shift vector, summed in the same order), so the
pair set is the Numba list's; rows come out sorted by (j, S) as there.

Algorithm, vectorised over chunks of atoms (chunks bound the memory):
1. fractional coordinates, wrapped on periodic axes (wrap counts give S);
2. atoms binned; a dense (bins, max occupancy) table of the atoms in each bin;
3. per atom, the stencil's bins (with their periodic image) -> a dense row of
   candidates; distance test; keys ``j * n_stencil + code`` sorted per row,
   rejected candidates sorted to the end;
4. ``dynamic`` mode: the kept keys, exact sizes (a host read per chunk);
   ``static`` mode (:func:`update`): rows written into preallocated edge buffers
   with a device-side offset, no host read during the pass; more pairs than
   the capacity set ``overflow`` (a device bool) and the caller re-allocates,
   as JAX-MD's ``neighbor_list(..., capacity_multiplier)`` / ``did_buffer_overflow``.

Padded edges of a static buffer (index >= ``n_edges``) have sender = receiver =
n - 1 and a zero shift (receivers stay sorted); :func:`pad_far` moves their edge
vectors beyond the cutoff, where the envelope makes messages and forces exactly 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from atomsim.kernels.cell_grid import CellGrid, as_cell, effective_cell, make_grid

__all__ = ["neighbor_list", "neighbor_list_csr", "EdgeBuffers", "allocate", "update", "pad_far",
           "grid_for"]

# candidate pairs alive at once per chunk (float64 x 3 each: ~100 MB on CPU, larger on CUDA)
_CHUNK_CANDIDATES = {"cpu": 1 << 22, "cuda": 1 << 26}


def grid_for(pos: Tensor, cell_h: np.ndarray, pbc_h: np.ndarray, cutoff: float) -> CellGrid:
    """The Numba list's grid (``neighbors.grid_for``); the bounding box of non-periodic axes read back."""
    fmin = fmax = None
    if pos.shape[0] and not pbc_h.all():
        inv = torch.as_tensor(np.linalg.inv(effective_cell(cell_h, pbc_h)), device=pos.device)
        frac = pos @ inv
        fmin, fmax = frac.amin(0).cpu().numpy(), frac.amax(0).cpu().numpy()
    return make_grid(cell_h, pbc_h, cutoff, int(pos.shape[0]), fmin, fmax)


@dataclass
class _Binned:
    """Per-atom binning results on the device, plus the grid constants as tensors."""

    grid: CellGrid
    xw: Tensor  # (n, 3) wrapped positions
    wrap: Tensor  # (n, 3) int64 wrap counts
    bins: Tensor  # (n, 3) int64 bin coordinates
    table: Tensor  # (total_bins, max_occ) int64 atom index, -1 empty
    stencil: Tensor  # (K, 3) int64 bin offsets
    ns: int  # stencil codes (2m+1)^3 product


def _bin(pos: Tensor, grid: CellGrid) -> _Binned:
    """Steps 1-2 with the Numba kernel's arithmetic (elementwise, same order: same roundings)."""
    dev = pos.device
    n = int(pos.shape[0])
    inv = torch.as_tensor(grid.inv_cell, device=dev)
    cell = torch.as_tensor(grid.cell, device=dev)
    x0, x1, x2 = pos[:, 0], pos[:, 1], pos[:, 2]
    frac = [x0 * inv[0, c] + x1 * inv[1, c] + x2 * inv[2, c] for c in range(3)]
    wrap = torch.zeros((n, 3), dtype=torch.int64, device=dev)
    bins = torch.empty((n, 3), dtype=torch.int64, device=dev)
    for c in range(3):
        f = frac[c]
        if grid.pbc[c]:
            w = torch.floor(f)
            f = f - w
            over = f >= 1.0
            f = torch.where(over, f - 1.0, f)
            w = torch.where(over, w + 1.0, w)
            wrap[:, c] = w.to(torch.int64)
        frac[c] = f
        u = (f - float(grid.origin[c])) / float(grid.span[c]) * float(grid.n_bins[c])
        k = torch.where(u > 0, torch.floor(u), torch.zeros_like(u)).to(torch.int64)
        bins[:, c] = k.clamp_max(int(grid.n_bins[c]) - 1)
    xw = torch.stack([frac[0] * cell[0, c] + frac[1] * cell[1, c] + frac[2] * cell[2, c]
                      for c in range(3)], dim=1)
    nb = [int(v) for v in grid.n_bins]
    flat = (bins[:, 0] * nb[1] + bins[:, 1]) * nb[2] + bins[:, 2]
    order = torch.argsort(flat, stable=True)
    flat_s = flat[order]
    total = grid.total_bins
    occupancy = torch.bincount(flat, minlength=total)
    start = torch.cumsum(occupancy, 0) - occupancy
    max_occ = max(1, int(occupancy.max())) if n else 1  # one host read: the table's width
    slot = torch.arange(n, device=dev) - start[flat_s]
    table = torch.full((total, max_occ), -1, dtype=torch.int64, device=dev)
    table[flat_s, slot] = order
    r = [torch.arange(-int(m), int(m) + 1, device=dev) for m in grid.search]
    stencil = torch.stack(torch.meshgrid(*r, indexing="ij"), dim=-1).reshape(-1, 3)
    ns = int(np.prod(2 * np.asarray(grid.search) + 1))
    return _Binned(grid, xw, wrap, bins, table, stencil, ns)


def _chunk_rows(b: _Binned, a0: int, a1: int, rc2: float, half: bool) -> Tuple[Tensor, Tensor]:
    """Step 3 for atoms a0..a1-1: (keys sorted per row, kept per row); rejected keys sort last."""
    grid = b.grid
    dev = b.xw.device
    nb = torch.as_tensor(grid.n_bins, device=dev)
    m = torch.as_tensor(grid.search, device=dev)
    per = torch.as_tensor(grid.pbc, device=dev)
    cell = torch.as_tensor(grid.cell, device=dev)
    i = torch.arange(a0, a1, device=dev)
    c = b.bins[a0:a1, None, :] + b.stencil[None]  # (C, K, 3)
    s = torch.where(per, torch.div(c, nb, rounding_mode="floor"), torch.zeros_like(c))
    c = c - s * nb
    valid = ((c >= 0) & (c < nb)).all(-1)  # outside a non-periodic box
    c = torch.minimum(c.clamp_min(0), nb - 1)
    nbin = (c[..., 0] * int(grid.n_bins[1]) + c[..., 1]) * int(grid.n_bins[2]) + c[..., 2]
    j = b.table[nbin]  # (C, K, M)
    j = torch.where(valid[..., None], j, torch.full_like(j, -1))
    sf = s.to(torch.float64)
    # shift vector as the Numba kernel sums it: s0 * a + s1 * b + s2 * c, per component
    shift = torch.stack([sf[..., 0] * cell[0, k] + sf[..., 1] * cell[1, k] + sf[..., 2] * cell[2, k]
                         for k in range(3)], dim=-1)  # (C, K, 3)
    xi = b.xw[a0:a1, None, :] - shift  # (C, K, 3)
    jj = j.clamp_min(0)
    xj = b.xw[jj]  # (C, K, M, 3)
    d = xj - xi[:, :, None, :]
    r2 = d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1] + d[..., 2] * d[..., 2]
    keep = (j >= 0) & (r2 < rc2)
    ii = i[:, None, None]
    if half:
        spos = (s[..., 0] > 0) | ((s[..., 0] == 0) & ((s[..., 1] > 0) | ((s[..., 1] == 0) & (s[..., 2] > 0))))
        keep &= (j > ii) | ((j == ii) & spos[..., None])
    else:
        zero = (s == 0).all(-1)
        keep &= ~((j == ii) & zero[..., None])
    w1, w2 = 2 * m[1] + 1, 2 * m[2] + 1
    code = ((s[..., 0] + m[0]) * w1 + (s[..., 1] + m[1])) * w2 + (s[..., 2] + m[2])  # (C, K)
    key = jj * b.ns + code[..., None]
    key = torch.where(keep, key, torch.full_like(key, torch.iinfo(torch.int64).max))
    key, _ = torch.sort(key.reshape(key.shape[0], -1), dim=1)
    return key, keep.reshape(keep.shape[0], -1).sum(1)


def _decode(b: _Binned, i: Tensor, key: Tensor) -> Tuple[Tensor, Tensor]:
    """(j, S) from sort keys and receivers: S = stencil shift + wrap_i - wrap_j."""
    m = torch.as_tensor(b.grid.search, device=key.device)
    w1, w2 = 2 * m[1] + 1, 2 * m[2] + 1
    j = torch.div(key, b.ns, rounding_mode="floor")
    code = key - j * b.ns
    s = torch.stack([torch.div(code, w1 * w2, rounding_mode="floor") - m[0],
                     torch.remainder(torch.div(code, w2, rounding_mode="floor"), w1) - m[1],
                     torch.remainder(code, w2) - m[2]], dim=1)
    return j, s + b.wrap[i] - b.wrap[j]


def _prepare(positions: Tensor, cell, pbc, cutoff: float, grid: Optional[CellGrid]):
    pos = positions.detach().to(torch.float64).contiguous()
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions must have shape (n_atoms, 3), got {tuple(pos.shape)}")
    cutoff = float(cutoff)
    if not math.isfinite(cutoff) or cutoff <= 0:
        raise ValueError(f"neighbor cutoff must be a positive number of Å, got {cutoff}")
    cell_h = as_cell(cell.detach().cpu().numpy() if isinstance(cell, Tensor) else cell)
    pbc_h = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    if grid is None:
        grid = grid_for(pos, cell_h, pbc_h, cutoff)
    return pos, grid, cutoff


def _chunk_size(b: _Binned, n: int, device: torch.device) -> int:
    per_atom = max(1, int(b.stencil.shape[0]) * int(b.table.shape[1]))
    budget = _CHUNK_CANDIDATES.get(device.type, 1 << 22)
    return max(1, min(n, budget // per_atom))


def neighbor_list_csr(positions: Tensor, cell, pbc, cutoff: float, half: bool = False,
                      grid: Optional[CellGrid] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """``(row_ptr, j, S)`` int64 on ``positions``' device: the Numba list's pairs and order.

    ``half=True``: each unordered pair once (i < j, or a periodic self-image with S
    lexicographically positive), as ``neighbors.neighbor_list_csr``.
    """
    pos, grid, cutoff = _prepare(positions, cell, pbc, cutoff, grid)
    n, dev = int(pos.shape[0]), pos.device
    if n == 0:
        z = torch.zeros(0, dtype=torch.int64, device=dev)
        empty_s = torch.zeros((0, 3), dtype=torch.int64, device=dev)
        return torch.zeros(1, dtype=torch.int64, device=dev), z, empty_s
    b = _bin(pos, grid)
    counts, js, ss = [], [], []
    step = _chunk_size(b, n, dev)
    for a0 in range(0, n, step):
        a1 = min(n, a0 + step)
        key, cnt = _chunk_rows(b, a0, a1, cutoff * cutoff, half)
        width = int(cnt.max()) if a1 > a0 else 0
        key = key[:, :width]
        mask = torch.arange(width, device=dev)[None, :] < cnt[:, None]
        rows = torch.arange(a0, a1, device=dev)[:, None].expand_as(key)[mask]
        j, s = _decode(b, rows, key[mask])
        counts.append(cnt)
        js.append(j)
        ss.append(s)
    row_ptr = torch.zeros(n + 1, dtype=torch.int64, device=dev)
    torch.cumsum(torch.cat(counts), 0, out=row_ptr[1:])
    return row_ptr, torch.cat(js), torch.cat(ss)


def neighbor_list(positions: Tensor, cell, pbc, cutoff: float,
                  half: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """``(i, j, S)`` as ``neighbors.neighbor_list`` (ASE's 'ijS' meaning), torch int64 tensors."""
    row_ptr, j, S = neighbor_list_csr(positions, cell, pbc, cutoff, half)
    n = int(row_ptr.shape[0]) - 1
    i = torch.repeat_interleave(torch.arange(n, device=j.device), row_ptr.diff())
    return i, j, S


# ------------------------------------------------------------------------------------------------
# static shapes: edge buffers with a capacity and an overflow flag
# ------------------------------------------------------------------------------------------------
@dataclass
class EdgeBuffers:
    """A fixed-capacity receiver-sorted edge list; only ``[:n_edges]`` are real edges.

    ``n_edges`` and ``overflow`` are device tensors (reading them is the caller's
    choice of when to synchronise). Padded edges: sender = receiver = n - 1, S = 0.
    """

    receivers: Tensor  # (capacity,) int64
    senders: Tensor  # (capacity,) int64
    cell_shifts: Tensor  # (capacity, 3) int64
    row_ptr: Tensor  # (n + 1,) int64; row n - 1 ends at n_edges (pads beyond)
    n_edges: Tensor  # () int64, may exceed capacity when overflowed (the count needed)
    overflow: Tensor  # () bool
    capacity: int
    half: bool
    row_capacity: int = 1 << 30  # longest row :func:`update` writes; longer rows set ``overflow``

    @property
    def valid(self) -> Tensor:
        """(capacity,) bool: real edges."""
        return torch.arange(self.capacity, device=self.senders.device) < self.n_edges

    def did_overflow(self) -> bool:
        """Host read of the overflow flag (one synchronisation)."""
        return bool(self.overflow)


def _empty_buffers(n: int, capacity: int, half: bool, device, row_capacity: int = 1 << 30) -> EdgeBuffers:
    last = max(n - 1, 0)
    return EdgeBuffers(
        receivers=torch.full((capacity,), last, dtype=torch.int64, device=device),
        senders=torch.full((capacity,), last, dtype=torch.int64, device=device),
        cell_shifts=torch.zeros((capacity, 3), dtype=torch.int64, device=device),
        row_ptr=torch.zeros(n + 1, dtype=torch.int64, device=device),
        n_edges=torch.zeros((), dtype=torch.int64, device=device),
        overflow=torch.zeros((), dtype=torch.bool, device=device), capacity=int(capacity), half=half,
        row_capacity=int(row_capacity))


def allocate(positions: Tensor, cell, pbc, cutoff: float, *, half: bool = False,
             capacity_multiplier: float = 1.25, min_capacity: int = 64) -> EdgeBuffers:
    """Build once with exact sizes, then buffers of ``capacity_multiplier`` x that many edges
    (and rows of ``capacity_multiplier`` x the longest row: :func:`update` decodes only those)."""
    row_ptr, j, S = neighbor_list_csr(positions, cell, pbc, cutoff, half)
    n_real = int(row_ptr[-1])
    n = int(row_ptr.shape[0]) - 1
    capacity = max(int(min_capacity), int(math.ceil(n_real * float(capacity_multiplier))))
    longest = int(row_ptr.diff().max()) if n else 0
    row_capacity = max(8, int(math.ceil(longest * max(float(capacity_multiplier), 1.0))) + 1)
    buf = _empty_buffers(n, capacity, half, j.device, row_capacity)
    buf.receivers[:n_real] = torch.repeat_interleave(torch.arange(n, device=j.device), row_ptr.diff())
    buf.senders[:n_real] = j
    buf.cell_shifts[:n_real] = S
    buf.row_ptr.copy_(row_ptr)
    buf.n_edges.fill_(n_real)
    return buf


def update(buffers: EdgeBuffers, positions: Tensor, cell, pbc, cutoff: float,
           grid: Optional[CellGrid] = None) -> EdgeBuffers:
    """Rebuild into ``buffers`` in place, shapes fixed; sets ``overflow`` instead of growing.

    The pass itself reads nothing back to the host (the bin table's width and, for
    non-periodic axes without ``grid``, the bounding box are the only reads). On
    overflow the edges past the capacity are dropped: call :func:`reallocate`.
    """
    pos, grid, cutoff = _prepare(positions, cell, pbc, cutoff, grid)
    n, dev = int(pos.shape[0]), pos.device
    cap = buffers.capacity
    if n + 1 != buffers.row_ptr.shape[0]:
        raise ValueError(f"edge buffers hold {buffers.row_ptr.shape[0] - 1} atoms, got {n}: re-allocate")
    # one spare slot at the end takes every write that does not fit (or is not an edge)
    recv = torch.full((cap + 1,), max(n - 1, 0), dtype=torch.int64, device=dev)
    send = recv.clone()
    shifts = torch.zeros((cap + 1, 3), dtype=torch.int64, device=dev)
    offset = torch.zeros((), dtype=torch.int64, device=dev)
    longest = torch.zeros((), dtype=torch.int64, device=dev)
    if n:
        b = _bin(pos, grid)
        step = _chunk_size(b, n, dev)
        for a0 in range(0, n, step):
            a1 = min(n, a0 + step)
            key, cnt = _chunk_rows(b, a0, a1, cutoff * cutoff, buffers.half)
            longest = torch.maximum(longest, cnt.max())
            ends = offset + torch.cumsum(cnt, 0)
            buffers.row_ptr[a0 + 1:a1 + 1] = ends
            width = min(int(key.shape[1]), buffers.row_capacity)  # rows are sorted: kept keys first
            key = key[:, :width]
            t = torch.arange(width, device=dev)[None, :]
            dest = (ends - cnt)[:, None] + t
            ok = (t < cnt[:, None]) & (dest < cap)
            dest = torch.where(ok, dest, torch.full_like(dest, cap)).reshape(-1)
            rows = torch.arange(a0, a1, device=dev)[:, None].expand(-1, width).reshape(-1)
            safe_key = torch.where(ok.reshape(-1), key.reshape(-1), torch.zeros_like(dest))
            j, s = _decode(b, rows, safe_key)
            recv.index_copy_(0, dest, rows)  # rejected candidates all land in the spare slot
            send.index_copy_(0, dest, j)
            shifts.index_copy_(0, dest, s)
            offset = ends[-1]
    buffers.row_ptr.clamp_(max=cap)
    buffers.receivers.copy_(recv[:cap])
    buffers.senders.copy_(send[:cap])
    buffers.cell_shifts.copy_(shifts[:cap])
    buffers.n_edges.copy_(offset)
    buffers.overflow.copy_((offset > cap) | (longest > buffers.row_capacity))
    return buffers


def reallocate(buffers: EdgeBuffers, positions: Tensor, cell, pbc, cutoff: float,
               growth: float = 1.5) -> EdgeBuffers:
    """New buffers of max(needed, capacity x ``growth``) edges (rows likewise), rebuilt here."""
    need = int(buffers.n_edges)
    cap = max(int(math.ceil(buffers.capacity * growth)), need)
    longest = int(buffers.row_ptr.diff().max()) if buffers.row_ptr.shape[0] > 1 else 0
    rows = max(int(math.ceil(buffers.row_capacity * growth)), longest + 1)
    fresh = _empty_buffers(int(positions.shape[0]), cap, buffers.half, positions.device, rows)
    fresh = update(fresh, positions, cell, pbc, cutoff)
    if fresh.did_overflow():  # a row longer than the old one x growth: once more, at the size found
        return reallocate(fresh, positions, cell, pbc, cutoff, growth)
    return fresh


def pad_far(edge_vectors: Tensor, valid: Tensor, cutoff: float) -> Tensor:
    """Edge vectors with the padded ones replaced by (2 cutoff, 0, 0): past the cutoff, zero message."""
    far = torch.zeros_like(edge_vectors)
    far[:, 0] = 2.0 * float(cutoff)
    return torch.where(valid[:, None], edge_vectors, far)
