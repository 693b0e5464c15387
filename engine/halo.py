"""Ghost (halo) atoms: staged construction, per-step refresh, reverse sums, per-layer features.

Construction (at neighbor-list rebuilds) follows LAMMPS: along cell vector a,
then b, then c, each rank sends to its -1/+1 neighbors the atoms (owned and
ghosts received in earlier stages) within the halo depth of the shared face;
corners therefore travel in two or three hops, and when the halo is thicker
than a neighbor's sub-box the atoms received in one hop are forwarded in the
next. Crossing a periodic boundary adds an integer image shift. A ghost is
recorded as (owner rank, owner index, image shift), so every later exchange
goes straight between owner and holder through one :class:`GhostPlan`:

- ``forward``: owners' rows -> ghost rows (positions every step; node features
  after every message-passing layer in the per-layer scheme);
- ``reverse``: ghost rows summed into their owners (forces, feature gradients).

Ghost order is the order of arrival (stage, hop, direction), which is
deterministic for a given decomposition and atom order.
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from .comm import Comm
from .domain import Decomposition
from .halo_staging import HaloStaging, Pending

_TAG_PLAN = 71


class GhostPlan:
    """Point-to-point schedule between owners and the ranks holding their ghost copies.

    ``send_idx[r]``: owned indices whose rows go to rank r (in r's order);
    ``recv_rows[r]``: ghost rows (0-based among ghosts) filled from rank r.
    Only ranks with something to exchange are contacted; byte buffers make any
    dtype (bf16 too) travel unchanged, from host or device tensors
    (``engine/halo_staging.py``: CUDA-aware MPI or reused pinned host buffers). The plan is set up with the ``partners``
    (:meth:`Decomposition.halo_partners`: the sub-boxes within the halo depth,
    the 26 neighbours unless sub-boxes are thinner than the halo), one pairwise
    message each: no collective over all ranks.
    """

    def __init__(self, comm: Comm, owner_rank: np.ndarray, owner_index: np.ndarray,
                 partners: Optional[list] = None, staging: Optional[HaloStaging] = None):
        self.comm = comm
        self.n_ghost = int(owner_rank.shape[0])
        self.recv_rows: dict = {}
        requests = {}
        for r in np.unique(owner_rank).tolist():
            rows = np.nonzero(owner_rank == r)[0]
            self.recv_rows[r] = torch.from_numpy(rows.astype(np.int64))
            requests[r] = owner_index[rows].astype(np.int32)
        if partners is None:  # every rank a partner (tests and tools without a decomposition)
            partners = [(comm.rank, comm.rank)] + [((comm.rank + k) % comm.size, (comm.rank - k) % comm.size)
                                                   for k in range(1, comm.size)]
        known = {d for d, _ in partners}
        stray = sorted(set(requests) - known)
        if stray:
            raise RuntimeError(f"ghosts owned by rank(s) {stray}, outside this rank's halo partners "
                               f"{sorted(known)}")
        asked = {}
        for dest, source in partners:
            if dest == comm.rank and source == comm.rank:
                got = requests.get(comm.rank)
            else:
                got = comm.sendrecv(requests.get(dest), dest=dest, source=source, tag=_TAG_PLAN + 9)
            if source is not None and got is not None and got.size:
                asked[source] = got
        self.send_idx = {r: torch.from_numpy(a.astype(np.int64)) for r, a in sorted(asked.items())}
        self.bytes_sent = 0  # running totals, for benchmarks
        self.seconds = 0.0
        # the previous plan's staging (its host buffers: pinned, slow to allocate) when a rebuild hands it on
        self.staging = HaloStaging(comm) if staging is None else staging

    @property
    def nbytes(self) -> int:
        """Bytes the plan's index arrays hold (memory accounting)."""
        tensors = (*self.recv_rows.values(), *self.send_idx.values())
        return sum(int(t.numel()) * t.element_size() for t in tensors)

    def _begin(self, send: dict, recv_shapes: dict, like: Tensor) -> Pending:
        t0 = time.perf_counter()
        for t in send.values():
            self.bytes_sent += int(t.numel()) * t.element_size()
        pending = self.staging.begin(send, recv_shapes, like, tag=_TAG_PLAN)
        self.seconds += time.perf_counter() - t0
        return pending

    def _finish(self, pending: Pending) -> dict:
        t0 = time.perf_counter()
        got = self.staging.finish(pending)
        self.seconds += time.perf_counter() - t0
        return got

    def forward_begin(self, owned: Tensor) -> tuple:
        """Start sending owned rows to their ghost copies; :meth:`forward_end` completes (work may go between)."""
        tail = tuple(owned.shape[1:])
        send = {r: owned.index_select(0, idx.to(owned.device)) for r, idx in self.send_idx.items()}
        pending = self._begin(send, {r: (len(rows),) + tail for r, rows in self.recv_rows.items()}, owned)
        return pending, tail, owned.dtype, owned.device

    def forward_end(self, handle: tuple) -> Tensor:
        """The (n_ghost, ...) ghost rows of :meth:`forward_begin`."""
        pending, tail, dtype, device = handle
        got = self._finish(pending)
        out = torch.zeros((self.n_ghost,) + tail, dtype=dtype, device=device)
        for r, rows in self.recv_rows.items():
            out[rows.to(device)] = got[r]
        return out

    def forward(self, owned: Tensor) -> Tensor:
        """Rows of owned atoms -> (n_ghost, ...) rows of their ghost copies."""
        return self.forward_end(self.forward_begin(owned))

    def reverse(self, ghost: Tensor, n_owned: int) -> Tensor:
        """Ghost rows summed into their owners -> (n_owned, ...)."""
        tail = tuple(ghost.shape[1:])
        send = {r: ghost.index_select(0, rows.to(ghost.device)) for r, rows in self.recv_rows.items()}
        got = self._finish(self._begin(send, {r: (len(idx),) + tail for r, idx in self.send_idx.items()},
                                       ghost))
        out = torch.zeros((n_owned,) + tail, dtype=ghost.dtype, device=ghost.device)
        for r in sorted(got):  # fixed order: the same sums on every run
            out.index_add_(0, self.send_idx[r].to(ghost.device), got[r])
        return out


class Ghosts:
    """The ghost atoms of one rank: owner (rank, index), image shift, and atomic numbers."""

    def __init__(self, owner_rank, owner_index, shift, numbers, ids, plan: GhostPlan,
                 depth_A: Optional[np.ndarray] = None):
        self.depth_A = depth_A  # (n_ghost,) perpendicular distance outside the sub-box at build, Å
        self.owner_rank = owner_rank
        self.owner_index = owner_index
        self.shift = shift  # (n_ghost, 3) int8 cell images relative to the owner's wrapped position
        self.numbers = numbers
        self.ids = ids
        self.plan = plan

    @property
    def n(self) -> int:
        return int(self.owner_rank.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held per rank for the ghosts' bookkeeping (not their per-step positions)."""
        arrays = (self.owner_rank, self.owner_index, self.shift, self.numbers, self.ids, self.depth_A)
        return sum(a.nbytes for a in arrays if a is not None) + self.plan.nbytes

    def positions(self, owned_local: Tensor, cell: Tensor) -> Tensor:
        """Ghost positions from the owners' current (wrapped) positions + image shifts."""
        return self.positions_end(self.plan.forward_begin(owned_local), cell)

    def positions_end(self, handle: tuple, cell: Tensor) -> Tensor:
        """:meth:`positions` from a ``plan.forward_begin(owned_local)`` started earlier."""
        pos = self.plan.forward_end(handle)
        return pos + self._shift_t(pos.device).to(pos.dtype) @ cell

    def _shift_t(self, device):
        if not hasattr(self, "_shift_cache") or self._shift_cache.device != torch.device(device):
            self._shift_cache = torch.from_numpy(self.shift).to(device)
        return self._shift_cache


def build_ghosts(comm: Comm, decomp: Decomposition, frac_owned: np.ndarray, numbers: np.ndarray,
                 ids: np.ndarray, depth: float, staging: Optional[HaloStaging] = None) -> Ghosts:
    """Staged a -> b -> c exchange of every atom within ``depth`` Å (perpendicular) of the sub-box.

    ``frac_owned`` are the owned atoms' wrapped fractional coordinates; ``staging``: the previous
    plan's, reused (see :class:`GhostPlan`). Collective.
    """
    rank = comm.rank
    n_own = frac_owned.shape[0]
    # columns of the travelling records
    rec = {
        "frac": frac_owned.astype(np.float64),
        "orank": np.full(n_own, rank, dtype=np.int64),
        "oidx": np.arange(n_own, dtype=np.int64),
        "shift": np.zeros((n_own, 3), dtype=np.int64),
        "z": numbers.astype(np.int64),
        "id": ids.astype(np.int64),
    }
    ghosts = {k: v[:0].copy() for k, v in rec.items()}

    def cat(a, b):
        return {k: np.concatenate([a[k], b[k]]) for k in a}

    def sel(a, m):
        return {k: v[m] for k, v in a.items()}

    for d in range(3):
        up = decomp.neighbor(d, +1)
        down = decomp.neighbor(d, -1)
        if up is None and down is None:
            continue
        h = depth / decomp.faces[d]  # halo thickness in fractional units
        width = decomp.hi[d] - decomp.lo[d]
        n_hops = int(np.ceil(h / width - 1e-12)) if h > 0 else 0
        everything = cat(rec, ghosts)
        to_up, to_down = everything, everything  # hop 1 candidates
        for _ in range(n_hops):
            send_up = sel(to_up, to_up["frac"][:, d] >= decomp.hi[d] - h) if up else None
            send_down = sel(to_down, to_down["frac"][:, d] < decomp.lo[d] + h) if down else None
            from_down = _shift_sendrecv(comm, send_up, up, down, d)
            from_up = _shift_sendrecv(comm, send_down, down, up, d)
            new = [x for x in (from_down, from_up) if x is not None]
            for x in new:
                ghosts = cat(ghosts, x)
            # forward next hop: what came from below continues up, from above continues down
            empty = {k: v[:0] for k, v in rec.items()}
            to_up = from_down if from_down is not None else empty
            to_down = from_up if from_up is not None else empty
        del everything
    plan = GhostPlan(comm, ghosts["orank"], ghosts["oidx"], partners=decomp.halo_partners(depth),
                     staging=staging)
    # stored compactly (memory per atom): ranks and indices fit int32, shifts int8, elements int16
    return Ghosts(ghosts["orank"].astype(np.int32), ghosts["oidx"].astype(np.int32),
                  ghosts["shift"].astype(np.int8), ghosts["z"].astype(np.int16), ghosts["id"], plan,
                  depth_A=outside_distance(decomp, ghosts["frac"]))


def outside_distance(decomp: Decomposition, frac: np.ndarray) -> np.ndarray:
    """Largest perpendicular distance (Å) by which each point lies outside this rank's sub-box.

    A non-periodic edge of the whole box is open (strays beyond it belong to the edge rank).
    """
    lo = decomp.lo.copy()
    hi = decomp.hi.copy()
    for d in range(3):
        if not decomp.pbc[d]:
            if decomp.coords[d] == 0:
                lo[d] = -np.inf
            if decomp.coords[d] == decomp.dims[d] - 1:
                hi[d] = np.inf
    out = np.maximum(np.maximum(lo - frac, frac - hi), 0.0) * decomp.faces
    return out.max(axis=1) if out.shape[0] else np.zeros(0)


def _shift_sendrecv(comm: Comm, payload: Optional[dict], dest, source, d: int) -> Optional[dict]:
    """Send ``payload`` to dest (rank, shift) and receive from source; apply the image shift.

    The shift is the receiver's view: the receiving rank adds it to the frac
    coordinate and image of what it gets.
    """
    if payload is not None:
        payload = dict(payload)
        s = dest[1]
        if s:
            payload["frac"] = payload["frac"].copy()
            payload["frac"][:, d] += s
            payload["shift"] = payload["shift"].copy()
            payload["shift"][:, d] += s
    return comm.sendrecv(payload, dest=dest[0] if dest else None, source=source[0] if source else None,
                         tag=_TAG_PLAN + 1 + d)


class _LayerHalo(torch.autograd.Function):
    """Owners' feature rows -> ghost rows (forward); ghost-row gradients -> owners (backward)."""

    @staticmethod
    def forward(ctx, h: Tensor, anchor: Tensor, plan: GhostPlan, n_owned: int) -> Tensor:
        ctx.plan, ctx.n_owned = plan, n_owned
        owned = h[:n_owned]
        return torch.cat([owned, plan.forward(owned)], dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor):
        n = ctx.n_owned
        g_owned = grad[:n] + ctx.plan.reverse(grad[n:], n)
        g = torch.cat([g_owned, torch.zeros_like(grad[n:])], dim=0)
        return g, None, None, None


class LayerHalo:
    """The ``halo_update`` hook of the per-layer scheme (see kernels.graph.Graph.refresh_ghosts).

    ``anchor`` ties the exchange into autograd on every rank (even one with no
    atoms or no edges), so each rank runs each backward exchange exactly once
    and no rank waits for a peer that skipped it.
    """

    def __init__(self, plan: GhostPlan, n_owned: int, max_exchanges: Optional[int] = None):
        self.plan, self.n_owned = plan, n_owned
        self.graph = None  # set after build_graph; its edge_vectors become the autograd anchor
        self.calls = 0
        # A model with L message-passing layers needs ghosts refreshed between them (L - 1
        # times); a refresh after the last layer only feeds node-local readout of ghosts,
        # whose energies do not count, so it is skipped (saves 1/L of the feature traffic).
        self.max_exchanges = max_exchanges

    def __call__(self, h: Tensor) -> Tensor:
        self.calls += 1
        if self.max_exchanges is not None and self.calls > self.max_exchanges:
            return h
        anchor = self.graph.edge_vectors if self.graph is not None else h.new_zeros((), requires_grad=True)
        if not anchor.requires_grad:
            anchor = h.new_zeros((), requires_grad=True)
        return _LayerHalo.apply(h, anchor, self.plan, self.n_owned)
