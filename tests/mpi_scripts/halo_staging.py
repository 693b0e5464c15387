"""One rank per GPU, exercised on CPU ranks: node-local rank, device binding, staged halo exchanges.

Usage: mpiexec -n N python halo_staging.py OUT.json
Every rank: its local rank from the launcher's variable and from an MPI_COMM_TYPE_SHARED split
(one node: both equal the world rank); the GNN (per-layer and full halo, float64) and LJ forces
with the halo staged through reused host buffers (``pinned`` mode, pinning a no-op on CPU) and
through zero-copy host views (``host``), each against the 1-rank result, twice per case (the
second after a small move: ghost positions refreshed through the same buffers).
"""
import os
import sys

import numpy as np
import torch

from atomsim.engine.comm import Comm, bind_device, local_rank_from_env
from atomsim.engine.parallel_forces import ParallelForces

from mpi_common import compare, dump, gnn, grid_for, lj, mpi, parallel_result, serial_result, state_of, systems


def main(out_path):
    comm = mpi()
    env_rank = local_rank_from_env()
    split = Comm(comm._comm.Split_type(comm._MPI.COMM_TYPE_SHARED, key=comm.rank)).rank
    res = {"local_rank": comm.local_rank(), "env_local_rank": env_rank, "split_local_rank": split,
           "bound": bind_device("cuda", comm.local_rank(), 2), "cases": {}, "reused": True}
    rng = np.random.default_rng(5)
    for sname in ("ortho", "small", "slab"):
        atoms, gkind = systems()[sname]
        move = rng.normal(0, 0.1, atoms.positions.shape)
        moved = atoms.copy()
        moved.positions += move
        for pname, halo in (("gnn", "per-layer"), ("gnn", "full"), ("lj", "full")):
            pot = gnn(torch.float64) if pname == "gnn" else lj(torch.float64)
            refs = [serial_result(pot, a) for a in (atoms, moved)]
            for mode in ("pinned", "host"):
                os.environ["ATOMSIM_HALO_STAGING"] = mode  # every plan built from here on
                st = state_of(atoms)
                prov = ParallelForces(pot, comm, skin=1.0, halo=halo, grid=grid_for(gkind, comm.size))
                prov.prepare(st)
                par0 = parallel_result(comm, prov, st)
                st.positions += torch.from_numpy(move[st.ids.numpy()])
                par1 = parallel_result(comm, prov, st)
                buffers = {k: b.data_ptr() for k, b in prov.ghosts.plan.staging._host.items()}
                par2 = parallel_result(comm, prov, st)  # the same positions again, through reused buffers
                used = prov.ghosts.plan.staging.modes_used
                again = {k: b.data_ptr() for k, b in prov.ghosts.plan.staging._host.items()}
                if mode == "pinned" and buffers and any(again.get(k) != v for k, v in buffers.items()):
                    res["reused"] = False
                if comm.rank == 0:
                    res["cases"][f"{sname}/{pname}/{halo}/{mode}"] = {
                        "start": compare(par0, refs[0]), "moved": compare(par1, refs[1]),
                        "repeat_equal": bool(np.array_equal(par1["forces"], par2["forces"])),
                        "modes": sorted(used), "rebuilt": prov.n_builds}
    got = comm.gather(res)
    if comm.rank == 0:
        dump(out_path, got)


if __name__ == "__main__":
    main(sys.argv[1])
