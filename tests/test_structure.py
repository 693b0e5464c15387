"""Starting systems: lattices equal ase.build.bulk, exact alloy counts, files, slabs, velocities."""
from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.data import reference_states
from ase.units import kB

from atomsim.engine.config import RunConfig
from atomsim.engine.errors import InputError
from atomsim.engine.structure import alloy_counts, build_atoms, initialize_velocities


def cfg(seed=1, **structure) -> RunConfig:
    return RunConfig.model_validate({"system": {"structure": structure, "seed": seed}})


def _same(a: Atoms, b: Atoms, atol=1e-12):
    assert a.get_chemical_symbols() == b.get_chemical_symbols()
    np.testing.assert_allclose(a.cell.array, b.cell.array, atol=atol)
    np.testing.assert_allclose(a.positions, b.positions, atol=atol)
    assert list(a.pbc) == list(b.pbc)


@pytest.mark.parametrize("structure,reference", [
    (dict(lattice="fcc", symbols="Ar", a=5.26, repeat=[4, 4, 4]),
     lambda: bulk("Ar", "fcc", a=5.26, cubic=True).repeat((4, 4, 4))),
    (dict(lattice="fcc", symbols="Cu", repeat=[2, 3, 1]),  # a from ASE's reference data
     lambda: bulk("Cu", "fcc", a=reference_states[29]["a"], cubic=True).repeat((2, 3, 1))),
    (dict(lattice="fcc", symbols="Cu", cubic=False, repeat=2),
     lambda: bulk("Cu", "fcc").repeat(2)),
    (dict(lattice="hcp", symbols="Mg", repeat=[2, 1, 1]),  # no cubic cell: orthorhombic by default
     lambda: bulk("Mg", "hcp", orthorhombic=True).repeat((2, 1, 1))),
    (dict(lattice="hcp", symbols="Ti", a=2.95, c=4.68, cubic=False, orthorhombic=False),
     lambda: bulk("Ti", "hcp", a=2.95, c=4.68)),
    (dict(lattice="rocksalt", symbols="NaCl", a=5.64), lambda: bulk("NaCl", "rocksalt", a=5.64, cubic=True)),
    (dict(lattice="zincblende", symbols="GaAs", a=5.65), lambda: bulk("GaAs", "zincblende", a=5.65, cubic=True)),
    (dict(lattice="diamond", symbols="Si"), lambda: bulk("Si", "diamond", cubic=True)),
    (dict(lattice="bcc", symbols="Fe", repeat=3), lambda: bulk("Fe", "bcc", cubic=True).repeat(3)),
])
def test_lattice_equals_ase_bulk(structure, reference):
    atoms = build_atoms(cfg(**structure))
    _same(atoms, reference())
    np.testing.assert_array_equal(atoms.arrays["ids"], np.arange(len(atoms)))


def test_default_lattice_constant_missing_is_explained():
    with pytest.raises(InputError, match=r"`system.structure.a` is needed.*reference structure is fcc"):
        build_atoms(cfg(lattice="bcc", symbols="Cu"))
    with pytest.raises(InputError, match=r"`system.structure.a` is needed for the compound"):
        build_atoms(cfg(lattice="rocksalt", symbols="NaCl"))
    with pytest.raises(InputError, match=r"ase.build.bulk cannot build 'NaCl' as 'fcc'"):
        build_atoms(cfg(lattice="fcc", symbols="NaCl", a=4.0))


def test_alloy_exact_counts_and_reproducible():
    st = dict(lattice="fcc", symbols="Cu", repeat=[4, 4, 4], alloy={"Au": 0.25, "Ag": 0.1})
    a1, a2, a3 = build_atoms(cfg(1, **st)), build_atoms(cfg(1, **st)), build_atoms(cfg(2, **st))
    symbols = np.array(a1.get_chemical_symbols())
    # 256 sites: Au 64 exactly; Ag 25.6 -> 26 (largest remainder; total round(0.35 * 256) = 90)
    assert (symbols == "Au").sum() == 64 and (symbols == "Ag").sum() == 26 and (symbols == "Cu").sum() == 166
    assert a1.get_chemical_symbols() == a2.get_chemical_symbols()  # same seed, same alloy
    assert a1.get_chemical_symbols() != a3.get_chemical_symbols()  # another seed, another alloy
    np.testing.assert_allclose(a1.positions, bulk("Cu", "fcc", cubic=True).repeat(4).positions)


def test_alloy_counts_rounding():
    for n in (1, 7, 32, 100, 255):
        for fractions in ({"A": 0.5, "B": 0.5}, {"A": 1 / 3, "B": 1 / 3, "C": 1 / 3}, {"A": 0.05, "B": 0.3}):
            counts = alloy_counts(fractions, n)
            assert sum(counts.values()) == min(n, round(sum(fractions.values()) * n))
            for el, f in fractions.items():
                assert np.floor(f * n + 1e-9) <= counts[el] <= np.ceil(f * n - 1e-9)


def test_alloy_on_compound_site_and_too_small_fraction():
    atoms = build_atoms(cfg(lattice="rocksalt", symbols="NaCl", a=5.64, repeat=2, alloy={"K": 0.5}, alloy_site="Na"))
    symbols = np.array(atoms.get_chemical_symbols())
    assert (symbols == "K").sum() == 16 and (symbols == "Na").sum() == 16 and (symbols == "Cl").sum() == 32
    with pytest.raises(InputError, match=r"`system.structure.alloy.Au`.*rounds to 0 atoms"):
        build_atoms(cfg(lattice="fcc", symbols="Cu", alloy={"Au": 0.05}))


def test_file_extxyz_frame_and_triclinic(tmp_path):
    a = bulk("Ar", "fcc", a=5.3).repeat((2, 3, 2))  # primitive fcc: a triclinic cell
    a.set_cell(a.cell.array @ (np.eye(3) + [[0, 0.1, 0], [0, 0, 0.05], [0, 0, 0]]), scale_atoms=True)
    a.rattle(0.05, seed=1)
    b = bulk("Cu", "fcc", cubic=True)
    ase.io.write(tmp_path / "two.extxyz", [a, b])
    _same(build_atoms(cfg(file=str(tmp_path / "two.extxyz"), index=0)), a, atol=1e-7)  # extxyz: 8 decimals
    _same(build_atoms(cfg(file=str(tmp_path / "two.extxyz"))), b, atol=1e-7)  # default: last frame
    rep = build_atoms(cfg(file=str(tmp_path / "two.extxyz"), index=0, repeat=[1, 1, 2]))
    _same(rep, a.repeat((1, 1, 2)), atol=1e-7)
    with pytest.raises(InputError, match=r"`system.structure.index` = ':' selects 2 frames"):
        build_atoms(cfg(file=str(tmp_path / "two.extxyz"), index=":"))


def test_file_mixed_pbc_cluster_and_explicit_format(tmp_path):
    slab = bulk("Cu", "fcc", cubic=True).repeat((2, 2, 2))
    slab.center(vacuum=5.0, axis=2)
    slab.pbc = (True, True, False)
    ase.io.write(tmp_path / "slab.extxyz", slab)
    _same(build_atoms(cfg(file=str(tmp_path / "slab.extxyz"))), slab, atol=1e-7)
    (tmp_path / "cluster.dat").write_text("3\n\nAr 0 0 0\nAr 3.8 0 0\nAr 0 3.8 0\n")
    cluster = build_atoms(cfg(file=str(tmp_path / "cluster.dat"), format="xyz"))
    assert len(cluster) == 3 and not any(cluster.pbc)


def test_bad_files(tmp_path):
    (tmp_path / "junk.extxyz").write_text("this is not\na structure\n")
    with pytest.raises(InputError, match=r"`system.structure.file`: cannot read"):
        build_atoms(cfg(file=str(tmp_path / "junk.extxyz")))
    with pytest.raises(InputError, match=r"no such file"):
        build_atoms(cfg(file=str(tmp_path / "absent.extxyz")))
    (tmp_path / "c.xyz").write_text("1\n\nAr 0 0 0\n")
    with pytest.raises(InputError, match=r"`system.structure.repeat`: axis x has no cell vector"):
        build_atoms(cfg(file=str(tmp_path / "c.xyz"), repeat=[2, 1, 1]))


def test_slab_vacuum():
    atoms = build_atoms(cfg(lattice="fcc", symbols="Cu", repeat=[2, 2, 3], vacuum_A=7.5))
    ref = bulk("Cu", "fcc", cubic=True).repeat((2, 2, 3))
    ref.center(vacuum=7.5, axis=2)  # ASE keeps the periodicity: a slab in a periodic box
    assert tuple(ref.pbc) == (True, True, True)
    _same(atoms, ref)
    z = atoms.positions[:, 2]
    assert z.min() == pytest.approx(7.5) and atoms.cell[2, 2] - z.max() == pytest.approx(7.5)
    ref.pbc = (True, True, False)  # open along z only when asked
    _same(build_atoms(cfg(lattice="fcc", symbols="Cu", repeat=[2, 2, 3], vacuum_A=7.5,
                          pbc=[True, True, False])), ref)
    assert tuple(build_atoms(cfg(lattice="fcc", symbols="Cu", pbc=False)).pbc) == (False,) * 3


def _temperature(atoms):  # independent of engine code: 3N - 3 degrees of freedom
    return 2 * atoms.get_kinetic_energy() / ((3 * len(atoms) - 3) * kB)


def test_velocities_exact_temperature_zero_momentum_reproducible():
    atoms = build_atoms(cfg(lattice="fcc", symbols="Cu", repeat=3, alloy={"Au": 0.3}))
    v1 = initialize_velocities(atoms, 300.0, seed=5)
    assert _temperature(atoms) == pytest.approx(300.0, rel=1e-12)
    np.testing.assert_allclose(atoms.get_momenta().sum(0), 0.0, atol=1e-10)
    other = atoms.copy()
    np.testing.assert_array_equal(initialize_velocities(other, 300.0, seed=5), v1)
    assert not np.allclose(initialize_velocities(other, 300.0, seed=6), v1)


def test_velocities_equipartition_between_masses():
    """Maxwell-Boltzmann: light and heavy atoms carry the same mean kinetic energy (3/2 kT)."""
    atoms = Atoms(["H", "Au"] * 1500, positions=np.zeros((3000, 3)))
    initialize_velocities(atoms, 500.0, seed=0)
    ke = 0.5 * atoms.get_masses() * (atoms.get_velocities() ** 2).sum(1)
    light, heavy = ke[atoms.numbers == 1].mean(), ke[atoms.numbers == 79].mean()
    assert light == pytest.approx(1.5 * kB * 500, rel=0.06) and heavy == pytest.approx(1.5 * kB * 500, rel=0.06)
    # component distribution: v_x sqrt(m / kT) is standard normal
    vx = atoms.get_velocities()[:, 0] * np.sqrt(atoms.get_masses() / (kB * 500))
    assert abs(vx.std() - 1) < 0.05 and abs(vx.mean()) < 0.05


def test_velocities_zero_cases():
    atoms = bulk("Cu", "fcc", cubic=True)
    assert not initialize_velocities(atoms, 0.0, seed=1).any()
    one = Atoms("Ar", positions=[[0, 0, 0]])
    assert not initialize_velocities(one, 300.0, seed=1).any()
