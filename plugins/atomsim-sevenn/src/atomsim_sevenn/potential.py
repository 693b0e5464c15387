"""SevenNet (sevenn) model behind atomsim's ``Potential`` contract.

What the adapter does, and why:

- atomsim builds the neighbor list (at cutoff + skin, reused across steps)
  and the edge vectors; sevenn's model already consumes edge vectors
  (``edge_vec``, ``edge_index``), so its own graph building and its
  pos -> edge_vec preprocessing are simply not called. Gradients therefore
  flow to atomsim's ``graph.edge_vectors`` and ``evaluate_potential`` gives
  forces and virial as for any atomsim model.
- sevenn's convention matches atomsim's: ``edge_index = [i, j]`` with
  ``edge_vec = x_j - x_i``; messages go from j (index row 1) to i (row 0).
- atomsim's list holds pairs up to cutoff + skin, but SevenNet's XPLOR
  cutoff function is not zero beyond 5 Å, so edges are trimmed to
  ``|r| < cutoff`` each call (sevenn's own list uses the same rule).
- per-atom energies: sevenn's ``atomic_energy`` (after its species-wise
  scale and shift); the total-energy reduction and sevenn's force/stress
  module are skipped (forces come from atomsim's autograd).
- per-layer halo: the model's named modules are grouped per interaction
  block (``"{k}_..."``) and ``graph.refresh_ghosts`` runs on the node
  features between blocks; sevenn code is called, never copied.
"""
from __future__ import annotations

import re
from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn

from atomsim.kernels.graph import Graph
from atomsim.potentials.base import Potential

# sevenn data keys (sevenn._keys), spelled out so this module imports without sevenn
_X = "x"  # node features; on input: the one-hot index of each atom's species
_NODE_ATTR = "node_attr"
_EDGE_IDX = "edge_index"
_EDGE_VEC = "edge_vec"
_NUM_ATOMS = "num_atoms"
_ATOMIC_ENERGY = "atomic_energy"

_LAYER = re.compile(r"^(\d+)_")
# modules that reduce to a total or compute forces/stress: atomsim does those itself
_SKIPPED = {"AtomReduce", "ForceOutput", "ForceStressOutput", "ForceStressOutputFromEdge", "EdgePreprocess"}


def _split_modules(model: nn.Module) -> Tuple[List[Tuple[str, nn.Module]], List[List[nn.Module]], List[nn.Module]]:
    """sevenn's module sequence as (embedding stage, interaction blocks, readout)."""
    head: List[Tuple[str, nn.Module]] = []
    blocks: Dict[int, List[nn.Module]] = {}
    tail: List[nn.Module] = []
    for name, module in model._modules.items():
        if type(module).__name__ in _SKIPPED:
            continue
        m = _LAYER.match(name)
        if m:
            if tail:
                raise ValueError(f"sevenn module {name!r} comes after the readout; unexpected model layout")
            blocks.setdefault(int(m.group(1)), []).append(module)
        elif blocks:
            tail.append(module)
        else:
            head.append((name, module))
    order = sorted(blocks)
    if order != list(range(len(order))) or not order:
        raise ValueError(f"sevenn interaction blocks are not numbered 0..n-1: {order}")
    return head, [blocks[k] for k in order], tail


class SevenNetPotential(Potential):
    """A sevenn ``AtomGraphSequential`` (e.g. SevenNet-0) as an atomsim potential.

    ``model`` must come from ``SevenNetCheckpoint.build_model()`` (e3nn backend,
    single-modal); ``type_map`` maps atomic number -> sevenn species index.
    """

    def __init__(self, model: nn.Module, type_map: Dict[int, int], cutoff: float):
        super().__init__()
        if getattr(model, "modal_map", None):
            raise ValueError("multi-fidelity SevenNet models (modal_map) are not supported by atomsim-sevenn; "
                             "use a single-modal checkpoint such as 7net-0")
        model.eval()
        if hasattr(model, "set_is_batch_data"):
            model.set_is_batch_data(False)
        self.model = model
        self.cutoff = float(cutoff)
        self.species = sorted(int(z) for z in type_map)
        z_to_type = torch.full((120,), -1, dtype=torch.int64)
        for z, t in type_map.items():
            z_to_type[int(z)] = int(t)
        self.register_buffer("z_to_type", z_to_type, persistent=False)
        self._head, self._blocks, self._tail = _split_modules(model)
        self.receptive_field = len(self._blocks)
        for p in self.parameters():  # inference only: no parameter gradients (faster backward)
            p.requires_grad_(False)

    def species_index(self, numbers: Tensor) -> Tensor:
        """sevenn species index of each atom; unknown elements raise ValueError naming them."""
        numbers = numbers.to(self.z_to_type.device)
        bad = (numbers < 0) | (numbers >= self.z_to_type.numel())
        if bool(bad.any()) or bool((self.z_to_type[numbers.clamp(0, 119)] < 0).any()):
            self.check_species(numbers.cpu().numpy())
        return self.z_to_type[numbers]

    def _trim(self, graph: Graph) -> Tuple[Tensor, Tensor]:
        """Edge index (2, E') and vectors of the edges inside the model cutoff."""
        vec = graph.edge_vectors
        keep = ((vec * vec).sum(-1) < self.cutoff * self.cutoff).nonzero().squeeze(-1)
        edge_index = torch.stack([graph.receivers.index_select(0, keep), graph.senders.index_select(0, keep)])
        # sevenn scatters with int64 indices; the engine's compact list holds int32 ones
        return edge_index.to(torch.int64), vec.index_select(0, keep)

    def per_atom_energy(self, numbers: Tensor, graph: Graph) -> Tensor:
        edge_index, vec = self._trim(graph)
        data: Dict[str, Tensor] = {
            _X: self.species_index(numbers),
            _EDGE_IDX: edge_index,
            _EDGE_VEC: vec,
            _NUM_ATOMS: torch.tensor(graph.n_nodes, device=vec.device),
        }
        dtype = self.dtype
        for _, module in self._head:
            data = module(data)
            if dtype != torch.float32:  # sevenn's one-hot embedding always emits float32
                for key in (_X, _NODE_ATTR):
                    if key in data and data[key].is_floating_point():
                        data[key] = data[key].to(dtype)
        for k, block in enumerate(self._blocks):
            if k:  # ghosts' features come from their owners (identity on one rank / full halo)
                data[_X] = graph.refresh_ghosts(data[_X])
            for module in block:
                data = module(data)
        for module in self._tail:
            data = module(data)
        return data[_ATOMIC_ENERGY].reshape(-1)

    @property
    def dtype(self) -> torch.dtype:
        for b in self.model.parameters():
            return b.dtype
        return torch.float32
