"""The message-passing path's neighbor list on one MPI rank: compact, and only the rows it needs.

Why: ghosts carry the periodic images, so the local frame is open and has no cell shifts, and a
model reads only the rows of some receivers (owned atoms; a full halo also the inner ghosts).
Listing those rows alone, into int32 senders (``kernels/neighbors_local.py``), keeps a rank at
4 B per edge for the list instead of 40 B for int64 receivers, senders and (E, 3) shifts plus
masked copies at a rebuild (each step the model gets the edges within its cutoff:
``kernels/neighbors_local.py`` ``edges_within``).
The skin check and the reference positions are :class:`NeighborList`'s own.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from atomsim.kernels.neighbor_list import NeighborList
from atomsim.kernels.neighbors_local import local_csr


class LocalNeighborList(NeighborList):
    """Full, compact list over owned + ghost positions with rows only where ``want`` is True.

    Set ``want`` (bool per local atom, or an int n: the first n rows) before :meth:`build`.
    ``cell_shifts`` is one zero int8 row seen E times (the frame is open).
    """

    def __init__(self, cutoff: float, skin: float = 0.0):
        super().__init__(cutoff, skin, half=False, compact=True)
        self.want: object = None

    def _pairs(self, pos: Tensor, cell: Tensor, pbc: tuple):
        n = int(pos.shape[0])
        want = self.want
        if want is None:
            mask = np.ones(n, dtype=bool)
        elif isinstance(want, (int, np.integer)):
            mask = np.zeros(n, dtype=bool)
            mask[: int(want)] = True
        else:
            mask = np.asarray(want, dtype=bool)
        row_ptr, senders = local_csr(pos.detach().cpu().numpy(), mask, self.list_cutoff)
        device = pos.device
        zero = torch.zeros((1, 3), dtype=torch.int8, device=device).expand(senders.shape[0], 3)
        return None, torch.from_numpy(senders).to(device), zero, torch.from_numpy(row_ptr).to(device)
