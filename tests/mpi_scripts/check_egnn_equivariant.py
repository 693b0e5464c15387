"""The equivariant EGNN (coordinate updates) on N ranks vs 1 rank, both halo schemes, multi-element cells.

Usage: python check_egnn_equivariant.py --reference REF.pkl
       mpiexec -n N python check_egnn_equivariant.py REF.pkl OUT.json
The per-layer halo must carry each node's displacement with its features; the full halo must
reach depth x cutoff with no extra ghosts. Each case is evaluated at the start and after a small
move (< skin/2: ghost positions refreshed, same lists).
"""
import pickle
import sys

import numpy as np
import torch
from ase import Atoms

from atomsim.engine.parallel_forces import ParallelForces

from mpi_common import compare, dump, mpi, parallel_result, serial_result, state_of

SPECIES = [1, 3, 6, 7, 8, 14, 15, 26]  # H Li C N O Si P Fe


def rocksalt_cell(cations, anions, a=4.2):
    """8-site rock-salt cell with the given species on its two sublattices."""
    frac = np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0],
                     [.5, 0, 0], [0, .5, 0], [0, 0, .5], [.5, .5, .5]])
    return Atoms(cations + anions, scaled_positions=frac, cell=np.eye(3) * a, pbc=True)


def systems():
    rng = np.random.default_rng(11)
    lfpo = rocksalt_cell("LiFePLi", "OOOO").repeat((3, 3, 3))  # 216 atoms, 12.6 Å box
    lfpo.positions += rng.normal(0, 0.12, lfpo.positions.shape)
    sicnh = rocksalt_cell("SiSiCSi", "CNHC").repeat((2, 2, 2))  # 64 atoms: the halo spans sub-boxes
    sicnh.set_cell(sicnh.cell.array @ np.array([[1.0, 0.08, 0.0], [0.0, 1.0, -0.05], [0.0, 0.0, 1.02]]),
                   scale_atoms=True)
    sicnh.positions += rng.normal(0, 0.12, sicnh.positions.shape)
    return {"LiFePO": lfpo, "SiCNH": sicnh}


def model():
    from atomsim.potentials.egnn import build_egnn

    torch.manual_seed(0)
    m = build_egnn(SPECIES, width=8, depth=3, n_rbf=4, cutoff=3.0, avg_num_neighbors=12.0, readout_hidden=8,
                   equivariant=True, coord_hidden=6)
    with torch.no_grad():  # non-trivial biases and coordinate weights so every path carries gradient
        for p in m.parameters():
            if p.dim() == 1:
                p.normal_(0, 0.3)
        for layer in m.layers:
            if layer.coord is not None:
                layer.coord.w_out.normal_(0, 0.5)
    return m.double()


def cases():
    rng = np.random.default_rng(3)
    pot = model()
    for sname, atoms in systems().items():
        move = rng.normal(0, 0.1, atoms.positions.shape)
        moved = atoms.copy()
        moved.positions += move
        for halo in ("full", "per-layer"):
            yield f"{sname}/{halo}", atoms, moved, move, pot, halo


def main(ref_path, out_path):
    comm = mpi()
    with open(ref_path, "rb") as fh:
        refs = pickle.load(fh)
    results = {}
    for key, atoms, _, move, pot, halo in cases():
        st = state_of(atoms)
        prov = ParallelForces(pot, comm, skin=1.0, halo=halo)
        prov.prepare(st)
        par0 = parallel_result(comm, prov, st)
        st.positions += torch.from_numpy(move[st.ids.numpy()])
        par1 = parallel_result(comm, prov, st)
        n_owned = comm.gather(st.n_local, root=0)
        if comm.rank == 0:
            results[key] = {"start": compare(par0, refs[key][0]), "moved": compare(par1, refs[key][1]),
                            "n_owned": n_owned, "n_builds": prov.n_builds}
            print(key, results[key], flush=True)
    if comm.rank == 0:
        dump(out_path, {"size": comm.size, "results": results})


if __name__ == "__main__":
    if sys.argv[1] == "--reference":
        with open(sys.argv[2], "wb") as fh:
            pickle.dump({key: [serial_result(pot, a) for a in (atoms, moved)]
                         for key, atoms, moved, _, pot, _ in cases()}, fh)
    else:
        main(sys.argv[1], sys.argv[2])
