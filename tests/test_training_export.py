"""Exporting a run's best checkpoint as a bundled model folder: complete, loadable, and its card's
held-out errors equal a fresh evaluation of the loaded model on the same split."""
from __future__ import annotations

import json

import numpy as np
import pytest

from atomsim.training.datagen import write_dataset


@pytest.mark.timeout(300)
def test_export_writes_a_loadable_folder_whose_card_matches_a_fresh_evaluation(tmp_path):
    from atomsim.potentials.registry import load_potential
    from atomsim.training.export import export
    from atomsim.training.trainer import evaluate, load_config, main, read_samples, split_indices

    data = tmp_path / "d.extxyz"
    write_dataset(data, 20, seed=4, elements=["Cu", "Ni"])
    cfg_path = tmp_path / "t.yaml"
    cfg_path.write_text(f"data: {data}\noutput: {tmp_path / 'run'}\nname: tiny-x\n"
                        "model: {width: 8, depth: 2, n_rbf: 4, cutoff: 4.0, readout_hidden: 4}\n"
                        "batch_size: 4\nepochs: 2\nval_fraction: 0.2\ntest_fraction: 0.2\nthreads: 1\n"
                        "loss: huber\ncard: {description: tiny}\n")
    assert main(str(cfg_path)) == 0
    assert (tmp_path / "run" / "data_cache.npz").is_file()
    res = export(str(cfg_path), str(tmp_path / "tiny-x"), command="atomsim train t.yaml")
    folder = tmp_path / "tiny-x"
    for f in ("model.safetensors", "config.json", "MODEL_CARD.md", "parity.png", "reference.json"):
        assert (folder / f).is_file(), f
    meta = json.loads((folder / "config.json").read_text())
    card = meta["card"]
    assert card["training_command"] == "atomsim train t.yaml" and card["training"]["epochs"] == 2
    assert "core-hours of process CPU time" in card["training"]["training time"] and res["cpu_s"] > 0
    assert "| test | family: metals |" in card["held_out_errors_by_family"]
    model = load_potential(str(folder))
    cfg = load_config(cfg_path)
    samples = read_samples(data, 4.0)
    test = [samples[i] for i in split_indices(len(samples), cfg)["test"]]
    fresh = evaluate(model, test, per_family=True)
    for key in ("all", "family: metals"):
        for m in ("energy_mae_meV_per_atom", "force_mae_meV_per_A"):
            assert card["metrics"][key][m] == pytest.approx(fresh[key][m], rel=1e-9)
    assert res["status"] in ("goal", "acceptable", "below acceptable")
    assert np.isfinite(res["test"]["energy_mae_meV_per_atom"])


def test_near_equilibrium_subset_keeps_structures_below_the_force_limit():
    """The subset drops whole structures whose largest reference force (vector norm) reaches the limit."""
    from atomsim.training.export import near_equilibrium_errors

    calm = np.array([[0.1, 0.0, 0.0], [0.0, -0.2, 0.0]])
    wild = np.array([[3.0, 4.0, 0.1], [0.0, 0.0, 1.0]])  # |F| = 5.001 eV/Å: out at the 5 eV/Å limit
    rows = [("Cu", 2, -3.0, -3.01, calm, calm + 0.05, "metals", "bulk"),
            ("Ni", 2, -4.0, -4.5, wild, wild + 1.0, "metals", "bulk")]
    sub = near_equilibrium_errors(rows, max_force=5.0)
    assert sub["n_structures"] == 1 and sub["of_structures"] == 2 and sub["n_atoms"] == 2
    assert sub["energy_mae_meV_per_atom"] == pytest.approx(10.0)
    assert sub["force_mae_meV_per_A"] == pytest.approx(50.0)
    assert sub["zero_force_baseline_mae_meV_per_A"] == pytest.approx(1000 * 0.3 / 6)
    assert near_equilibrium_errors(rows, max_force=6.0)["n_structures"] == 2
