"""The neighbor list the engine keeps between steps: a Verlet list with a skin, on the positions' device.

Why one object: the list, the positions it was built at and the test that
decides when it is stale belong together. A pair closer than ``cutoff`` now
was closer than ``cutoff + skin`` at the last build as long as no atom has
moved more than skin/2 since, so the list is rebuilt only when that fails, or
when the cell, the periodicity or the atom count changed. Rebuilding from
``reference_positions`` gives the identical list in the identical order, which
is what a bit-for-bit restart needs.

The edges use the graph's vocabulary (``kernels/graph.py``): edge e goes from
``senders[e]`` to ``receivers[e]``, receiver-sorted with CSR offsets
``row_ptr``, and ``cell_shifts[e]`` is the integer lattice shift of the
sender, so the edge vector is ``x[s] - x[r] + cell_shifts[e] @ cell``.

Backends build the same pairs in the same order: ``numba`` (CPU cell list,
``kernels/neighbors.py``), ``cupy`` (CUDA raw kernels, ``kernels/neighbors_cupy.py``)
``array-api`` (``kernels/neighbors_array_api.py``, numpy or cupy) and ``torch``
(``kernels/neighbors_torch.py``, any torch device).
``auto`` picks numba for CPU tensors and cupy for CUDA tensors.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from atomsim.kernels.graph import csr_row_ptr

__all__ = ["NeighborList", "BACKENDS", "max_displacement_sq", "displacement_sq"]

BACKENDS = ("auto", "numba", "cupy", "array-api", "torch")
ArrayLike = Union[Tensor, np.ndarray, Sequence]


def _as_tensor(x: ArrayLike, device=None) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().to(dtype=torch.float64)
    return torch.as_tensor(np.asarray(x, dtype=np.float64), device=device)


def _pbc_tuple(pbc) -> tuple:
    if isinstance(pbc, tuple) and len(pbc) == 3 and all(type(p) is bool for p in pbc):
        return pbc  # the engine's state keeps this form: no numpy round trip every step
    return tuple(bool(p) for p in np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)))


def _compact(senders: Tensor, shifts: Tensor, n_nodes: int) -> tuple:
    """Senders in int32 and shifts in the smallest integer type that holds them (int8 usually)."""
    if n_nodes < 2**31 and senders.dtype != torch.int32:
        senders = senders.to(torch.int32)
    if shifts.dtype in (torch.int8, torch.int16, torch.int32):  # built compact (build_csr_newton)
        return senders, shifts
    if shifts.numel():
        big = int(shifts.abs().max())
        small = torch.int8 if big < 2**7 else (torch.int16 if big < 2**15 else torch.int32)
        shifts = shifts.to(small)
    else:
        shifts = shifts.to(torch.int8)
    return senders, shifts.contiguous()


def _newton_csr(positions: np.ndarray, cell: np.ndarray, pbc: tuple, cutoff: float):
    """``neighbors_numba.build_csr_newton`` on the grid ``neighbors.neighbor_list_csr`` would use."""
    from atomsim.kernels.cell_grid import check_inputs
    from atomsim.kernels.neighbors import grid_for
    from atomsim.kernels.neighbors_numba import build_csr_newton

    pos, cell, pbc_a, cutoff = check_inputs(positions, cell, pbc, cutoff)
    if len(pos) == 0:
        return np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros((0, 3), np.int8)
    return build_csr_newton(pos, grid_for(pos, cell, pbc_a, cutoff), cutoff)


def max_displacement_sq(positions: Tensor, reference: Tensor) -> float:
    """Largest squared displacement between two (n, 3) float64 arrays: the skin check's one host read
    (a parallel Numba reduction on CPU)."""
    if positions.shape[0] == 0:
        return 0.0
    if positions.device.type == "cpu":
        from atomsim.kernels.neighbors_numba import max_displacement_sq as numba_max_displacement_sq

        return float(numba_max_displacement_sq(positions.detach().contiguous().numpy(),
                                               reference.detach().contiguous().numpy()))
    return float(((positions.detach() - reference) ** 2).sum(1).max())


def displacement_sq(positions: Tensor, reference: Tensor, cell: Tensor, reference_cell: Tensor) -> Tensor:
    """:func:`max_displacement_sq` kept on the device (no host read): a 0-dim float64 tensor,
    inf if the cell moved."""
    cell_moved = (cell.reshape(3, 3) != reference_cell).any()
    if positions.shape[0] == 0:
        disp = torch.zeros((), dtype=torch.float64, device=positions.device)
    else:
        disp = (positions.detach() - reference).square_().sum(1).amax()
    return torch.where(cell_moved, torch.full_like(disp, float("inf")), disp)


class NeighborList:
    """Verlet list at ``cutoff + skin``, rebuilt only when an atom moved more than skin/2.

    ``update(positions, cell, pbc)`` rebuilds when needed and returns whether
    it did; the edges are then in ``receivers``, ``senders``, ``cell_shifts``
    and ``row_ptr`` (int64 tensors on the positions' device). ``half=True``
    keeps each unordered pair once (i < j, or a periodic self-image with a
    lexicographically positive shift). ``compact=True`` (the direct pair path,
    which reads only ``row_ptr``, ``senders`` and ``cell_shifts``): senders in
    int32, shifts in int8 when they fit, and ``receivers`` only expanded when
    someone asks for it -- about 7 bytes per pair instead of 40. A compact half
    list on the numba backend keeps each pair once by the atoms' bin order, as
    LAMMPS's newton-on lists do (not necessarily i < j; rows unsorted): half the
    distance checks, for kernels that apply Newton's third law.
    """

    def __init__(self, cutoff: float, skin: float = 0.0, *, half: bool = False, backend: str = "auto",
                 compact: bool = False):
        if not float(cutoff) > 0:
            raise ValueError(f"neighbor cutoff must be > 0 Å, got {cutoff}")
        if not float(skin) >= 0:
            raise ValueError(f"neighbor.skin must be >= 0 Å, got {skin}")
        if backend not in BACKENDS:
            raise ValueError(f"neighbor backend {backend!r} is not one of {', '.join(BACKENDS)}")
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.half = bool(half)
        self.compact = bool(compact)
        self.backend = backend
        self.list_cutoff = self.cutoff + self.skin
        self.n_builds = 0
        self._skin_check_loaded = False
        self.reference_positions: Optional[Tensor] = None
        self.reference_cell: Optional[Tensor] = None
        self.reference_pbc: Optional[tuple] = None
        self._receivers: Optional[Tensor] = None
        self.senders: Optional[Tensor] = None
        self.cell_shifts: Optional[Tensor] = None
        self.row_ptr: Optional[Tensor] = None

    @property
    def receivers(self) -> Optional[Tensor]:
        """(E,) int64 receiver of each edge (a compact list expands it from ``row_ptr`` on first use)."""
        if self._receivers is None and self.row_ptr is not None:
            from atomsim.kernels.neighbors_numba import expand_rows

            rows = expand_rows(self.row_ptr.cpu().numpy())
            self._receivers = torch.from_numpy(rows).to(self.row_ptr.device)
        return self._receivers

    @receivers.setter
    def receivers(self, value: Optional[Tensor]) -> None:
        self._receivers = value

    @property
    def n_edges(self) -> int:
        return 0 if self.senders is None else int(self.senders.shape[0])

    # -- the skin check ------------------------------------------------------
    def needs_rebuild(self, positions: ArrayLike, cell: ArrayLike, pbc) -> bool:
        """True when the stored list may miss a pair within ``cutoff`` at these positions."""
        ref = self.reference_positions
        if ref is None:
            return True
        pos = _as_tensor(positions, ref.device)
        if pos.shape != ref.shape or _pbc_tuple(pbc) != self.reference_pbc:
            return True
        if not torch.equal(_as_tensor(cell, ref.device).reshape(3, 3), self.reference_cell):
            return True
        return self.max_displacement_sq(pos) > (0.5 * self.skin) ** 2

    def max_displacement_sq(self, positions: Tensor) -> float:
        """Largest squared displacement since the last build (a parallel Numba reduction on CPU)."""
        return max_displacement_sq(positions, self.reference_positions)

    def displacement_sq(self, positions: Tensor, cell: Tensor) -> Tensor:
        """Device side of the skin check: max |x - x_ref|^2 as a 0-dim float64 tensor, inf if the cell moved.

        No host read: the deferred checks (``engine/device_checks.py``) fold it into a
        running maximum read at check points; stale when above ``stale_threshold``. The
        caller must know on the host that a list exists for this atom count and
        periodicity (:meth:`can_check_on_device`).
        """
        return displacement_sq(positions, self.reference_positions, cell, self.reference_cell)

    @property
    def stale_threshold(self) -> float:
        """Squared displacement above which the list may miss a pair within ``cutoff``."""
        return (0.5 * self.skin) ** 2

    def can_check_on_device(self, positions: Tensor, pbc) -> bool:
        """Whether :meth:`displacement_sq` applies (host metadata only: a list exists, same shape and pbc)."""
        ref = self.reference_positions
        return (ref is not None and positions.shape == ref.shape and positions.device == ref.device
                and _pbc_tuple(pbc) == self.reference_pbc)

    # -- building ------------------------------------------------------------
    def build(self, positions: ArrayLike, cell: ArrayLike, pbc) -> None:
        """Rebuild unconditionally at ``cutoff + skin`` and take these positions as the reference."""
        pos = _as_tensor(positions)
        cell_t = _as_tensor(cell, pos.device).reshape(3, 3)
        pbc_t = _pbc_tuple(pbc)
        receivers, senders, shifts, row_ptr = self._pairs(pos, cell_t, pbc_t)
        self.row_ptr = row_ptr if row_ptr is not None else csr_row_ptr(receivers, int(pos.shape[0]))
        if self.compact:
            senders, shifts = _compact(senders, shifts, int(pos.shape[0]))
        self.receivers, self.senders, self.cell_shifts = receivers, senders, shifts
        self.reference_positions = pos.clone()
        self.reference_cell = cell_t.clone()
        self.reference_pbc = pbc_t
        if not self._skin_check_loaded:  # load its compiled kernel with the first (set-up) build
            self.max_displacement_sq(pos)
            self._skin_check_loaded = True
        self.n_builds += 1

    def keep_edges(self, mask: Tensor) -> None:
        """Drop the edges a caller will never use (``mask`` False), e.g. edges into MPI ghosts.

        The skin check still covers every atom; a rebuild lists all pairs again.
        """
        receivers = self.receivers[mask]
        self.receivers, self.senders = receivers, self.senders[mask]
        self.cell_shifts = self.cell_shifts[mask]
        self.row_ptr = csr_row_ptr(receivers, int(self.reference_positions.shape[0]))

    def update(self, positions: ArrayLike, cell: ArrayLike, pbc) -> bool:
        """Rebuild if needed; returns True when it did."""
        if self.needs_rebuild(positions, cell, pbc):
            self.build(positions, cell, pbc)
            return True
        return False

    def _backend_for(self, device: torch.device) -> str:
        if self.backend != "auto":
            return self.backend
        if device.type == "cuda":
            try:
                import cupy  # noqa: F401

                return "cupy"
            except ImportError:  # no CuPy: build on the host, hand the edges back
                return "numba"
        return "numba"

    def _pairs(self, pos: Tensor, cell: Tensor, pbc: tuple):
        device = pos.device
        backend = self._backend_for(device)
        if backend == "cupy":
            import cupy as cp

            from atomsim.kernels.neighbors_cupy import neighbor_list as cupy_list

            i, j, S = cupy_list(cp.from_dlpack(pos.contiguous()), cell.cpu().numpy(), pbc, self.list_cutoff,
                                half=self.half)
            return (*(torch.from_dlpack(a) for a in (i, j, S)), None)
        if backend == "torch":  # torch-native cell list on the positions' device (kernels/neighbors_torch.py)
            from atomsim.kernels.neighbors_torch import neighbor_list_csr as torch_csr

            row_ptr, j, S = torch_csr(pos, cell, pbc, self.list_cutoff, half=self.half)
            i = torch.repeat_interleave(torch.arange(pos.shape[0], device=device), row_ptr.diff())
            return i, j, S, row_ptr
        if backend == "array-api":
            from atomsim.kernels import neighbors_array_api

            host = pos.device.type == "cpu"
            arr = pos.contiguous().numpy() if host else __import__("cupy").from_dlpack(pos.contiguous())
            i, j, S = neighbors_array_api.neighbor_list(arr, cell.cpu().numpy(), pbc, self.list_cutoff,
                                                        half=self.half)
            if host:
                return (*(torch.from_numpy(np.ascontiguousarray(a)) for a in (i, j, S)), None)
            return (*(torch.from_dlpack(a) for a in (i, j, S)), None)
        from atomsim.kernels.neighbors import neighbor_list_csr
        from atomsim.kernels.neighbors_numba import expand_rows

        if self.compact and self.half:  # each pair once by bin order, unsorted, int32/int8 from the start
            row_ptr, j, S = _newton_csr(pos.cpu().numpy(), cell.cpu().numpy(), pbc, self.list_cutoff)
            return (None, *(torch.from_numpy(a).to(device) for a in (j, S, row_ptr)))
        row_ptr, j, S = neighbor_list_csr(pos.cpu().numpy(), cell.cpu().numpy(), pbc, self.list_cutoff,
                                          half=self.half)
        i = None if self.compact else expand_rows(row_ptr)  # compact: expanded on demand
        return tuple(None if a is None else torch.from_numpy(np.ascontiguousarray(a)).to(device)
                     for a in (i, j, S, row_ptr))
