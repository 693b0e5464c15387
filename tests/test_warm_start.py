"""`init_from`: a model grown from a trained one (more radial functions, layers, elements) keeps its function."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

from atomsim.calculator import AtomsimCalculator
from atomsim.potentials.checkpoint import save_checkpoint
from atomsim.potentials.egnn import build_egnn
from atomsim.training.datagen import write_dataset
from atomsim.training.trainer import TrainConfig, read_samples, train
from atomsim.training.warm_start import warm_start


def _trained_looking(species, **kw):
    """Random weights everywhere (not the init's zeros), so a copy that drops anything shows."""
    torch.manual_seed(0)
    model = build_egnn(species, **kw).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.species_energy.copy_(torch.randn(len(species), dtype=torch.float64))
        model.energy_scale.fill_(0.7)
    return model


def _cuo_cell():
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((2, 1, 1))
    atoms.symbols[[1, 4]] = "O"
    atoms.rattle(0.1, seed=2)
    return atoms


def _evaluate(model, atoms):
    """(energy, forces, stress) through the ASE calculator."""
    atoms = atoms.copy()
    atoms.calc = AtomsimCalculator(model, device="cpu")
    return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()


def test_grown_model_keeps_the_source_energy_forces_and_virial():
    src = _trained_looking([8, 29], width=8, depth=2, n_rbf=4, cutoff=4.0, readout_hidden=4)
    grown = build_egnn([1, 8, 29], width=8, depth=3, n_rbf=7, cutoff=4.0, readout_hidden=4).double()
    info = warm_start(grown, src)
    assert info["new_species"] == [1] and info["source_depth"] == 2 and info["source_n_rbf"] == 4
    atoms = _cuo_cell()
    (ea, fa, sa), (eb, fb, sb) = _evaluate(src, atoms), _evaluate(grown, atoms)
    assert abs(fa).max() > 1e-4  # a real test: the source has forces to keep
    assert eb == pytest.approx(ea, abs=1e-10)
    np.testing.assert_allclose(fb, fa, atol=1e-10)
    np.testing.assert_allclose(sb, sa, atol=1e-10)
    # the new capacity is live: a step on the zero-started weights changes the energy
    with torch.no_grad():
        grown.layers[0].w_rbf[4:] += 0.1
        grown.layers[2].node_mlp[-1].weight += 0.1
    assert abs(_evaluate(grown, atoms)[0] - ea) > 1e-6


@pytest.mark.parametrize("key, value", [("width", 12), ("cutoff", 5.0), ("readout_hidden", 6)])
def test_an_architecture_that_cannot_be_copied_names_the_key(key, value):
    src = _trained_looking([29], width=8, depth=2, n_rbf=4, cutoff=4.0, readout_hidden=4)
    kw = dict(width=8, depth=2, n_rbf=4, cutoff=4.0, readout_hidden=4)
    kw[key] = value
    with pytest.raises(ValueError, match=f"model.{key}"):
        warm_start(build_egnn([29], **kw).double(), src)


def test_a_model_smaller_than_its_source_is_refused():
    src = _trained_looking([29], width=8, depth=2, n_rbf=4, cutoff=4.0, readout_hidden=4)
    with pytest.raises(ValueError, match="shrink"):
        warm_start(build_egnn([29], width=8, depth=2, n_rbf=2, cutoff=4.0, readout_hidden=4).double(), src)


def test_training_from_a_checkpoint_starts_at_its_error(tmp_path):
    """`init_from` in the config: step 0 of the new run is the source model (same validation error)."""
    data = tmp_path / "d.extxyz"
    write_dataset(data, 16, seed=5, elements=["Cu", "Ni"])
    samples = read_samples(data, 4.0)
    base = dict(data=str(data), model={"width": 8, "depth": 2, "n_rbf": 4, "cutoff": 4.0, "readout_hidden": 4},
                batch_size=4, epochs=2, val_fraction=0.25, test_fraction=0.0, lr=5e-3, seed=0)
    first = train(TrainConfig(output=str(tmp_path / "a"), **base), samples=samples, log=lambda *_: None)
    save_checkpoint(first["ema"], tmp_path / "src")
    from atomsim.training.trainer import evaluate

    src_err = evaluate(first["ema"], first["val"], per_system=False)["all"]["force_mae_meV_per_A"]
    grown_cfg = TrainConfig(output=str(tmp_path / "b"), init_from=str(tmp_path / "src"),
                            **{**base, "lr": 1e-12, "model": {**base["model"], "n_rbf": 6, "depth": 3}})
    logs = []
    second = train(grown_cfg, samples=samples, log=logs.append, max_steps=1)
    assert any("init_from" in str(m) for m in logs)
    # lr ~ 0: one step changes nothing measurable, so the grown model's error is the source's
    assert second["history"][0]["val_F_mae_meV_A"] == pytest.approx(src_err, rel=1e-4)
