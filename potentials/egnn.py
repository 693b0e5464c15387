"""atomsim's native foundation model: an EGNN-family message-passing energy potential.

The source paper scaled an EGNN (Satorras et al. 2021) from ~1e5 to ~1e9
parameters at fixed shape (radius 5 Å, width 800-5400, depth 3-6). This is that
family adapted for energies: each layer forms edge messages from the two node
states and a Bessel radial basis with a smooth polynomial envelope (so energy
and forces are continuous when a neighbor crosses the cutoff), sums them per
receiver, and updates nodes with a residual MLP. Per-atom energies come from a
readout MLP, a fitted scale and per-species reference energies.

The edge step is exactly :func:`atomsim.kernels.message_passing.edge_message_aggregate`
(the fused Triton kernel replaces it on GPU); forces and stress come from
:func:`atomsim.potentials.base.evaluate_potential`.
"""
from __future__ import annotations

import dataclasses
import weakref
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
from torch import Tensor, nn

from atomsim.kernels.graph import Graph, csr_row_ptr
from atomsim.kernels.message_passing import edge_message_aggregate, skips_far_edges

from .base import Potential
from .node_update import node_update

MAX_Z = 119


@dataclass
class EGNNConfig:
    """Everything that fixes the architecture (stored as config.json next to the weights)."""

    species: list[int] = field(default_factory=lambda: [29])  # atomic numbers the model knows
    width: int = 64  # node feature size F
    depth: int = 3  # message-passing layers L
    n_rbf: int = 8  # Bessel radial basis size K
    cutoff: float = 5.0  # Å
    avg_num_neighbors: float = 30.0  # aggregate normalisation (1/avg) keeps activations O(1)
    readout_hidden: int = 32
    # E(n)-equivariant coordinate update in every layer but the last (potentials/egnn_equivariant.py)
    equivariant: bool = False
    coord_hidden: int = 16  # width of its edge MLP phi_x (used only when equivariant)

    def __post_init__(self) -> None:
        self.species = sorted(int(z) for z in self.species)
        if not self.species or any(not 0 < z < MAX_Z for z in self.species):
            raise ValueError(f"species: atomic numbers 1..118 expected, got {self.species}")
        for key in ("width", "depth", "n_rbf", "readout_hidden"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key}: must be a positive integer, got {getattr(self, key)}")
        if not isinstance(self.equivariant, bool):
            raise ValueError(f"equivariant: true or false expected, got {self.equivariant!r}")
        if int(self.coord_hidden) < 1:
            raise ValueError(f"coord_hidden: must be a positive integer, got {self.coord_hidden}")
        if not self.cutoff > 0:
            raise ValueError(f"cutoff: must be > 0 Å, got {self.cutoff}")
        if not self.avg_num_neighbors > 0:
            raise ValueError(f"avg_num_neighbors: must be > 0, got {self.avg_num_neighbors}")

    def to_dict(self) -> dict:
        return asdict(self)


class EGNNLayer(nn.Module):
    """One message-passing layer: the kernel's edge message + sum, then a residual node MLP."""

    def __init__(self, width: int, n_rbf: int):
        super().__init__()
        self.w_src = nn.Linear(width, width, bias=False)
        self.w_dst = nn.Linear(width, width, bias=False)
        self.w_rbf = nn.Parameter(torch.empty(n_rbf, width))
        self.b1 = nn.Parameter(torch.zeros(width))
        self.w2 = nn.Parameter(torch.empty(width, width))
        self.b2 = nn.Parameter(torch.zeros(width))
        self.node_mlp = nn.Sequential(nn.Linear(2 * width, width), nn.SiLU(), nn.Linear(width, width))
        nn.init.normal_(self.w_rbf, std=n_rbf**-0.5)
        nn.init.normal_(self.w2, std=width**-0.5)

    def forward(self, h: Tensor, graph: Graph, cutoff: float, inv_avg: float) -> Tensor:
        a = self.w_src(h)
        b = self.w_dst(h)
        agg = edge_message_aggregate(
            a, b, graph.edge_vectors, graph.senders, graph.receivers,
            self.w_rbf, self.b1, self.w2, self.b2, cutoff, graph.row_ptr,
        ) * inv_avg
        return node_update(h, agg, self.node_mlp)  # h + node_mlp([h, agg]), activations recomputed in backward


# model -> (weak reference to the last numbers tensor it validated, that tensor's version); outside the
# model so that pickling / deep-copying a model never meets a weak reference
_SPECIES_CHECKED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class EGNNPotential(Potential):
    """EGNN energy model; ``EGNNPotential(EGNNConfig(...))`` or ``EGNNPotential(width=..., ...)``."""

    def __init__(self, config: EGNNConfig | None = None, **kwargs):
        super().__init__()
        if config is None:
            config = EGNNConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either an EGNNConfig or keyword arguments, not both")
        self.config = config
        self.cutoff = float(config.cutoff)
        self.receptive_field = int(config.depth)
        self.species = tuple(config.species)
        self._inv_avg = 1.0 / float(config.avg_num_neighbors)
        n_s, width = len(config.species), config.width

        z_to_index = torch.full((MAX_Z,), -1, dtype=torch.int64)
        z_to_index[torch.tensor(config.species)] = torch.arange(n_s)
        self.register_buffer("z_to_index", z_to_index, persistent=False)
        self.embedding = nn.Embedding(n_s, width)
        nn.init.normal_(self.embedding.weight, std=1.0)
        if config.equivariant:
            from .egnn_equivariant import build_layers

            self.layers = build_layers(width, config.n_rbf, config.depth, config.coord_hidden)
        else:
            self.layers = nn.ModuleList(EGNNLayer(width, config.n_rbf) for _ in range(config.depth))
        self.readout = nn.Sequential(
            nn.Linear(width, config.readout_hidden), nn.SiLU(), nn.Linear(config.readout_hidden, 1)
        )
        # Fitted before training (per-species least squares, force-RMS scale) and kept in
        # float64 whatever the model dtype, so bf16 models do not round ~eV reference energies.
        self.register_buffer("energy_scale", torch.ones((), dtype=torch.float64))
        self.register_buffer("species_energy", torch.zeros(n_s, dtype=torch.float64))

    # keep the two energy buffers in float64 through .to(dtype) / .half() / .bfloat16()
    def _apply(self, fn, recurse=True):
        keep = {k: self._buffers[k] for k in ("energy_scale", "species_energy")}
        super()._apply(fn, recurse)
        for k, v in keep.items():
            self._buffers[k] = v.to(device=fn(v).device, dtype=torch.float64)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.weight.dtype

    def species_index(self, numbers: Tensor) -> Tensor:
        """Row of each atom in the species table; rejects unknown elements by name.

        The check reads the device once per ``numbers`` tensor (an MD run passes the same one
        every step): a per-step host read would stall a GPU step.
        """
        numbers = numbers.to(self.z_to_index.device)
        seen = _SPECIES_CHECKED.get(self)
        if seen is None or seen[0]() is not numbers or seen[1] != numbers._version:
            if numbers.numel() and (numbers.min() < 0 or numbers.max() >= MAX_Z
                                    or bool((self.z_to_index[numbers.clamp(0, MAX_Z - 1)] < 0).any())):
                self.check_species(numbers.cpu().numpy())
            _SPECIES_CHECKED[self] = (weakref.ref(numbers), numbers._version)
        return self.z_to_index[numbers]

    def within_cutoff(self, graph: Graph) -> Graph:
        """Drop edges at or beyond the cutoff (an MD list carries a skin: ~40% of its edges).

        Their messages are exactly zero (the envelope vanishes there), so results are
        unchanged while edge work and autograd memory shrink. Receivers stay sorted.
        The fused CPU kernel skips them itself: the graph is returned as is (no copies).
        """
        if skips_far_edges(graph.edge_vectors):
            return graph
        if graph.edge_vectors.is_cuda and torch.cuda.is_current_stream_capturing():
            return graph  # a CUDA graph needs fixed shapes and no host read; far edges add exact zeros
        d2 = (graph.edge_vectors.detach() ** 2).sum(-1)
        keep = d2 < self.cutoff**2
        if bool(keep.all()):
            return graph
        idx = keep.nonzero().squeeze(-1)
        recv = graph.receivers.index_select(0, idx)
        return dataclasses.replace(  # keeps n_nodes, n_local, the halo hook and any future fields
            graph, receivers=recv, senders=graph.senders.index_select(0, idx),
            edge_vectors=graph.edge_vectors.index_select(0, idx), row_ptr=csr_row_ptr(recv, graph.n_nodes))

    def node_features(self, numbers: Tensor, graph: Graph) -> Tensor:
        """Final node states (n_nodes, F) after all layers (ghost rows refreshed per layer)."""
        graph = self.within_cutoff(graph)
        h = self.embedding(self.species_index(numbers))
        if self.config.equivariant:
            from .egnn_equivariant import equivariant_node_features

            return equivariant_node_features(self.layers, h, graph, self.cutoff, self._inv_avg)
        for layer in self.layers:
            h = layer(h, graph, self.cutoff, self._inv_avg)
            h = graph.refresh_ghosts(h)
        return h

    def per_atom_energy(self, numbers: Tensor, graph: Graph) -> Tensor:
        idx = self.species_index(numbers)
        h = self.node_features(numbers, graph)
        e = self.readout(h).squeeze(-1).to(torch.float64)
        return e * self.energy_scale + self.species_energy[idx]

    def extra_repr(self) -> str:
        c = self.config
        return (f"width={c.width}, depth={c.depth}, n_rbf={c.n_rbf}, cutoff={c.cutoff}, "
                f"species={list(c.species)}, equivariant={c.equivariant}, params={count_parameters(self):,}")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars (works on the meta device: no memory is allocated)."""
    return sum(p.numel() for p in model.parameters())


def build_egnn(species: Sequence[int], **kwargs) -> EGNNPotential:
    """Convenience constructor used by training and tests."""
    return EGNNPotential(EGNNConfig(species=list(species), **kwargs))
