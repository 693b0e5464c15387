"""``atomsim relax`` against ASE's own optimizers on the same calculator, and ASE's LennardJones.

References: the same ASE optimizer and FrechetCellFilter driven directly in the test on
AtomsimCalculator (same structure and energy, <= 1e-4 eV); ASE's own LennardJones
calculator on the final structure (energy, forces below fmax, stress below smax); spglib
for the space group FixSymmetry must keep; ASE's readers for the files written.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from ase import units
from ase.build import bulk
from ase.calculators.lj import LennardJones
from ase.filters import FrechetCellFilter
from ase.io import read, write
from ase.optimize import BFGS, FIRE, LBFGS

from atomsim.calculator import AtomsimCalculator
from atomsim.cli import main
from atomsim.engine.config import load_config
from atomsim.relax import EXIT_NOT_CONVERGED, relax_config

EPS, SIGMA, RC = 0.0104, 3.4, 7.0
LJ = {"model": "lj", "params": {"epsilon": EPS, "sigma": SIGMA, "cutoff": RC}, "dtype": "float64",
      "device": "cpu"}


# every thread pool to 1 (tests/conftest.py): ASE's 3x3 linear algebra crawls when threads fight over cores
pytestmark = pytest.mark.usefixtures("one_thread_pools")


def start_structure():
    """32 argon atoms off equilibrium: strained cell (a = 5.45, not ~5.2), rattled positions."""
    atoms = bulk("Ar", "fcc", a=5.45, cubic=True).repeat(2)
    atoms.cell[0, 1] = 0.15  # a little shear, so the cell relaxation has work in every component
    atoms.rattle(stdev=0.08, seed=3)
    return atoms


def write_input(tmp_path, relax: dict, structure="start.extxyz", **extra) -> str:
    write(tmp_path / structure, start_structure())
    data = {"system": {"structure": {"file": structure}}, "potential": LJ,
            "output": {"directory": str(tmp_path / "out")}, "relax": relax, **extra}
    path = tmp_path / "in.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def ase_reference(optimizer, fmax, cell: bool, steps=1000):
    """The same relaxation done with ASE directly on AtomsimCalculator."""
    atoms = start_structure()
    atoms.calc = AtomsimCalculator(model="lj", epsilon=EPS, sigma=SIGMA, cutoff=RC, dtype="float64")
    target = FrechetCellFilter(atoms) if cell else atoms
    converged = optimizer(target, logfile=None).run(fmax=fmax, steps=steps)
    return atoms, converged


def ase_lj(atoms):
    a = atoms.copy()
    a.calc = LennardJones(epsilon=EPS, sigma=SIGMA, rc=RC, smooth=False)
    return a


def test_cli_relax_equals_ase_bfgs_with_cell_filter(tmp_path):
    fmax = 0.005
    inp = write_input(tmp_path, {"optimizer": "bfgs", "fmax_eV_per_A": fmax, "cell": True})
    assert main(["relax", inp]) == 0
    out = tmp_path / "out"
    final = read(out / "final.extxyz")
    ref, converged = ase_reference(BFGS, fmax, cell=True)
    assert converged
    # same structure (extxyz keeps 8 decimals) and energy as ASE's own BFGS + FrechetCellFilter
    np.testing.assert_allclose(final.cell.array, ref.cell.array, atol=1e-6)
    np.testing.assert_allclose(final.positions, ref.positions, atol=1e-6)
    summary = json.loads((out / "relax.json").read_text())
    assert summary["converged"] and summary["optimizer"] == "BFGS"
    assert abs(summary["energy_eV"] - ref.get_potential_energy()) <= 1e-4
    # ASE's LennardJones on the final structure: the same energy, forces below fmax, a relaxed cell
    lj = ase_lj(final)
    assert abs(lj.get_potential_energy() - summary["energy_eV"]) < 1e-6
    assert np.linalg.norm(lj.get_forces(), axis=1).max() < fmax
    fcf = FrechetCellFilter(lj)
    assert np.linalg.norm(fcf.get_forces(), axis=1).max() < fmax  # the filter's cell rows too
    assert summary["steps"] > 3 and (out / "relax.log").read_text().count("BFGS:") == summary["steps"] + 1
    assert len(read(out / "relax.traj", ":")) == summary["steps"] + 1


@pytest.mark.parametrize("name,optimizer", [("lbfgs", LBFGS), ("fire", FIRE)])
def test_relax_positions_equals_ase(tmp_path, name, optimizer):
    fmax = 0.01
    cfg = load_config(write_input(tmp_path, {"optimizer": name, "fmax_eV_per_A": fmax, "trajectory": False}))
    result = relax_config(cfg)
    ref, converged = ase_reference(optimizer, fmax, cell=False)
    assert result.converged and converged and result.steps > 3
    assert abs(result.energy_eV - ref.get_potential_energy()) <= 1e-4
    np.testing.assert_allclose(result.atoms.positions, ref.positions, atol=1e-6)
    assert np.linalg.norm(ase_lj(result.atoms).get_forces(), axis=1).max() < fmax
    assert not (tmp_path / "out" / "relax.traj").exists()


def test_not_converged_exits_4_and_still_writes_the_structure(tmp_path):
    inp = write_input(tmp_path, {"fmax_eV_per_A": 1e-4, "steps": 2, "cell": True})
    assert main(["relax", inp]) == EXIT_NOT_CONVERGED == 4
    summary = json.loads((tmp_path / "out" / "relax.json").read_text())
    assert not summary["converged"] and summary["steps"] == 2
    assert summary["fmax_eV_per_A"] > 1e-4
    ref, converged = ase_reference(BFGS, 1e-4, cell=True, steps=2)  # ASE stops at the same place
    assert not converged
    np.testing.assert_allclose(read(tmp_path / "out" / "final.extxyz").positions, ref.positions, atol=1e-6)
    # the same input through `atomsim run` (a relax: section) gives the same status
    assert main(["run", inp]) == 4


def test_stress_criterion_and_pressure(tmp_path):
    """smax_GPa: the run goes on until stress + p is small, checked with ASE's LennardJones stress."""
    p_gpa, smax = 0.05, 1e-4
    inp = write_input(tmp_path, {"fmax_eV_per_A": 0.05, "smax_GPa": smax, "cell": True,
                                 "pressure_GPa": p_gpa})
    assert main(["relax", inp]) == 0
    final = read(tmp_path / "out" / "final.extxyz")
    stress = ase_lj(final).get_stress(voigt=False) / units.GPa
    assert np.abs(stress + p_gpa * np.eye(3)).max() <= smax * 1.001  # written with 8 decimals
    # without smax the loose fmax stops earlier, with a larger residual stress
    cfg = load_config(inp, ["relax.smax_GPa=null", "output.directory=" + str(tmp_path / "loose")])
    loose = relax_config(cfg)
    assert loose.converged and loose.max_stress_GPa > smax


def test_fix_symmetry_keeps_the_space_group(tmp_path):
    """Rattled bcc (Im-3m within symprec) relaxed with its cell under FixSymmetry: spglib still finds
    Im-3m (229) at the end, the cell stays cubic, and the result is ASE's own FixSymmetry run."""
    spglib = pytest.importorskip("spglib")
    from ase.constraints import FixSymmetry

    def start():
        atoms = bulk("Ar", "bcc", a=4.4, cubic=True).repeat(2)
        atoms.rattle(stdev=1e-3, seed=5)
        return atoms

    write(tmp_path / "bcc.extxyz", start())
    data = {"system": {"structure": {"file": "bcc.extxyz"}}, "potential": LJ,
            "output": {"directory": str(tmp_path / "out")},
            "relax": {"cell": True, "fix_symmetry": True, "symprec": 0.01, "fmax_eV_per_A": 1e-3}}
    (tmp_path / "in.yaml").write_text(yaml.safe_dump(data))
    assert main(["relax", str(tmp_path / "in.yaml")]) == 0
    final = read(tmp_path / "out" / "final.extxyz")

    def space_group(atoms):
        return spglib.get_symmetry_dataset((atoms.cell.array, atoms.get_scaled_positions(), atoms.numbers),
                                           symprec=0.01).number

    assert space_group(start()) == space_group(final) == 229
    lengths, angles = final.cell.lengths(), final.cell.angles()
    assert np.ptp(lengths) < 1e-6 and np.abs(angles - 90).max() < 1e-6
    assert abs(final.get_volume() - start().get_volume()) > 1.0  # the cell did relax
    ref = start()
    ref.calc = AtomsimCalculator(model="lj", epsilon=EPS, sigma=SIGMA, cutoff=RC, dtype="float64")
    ref.set_constraint(FixSymmetry(ref, symprec=0.01))
    assert BFGS(FrechetCellFilter(ref), logfile=None).run(fmax=1e-3, steps=1000)
    np.testing.assert_allclose(final.cell.array, ref.cell.array, atol=1e-6)
    np.testing.assert_allclose(final.positions, ref.positions, atol=1e-6)


def test_input_format_is_written_too(tmp_path):
    """A POSCAR input: final_POSCAR (vasp) as well as final.extxyz, the same structure."""
    inp = write_input(tmp_path, {"fmax_eV_per_A": 0.05}, structure="POSCAR",
                      system={"structure": {"file": "POSCAR", "format": "vasp"}})
    assert main(["relax", inp]) == 0
    own = read(tmp_path / "out" / "final_POSCAR", format="vasp")
    ext = read(tmp_path / "out" / "final.extxyz")
    np.testing.assert_allclose(own.positions, ext.positions, atol=1e-5)
    np.testing.assert_allclose(own.cell.array, ext.cell.array, atol=1e-5)


@pytest.mark.parametrize("relax,key,text", [
    ({"optimizer": "bfgz"}, "relax.optimizer", "did you mean `bfgs`"),
    ({"fmax": 0.01}, "relax.fmax", "did you mean `fmax_eV_per_A`"),
    ({"fmax_eV_per_A": 0}, "relax.fmax_eV_per_A", "> 0"),
    ({"smax_GPa": 0.1}, "relax.smax_GPa", "relax.cell: true"),
    ({"steps": 0}, "relax.steps", ">= 1"),
])
def test_bad_relax_keys_exit_2_naming_the_key(tmp_path, capsys, relax, key, text):
    assert main(["relax", write_input(tmp_path, relax)]) == 2
    err = capsys.readouterr().err
    assert key in err and text in err and "Traceback" not in err


def test_relax_section_with_dynamics_is_refused(tmp_path, capsys):
    inp = write_input(tmp_path, {}, dynamics={"steps": 10})
    assert main(["run", inp]) == 2
    assert "stages" in capsys.readouterr().err
