"""Every ensemble on 4 MPI ranks (domain decomposition, migration, ghosts) equals the 1-rank run.

The pytest side runs the serial reference in-process and launches this same file
under the venv's mpiexec (``python test_integrators_mpi.py OUT.npz``), which runs
each case with ParallelForces and gathers positions/velocities by atom id. The
integrators touch global quantities only through ``state.comm`` reductions and
rank-independent noise, so the runs agree to round-off.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ase.build import bulk

from atomsim.engine.state import MDState
from atomsim.integrators import make_integrator
from atomsim.integrators.constraints import fixed_from_config

MPIEXEC = Path(sys.executable).parent / "mpiexec"
STEPS, DT_FS, SKIN = 30, 2.0, 0.6
COMMON = dict(temperature_K=1500.0, tdamp_fs=50.0)
CASES = {
    "langevin": ("langevin", dict(COMMON, seed=3), None),
    "nose-hoover-fixed": ("nose-hoover", dict(COMMON), SimpleNamespace(indices=[5], z_range_A=[-0.5, 0.6])),
    "npt-isotropic": ("npt", dict(COMMON, pressure_GPa=2.0, pdamp_fs=100.0), None),
    "npt-triclinic": ("npt", dict(COMMON, pressure_GPa=2.0, pdamp_fs=100.0, barostat="triclinic"), None),
    "berendsen-npt": ("berendsen", dict(COMMON, pressure_GPa=2.0, pdamp_fs=100.0, compressibility_per_GPa=0.01),
                      None),
    "fire-cell": ("fire", dict(fmax_eV_per_A=1e-9, relax_cell=True, pressure_GPa=1.0), None),
}


def system():
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((3, 3, 3))  # 108 atoms, 11.1 Å box
    rng = np.random.default_rng(5)
    atoms.positions += rng.normal(0, 0.1, atoms.positions.shape)
    m = atoms.get_masses()[:, None]
    v = rng.normal(size=(len(atoms), 3)) * np.sqrt(8.617e-5 * 1500.0 / m)
    atoms.set_velocities(v - (m * v).sum(0) / m.sum())
    return atoms


def potential():
    from atomsim.potentials.lj import LennardJones

    return LennardJones(epsilon=0.4, sigma=2.3, cutoff=5.0, dtype="float64")


def simulate(case: str, comm=None) -> dict:
    name, params, fix = CASES[case]
    atoms = system()
    if comm is None:
        from atomsim.engine.forces import SerialForces

        st = MDState.from_atoms(atoms)
        prov = SerialForces(potential(), skin=SKIN)
    else:
        from atomsim.engine.parallel_forces import ParallelForces

        st = MDState.from_atoms(atoms, comm=comm)
        prov = ParallelForces(potential(), comm, skin=SKIN, halo="full")
    fixed_from_config(st, fix)
    if comm is not None:
        prov.prepare(st)
    integ = make_integrator(name, DT_FS, **params)
    st.apply_forces(prov.compute(st))
    integ.setup(st)
    energies = []
    for _ in range(STEPS):
        integ.initial_integrate(st)
        st.apply_forces(prov.compute(st))
        integ.final_integrate(st)
        st.step += 1
        energies.append(st.energy + st.kinetic_energy() + integ.conserved_energy_extra(st))
    n_fixed = 0 if st.fixed is None else int(st.comm.allreduce_sum(int(st.fixed.sum())))  # collective
    arrays = dict(positions=st.positions.numpy(), velocities=st.velocities.numpy())
    if comm is not None:
        arrays = comm.gather_by_id(st.ids.numpy(), **arrays)
        if arrays is None:
            return {}
    else:
        order = np.argsort(st.ids.numpy())
        arrays = {k: v[order] for k, v in arrays.items()}
    return {**arrays, "cell": st.cell.numpy().copy(), "energies": np.array(energies),
            "n_fixed": n_fixed}


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_integrators_on_4_ranks_equal_1_rank(tmp_path):
    if not MPIEXEC.exists():
        pytest.skip(f"no mpiexec next to {sys.executable} (install atomsim[mpi])")
    out = tmp_path / "mpi.npz"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([str(MPIEXEC), "-n", "4", sys.executable, __file__, str(out)], env=env,
                          capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-3000:]
    par = np.load(out)
    for case in CASES:
        ref = simulate(case)
        for key in ("positions", "velocities", "cell", "energies"):
            np.testing.assert_allclose(par[f"{case}/{key}"], ref[key], rtol=0, atol=1e-9,
                                       err_msg=f"{case}: {key}")
        assert int(par[f"{case}/n_fixed"]) == ref["n_fixed"]
        if case.startswith(("npt", "berendsen", "fire")):
            assert np.abs(ref["cell"] - system().cell.array).max() > 1e-3, case  # the cell did move
        if case.endswith("fixed"):
            assert ref["n_fixed"] > 5, ref["n_fixed"]


def main(path: str) -> None:
    from atomsim.engine.comm import world_comm

    comm = world_comm()
    out = {}
    for case in CASES:
        res = simulate(case, comm)
        for k, v in res.items():
            out[f"{case}/{k}"] = v
    if comm.rank == 0:
        np.savez(path, **out)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1])
