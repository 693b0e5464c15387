"""200-step NVE of a hot LJ crystal on N ranks vs the same run on one rank (positions by id).

Usage: python nve_track.py --reference REF.npz            (serial run, once)
       mpiexec -n N python nve_track.py REF.npz OUT.json
The system is small and hot so atoms cross sub-box faces: several neighbor
rebuilds and migrations happen, and the test checks that they did.
"""
import sys

import numpy as np
from ase.build import bulk
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

from atomsim.engine.forces import SerialForces
from atomsim.engine.parallel_forces import ParallelForces
from atomsim.integrators.verlet import VelocityVerlet

from mpi_common import dump, lj, mpi, state_of

STEPS, SKIN, DT_FS = 200, 0.6, 2.0


def system():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3))
    MaxwellBoltzmannDistribution(atoms, temperature_K=2500, rng=np.random.default_rng(11))
    Stationary(atoms)
    return atoms


def run(state, provider, record=lambda s, step: None):
    integ = VelocityVerlet(DT_FS)
    state.apply_forces(provider.compute(state))
    for step in range(1, STEPS + 1):
        integ.initial_integrate(state)
        state.apply_forces(provider.compute(state))
        integ.final_integrate(state)
        record(state, step)


def reference(path):
    st = state_of(system())
    prov = SerialForces(lj(), skin=SKIN)
    energies = []
    run(st, prov, lambda s, step: energies.append(s.energy))
    np.savez(path, ids=st.ids.numpy(), positions=st.positions.numpy(), velocities=st.velocities.numpy(),
             energy=np.array(energies))


def main(ref_path, out_path):
    comm = mpi()
    ref = np.load(ref_path)
    st = state_of(system())
    prov = ParallelForces(lj(), comm, skin=SKIN, halo="full")
    prov.prepare(st)
    energies = []
    run(st, prov, lambda s, step: energies.append(s.energy))
    g = comm.gather_by_id(st.ids.numpy(), positions=st.positions.numpy(), velocities=st.velocities.numpy())
    migrated = comm.allreduce_sum(prov.n_migrated)
    if comm.rank == 0:
        assert np.array_equal(g["ids"], ref["ids"])
        dump(out_path, {
            "size": comm.size, "grid": list(prov.decomp.dims),
            "max_dpos_A": float(np.abs(g["positions"] - ref["positions"]).max()),
            "max_dvel": float(np.abs(g["velocities"] - ref["velocities"]).max()),
            "max_denergy_eV": float(np.abs(np.array(energies) - ref["energy"]).max()),
            "n_builds": prov.n_builds, "n_migrated": int(migrated),
            "max_displacement_A": float(np.abs(g["positions"] - system().positions).max()),
        })


if __name__ == "__main__":
    if sys.argv[1] == "--reference":
        reference(sys.argv[2])
    else:
        main(sys.argv[1], sys.argv[2])
