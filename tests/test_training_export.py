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
