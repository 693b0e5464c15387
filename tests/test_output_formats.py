"""Trajectory formats and per-atom output against independent readers and references.

- ``.traj`` read back with ASE and H5MD read back with plain h5py hold the same frames
  as the extxyz trajectory of the same (deterministic) run;
- per-atom stresses and energies of an LJ run equal ASE's own ``LennardJones``
  ``get_stresses()`` / ``get_energies()`` on the written frames; for the GNN the
  per-atom virials sum to the total virial, and 2 MPI ranks write what 1 rank writes.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from ase import units
from ase.calculators.lj import LennardJones
from ase.io import read

from atomsim.cli import main
from atomsim.engine.config import RunConfig
from atomsim.engine.simulation import Simulation
from atomsim.engine.trajectory import open_trajectory, read_h5md

EPS, SIG, RC = 0.0104, 3.4, 6.0


def _data(tmp_path, name, **output) -> dict:
    return {
        "system": {"structure": {"lattice": "fcc", "symbols": "Ar", "a": 5.26, "repeat": 2},
                   "temperature_K": 80, "seed": 4},
        "potential": {"model": "lj", "params": {"epsilon": EPS, "sigma": SIG, "cutoff": RC},
                      "dtype": "float64", "device": "cpu"},
        "dynamics": {"integrator": "nve", "timestep_fs": 5.0, "steps": 6},
        "output": {"directory": str(tmp_path / name), "thermo_every": 2, "trajectory_every": 2,
                   "restart_every": 0, "progress": False, **output},
    }


def _run(tmp_path, name, **output) -> Path:
    Simulation(RunConfig.model_validate(_data(tmp_path, name, **output))).run()
    return tmp_path / name


def test_traj_and_h5md_equal_the_extxyz_frames(tmp_path):
    xyz = read(_run(tmp_path, "xyz") / "trajectory.extxyz", ":")
    traj = read(_run(tmp_path, "traj", trajectory_format="traj") / "trajectory.traj", ":")
    h5 = _run(tmp_path, "h5", trajectory_format="h5md") / "trajectory.h5md"
    assert [a.info["step"] for a in xyz] == [a.info["step"] for a in traj] == [0, 2, 4, 6]
    for a, b in zip(xyz, traj, strict=True):  # extxyz is text with 8 decimals
        np.testing.assert_allclose(b.positions, a.positions, atol=1e-8, rtol=0)
        np.testing.assert_allclose(b.get_velocities(), a.get_velocities(), atol=1e-7, rtol=0)
        np.testing.assert_allclose(b.get_forces(), a.get_forces(), atol=1e-8, rtol=0)
        np.testing.assert_allclose(b.get_potential_energies(), a.get_potential_energies(), atol=1e-8,
                                   rtol=0)
        np.testing.assert_allclose(b.cell.array, a.cell.array, atol=1e-8, rtol=0)

    with h5py.File(h5, "r") as f:  # plain h5py, the H5MD 1.1 layout
        assert list(f["h5md"].attrs["version"]) == [1, 1]
        assert f["h5md/creator"].attrs["name"] == "atomsim" and "name" in f["h5md/author"].attrs
        part = f["particles/all"]
        assert list(part["position/step"][()]) == [0, 2, 4, 6]
        np.testing.assert_allclose(part["position/time"][()], [0.0, 0.01, 0.02, 0.03], rtol=1e-12)
        assert part["position/value"].attrs["unit"] == "Angstrom"
        assert part["position/time"].attrs["unit"] == "ps"
        assert part["box"].attrs["dimension"] == 3
        assert [b.decode() for b in part["box"].attrs["boundary"]] == ["periodic"] * 3
        assert list(part["species"][()]) == [18] * 32
        positions = part["position/value"][()]
        velocities = part["velocity/value"][()]
        edges = part["box/edges/value"][()]
        energy = f["observables/potential_energy/value"][()]
    assert positions.shape == (4, 32, 3)
    for k, (a, b) in enumerate(zip(xyz, traj, strict=True)):
        np.testing.assert_allclose(positions[k], a.positions, atol=1e-8, rtol=0)
        np.testing.assert_array_equal(positions[k], b.positions)  # both binary float64: identical
        np.testing.assert_allclose(velocities[k], b.get_velocities() * 1000 * units.fs, rtol=1e-14)  # Å/ps
        np.testing.assert_array_equal(edges[k], b.cell.array)
        assert energy[k] == b.get_potential_energy()
    back = read_h5md(h5)  # what `atomsim analyze` reads
    for a, b in zip(back, traj, strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_allclose(a.get_velocities(), b.get_velocities(), rtol=1e-14)


@pytest.mark.parametrize("fmt", ["extxyz", "traj", "h5md"])
def test_resume_drops_frames_after_the_restart(tmp_path, fmt):
    out = _run(tmp_path, fmt, trajectory_format=fmt, trajectory_every=1)
    name = {"extxyz": "trajectory.extxyz", "traj": "trajectory.traj", "h5md": "trajectory.h5md"}[fmt]
    reader = read_h5md if fmt == "h5md" else (lambda p: read(p, ":"))
    before = reader(out / name)
    assert [a.info["step"] for a in before] == list(range(7))
    open_trajectory(fmt, out, 5.0, enabled=True, append=True, resume_step=3, per_atom=["energies"])
    after = reader(out / name)
    assert [a.info["step"] for a in after] == [0, 1, 2, 3]
    for a, b in zip(after, before[:4]):
        np.testing.assert_array_equal(a.positions, b.positions)


def test_per_atom_stresses_and_energies_equal_ase_lennard_jones(tmp_path):
    frames = read(_run(tmp_path, "lj", trajectory_format="traj", per_atom=["energies", "stresses"])
                  / "trajectory.traj", ":")
    assert len(frames) == 4
    for atoms in frames:
        ours_s, ours_e = atoms.calc.results["stresses"], atoms.calc.results["energies"]
        ref = atoms.copy()
        ref.calc = LennardJones(epsilon=EPS, sigma=SIG, rc=RC)
        np.testing.assert_allclose(ours_s, ref.get_stresses(), rtol=1e-10, atol=1e-16)
        np.testing.assert_allclose(ours_e, ref.get_potential_energies(), rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(ours_s.sum(0), ref.get_stress(), rtol=1e-10, atol=1e-16)
    plain = read(_run(tmp_path, "plain", trajectory_format="traj") / "trajectory.traj", ":")
    for a, b in zip(frames, plain, strict=True):  # the extra force pass leaves the dynamics alone
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.get_velocities(), b.get_velocities())
    xyz = read(_run(tmp_path, "lj_xyz", per_atom=["stresses"]) / "trajectory.extxyz", ":")
    assert "energies" not in xyz[0].calc.results  # only what was asked for
    np.testing.assert_allclose(xyz[-1].calc.results["stresses"], frames[-1].calc.results["stresses"],
                               atol=1e-8)


def test_calculator_get_stresses_equal_ase_lennard_jones():
    from ase.build import bulk

    from atomsim import AtomsimCalculator

    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(2)
    atoms.rattle(0.15, seed=3)
    atoms.cell[0, 1] = 0.4  # triclinic
    ref = atoms.copy()
    ref.calc = LennardJones(epsilon=EPS, sigma=SIG, rc=RC)
    atoms.calc = AtomsimCalculator(model="lj", device="cpu", epsilon=EPS, sigma=SIG, cutoff=RC)
    np.testing.assert_allclose(atoms.get_stresses(), ref.get_stresses(), rtol=1e-10, atol=1e-16)
    np.testing.assert_allclose(atoms.get_stresses().sum(0), atoms.get_stress(), rtol=1e-10, atol=1e-16)


def test_gnn_atom_virials_sum_to_the_virial():
    from ase.build import bulk

    from atomsim.engine.forces import SerialForces
    from atomsim.engine.state import MDState
    from atomsim.potentials import load_potential

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms[0].symbol = "Au"
    atoms.rattle(0.1, seed=2)
    potential = load_potential("egnn-emt-v1").to(torch.float64)
    result = SerialForces(potential).compute(MDState.from_atoms(atoms), virial=True, atom_virial=True)
    assert result.atom_virials.shape == (32, 3, 3)
    assert torch.allclose(result.atom_virials.sum(0), result.virial, rtol=1e-12, atol=1e-12)
    assert torch.allclose(result.atom_virials, result.atom_virials.transpose(1, 2))  # symmetric, as the total


@pytest.mark.mpi
@pytest.mark.timeout(300)
def test_two_ranks_write_the_one_rank_h5md_with_gnn_stresses(tmp_path):
    mpiexec = Path(sys.executable).parent / "mpiexec"
    if not mpiexec.exists():
        pytest.skip(f"no mpiexec next to {sys.executable} (install atomsim[mpi])")
    data = {"system": {"structure": {"lattice": "fcc", "symbols": "Cu", "a": 3.61, "repeat": [3, 2, 2],
                                     "alloy": {"Au": 0.25}}, "temperature_K": 300, "seed": 1},
            "potential": {"model": "egnn-emt-v1", "dtype": "float64", "device": "cpu"},
            "dynamics": {"integrator": "nve", "timestep_fs": 2.0, "steps": 2},
            "output": {"thermo_every": 1, "trajectory_every": 1, "restart_every": 0, "progress": False,
                       "trajectory_format": "h5md", "per_atom": ["energies", "stresses"]}}
    for name in ("one", "two"):
        data["output"]["directory"] = str(tmp_path / name)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(data))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([str(mpiexec), "-n", "2", sys.executable, "-m", "atomsim", "run",
                           str(tmp_path / "two.yaml"), "--set", "parallel.grid=[2,1,1]"],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main(["run", str(tmp_path / "one.yaml")]) == 0
    one, two = (tmp_path / name / "trajectory.h5md" for name in ("one", "two"))
    # 2 ranks write per-rank shards (output.parallel: auto), merged into H5MD by `atomsim convert`
    assert not two.exists()
    assert main(["convert", str(tmp_path / "two"), str(two)]) == 0
    with h5py.File(one) as a, h5py.File(two) as b:
        for name in ("position", "velocity", "force", "potential_energy", "stress"):
            ref = a[f"particles/all/{name}/value"][()]
            assert ref.shape[0] == 3 and np.abs(ref).max() > 0, name
            np.testing.assert_allclose(b[f"particles/all/{name}/value"][()], ref, rtol=0,
                                       atol=1e-10 * max(1.0, np.abs(ref).max()), err_msg=name)
        stress = a["particles/all/stress/value"][()]
    frames = read_h5md(tmp_path / "one" / "trajectory.h5md")
    volume = frames[0].get_volume()
    thermo = np.genfromtxt(tmp_path / "one" / "thermo.csv", delimiter=",", names=True)
    # per-atom stresses sum to the potential part of the thermo pressure tensor: -(P - kinetic) = W / V
    for k, atoms in enumerate(frames):
        v = atoms.get_velocities()
        m = atoms.get_masses()
        kin = (m[:, None] * v[:, 0:1] * v[:, 0:1]).sum() / volume  # xx kinetic part, eV/Å^3
        pxx = thermo["pxx_GPa"][k] * units.GPa
        assert stress[k].sum(0)[0] == pytest.approx(kin - pxx, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("override,text", [
    ("output.trajectory_format=xyz", "`output.trajectory_format` = 'xyz' is not allowed"),
    ("output.per_atom=[stress]", "did you mean `stresses`?"),
    ("output.per_atom=[energies, forces]", "output.per_atom"),
])
def test_bad_output_keys_exit_2(tmp_path, capsys, override, text):
    (tmp_path / "in.yaml").write_text(yaml.safe_dump(_data(tmp_path, "bad")))
    assert main(["run", str(tmp_path / "in.yaml"), "--set", override]) == 2
    assert text in capsys.readouterr().err


def test_stresses_need_a_cell(tmp_path, capsys):
    (tmp_path / "cluster.xyz").write_text("3\n\nAr 0 0 0\nAr 3.8 0 0\nAr 0 3.8 0\n")
    data = _data(tmp_path, "cluster", per_atom=["stresses"])
    data["system"]["structure"] = {"file": str(tmp_path / "cluster.xyz")}
    (tmp_path / "in.yaml").write_text(yaml.safe_dump(data))
    assert main(["run", str(tmp_path / "in.yaml")]) == 2
    assert "`output.per_atom`: stresses are virial / volume" in capsys.readouterr().err
