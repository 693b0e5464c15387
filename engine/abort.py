"""Abort the whole MPI job when any rank raises: no rank may hang waiting for a dead peer.

``install_abort_handler(comm)`` replaces ``sys.excepthook``: an uncaught
exception on any rank prints ``[rank r/N] <traceback>`` to stderr and calls
``MPI.COMM_WORLD.Abort(1)``, which ends every rank with a non-zero status.
"""
from __future__ import annotations

import sys
import traceback


def install_abort_handler(comm=None) -> None:
    """Make an uncaught exception on this rank abort every rank (no-op on one rank)."""
    from mpi4py import MPI

    world = comm if comm is not None else MPI.COMM_WORLD
    world = getattr(world, "comm", world)  # engine.comm.MPIComm or mpi4py
    if world.Get_size() == 1:
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, KeyboardInterrupt):
            previous(exc_type, exc, tb)
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        prefix = f"[rank {world.Get_rank()}/{world.Get_size()}] "
        try:
            sys.stderr.write("".join(prefix + line + "\n" for line in text.rstrip().splitlines()))
            sys.stderr.write(f"{prefix}aborting all ranks: {exc_type.__name__}: {exc}\n")
            sys.stderr.flush()
            sys.stdout.flush()
        finally:
            MPI.COMM_WORLD.Abort(1)

    sys.excepthook = hook
