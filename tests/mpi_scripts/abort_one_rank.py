"""Rank 1 raises while the others wait in a collective: the job must end, non-zero, with its message."""
import time

from mpi_common import mpi

comm = mpi()
if comm.Get_rank() == 1:
    time.sleep(0.5)
    raise RuntimeError("forced failure on purpose")
comm.Barrier()  # never completes: rank 1 is gone
time.sleep(60)
