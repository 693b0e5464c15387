"""Structure files keep what they carry: velocities and FixAtoms constraints.

References are the files themselves: ASE's reading of an ASE-written .traj / extxyz,
and the Velocities section of a LAMMPS data file parsed here as plain text and
converted from LAMMPS ``metal`` units (Å/ps) by hand.
"""
from __future__ import annotations

import ase.io
import numpy as np
import pytest
import yaml
from ase import units
from ase.build import bulk
from ase.constraints import FixAtoms, FixBondLength, FixCartesian

from atomsim.cli import main
from atomsim.engine.config import RunConfig, load_config
from atomsim.engine.errors import InputError
from atomsim.engine.simulation import Simulation
from atomsim.engine.structure import build_atoms

LJ = {"model": "lj", "params": {"epsilon": 0.0104, "sigma": 3.4, "cutoff": 6.0}, "dtype": "float64",
      "device": "cpu"}
QUIET = {"thermo_every": 1, "trajectory_every": 0, "restart_every": 0, "progress": False}


def _data(path, tmp_path, structure=None, **system) -> dict:
    return {"system": {"structure": {"file": str(path), **(structure or {})}, "temperature_K": 300.0,
                       "seed": 2, **system},
            "potential": LJ, "output": {"directory": str(tmp_path / "out"), **QUIET}}


def _sim(path, tmp_path, structure=None, **system) -> Simulation:
    return Simulation(RunConfig.model_validate(_data(path, tmp_path, structure, **system)))


def _thermal(atoms, temperature_K: float, seed: int):
    """Gaussian velocities at about ``temperature_K`` (set_velocities zeroes FixAtoms' momenta)."""
    sigma = np.sqrt(units.kB * temperature_K / atoms.get_masses())[:, None]
    atoms.set_velocities(np.random.default_rng(seed).standard_normal((len(atoms), 3)) * sigma)
    return atoms


def _argon(n=2, temperature_K=500.0, fixed=(0, 5, 9)):
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(n)
    if fixed:
        atoms.set_constraint(FixAtoms(indices=list(fixed)))  # before the draw: their momenta stay 0
    return _thermal(atoms, temperature_K, 7)


def test_traj_velocities_and_fixatoms_kept(tmp_path):
    ase.io.write(tmp_path / "start.traj", _argon())
    ref = ase.io.read(tmp_path / "start.traj")  # the file as ASE reads it
    assert np.abs(ref.get_velocities()).max() > 0 and isinstance(ref.constraints[0], FixAtoms)

    sim = _sim(tmp_path / "start.traj", tmp_path)
    st = sim.state
    np.testing.assert_array_equal(st.positions.numpy(), ref.positions)
    np.testing.assert_array_equal(st.velocities.numpy(), ref.get_velocities())  # not redrawn at 300 K
    np.testing.assert_array_equal(st.fixed.numpy(), np.isin(np.arange(len(ref)), [0, 5, 9]))

    start = st.positions.clone()
    sim.run(5)  # the fixed atoms stay put, the others move
    moved = (st.positions - start).norm(dim=1).numpy()
    assert np.all(moved[[0, 5, 9]] == 0) and np.all(np.delete(moved, [0, 5, 9]) > 0)


def _lammps_velocities(path) -> np.ndarray:
    """The Velocities section (id vx vy vz, Å/ps) as text, sorted by id, in ASE units (Å / ASE time)."""
    lines = path.read_text().splitlines()
    start = next(k for k, line in enumerate(lines) if line.split() == ["Velocities"]) + 1
    rows = []
    for line in lines[start:]:
        if not line.strip():
            if rows:
                break
            continue
        rows.append([float(x) for x in line.split()[:4]])
    rows = np.array(sorted(rows))
    return rows[:, 1:] / (1000.0 * units.fs)  # 1 Å/ps = 1 Å per 1000 fs


def test_lammps_data_velocities_kept(tmp_path):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    _thermal(atoms, 600.0, 3)
    path = tmp_path / "cu.data"
    ase.io.write(path, atoms, format="lammps-data", velocities=True, units="metal", masses=True)
    expected = _lammps_velocities(path)
    assert expected.shape == (32, 3)

    sim = _sim(path, tmp_path, {"format": "lammps-data"})
    np.testing.assert_allclose(sim.state.velocities.numpy(), expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(sim.state.positions.numpy(), atoms.positions, atol=1e-12)
    assert sim.state.fixed is None

    # asked for: new Maxwell-Boltzmann velocities at system.temperature_K, the file's ignored
    mb = _sim(path, tmp_path, {"format": "lammps-data"}, velocities="maxwell_boltzmann")
    assert mb.state.temperature() == pytest.approx(300.0, rel=1e-12)
    assert not np.allclose(mb.state.velocities.numpy(), expected)


def test_extxyz_move_mask_becomes_fixed_atoms(tmp_path):
    atoms = _argon(fixed=(1, 2))
    ase.io.write(tmp_path / "one.extxyz", atoms)  # FixAtoms: a 1-column move_mask
    sim = _sim(tmp_path / "one.extxyz", tmp_path)
    assert sorted(np.flatnonzero(sim.state.fixed.numpy())) == [1, 2]

    atoms.set_constraint([FixAtoms(indices=[1, 2]), FixCartesian(7, mask=(True, True, True))])
    ase.io.write(tmp_path / "three.extxyz", atoms)  # with a FixCartesian: a 3-column move_mask
    sim = _sim(tmp_path / "three.extxyz", tmp_path, {"repeat": [2, 1, 1]}, velocities="from_file")
    n = len(atoms)
    assert sorted(np.flatnonzero(sim.state.fixed.numpy())) == [1, 2, 7, n + 1, n + 2, n + 7]
    expected = ase.io.read(tmp_path / "three.extxyz").get_velocities()
    assert np.abs(expected[7]).max() > 0  # fixed after the draw: the file has its velocity ...
    expected[7] = 0.0  # ... and the engine holds it still, as every fixed atom
    np.testing.assert_array_equal(sim.state.velocities.numpy()[:n], expected)
    np.testing.assert_array_equal(sim.state.velocities.numpy()[n:], expected)  # repeated with the cell


@pytest.mark.parametrize("constraint,name", [
    (FixCartesian(0, mask=(True, False, False)), "FixCartesian (mask [1, 0, 0])"),
    (FixBondLength(0, 1), "FixBondLength"),
])
def test_other_constraints_refused_exit_2(tmp_path, capsys, constraint, name):
    atoms = _argon(fixed=())
    atoms.set_constraint(constraint)
    path = tmp_path / ("start.extxyz" if name.startswith("FixCartesian") else "start.traj")
    ase.io.write(path, atoms)
    with pytest.raises(InputError, match="cannot honour: " + name.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        build_atoms(RunConfig.model_validate(_data(path, tmp_path)))
    (tmp_path / "in.yaml").write_text(yaml.safe_dump(_data(path, tmp_path)))
    assert main(["run", str(tmp_path / "in.yaml")]) == 2
    assert name.split()[0] in capsys.readouterr().err


def test_velocities_key(tmp_path):
    bare = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(2)
    ase.io.write(tmp_path / "bare.extxyz", bare)  # no momenta
    auto = _sim(tmp_path / "bare.extxyz", tmp_path)
    assert auto.state.temperature() == pytest.approx(300.0, rel=1e-12)  # auto: none in the file -> drawn
    with pytest.raises(InputError, match=r"`system.velocities` = 'from_file'.*has no velocities"):
        _sim(tmp_path / "bare.extxyz", tmp_path, velocities="from_file")

    lattice = {"system": {"structure": {"lattice": "fcc", "symbols": "Ar"}, "velocities": "from_file"}}
    (tmp_path / "lat.yaml").write_text(yaml.safe_dump(lattice))
    with pytest.raises(InputError, match=r"system.velocities.*needs `system.structure.file`"):
        load_config(tmp_path / "lat.yaml")
    lattice["system"]["velocities"] = "maxwel"
    (tmp_path / "lat.yaml").write_text(yaml.safe_dump(lattice))
    with pytest.raises(InputError, match=r"`system.velocities` = 'maxwel' is not allowed.*maxwell_boltzmann"):
        load_config(tmp_path / "lat.yaml")


@pytest.mark.parametrize("override,text", [
    ("system.structure.pbc=[true, false]", "`system.structure.pbc`: must be three booleans"),
    ("system.structure.pbc=maybe", "system.structure.pbc"),
    ("potential.device=gpu:1", "`potential.device`: unknown device 'gpu:1'"),
    ("potential.device=gpu", "did you mean `cuda`?"),
])
def test_bad_keys_exit_2_naming_the_key(tmp_path, capsys, override, text):
    data = {"system": {"structure": {"lattice": "fcc", "symbols": "Ar"}}}
    (tmp_path / "in.yaml").write_text(yaml.safe_dump(data))
    assert main(["run", str(tmp_path / "in.yaml"), "--set", override]) == 2
    assert text in capsys.readouterr().err


def test_cuda_index_accepted_by_the_schema(tmp_path):
    data = {"system": {"structure": {"lattice": "fcc", "symbols": "Ar"}}, "potential": {"device": "CUDA:1"}}
    (tmp_path / "in.yaml").write_text(yaml.safe_dump(data))
    assert load_config(tmp_path / "in.yaml").potential.device == "cuda:1"  # kernels/dtypes.py resolves it
