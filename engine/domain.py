"""Cartesian domain decomposition in fractional coordinates, ownership and migration.

The box is split into a grid of sub-boxes along the three *cell vectors* (not
x/y/z), so triclinic cells decompose exactly like orthorhombic ones. A rank
owns the atoms whose wrapped fractional coordinates fall in its sub-box; in a
non-periodic direction there is no wrap and atoms outside [0, 1) belong to the
edge rank. Migration (at neighbor-list rebuilds) sends every atom straight to
its owner, keeps global ids, and sorts owned atoms by id so the layout does
not depend on history (deterministic, and the same after a restart).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from atomsim.kernels.cell_grid import face_distances

from .comm import Comm, compute_dims

# Per-atom fields of MDState that travel with an atom when it changes owner.
PER_ATOM_FIELDS = ("positions", "velocities", "masses", "numbers", "ids", "forces", "fixed")


def rank_grid(size: int, grid: Optional[Sequence[int]] = None) -> Tuple[int, int, int]:
    """The rank grid: given (checked against the rank count) or balanced (MPI_Dims_create)."""
    if grid is None or grid == "auto":
        return compute_dims(size, 3)
    dims = tuple(int(g) for g in grid)
    if len(dims) != 3 or any(g < 1 for g in dims) or int(np.prod(dims)) != size:
        raise ValueError(
            f"parallel.grid {list(dims)} does not match {size} MPI ranks: its product must equal "
            f"the rank count (or use grid: auto)"
        )
    return dims


class Decomposition:
    """Which sub-box (in fractional coordinates) each rank owns; rank = (cx*ny + cy)*nz + cz."""

    def __init__(self, cell, pbc, size: int, rank: int, grid=None):
        self.dims = rank_grid(size, grid)
        self.size, self.rank = int(size), int(rank)
        self.pbc = tuple(bool(p) for p in pbc)
        self.coords = self.coords_of(self.rank)
        self.lo = np.array([c / n for c, n in zip(self.coords, self.dims)])
        self.hi = np.array([(c + 1) / n for c, n in zip(self.coords, self.dims)])
        self.set_cell(cell)

    def set_cell(self, cell) -> None:
        self.cell = np.asarray(cell, dtype=float).copy()
        self.inv_cell = np.linalg.inv(self.cell)
        self.faces = face_distances(self.cell)

    def coords_of(self, rank: int) -> Tuple[int, int, int]:
        nx, ny, nz = self.dims
        return (rank // (ny * nz), (rank // nz) % ny, rank % nz)

    def rank_of(self, coords) -> int:
        nx, ny, nz = self.dims
        return (int(coords[0]) * ny + int(coords[1])) * nz + int(coords[2])

    def neighbor(self, dim: int, step: int) -> Optional[Tuple[int, int]]:
        """(rank, periodic image shift along dim) of the neighbor `step` (+-1) away, or None."""
        c = list(self.coords)
        c[dim] += step
        shift = 0
        if c[dim] < 0 or c[dim] >= self.dims[dim]:
            if not self.pbc[dim]:
                return None
            shift = -1 if c[dim] >= self.dims[dim] else 1  # image seen from the receiver
            c[dim] %= self.dims[dim]
        return self.rank_of(c), shift

    def hops(self, depth: float) -> Tuple[int, int, int]:
        """Sub-boxes a halo ``depth`` Å deep spans along each axis (1 unless sub-boxes are thinner)."""
        out = []
        for d in range(3):
            if self.dims[d] == 1 and not self.pbc[d]:
                out.append(0)
                continue
            h = depth / self.faces[d]
            out.append(int(np.ceil(h * self.dims[d] - 1e-12)) if h > 0 else 0)
        return tuple(out)

    def halo_partners(self, depth: float) -> list:
        """(dest, source) rank pairs, one per grid offset within ``depth``: whom to send to and hear from.

        The offsets +o (dest) and -o (source) pair every rank with the same partner in the same
        round, so a loop of pairwise ``sendrecv`` over this list cannot deadlock. Offsets that
        reach the same rank (periodic wrap of a short grid axis) count once; this rank itself
        comes first as (rank, rank). Without thin sub-boxes these are the 26 neighbours or fewer.
        """
        import itertools

        k = self.hops(depth)
        seen = {(0, 0, 0)}
        pairs = [(self.rank, self.rank)]
        for o in itertools.product(*(range(-kd, kd + 1) for kd in k)):
            res = tuple(o[d] % self.dims[d] if self.pbc[d] else o[d] for d in range(3))
            if res in seen or any(not self.pbc[d] and abs(o[d]) >= self.dims[d] for d in range(3)):
                continue
            seen.add(res)
            pairs.append((self._offset_rank(o), self._offset_rank(tuple(-x for x in o))))
        return pairs

    def _offset_rank(self, offset) -> Optional[int]:
        c = [self.coords[d] + offset[d] for d in range(3)]
        for d in range(3):
            if self.pbc[d]:
                c[d] %= self.dims[d]
            elif not 0 <= c[d] < self.dims[d]:
                return None
        return self.rank_of(c)

    def wrap(self, positions: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Wrapped fractional coordinates and the integer image k (positions = wrapped + k @ cell)."""
        frac = np.asarray(positions, dtype=float) @ self.inv_cell
        image = np.zeros(frac.shape, dtype=np.int64)
        for d in range(3):
            if self.pbc[d]:
                k = np.floor(frac[:, d])
                f = frac[:, d] - k
                edge = f >= 1.0  # -1e-17 wraps to exactly 1.0 in float
                f[edge] -= 1.0
                k[edge] += 1.0
                frac[:, d] = f
                image[:, d] = k.astype(np.int64)
        return frac, image

    def owner_of(self, frac: np.ndarray) -> np.ndarray:
        """Owner rank of each wrapped fractional coordinate (edge ranks take strays)."""
        dims = np.asarray(self.dims)
        c = np.floor(frac * dims).astype(np.int64)
        c = np.clip(c, 0, dims - 1)
        return (c[:, 0] * dims[1] + c[:, 1]) * dims[2] + c[:, 2]


def _take(state, keep) -> dict:
    return {f: (getattr(state, f)[keep] if getattr(state, f) is not None else None) for f in PER_ATOM_FIELDS}


def keep_owned(state, decomp: Decomposition) -> None:
    """Drop the atoms another rank owns (none when built per rank: structure.build_local_state)."""
    frac, _ = decomp.wrap(state.positions.detach().cpu().numpy())
    mask = torch.from_numpy(decomp.owner_of(frac) == decomp.rank).to(state.positions.device)
    _assign(state, _take(state, mask))


def _assign(state, arrays: dict) -> None:
    ids = arrays["ids"]
    order = torch.argsort(ids)
    for f, v in arrays.items():
        setattr(state, f, None if v is None else v[order].contiguous())
    state.energies = None


def migrate(state, decomp: Decomposition, comm: Comm, by: Optional[torch.Tensor] = None):
    """Send every owned atom that left this sub-box to its owner; returns atoms sent.

    Collective over ``comm``: every rank must call it. Staged as LAMMPS does:
    along cell vector a, then b, then c, atoms travel one sub-box per round to
    the -1/+1 neighbour (the shorter way round a periodic axis); rounds repeat
    along an axis while any atom is not yet in its owner's slab (thin sub-boxes,
    or atoms that crossed more than one). Only the neighbouring ranks exchange
    messages; one allreduce per round decides whether another is needed.
    ``by`` (n, 3): positions that decide ownership instead of ``state.positions``
    (a resumed run rebuilds at the saved reference positions); it travels with
    the atoms and the return value is then ``(sent, by_after_migration)``.
    """
    dev = state.positions.device
    # all ranks must agree which optional fields exist (an empty rank may have forces None): one allreduce
    here = np.array([getattr(state, f) is not None for f in PER_ATOM_FIELDS], dtype=np.int64)
    present = dict(zip(PER_ATOM_FIELDS, (bool(p) for p in comm.allreduce_max(here))))
    n = state.positions.shape[0]
    cpu = {}
    for f in PER_ATOM_FIELDS:
        v = getattr(state, f)
        if present[f] and v is None:
            v = _empty_like_field(f, n, state)
        if v is not None:
            cpu[f] = v.detach().cpu().numpy()
    if by is not None:
        cpu["_by"] = by.detach().cpu().numpy()
    decide = "positions" if by is None else "_by"
    dims = np.asarray(decomp.dims)
    mine = np.asarray(decomp.coords)
    frac, _ = decomp.wrap(cpu[decide])
    sent = int((decomp.owner_of(frac) != decomp.rank).sum())  # atoms that leave this rank
    for d in range(3):
        if dims[d] == 1:
            continue
        while True:
            frac, _ = decomp.wrap(cpu[decide])
            target = np.clip(np.floor(frac[:, d] * dims[d]).astype(np.int64), 0, dims[d] - 1)
            delta = target - mine[d]
            if decomp.pbc[d]:  # the shorter way round
                delta = (delta + dims[d] // 2) % dims[d] - dims[d] // 2
                if dims[d] % 2 == 0:
                    delta[delta == -(dims[d] // 2)] = dims[d] // 2
            if not int(comm.allreduce_max(int(np.any(delta != 0)))):
                break
            up, down = delta > 0, delta < 0
            stay = ~(up | down)
            arrived = []
            for step, mask in ((+1, up), (-1, down)):
                dest, source = decomp.neighbor(d, step), decomp.neighbor(d, -step)
                payload = {f: a[mask] for f, a in cpu.items()} if dest is not None else None
                got = comm.sendrecv(payload, dest=None if dest is None else dest[0],
                                    source=None if source is None else source[0], tag=_TAG_MIGRATE + d)
                if got is not None:
                    arrived.append(got)
            cpu = {f: np.concatenate([a[stay]] + [g[f] for g in arrived]) for f, a in cpu.items()}
    merged = {f: (torch.from_numpy(cpu[f]).to(dev) if f in cpu else None) for f in PER_ATOM_FIELDS}
    carried = None
    if by is not None:
        carried = torch.from_numpy(cpu["_by"][np.argsort(cpu["ids"], kind="stable")]).to(dev)
    _assign(state, merged)
    return sent if by is None else (sent, carried)


_TAG_MIGRATE = 61


def _empty_like_field(f: str, n: int, state):
    if f == "fixed":
        return torch.zeros(n, dtype=torch.bool)
    if f in ("positions", "velocities", "forces"):
        return torch.zeros((n, 3), dtype=torch.float64)
    raise ValueError(f"per-atom field {f} missing on a rank")
