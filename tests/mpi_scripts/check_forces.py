"""Energy, per-atom forces (by id) and virial on N ranks vs 1 rank, for every system/potential/scheme.

Usage: python check_forces.py --reference REF.pkl         (serial reference, once)
       mpiexec -n N python check_forces.py REF.pkl OUT.json [--float64-only]
Each case is evaluated twice: at the start (migrate + ghosts + list) and after
a small move (< skin/2: ghost positions refreshed, same lists).
"""
import pickle
import sys

import numpy as np
import torch

from atomsim.engine.parallel_forces import ParallelForces

from mpi_common import compare, dump, gnn, grid_for, lj, mpi, parallel_result, serial_result, state_of, systems

CASES = [("lj", "full", torch.float64), ("gnn", "full", torch.float64), ("gnn", "per-layer", torch.float64),
             ("gnn", "per-layer", torch.float32), ("lj", "per-layer", torch.float32)]


def cases(only64=False):
    rng = np.random.default_rng(3)
    for sname, (atoms, gkind) in systems().items():
        move = rng.normal(0, 0.1, atoms.positions.shape)  # < skin/2 = 0.5 Å
        moved = atoms.copy()
        moved.positions += move
        for pname, halo, dtype in CASES:
            if only64 and dtype != torch.float64:
                continue
            pot = lj(dtype) if pname == "lj" else gnn(dtype)
            key = f"{sname}/{pname}/{halo}/{str(dtype).split('.')[-1]}"
            yield key, sname, atoms, moved, move, gkind, pot, halo


def write_reference(path):
    refs = {key: [serial_result(pot, a) for a in (atoms, moved)]
            for key, _, atoms, moved, _, _, pot, _ in cases()}
    with open(path, "wb") as fh:
        pickle.dump(refs, fh)


def main(ref_path, out_path, only64=False):
    comm = mpi()
    size, rank = comm.size, comm.rank
    with open(ref_path, "rb") as fh:
        all_refs = pickle.load(fh)
    results = {}
    for key, _, atoms, _, move, gkind, pot, halo in cases(only64):
        refs = all_refs[key]
        st = state_of(atoms)
        prov = ParallelForces(pot, comm, skin=1.0, halo=halo, grid=grid_for(gkind, size))
        prov.prepare(st)
        par0 = parallel_result(comm, prov, st)
        n_ghost = comm.gather(prov.ghosts.n, root=0)
        n_owned = comm.gather(st.n_local, root=0)
        # small move by id: no rebuild, ghost positions refreshed
        st.positions += torch.from_numpy(move[st.ids.numpy()])
        par1 = parallel_result(comm, prov, st)
        builds = prov.n_builds
        if rank == 0:
            results[key] = {"start": compare(par0, refs[0]), "moved": compare(par1, refs[1]),
                            "n_builds": builds, "n_owned": n_owned, "n_ghost": n_ghost,
                            "grid": list(prov.decomp.dims)}
            print(key, results[key]["start"]["forces"], results[key]["moved"]["forces"], n_owned, flush=True)
    if rank == 0:
        dump(out_path, {"size": size, "results": results})


if __name__ == "__main__":
    if sys.argv[1] == "--reference":
        write_reference(sys.argv[2])
    else:
        main(sys.argv[1], sys.argv[2], only64="--float64-only" in sys.argv[3:])
