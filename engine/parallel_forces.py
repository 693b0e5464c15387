"""MPI force provider: the ``SerialForces.compute(state)`` contract over a domain decomposition.

Each rank holds only its owned atoms in ``state``. At a neighbor-list rebuild
(decided by ONE allreduce: has any atom anywhere moved more than skin/2?) it
migrates atoms to their owners, rebuilds the ghosts (halo.build_ghosts) and a
local, non-periodic pair list over owned + ghost positions (ghosts carry the
periodic shifts). Every other step it only refreshes ghost positions. Forces
on ghosts are summed back into their owners; energy and virial are
allreduced. Halo schemes (``parallel.halo``):

- ``full``: ghosts to receptive_field x cutoff + skin; the model runs on all
  local atoms, energy counted for owned atoms only;
- ``per-layer``: ghosts to cutoff + skin; only edges into owned atoms; the
  model's ``graph.refresh_ghosts`` copies owners' features to ghosts after
  each layer (halo.LayerHalo, an autograd Function).
"""
from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Optional

import numpy as np
import torch

from atomsim.kernels.neighbors import neighbor_list
from atomsim.potentials.base import Potential, build_graph, evaluate_potential

from .domain import Decomposition, migrate
from .halo import Ghosts, LayerHalo, build_ghosts

HALO_SCHEMES = ("full", "per-layer")


def _local_pairs(positions: np.ndarray, cutoff: float):
    """All ordered pairs within cutoff among local (owned + ghost) atoms, no periodic images."""
    n = positions.shape[0]
    if n < 2:
        z = np.zeros(0, dtype=np.int64)
        return z, z.copy()
    lo = positions.min(0)
    span = positions.max(0) - lo
    box = np.diag(np.maximum(span, cutoff) + 1.0)
    i, j, _ = neighbor_list(positions - lo, box, (False, False, False), cutoff)
    return np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)


class ParallelForces:
    """Domain-decomposed forces; ``comm`` is an mpi4py communicator or engine.comm.MPIComm."""

    def __init__(self, potential: Potential, comm=None, skin: float = 1.0, halo: str = "per-layer",
                 grid=None, compute_virial: bool = True):
        from mpi4py import MPI

        if halo not in HALO_SCHEMES:
            raise ValueError(f"parallel.halo: {halo!r} is not one of {', '.join(HALO_SCHEMES)}")
        self.comm = getattr(comm, "comm", comm) or MPI.COMM_WORLD
        self.potential = potential
        self.skin = float(skin)
        self.halo = halo
        self.grid = grid
        self.compute_virial = compute_virial
        cutoff = float(potential.cutoff)
        layers = max(int(getattr(potential, "receptive_field", 1)), 1)
        self.layers = layers
        self.list_cutoff = cutoff + self.skin
        self.depth = (layers * cutoff + self.skin) if halo == "full" else cutoff + self.skin
        # full halo: nodes whose features reach an owned atom within the receptive field need
        # their incoming edges: those within (layers - 1) x cutoff (+ skin for motion) of the sub-box
        self.receiver_depth = (layers - 1) * cutoff + self.skin
        self.decomp: Optional[Decomposition] = None
        self.ghosts: Optional[Ghosts] = None
        self._ref_positions = None
        self._ref_cell = None
        self._image = None  # (n_owned, 3) image of each owned atom at the last rebuild
        self._pairs = None
        self._local_cache = None
        self.n_builds = 0
        self.n_migrated = 0
        self.timers = {"neighbor": 0.0, "halo": 0.0, "model": 0.0, "reverse": 0.0}
        self.last_stats: dict = {}

    def distribute(self, state) -> None:
        """Every rank holds the same full system: keep only the atoms this rank owns."""
        from .domain import keep_owned

        self._ensure_decomp(state)
        keep_owned(state, self.decomp)

    def _ensure_decomp(self, state) -> None:
        cell = state.cell.detach().cpu().numpy()
        if self.decomp is None:
            self.decomp = Decomposition(cell, state.pbc, self.comm.Get_size(), self.comm.Get_rank(), self.grid)
        else:
            self.decomp.set_cell(cell)

    # -- rebuild decision ---------------------------------------------------
    def needs_rebuild(self, state) -> bool:
        """One allreduce: True on every rank if any atom anywhere moved > skin/2 (or cell/count changed)."""
        local = 0
        if (self._ref_positions is None or self._ref_positions.shape != state.positions.shape
                or not torch.equal(self._ref_cell, state.cell)):
            local = 1
        elif state.positions.shape[0]:
            disp2 = ((state.positions - self._ref_positions) ** 2).sum(1)
            local = int(bool(disp2.max() > (0.5 * self.skin) ** 2))
        from mpi4py import MPI

        return bool(self.comm.allreduce(local, op=MPI.MAX))

    def rebuild(self, state) -> None:
        """Migrate, rebuild ghosts and the local list at the current positions (collective)."""
        self._build(state, None)

    def _build(self, state, ref: Optional[torch.Tensor]) -> None:
        """``ref``: per-atom positions to build at instead of the current ones (exact resume)."""
        t0 = time.perf_counter()
        self._ensure_decomp(state)
        if ref is None:
            self.n_migrated += migrate(state, self.decomp, self.comm)
            ref = state.positions
        else:
            sent, ref = migrate(state, self.decomp, self.comm, by=ref)
            self.n_migrated += sent
        frac, image = self.decomp.wrap(ref.detach().cpu().numpy())
        self._image = torch.from_numpy(image).to(state.positions.device)
        self.ghosts = build_ghosts(self.comm, self.decomp, frac, state.numbers.cpu().numpy(),
                                   state.ids.cpu().numpy(), self.depth)
        t1 = time.perf_counter()
        local = self._local_positions(SimpleNamespace(positions=ref, cell=state.cell))
        i, j = _local_pairs(local.detach().cpu().numpy(), self.list_cutoff)
        n_own = state.n_local
        if self.halo == "per-layer":  # ghosts' features come from their owners: no edges into ghosts
            keep = i < n_own
        else:  # full halo: the outermost ghosts are only senders (their own features are never used)
            need = self.receiver_depth + 1e-9
            keep = (i < n_own) | (self.ghosts.depth_A[np.maximum(i - n_own, 0)] <= need)
            if n_own == 0:  # an empty sub-box (vacuum): nothing here reaches an owned energy
                keep[:] = False
        i, j = i[keep], j[keep]
        dev = state.positions.device
        self._pairs = (torch.from_numpy(i).to(dev), torch.from_numpy(j).to(dev))
        self._ref_positions = ref.detach().clone()
        self._ref_cell = state.cell.detach().clone()
        self._numbers = torch.cat([state.numbers, torch.from_numpy(self.ghosts.numbers).to(dev)])
        self.n_builds += 1
        t2 = time.perf_counter()
        self.timers["halo"] += t1 - t0
        self.timers["neighbor"] += t2 - t1
        self._local_cache = local

    def _local_positions(self, state) -> torch.Tensor:
        """Owned positions wrapped into the sub-box frame, followed by ghost positions."""
        owned = state.positions - self._image.to(state.positions.dtype) @ state.cell
        ghosts = self.ghosts.positions(owned, state.cell)
        return torch.cat([owned, ghosts], dim=0)

    # -- the contract --------------------------------------------------------
    def compute(self, state) -> None:
        from mpi4py import MPI

        if self.needs_rebuild(state):
            self.rebuild(state)
            local = self._local_cache
        else:
            t0 = time.perf_counter()
            local = self._local_positions(state)
            self.timers["halo"] += time.perf_counter() - t0
        n_owned = state.n_local
        i, j = self._pairs
        S = torch.zeros((i.shape[0], 3), dtype=torch.int64, device=i.device)
        hook = LayerHalo(self.ghosts.plan, n_owned, self.layers - 1) if self.halo == "per-layer" else None
        t0 = time.perf_counter()
        comm_s = self.ghosts.plan.seconds
        graph = build_graph(local, state.cell, i, j, S, n_owned, self.potential.dtype, halo_update=hook)
        if hook is not None:
            hook.graph = graph
        out = evaluate_potential(self.potential, self._numbers, graph, compute_virial=self.compute_virial)
        if hook is not None and hook.calls < self.layers - 1:
            raise ValueError(
                f"parallel.halo: per-layer needs a model that calls graph.refresh_ghosts() after each of "
                f"its {self.layers} message-passing layers; {type(self.potential).__name__} called it "
                f"{hook.calls} time(s). Use parallel.halo: full for this model.")
        t1 = time.perf_counter()
        layer_halo = self.ghosts.plan.seconds - comm_s  # per-layer feature exchanges inside the model
        forces = out.forces[:n_owned] + self.ghosts.plan.reverse(out.forces[n_owned:], n_owned)
        # one allreduce for energy + virial
        buf = np.zeros(10)
        buf[0] = out.energy
        if out.virial is not None:
            buf[1:] = out.virial.detach().cpu().numpy().ravel()
        tot = np.empty_like(buf)
        self.comm.Allreduce(buf, tot, op=MPI.SUM)
        energy = float(tot[0])
        virial = None
        if out.virial is not None:
            virial = torch.from_numpy(tot[1:].reshape(3, 3).copy()).to(state.positions.device)
        t2 = time.perf_counter()  # (the reverse exchange's own seconds count under "reverse" only)
        self.timers["model"] += t1 - t0 - layer_halo
        self.timers["halo"] += layer_halo
        self.timers["reverse"] += t2 - t1
        state.forces = forces
        state.energies = out.energies
        state.energy = energy
        state.virial = virial
        self.last_stats = {"n_owned": n_owned, "n_ghost": self.ghosts.n, "n_edges": int(i.shape[0]),
                           "halo_calls": 0 if hook is None else hook.calls}

    def reference_state(self) -> dict:
        """This rank's positions (owned atoms) at the last rebuild and the cell (no communication)."""
        return {"positions": self._ref_positions, "cell": self._ref_cell}

    def gathered_reference_state(self, state) -> dict:
        """Rebuild positions of ALL atoms sorted by id (rank 0; {} elsewhere). Collective.

        Same layout as SerialForces.reference_state() of a 1-rank run, so the restart
        file does not depend on the rank count.
        """
        from .parallel_io import gather_by_id

        if self._ref_positions is None:
            return {}
        g = gather_by_id(self.comm, state.ids.cpu().numpy(), positions=self._ref_positions.cpu().numpy())
        if g is None:
            return {}
        return {"positions": torch.from_numpy(g["positions"]), "cell": self._ref_cell.cpu()}

    def restore_reference(self, state, positions: torch.Tensor, cell: torch.Tensor) -> None:
        """Rebuild exactly as the saved run last did: at its reference positions (all atoms, id order).

        Ownership, ghosts and pair lists then match the uninterrupted run, so a resume
        on the same rank count continues it bit for bit. Collective.
        """
        if not torch.equal(cell.to(state.cell), state.cell):
            return  # the cell changed since (barostat): the next compute rebuilds anyway
        n = int(positions.shape[0])
        ok = n == state.n_atoms_global and (state.n_local == 0 or int(state.ids.max()) < n)
        if not bool(self.comm.allreduce(int(ok), op=_mpi_min())):
            return  # ids are not 0..N-1: the next compute rebuilds at the current positions
        ref = positions.to(state.positions)[state.ids]  # restart arrays are sorted by id 0..N-1
        self._build(state, ref)


def _mpi_min():
    from mpi4py import MPI

    return MPI.MIN
