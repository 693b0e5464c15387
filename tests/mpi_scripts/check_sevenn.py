"""SevenNet-0 (a third-party 5-layer GNN) through the per-layer halo on N ranks vs one rank.

Usage: mpiexec -n N python check_sevenn.py OUT.json   (rank 0 also computes the 1-rank reference)
"""
import sys

from atomsim.engine.parallel_forces import ParallelForces
from atomsim.potentials.registry import load_potential

from mpi_common import compare, dump, mpi, parallel_result, serial_result, state_of, systems

comm = mpi()
atoms, _ = systems()["small"]
pot = load_potential("sevennet-0")
ref = serial_result(pot, atoms) if comm.rank == 0 else None
st = state_of(atoms)
prov = ParallelForces(pot, comm, skin=1.0, halo="per-layer")
prov.prepare(st)
par = parallel_result(comm, prov, st)
if comm.rank == 0:
    dump(sys.argv[1], {"size": comm.size, "layers": pot.receptive_field, **compare(par, ref)})
