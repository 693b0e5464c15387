"""Rank 1 raises while the others wait in a collective: the job must end, non-zero, with its message.

Usage: mpiexec -n N python abort_one_rank.py [input | simulation]  (the exception type; default RuntimeError)
"""
import sys
import time

from atomsim.engine.errors import InputError
from atomsim.engine.safety import SimulationError

from mpi_common import mpi

KINDS = {"runtime": RuntimeError, "input": InputError, "simulation": SimulationError}

comm = mpi()
if comm.rank == 1:
    time.sleep(0.5)
    raise KINDS[sys.argv[1] if len(sys.argv) > 1 else "runtime"]("forced failure on purpose")
comm.barrier()  # never completes: rank 1 is gone
time.sleep(60)
