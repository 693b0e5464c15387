"""SevenNet-0 (atomsim-sevenn plugin) on N ranks vs 1 rank: energy, forces by id, virial, per-atom energies.

Usage: python sevenn_forces.py --reference REF.pkl       (serial reference, once)
       mpiexec -n N python sevenn_forces.py REF.pkl OUT.json
Cases (small: SevenNet-0 costs ~12 ms/atom; its full halo is 5 x 5 Å + skin deep):
- cu/per-layer: 32-atom periodic Cu, ghosts to cutoff + skin, features refreshed between blocks;
- cluster/full and cluster/per-layer: a 19-atom non-periodic Cu-Ni cluster (a full halo of a
  periodic box would replicate thousands of images; a free cluster keeps it tiny).
Each case is evaluated at the start and after a move below skin/2 (lists reused).
"""
import pickle
import sys

import numpy as np
import torch
from ase.build import bulk
from ase.cluster import Octahedron

from atomsim.engine.parallel_forces import ParallelForces
from atomsim.potentials.registry import load_potential

from mpi_common import compare, dump, mpi, parallel_result, serial_result, state_of


def systems():
    rng = np.random.default_rng(21)
    cu = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    cu.positions += rng.normal(0, 0.08, cu.positions.shape)
    cl = Octahedron("Cu", 3, cutoff=0)  # 19 atoms
    cl.numbers[::3] = 28  # Ni
    cl.positions += rng.normal(0, 0.08, cl.positions.shape)
    cl.pbc = False
    cl.center(vacuum=6.0)
    return {"cu": cu, "cluster": cl}


CASES = [("cu", "per-layer"), ("cluster", "full"), ("cluster", "per-layer")]


def cases(potential):
    rng = np.random.default_rng(3)
    sys_ = systems()
    for sname, halo in CASES:
        atoms = sys_[sname]
        move = rng.normal(0, 0.1, atoms.positions.shape)  # < skin/2 = 0.5 Å
        moved = atoms.copy()
        moved.positions += move
        yield f"{sname}/{halo}", atoms, moved, move, halo


def write_reference(path):
    pot = load_potential("sevennet-0")
    refs = {key: [serial_result(pot, a) for a in (atoms, moved)] for key, atoms, moved, _, _ in cases(pot)}
    with open(path, "wb") as fh:
        pickle.dump(refs, fh)


def main(ref_path, out_path):
    comm = mpi()
    size, rank = comm.size, comm.rank
    with open(ref_path, "rb") as fh:
        all_refs = pickle.load(fh)
    pot = load_potential("sevennet-0")
    results = {}
    for key, atoms, _, move, halo in cases(pot):
        refs = all_refs[key]
        st = state_of(atoms)
        prov = ParallelForces(pot, comm, skin=1.0, halo=halo)
        prov.prepare(st)
        par0 = parallel_result(comm, prov, st)
        calls = prov.last_stats.get("halo_calls", 0)
        n_owned = comm.gather(st.n_local, root=0)
        st.positions += torch.from_numpy(move[st.ids.numpy()])
        par1 = parallel_result(comm, prov, st)
        if rank == 0:
            results[key] = {"start": compare(par0, refs[0]), "moved": compare(par1, refs[1]),
                            "n_builds": prov.n_builds, "n_owned": n_owned, "halo_calls": calls}
            print(key, results[key], flush=True)
    if rank == 0:
        dump(out_path, {"size": size, "results": results})


if __name__ == "__main__":
    if sys.argv[1] == "--reference":
        write_reference(sys.argv[2])
    else:
        main(sys.argv[1], sys.argv[2])
