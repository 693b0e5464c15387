"""MPI force provider: the ``ForceProvider`` contract (``engine/forces.py``) over a domain decomposition.

Each rank holds only its owned atoms in ``state``. Every step the ghost
positions are refreshed from their owners (one halo exchange) and ONE
allreduce decides whether any local atom, owned or ghost, moved more than
skin/2 since the last build (or the cell changed). Only then are atoms
migrated to their owners, the ghosts rebuilt (``engine/halo.py``) and the
local, non-periodic neighbor list over owned + ghost positions rebuilt (ghosts
carry the periodic shifts). Forces on ghosts are summed back into their
owners; energy and virial are allreduced. Halo schemes (``parallel.halo``):

- ``full``: ghosts to receptive_field x cutoff + skin; the model runs on all
  local atoms, energy counted for owned atoms only;
- ``per-layer``: ghosts to cutoff + skin; only edges into owned atoms; the
  model's ``graph.refresh_ghosts`` copies owners' features to ghosts after
  each layer (``halo.LayerHalo``, an autograd Function).
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch

from atomsim.kernels.edge_ops import edge_atom_virials, rows_int32
from atomsim.kernels.graph import Graph
from atomsim.kernels.neighbor_list import NeighborList, max_displacement_sq
from atomsim.kernels.neighbors_local import edges_within
from atomsim.potentials.base import Potential, evaluate_potential

from .comm import as_comm
from .domain import Decomposition, keep_owned, migrate
from .forces import ForceResult, NeighborListForces, direct_pairs
from .halo import Ghosts, LayerHalo, build_ghosts
from .local_list import LocalNeighborList
from .memory import limit_heap_growth

HALO_SCHEMES = ("full", "per-layer")

_NO_POSITIONS = np.zeros((0, 3))
_NO_CELL = np.zeros((3, 3))
_OPEN = (False, False, False)


class ParallelForces(NeighborListForces):
    """Domain-decomposed forces over ``comm`` (an ``engine.comm.Comm``; see ``as_comm`` for what else it takes)."""

    def __init__(self, potential: Potential, comm=None, skin: float = 1.0, halo: str = "per-layer",
                 grid=None):
        if halo not in HALO_SCHEMES:
            raise ValueError(f"parallel.halo: {halo!r} is not one of {', '.join(HALO_SCHEMES)}")
        self.comm = as_comm(comm)
        self.skin = float(skin)
        self.halo = halo
        self.grid = grid
        cutoff = float(potential.cutoff)
        layers = max(int(getattr(potential, "receptive_field", 1)), 1)
        self.layers = layers
        self.depth = (layers * cutoff + self.skin) if halo == "full" else cutoff + self.skin
        # full halo: nodes whose features reach an owned atom within the receptive field need
        # their incoming edges: those within (layers - 1) x cutoff (+ skin for motion) of the sub-box
        self.receiver_depth = (layers - 1) * cutoff + self.skin
        # the list over owned + ghost positions in the sub-box frame: no periodic images (ghosts carry them)
        # a direct pair path gets the list it asks for (half: each local pair once, compact int32/int8);
        # its kernel weighs an owned-ghost pair 1/2 on each rank holding it and skips ghost-ghost pairs
        # a message-passing model gets only the rows it reads, int32 senders, no shifts (engine/local_list.py)
        direct = potential.direct_list()
        if direct == "half":
            nlist = NeighborList(cutoff, self.skin, half=True, compact=True)
        else:
            nlist = LocalNeighborList(cutoff, self.skin)
            limit_heap_growth()  # a model's freed activations go back to the system (engine/memory.py)
        super().__init__(potential, nlist, ("neighbor", "halo", "model", "reverse", "sync"))
        self.decomp: Optional[Decomposition] = None
        self.ghosts: Optional[Ghosts] = None
        self._ref_owned = None  # owned positions at the last build (what a restart rebuilds at)
        self._ref_cell = None
        self._image = None  # (n_owned, 3) image of each owned atom at the last build
        self._numbers = None
        self.n_migrated = 0
        self.last_stats: dict = {}

    def prepare(self, state) -> None:
        """Keep only the atoms this rank owns (all of them when the system was built per rank;
        a system handed over whole on every rank, e.g. ``Simulation(atoms=...)``, is cut here)."""
        self._ensure_decomp(state)
        keep_owned(state, self.decomp)

    def _ensure_decomp(self, state) -> None:
        cell = state.cell.detach().cpu().numpy()
        if self.decomp is None:
            self.decomp = Decomposition(cell, state.pbc, self.comm.size, self.comm.rank, self.grid)
        else:
            self.decomp.set_cell(cell)

    # -- building -------------------------------------------------------------
    def _build(self, state, ref: Optional[torch.Tensor]) -> torch.Tensor:
        """Migrate, rebuild ghosts and the local list; ``ref``: positions to build at (exact resume).

        Returns the local (owned + ghost) positions at the current positions. Collective.
        """
        t0 = time.perf_counter()
        self._ensure_decomp(state)
        # the old list, ghosts and species go before the new ones are built: one list at a rebuild's peak
        nl = self.nlist
        nl.receivers = nl.senders = nl.cell_shifts = nl.row_ptr = None
        staging = None if self.ghosts is None else self.ghosts.plan.staging  # its host buffers: reused
        self.ghosts = self._numbers = None
        if ref is None:
            self.n_migrated += migrate(state, self.decomp, self.comm)
            ref = state.positions
        else:
            sent, ref = migrate(state, self.decomp, self.comm, by=ref)
            self.n_migrated += sent
        frac, image = self.decomp.wrap(ref.detach().cpu().numpy())
        self._image = torch.from_numpy(image.astype(np.int32)).to(state.positions.device)  # int32: memory
        self.ghosts = build_ghosts(self.comm, self.decomp, frac, state.numbers.cpu().numpy(),
                                   state.ids.cpu().numpy(), self.depth, staging=staging)
        t1 = time.perf_counter()
        at_ref = self._local_positions(ref, state.cell)
        n_own = state.n_local
        if isinstance(self.nlist, LocalNeighborList):
            self.nlist.want = self._receiver_rows(n_own)
        self.nlist.build(at_ref, _NO_CELL, _OPEN)
        if self.nlist.half:
            self._keep_pairs_with_owned(n_own)
        self._ref_owned = ref.detach().clone()
        self._ref_cell = state.cell.detach().clone()
        ghost_z = torch.from_numpy(self.ghosts.numbers).to(state.numbers)  # int16 -> the state's int64
        self._numbers = torch.cat([state.numbers, ghost_z])
        self.timers["halo"] += t1 - t0
        self.timers["neighbor"] += time.perf_counter() - t1
        return at_ref if ref is state.positions else self._local_positions(state.positions, state.cell)

    def _keep_pairs_with_owned(self, n_own: int) -> None:
        """Half list: keep each pair with an owned atom at either end (ghost-ghost pairs weigh 0).

        Rows are CSR-contiguous, so the rows of owned atoms stay whole and only the ghost rows
        at the end are filtered by sender, compacted in place (the arrays keep their storage):
        no receiver per edge, no second copy of the list at the peak of a rebuild.
        """
        nl = self.nlist
        if nl.senders.device.type != "cpu":
            raise RuntimeError("the compact half list of the direct path lives on the CPU")
        ptr = nl.row_ptr.numpy()
        head = int(ptr[n_own])
        senders = nl.senders.numpy()
        keep = senders[head:] < n_own
        kept = senders[head:][keep]
        end = head + kept.shape[0]
        senders[head:end] = kept
        del kept
        cum = np.zeros(keep.shape[0] + 1, dtype=np.int64 if keep.shape[0] >= 2**31 else np.int32)
        np.cumsum(keep, out=cum[1:])
        row_ptr = ptr.copy()
        row_ptr[n_own:] = head + cum[ptr[n_own:] - head]
        # the local frame has no periodic images (ghosts carry them): one zero shift row for every pair
        nl.senders = nl.senders[:end]
        nl.cell_shifts = torch.zeros((1, 3), dtype=nl.cell_shifts.dtype).expand(end, 3)
        nl.row_ptr = torch.from_numpy(row_ptr)
        nl.receivers = None  # the direct path reads row_ptr + senders; expanded on demand

    def _receiver_rows(self, n_own: int):
        """The rows the model reads: owned atoms (per-layer: ghosts' features come from their owners);
        full halo: also the inner ghosts (the outermost are only senders, their features never used)."""
        if self.halo == "per-layer" or n_own == 0:  # an empty sub-box (vacuum): nothing reaches an energy
            return n_own
        need = self.receiver_depth + 1e-9
        return np.concatenate([np.ones(n_own, dtype=bool), self.ghosts.depth_A <= need])

    def _local_positions(self, positions: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """Owned positions wrapped into the sub-box frame, followed by ghost positions (halo exchange)."""
        owned = positions - self._image.to(positions.dtype) @ cell
        return torch.cat([owned, self.ghosts.positions(owned, cell)], dim=0)

    def _positions_and_check(self, state) -> tuple:
        """Local positions and whether this rank's list is stale (an atom moved > skin/2, or the cell).

        The owned atoms' displacement is measured while their copies travel to the ghosts'
        holders (``forward_begin`` .. ``positions_end``): interior work overlapping the halo.
        """
        cell = state.cell
        owned = state.positions - self._image.to(state.positions.dtype) @ cell
        handle = self.ghosts.plan.forward_begin(owned)
        ref = self.nlist.reference_positions
        n = owned.shape[0]
        ok = ref is not None and ref.shape[0] == n + self.ghosts.n and torch.equal(self._ref_cell, cell)
        moved = max_displacement_sq(owned, ref[:n]) if ok else 0.0
        local = torch.cat([owned, self.ghosts.positions_end(handle, cell)], dim=0)
        if ok:
            moved = max(moved, max_displacement_sq(local[n:], ref[n:]))
        return local, not ok or moved > self.nlist.stale_threshold

    def rebuild(self, state) -> None:
        """Migrate and rebuild ghosts and the list now, whatever the skin says (benchmarks time this)."""
        self._build(state, None)

    # -- the contract --------------------------------------------------------
    def compute(self, state, *, virial: bool = True, atom_virial: bool = False) -> ForceResult:
        t0 = time.perf_counter()
        local, stale = None, True
        if self.ghosts is not None and self._image.shape[0] == state.n_local:
            local, stale = self._positions_and_check(state)
        t1 = time.perf_counter()
        # ONE allreduce: has any atom anywhere moved more than skin/2 (or the cell changed)?
        rebuild = bool(self.comm.allreduce_max(int(stale)))
        t2 = time.perf_counter()
        self.timers["halo"] += t1 - t0
        self.timers["sync"] += t2 - t1
        if rebuild:
            local = None  # freed before the build's peak
            local = self._build(state, None)
        n_owned = state.n_local
        nl = self.nlist
        hook = LayerHalo(self.ghosts.plan, n_owned, self.layers - 1) if self.halo == "per-layer" else None
        t0 = time.perf_counter()
        comm_s = self.ghosts.plan.seconds
        if self.potential.direct_list() is not None:  # pair potential: one pass over the full local list
            graph = None  # (edges into owned atoms; ghost forces go back below, energies count owned rows)
            out = self.potential.direct_forces(self._numbers, local, state.cell, direct_pairs(nl), n_owned,
                                               virial=virial, atom_virial=atom_virial)
        else:
            # the list's edges within the cutoff (skin edges carry exactly zero), int32 indices, vectors
            # x_j - x_i (open frame) in float64 stored in the model dtype: per-step arrays ~55% of the list's
            row_ptr, senders, vec = edges_within(local, nl.row_ptr, nl.senders, self.potential.cutoff,
                                                 self.potential.dtype)
            graph = Graph(receivers=rows_int32(row_ptr), senders=senders, edge_vectors=vec,
                          n_nodes=int(local.shape[0]), n_local=n_owned, row_ptr=row_ptr, halo_update=hook)
            if hook is not None:
                hook.graph = graph
            out = evaluate_potential(self.potential, self._numbers, graph, compute_virial=virial,
                                     keep_edge_gradients=atom_virial)
        if hook is not None and hook.calls < self.layers - 1:
            raise ValueError(
                f"parallel.halo: per-layer needs a model that calls graph.refresh_ghosts() after each of "
                f"its {self.layers} message-passing layers; {type(self.potential).__name__} called it "
                f"{hook.calls} time(s). Use parallel.halo: full for this model.")
        if hook is not None:  # graph -> hook -> graph: a cycle that kept each step's graph until a GC pass
            hook.graph = None
        t1 = time.perf_counter()
        layer_halo = self.ghosts.plan.seconds - comm_s  # per-layer feature exchanges inside the model
        forces = out.forces[:n_owned] + self.ghosts.plan.reverse(out.forces[n_owned:], n_owned)
        atoms = None
        if atom_virial:  # ghosts' halves go back to their owners, as their forces do
            if graph is None:
                per_node = out.atom_virials.reshape(-1, 9)
            else:
                per_node = edge_atom_virials(out.edge_gradients, graph.edge_vectors, graph.receivers,
                                             graph.senders, graph.n_nodes).reshape(-1, 9)
            atoms = per_node[:n_owned] + self.ghosts.plan.reverse(per_node[n_owned:], n_owned)
            atoms = atoms.reshape(-1, 3, 3)
        # one allreduce for energy + virial
        buf = np.zeros(10)
        buf[0] = out.energy
        if out.virial is not None:
            buf[1:] = out.virial.detach().cpu().numpy().ravel()
        tot = self.comm.allreduce_sum(buf)
        total_virial = None
        if out.virial is not None:
            total_virial = torch.from_numpy(tot[1:].reshape(3, 3).copy()).to(state.positions.device)
        t2 = time.perf_counter()  # (the reverse exchange's own seconds count under "reverse" only)
        self.timers["model"] += t1 - t0 - layer_halo
        self.timers["halo"] += layer_halo
        self.timers["reverse"] += t2 - t1
        self.last_stats = {"n_owned": n_owned, "n_ghost": self.ghosts.n, "n_edges": nl.n_edges,
                           "n_model_edges": nl.n_edges if graph is None else graph.n_edges,
                           "halo_calls": 0 if hook is None else hook.calls}
        return ForceResult(energy=float(tot[0]), energies=out.energies, forces=forces, virial=total_virial,
                           rebuilt=rebuild, atom_virials=atoms)

    def reference_state(self, state) -> dict:
        """This rank's owned positions at the last build, their ids and the cell (no communication)."""
        if self._ref_owned is None:
            return {}
        return {"positions": self._ref_owned, "ids": state.ids, "cell": self._ref_cell}

    def restore_reference(self, state, positions: torch.Tensor, cell: torch.Tensor,
                          ids: Optional[torch.Tensor] = None) -> None:
        """Rebuild exactly as the saved run last did: at its reference positions (all atoms, id order).

        Ownership, ghosts and pair lists then match the uninterrupted run, so a resume
        on the same rank count continues it bit for bit. Collective. ``ids``: the rows of
        ``positions`` are these atoms, this rank's own (a sharded restart), not all atoms.
        """
        if not torch.equal(cell.to(state.cell), state.cell):
            return  # the cell changed since (barostat): the next compute rebuilds anyway
        if ids is not None:
            ok = ids.shape[0] == state.n_local and torch.equal(ids.to(state.ids), state.ids)
            if bool(self.comm.allreduce_min(int(ok))):
                self._build(state, positions.to(state.positions))
            return
        n = int(positions.shape[0])
        ok = n == state.n_atoms_global and (state.n_local == 0 or int(state.ids.max()) < n)
        if not bool(self.comm.allreduce_min(int(ok))):
            return  # ids are not 0..N-1: the next compute rebuilds at the current positions
        ref = positions.to(state.positions)[state.ids]  # restart arrays are sorted by id 0..N-1
        self._build(state, ref)
