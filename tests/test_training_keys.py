"""`atomsim train` reads labels under configurable names (energy_key, forces_key, stress_key).

Reference: EMT labels of the same structures, computed here and written MACE-style
(REF_energy and a 9-number REF_stress in the comment line, REF_forces as a column,
no calculator results), so ASE's extxyz reader puts them into info/arrays.
"""
from __future__ import annotations

import ase.io
import numpy as np
import pytest
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT

from atomsim.training.trainer import load_config, read_samples, train


def _mace_style(path, n=4):
    frames = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms[k % 4].symbol = "Au"
        atoms.rattle(0.05, seed=k)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        stress = atoms.get_stress(voigt=False)
        plain = atoms.copy()  # no calculator: labels only under the REF_ names
        plain.info["REF_energy"] = energy
        plain.info["REF_stress"] = stress.ravel()
        plain.arrays["REF_forces"] = forces
        frames.append((plain, energy, forces, stress))
    ase.io.write(path, [f[0] for f in frames], format="extxyz")
    return frames


def test_mace_style_keys_load(tmp_path):
    path = tmp_path / "mace.extxyz"
    ref = _mace_style(path)
    back = ase.io.read(path, ":")
    assert "REF_energy" in back[0].info and "REF_forces" in back[0].arrays and back[0].calc is None
    samples = read_samples(path, 4.0, energy_key="REF_energy", forces_key="REF_forces",
                           stress_key="REF_stress")
    for s, (_, energy, forces, stress) in zip(samples, ref, strict=True):
        assert s.energy == pytest.approx(energy, rel=1e-9)
        np.testing.assert_allclose(s.forces.numpy(), forces, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(s.stress.numpy(), stress, rtol=1e-7, atol=1e-11)

    with pytest.raises(ValueError, match=r"frame 0 \(AuCu3\) has no energy under `energy` \(energy_key\).*"
                                         r"REF_energy"):
        read_samples(path, 4.0)  # the default names are not in this file: say which names are


def test_keys_from_the_training_yaml(tmp_path):
    _mace_style(tmp_path / "mace.extxyz", n=6)
    cfg = {"data": "mace.extxyz", "output": "out", "energy_key": "REF_energy", "forces_key": "REF_forces",
           "stress_key": "REF_stress", "stress_weight": 1.0, "epochs": 1, "batch_size": 2,
           "val_fraction": 0.0, "test_fraction": 0.0, "threads": 1,
           "model": {"width": 4, "depth": 1, "n_rbf": 4, "cutoff": 4.0, "readout_hidden": 4}}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    result = train(load_config(tmp_path / "train.yaml"), log=lambda *a: None, max_steps=1)
    assert result["stopped"] == "max_steps" and len(result["train"]) == 6
    assert all(s.stress is not None for s in result["train"])
    cfg["energy_key"] = ""
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match="energy_key"):
        load_config(tmp_path / "train.yaml")
