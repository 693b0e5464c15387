"""Global reductions the integrators and thermo need, serial or over MPI.

Everything that sums over atoms goes through a Communicator so the same code is
correct on one rank and on many.
"""
from __future__ import annotations

import numpy as np


class SerialComm:
    rank = 0
    size = 1

    def allreduce_sum(self, x):
        return x

    def allreduce_max(self, x):
        return x

    def allreduce_min(self, x):
        return x

    def bcast(self, obj, root: int = 0):
        return obj

    def barrier(self) -> None:
        pass


class MPIComm:
    """Wraps an mpi4py communicator; floats, numpy arrays and torch tensors reduce alike."""

    def __init__(self, comm=None):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()

    def _reduce(self, x, op):
        import torch

        if isinstance(x, torch.Tensor):
            arr = x.detach().cpu().numpy().copy()
            out = np.empty_like(arr)
            self.comm.Allreduce(arr, out, op=op)
            return torch.from_numpy(out).to(x.device)
        if isinstance(x, np.ndarray):
            out = np.empty_like(x)
            self.comm.Allreduce(np.ascontiguousarray(x), out, op=op)
            return out
        return self.comm.allreduce(x, op=op)

    def allreduce_sum(self, x):
        return self._reduce(x, self.MPI.SUM)

    def allreduce_max(self, x):
        return self._reduce(x, self.MPI.MAX)

    def allreduce_min(self, x):
        return self._reduce(x, self.MPI.MIN)

    def bcast(self, obj, root: int = 0):
        return self.comm.bcast(obj, root=root)

    def barrier(self) -> None:
        self.comm.Barrier()


def launched_under_mpi() -> bool:
    """True when an MPI launcher started this process with more than one rank (no MPI init)."""
    import os

    for key in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_SIZE", "SLURM_NTASKS"):
        try:
            if int(os.environ.get(key, "1")) > 1:
                return True
        except ValueError:
            pass
    return False


def world_comm():
    """MPIComm over COMM_WORLD when launched on several ranks, else SerialComm."""
    if launched_under_mpi():
        comm = MPIComm()
        if comm.size > 1:
            return comm
    return SerialComm()
