"""The non-rebuild force step with fixed shapes, replayed from a CUDA graph (eager on CPU).

Why: between neighbor-list rebuilds a GNN force evaluation is the same sequence of
kernels on tensors of the same shapes; for small systems on a GPU the launch overhead
of that sequence (hundreds of kernels, forward + backward) can exceed the work. With
the edges in fixed-capacity buffers (``kernels/neighbors_torch.py``: padded edges are
placed past the cutoff, where they contribute exact zeros) the whole evaluation is
captured once with ``torch.cuda.graphs`` and replayed; a rebuild writes the buffers in
place, so the graph stays valid until the buffers overflow (then: re-allocate, recapture).

- :func:`static_forces`: one fixed-shape evaluation (no host reads).
- :class:`GraphCapture`: runs a function of tensors eagerly, as a CUDA graph, or through
  ``torch.compile(mode="reduce-overhead")``; a failed capture or a CPU tensor falls back to
  eager and says why (``fallback_reason``).
- :class:`StaticGraphForces`: a force provider (``engine/forces.py`` contract) on top of both,
  so ``engine/step.py`` ``md_step`` runs it like the serial provider.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import Tensor

from atomsim.kernels import neighbors_torch as nt
from atomsim.kernels.edge_ops import scatter_edge_forces
from atomsim.kernels.graph import Graph
from atomsim.kernels.neighbor_list import displacement_sq
from atomsim.potentials.base import Potential

from .forces import ForceResult

__all__ = ["StaticForceOutput", "static_forces", "GraphCapture", "StaticGraphForces", "MODES"]

MODES = ("auto", "eager", "cuda-graph", "compile")


@dataclass
class StaticForceOutput:
    energy: Tensor  # () float64, owned atoms' energy
    energies: Tensor  # (n_local,) float64
    forces: Tensor  # (n, 3) float64
    virial: Optional[Tensor]  # (3, 3) float64, symmetrised


def static_forces(potential: Potential, numbers: Tensor, buffers: nt.EdgeBuffers, positions: Tensor,
                  cell: Tensor, *, n_local: Optional[int] = None, virial: bool = False) -> StaticForceOutput:
    """Energy, forces (and virial) on the edge buffers: every shape fixed by the capacity, no host read.

    Same physics as ``potentials/base.py`` ``evaluate_potential`` (autograd on the edge vectors);
    padded edges sit at twice the cutoff and carry zero messages and zero gradients.
    """
    n = int(positions.shape[0])
    n_local = n if n_local is None else int(n_local)
    shifts = buffers.cell_shifts.to(positions.dtype) @ cell
    vec = positions.index_select(0, buffers.senders) - positions.index_select(0, buffers.receivers) + shifts
    vec = nt.pad_far(vec, buffers.valid, float(potential.cutoff)).to(potential.dtype).detach()
    vec.requires_grad_(True)
    # pads belong to the last row (receiver n - 1): the CSR offsets must say so
    row_ptr = buffers.row_ptr.clone()
    row_ptr[-1] = buffers.capacity
    graph = Graph(receivers=buffers.receivers, senders=buffers.senders, edge_vectors=vec, n_nodes=n,
                  n_local=n_local, row_ptr=row_ptr)
    with torch.enable_grad():
        e_local = potential.per_atom_energy(numbers, graph)[:n_local].to(torch.float64)
        energy = e_local.sum()
        (g,) = torch.autograd.grad(energy, vec, allow_unused=True)
    if g is None:
        g = torch.zeros_like(vec)
    forces, vir = scatter_edge_forces(g.detach(), vec.detach(), buffers.receivers, buffers.senders, n, virial)
    if vir is not None:
        vir = 0.5 * (vir + vir.T)
    return StaticForceOutput(energy.detach(), e_local.detach(), forces, vir)


def _resolve_mode(mode: str, device: torch.device) -> str:
    if mode not in MODES:
        raise ValueError(f"graph capture mode {mode!r} is not one of {', '.join(MODES)}")
    if mode == "auto":
        return "cuda-graph" if device.type == "cuda" else "eager"
    return mode


class GraphCapture:
    """``fn(*inputs)`` eagerly, replayed from a CUDA graph, or compiled (``reduce-overhead``).

    CUDA graph: ``inputs`` are copied into static tensors before each replay and the outputs
    are the graph's own tensors, overwritten by the next call (clone what you keep).
    On CPU tensors, or when capture fails, it runs eagerly (``mode`` says which ran,
    ``fallback_reason`` why not the one asked for).
    """

    def __init__(self, fn: Callable, example_inputs: Sequence[Tensor], mode: str = "auto", warmup: int = 3):
        device = example_inputs[0].device
        self.requested = mode
        self.mode = _resolve_mode(mode, device)
        self.fallback_reason: Optional[str] = None
        self._fn = fn
        self._graph = None
        if self.mode != "eager" and device.type != "cuda":
            self.fallback_reason = f"{self.mode} needs CUDA tensors; ran eagerly on {device.type}"
            self.mode = "eager"
        elif self.mode == "compile":
            self._fn = torch.compile(fn, mode="reduce-overhead")
        elif self.mode == "cuda-graph":
            try:
                self._capture(example_inputs, warmup)
            except Exception as exc:  # noqa: BLE001 - any capture failure: run eagerly, say why
                self.fallback_reason = f"CUDA graph capture failed: {type(exc).__name__}: {exc}"[:400]
                self.mode = "eager"
                self._graph = None

    def _capture(self, example: Sequence[Tensor], warmup: int) -> None:
        self._static_in = [x.detach().clone() for x in example]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up on a side stream (allocator, autotuning, lazy init)
            for _ in range(max(1, warmup)):
                self._fn(*self._static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._static_out = self._fn(*self._static_in)
        self._graph = graph

    def __call__(self, *inputs: Tensor):
        if self._graph is None:
            return self._fn(*inputs)
        for static, x in zip(self._static_in, inputs):
            if x.data_ptr() != static.data_ptr():
                static.copy_(x)
        self._graph.replay()
        return self._static_out


class StaticGraphForces:
    """Force provider on static edge buffers: the non-rebuild step captured (CUDA) or eager (CPU).

    The skin check and the overflow check read one flag each back to the host per step/rebuild;
    a rebuild fills the buffers in place (the captured graph stays valid); an overflow
    re-allocates (capacity x 1.5) and recaptures. One rank only.
    """

    def __init__(self, potential: Potential, skin: float = 1.0, *, mode: str = "auto",
                 capacity_multiplier: float = 1.25):
        self.potential = potential
        self.skin = float(skin)
        self.cutoff = float(potential.cutoff) + self.skin
        self.mode = mode
        self.capacity_multiplier = float(capacity_multiplier)
        self.n_builds = 0
        self.n_reallocations = 0
        self.timers: Dict[str, float] = {"neighbor": 0.0, "model": 0.0}
        self.buffers: Optional[nt.EdgeBuffers] = None
        self.capture: Optional[GraphCapture] = None
        self._virial: Optional[bool] = None
        self._ref: Optional[Tensor] = None
        self._ref_cell: Optional[Tensor] = None

    def prepare(self, state) -> None:
        """Nothing to distribute on one rank."""

    def _stale(self, state) -> bool:
        if self.buffers is None or self._ref is None or self._ref.shape != state.positions.shape:
            return True
        if not torch.equal(state.cell, self._ref_cell):
            return True
        return bool(((state.positions - self._ref) ** 2).sum(1).amax() > (0.5 * self.skin) ** 2)

    def _rebuild(self, pos: Tensor, cell: Tensor, pbc) -> None:
        if self.buffers is None or self.buffers.row_ptr.shape[0] != pos.shape[0] + 1:
            self.buffers = nt.allocate(pos, cell, pbc, self.cutoff,
                                       capacity_multiplier=self.capacity_multiplier)
            self.capture = None
        else:
            nt.update(self.buffers, pos, cell, pbc, self.cutoff)
            if self.buffers.did_overflow():
                self.buffers = nt.reallocate(self.buffers, pos, cell, pbc, self.cutoff)
                self.n_reallocations += 1
                self.capture = None  # new tensors: the old graph points at the old buffers
        self._ref, self._ref_cell = pos.detach().clone(), cell.detach().clone()
        self.n_builds += 1

    @property
    def stale_threshold(self) -> float:
        """Squared displacement above which the edges may miss a pair within the cutoff."""
        return (0.5 * self.skin) ** 2

    def compute(self, state, *, virial: bool = True, atom_virial: bool = False, checks=None) -> ForceResult:
        """Forces at ``state``. With ``checks`` (``engine/device_checks.py`` DeferredChecks, through
        ``md_step(..., checks=)``) the skin check is folded in on the device and energy/energies stay
        device tensors: no host read in a non-rebuild step. (``Simulation``'s deferred loop wants a
        ``NeighborList`` provider, so this one does not announce ``deferred_checks``.)"""
        if atom_virial:
            raise ValueError("per-atom virials are not available on the static (graph-captured) path")
        t0 = time.perf_counter()
        deferred = (checks is not None and self.buffers is not None and self._ref is not None
                    and self._ref.shape == state.positions.shape)
        if deferred:
            checks.note_displacement(displacement_sq(state.positions, self._ref, state.cell, self._ref_cell))
            rebuilt = False
        else:
            rebuilt = self._stale(state)
            if rebuilt:
                self._rebuild(state.positions, state.cell, state.pbc)
        t1 = time.perf_counter()
        if self.capture is None or self._virial != virial:
            fn = partial(static_forces, self.potential, state.numbers, self.buffers, virial=virial)
            self.capture = GraphCapture(fn, (state.positions, state.cell), self.mode)
            self._virial = virial
        out = self.capture(state.positions, state.cell)
        energy = out.energy.clone() if deferred else float(out.energy)
        energies = out.energies.clone() if deferred else out.energies.cpu().numpy()
        result = ForceResult(energy=energy, energies=energies,
                             forces=out.forces.clone(),
                             virial=None if out.virial is None else out.virial.clone(),
                             rebuilt=rebuilt)
        self.timers["neighbor"] += t1 - t0
        self.timers["model"] += time.perf_counter() - t1
        return result

    def reference_state(self, state) -> dict:
        if self._ref is None:
            return {}
        return {"positions": self._ref, "ids": state.ids, "cell": self._ref_cell}

    def restore_reference(self, state, positions: Tensor, cell: Tensor) -> None:
        """Rebuild at the saved reference positions (sorted by id)."""
        ref = positions.to(state.positions)
        if state.n_local and int(state.ids.max()) < ref.shape[0]:
            ref = ref[state.ids]
        self._rebuild(ref, cell.to(state.cell), state.pbc)
