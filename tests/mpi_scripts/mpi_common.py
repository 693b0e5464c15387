"""Shared pieces of the MPI test scripts: tiny systems, potentials, gathering by atom id."""
from __future__ import annotations

import json

import numpy as np
import torch
from ase.build import bulk, fcc100

from atomsim.engine.comm import Comm, world_comm
from atomsim.engine.forces import SerialForces
from atomsim.engine.state import MDState


def systems() -> dict:
    """name -> (atoms, grid or None). Rattled so no force vanishes by symmetry."""
    rng = np.random.default_rng(7)
    out = {}
    a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3))  # orthorhombic, 108 atoms
    a.positions += rng.normal(0, 0.15, a.positions.shape)
    out["ortho"] = (a, None)
    t = bulk("Cu", "fcc", a=3.61).repeat((4, 4, 4))  # primitive fcc: 60 degree angles, 64 atoms
    t.positions += rng.normal(0, 0.15, t.positions.shape)
    out["triclinic"] = (t, None)
    s = fcc100("Cu", size=(3, 3, 4), a=3.61, vacuum=0.0)  # slab in the bottom of a tall box
    s.cell[2, 2] = 22.0
    s.pbc = (True, True, False)
    s.positions[:, 2] -= 0.3  # bottom layer sits below z = 0: owned by the edge rank
    s.positions += rng.normal(0, 0.15, s.positions.shape)
    out["slab"] = (s, "z")  # grid [1, 1, size]: the upper ranks are empty
    m = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))  # 7.2 Å box: halo spans sub-boxes
    m.positions += rng.normal(0, 0.15, m.positions.shape)
    out["small"] = (m, None)
    return out


def lj(dtype=torch.float64):
    from atomsim.potentials.lj import LennardJones

    return LennardJones(epsilon=0.4, sigma=2.3, cutoff=5.0, dtype="float64" if dtype == torch.float64 else "float32")


def gnn(dtype=torch.float64, depth=3):
    from atomsim.potentials.egnn import build_egnn

    torch.manual_seed(0)
    model = build_egnn([29], width=8, depth=depth, n_rbf=4, cutoff=3.0, avg_num_neighbors=12.0,
                       readout_hidden=8)
    with torch.no_grad():  # non-trivial biases so every path carries gradient
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(0, 0.3)
    return model.to(dtype)


def state_of(atoms) -> MDState:
    st = MDState.from_atoms(atoms)
    return st


def grid_for(kind, size):
    return [1, 1, size] if kind == "z" else None


def mpi() -> Comm:
    """The world Comm; an exception on any rank ends every rank."""
    comm = world_comm()
    comm.install_abort_handler()
    return comm


def serial_result(potential, atoms, skin=1.0):
    st = state_of(atoms)
    f = SerialForces(potential, skin=skin)
    st.apply_forces(f.compute(st))
    return {"energy": st.energy, "forces": st.forces.numpy().copy(), "virial": st.virial.numpy().copy(),
            "ids": st.ids.numpy().copy(), "energies": np.asarray(st.energies).copy()}


def parallel_result(comm, provider, st):
    st.apply_forces(provider.compute(st))
    g = comm.gather_by_id(st.ids.numpy(), forces=st.forces.numpy(), energies=np.asarray(st.energies))
    return {"energy": st.energy, "virial": st.virial.numpy().copy(), **(g or {})}


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    scale = max(float(np.abs(b).max()) if b.size else 0.0, 1e-300)
    return float(np.abs(a - b).max() / scale) if a.size else 0.0


def compare(par, ser) -> dict:
    assert np.array_equal(par["ids"], ser["ids"]), "atom ids differ after gather"
    return {"energy": rel(par["energy"], ser["energy"]), "forces": rel(par["forces"], ser["forces"]),
            "virial": rel(par["virial"], ser["virial"]), "energies": rel(par["energies"], ser["energies"])}


def dump(path, obj) -> None:
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=1)
