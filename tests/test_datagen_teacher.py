"""`atomsim datagen` beyond EMT: the periodic-table generator, any atomsim potential as the teacher,
and the active-learning step (MD with a student, snapshots labelled by the teacher).

References: the teacher calculator recomputed independently on every written frame, ASE's own
Langevin driven by the student (replayed here), sevenn's own calculator for SevenNet-0 labels.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from ase.io import read

from atomsim.calculator import AtomsimCalculator
from atomsim.training import datagen
from atomsim.training.datagen import generate_structures, make_calculator, student_md_snapshots, write_dataset
from atomsim.training.table_structures import TableGenerator, too_close

SYMBOLS = ("H Li Be B C N O F Na Mg Al Si P S Cl K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr Rb Sr Y Zr "
           "Nb Mo Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Nd Gd Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi").split()


def _assert_labels_equal(frames, calc, atol=1e-10):
    for at in frames:
        ref = Atoms(at.numbers, positions=at.positions, cell=at.cell, pbc=at.pbc)
        ref.calc = calc
        assert at.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=atol)
        np.testing.assert_allclose(at.get_forces(), ref.get_forces(), rtol=0, atol=atol)
        if all(at.pbc):
            np.testing.assert_allclose(at.get_stress(), ref.get_stress(), rtol=0, atol=atol)


def test_table_generator_spans_the_table_and_reproduces_its_seed():
    gen = TableGenerator(SYMBOLS, seed=4)
    seen, kinds = set(), set()
    for i in range(150):
        at, ct, md, _ = gen.job(i)
        if at is None:
            continue
        assert all(at.pbc) and 1 <= len(at) <= 48 and at.get_volume() > 0, ct
        seen |= set(at.get_chemical_symbols())
        kinds.add(ct.split("_")[0])
    assert len(seen) >= 0.8 * len(SYMBOLS), sorted(set(SYMBOLS) - seen)
    assert {"bulk", "binary", "alloy", "slab", "vacancy"} <= kinds, kinds
    a, b = TableGenerator(SYMBOLS, 4).job(7)[0], TableGenerator(SYMBOLS, 4).job(7)[0]
    c = TableGenerator(SYMBOLS, 5).job(7)[0]
    assert a == b and a != c
    with pytest.raises(ValueError, match="Qq"):
        TableGenerator(["Cu", "Qq"], 0)


def test_table_labels_equal_the_teacher_recomputed(tmp_path):
    stats: dict = {}
    frames = list(generate_structures(6, seed=2, elements=list(SYMBOLS), calculator="lj", generator="table",
                                      stats=stats))
    assert len(frames) == 6 and all(not too_close(f) and f.info["config_type"] for f in frames)
    _assert_labels_equal(frames, LennardJones())
    # the file holds the same frames (extxyz rounds positions to 1e-8 Å), and a seed reproduces it
    out, again = tmp_path / "lj.extxyz", tmp_path / "again.extxyz"
    for path in (out, again):
        assert write_dataset(path, 6, seed=2, elements=list(SYMBOLS), calculator="lj", generator="table") == 6
    assert again.read_text() == out.read_text()
    for f, g in zip(frames, read(out, index=":")):
        np.testing.assert_allclose(g.positions, f.positions, rtol=0, atol=1e-7)
        np.testing.assert_allclose(g.get_forces(), f.get_forces(), rtol=0, atol=1e-7)


def _starts():
    cu = bulk("Cu", "fcc", a=3.61, cubic=True)
    cu.numbers[[1, 2]] = [79, 47]  # Cu-Au-Ag: elements the student (egnn-emt-v1) and EMT both know
    return [cu.repeat((2, 1, 1))]


def _al(seed, student="egnn-emt-v1"):
    rows = list(student_md_snapshots(_starts(), student, "emt", seed=seed, steps=20, every=10, rounds=2,
                                     temperatures=(800.0,)))
    return [f for _, f, _ in rows], rows


def test_active_learning_snapshots_come_from_the_student_and_carry_teacher_labels():
    frames, rows = _al(seed=3)
    assert len(frames) == 4 and {r for r, _, _ in rows} == {0, 1}
    start = _starts()[0]
    for f in frames:
        assert f.info["config_type"] == "md_student" and f.info["md_student"] == "egnn-emt-v1"
        assert np.abs(f.positions - start.positions).max() > 0.02  # it moved
        frac = f.get_scaled_positions(wrap=False)
        assert frac.min() >= 0.0 and frac.max() < 1.0 and not too_close(f)
    _assert_labels_equal(frames, EMT())
    # the first snapshot replayed with ASE's Langevin driven by the student: the same positions
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    rng = np.random.default_rng([3, 0, 0])
    rng.choice(np.array([800.0]))
    at = start.copy()
    at.calc = AtomsimCalculator(model="egnn-emt-v1")
    MaxwellBoltzmannDistribution(at, temperature_K=800.0, rng=rng)
    Langevin(at, timestep=1.0 * units.fs, temperature_K=800.0, friction=0.01 / units.fs, rng=rng,
             fixcm=False).run(10)
    at.wrap()
    np.testing.assert_allclose(frames[0].positions, at.positions, rtol=0, atol=1e-9)
    # driven by the teacher instead, the same seed gives other snapshots
    teacher_driven, _ = _al(seed=3, student=EMT())
    assert np.abs(teacher_driven[0].positions - frames[0].positions).max() > 1e-4
    # the reported student errors are the student's own energies against the labels
    student = AtomsimCalculator(model="egnn-emt-v1")
    for _, f, err in rows:
        at = Atoms(f.numbers, positions=f.positions, cell=f.cell, pbc=True)
        at.calc = student
        expect = abs(at.get_potential_energy() - f.get_potential_energy()) / len(f)
        assert err["energy_abs_err_per_atom"] == pytest.approx(expect, abs=1e-9)


def test_active_learning_seed_reproduces():
    a, _ = _al(seed=5)
    b, _ = _al(seed=5)
    c, _ = _al(seed=6)
    for x, y in zip(a, b):
        assert np.array_equal(x.positions, y.positions) and x.get_potential_energy() == y.get_potential_energy()
    assert np.abs(a[0].positions - c[0].positions).max() > 1e-4


def test_calculator_errors_name_the_fix(monkeypatch):
    with pytest.raises(ValueError, match=r"not an ASE calculator \(emt, lj\), an atomsim potential \(.*egnn-emt-v1"):
        make_calculator("no-such-teacher")
    monkeypatch.setitem(datagen.PLUGINS, "fake-teacher", ("atomsim_no_such_plugin", "pip install fake-plugin"))
    with pytest.raises(ValueError, match="not installed; install it with: pip install fake-plugin"):
        make_calculator("fake-teacher")
    with pytest.raises(ValueError, match="does not cover"):
        list(student_md_snapshots([bulk("Si", "diamond", a=5.43)], "egnn-emt-v1", "emt", steps=10, every=10))


def test_cli_active_learning_writes_snapshots_and_round_errors(tmp_path):
    import json

    from atomsim.cli import main

    start = tmp_path / "start.extxyz"
    from ase.io import write

    write(start, _starts())
    out = tmp_path / "al.extxyz"
    assert main(["datagen", "--calculator", "emt", "--student", "egnn-emt-v1", "--start", str(start), "-o", str(out),
                 "--md-steps", "10", "--snapshot-every", "10", "--rounds", "2", "--seed", "1"]) == 0
    frames = read(out, index=":")
    assert len(frames) == 2 and all(f.info["config_type"] == "md_student" for f in frames)
    report = json.loads((tmp_path / "al.extxyz.al.json").read_text())
    assert set(report["rounds"]) == {"0", "1"} and report["rounds"]["0"]["frames"] == 1
    assert main(["datagen", "--calculator", "nope", "-o", str(out)]) == 2


@pytest.mark.skipif(importlib.util.find_spec("atomsim_sevenn") is None or importlib.util.find_spec("sevenn") is None,
                    reason="the atomsim-sevenn plugin is not installed (scripts/install_test_extras.sh)")
def test_sevennet_labels_equal_sevenns_own_calculator(tmp_path):
    import warnings

    out = tmp_path / "7net.extxyz"
    write_dataset(out, 2, seed=3, elements=None, calculator="sevennet-0", generator="table")
    frames = read(out, index=":")
    assert len(frames) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sevenn.calculator import SevenNetCalculator

        ref = SevenNetCalculator("7net-0", device="cpu")
    for f in frames:
        at = Atoms(f.numbers, positions=f.positions, cell=f.cell, pbc=True)
        at.calc = ref
        assert f.get_potential_energy() == pytest.approx(at.get_potential_energy(), abs=2e-4 * len(f))
        np.testing.assert_allclose(f.get_forces(), at.get_forces(), rtol=0, atol=2e-3)
