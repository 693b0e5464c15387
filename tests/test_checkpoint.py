"""Checkpoints: exact round trip, no code execution on load, bundled model reproduces its recorded numbers."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from atomsim.kernels.neighbors import neighbor_list
from atomsim.potentials.base import build_graph, evaluate_potential
from atomsim.potentials.checkpoint import load_checkpoint, save_checkpoint
from atomsim.potentials.egnn import build_egnn, count_parameters
from atomsim.potentials.registry import load_potential

PRETRAINED = Path(__file__).resolve().parents[1] / "potentials" / "pretrained"


def _eval(model, numbers, positions, cell, pbc):
    positions, cell = np.asarray(positions, float), np.asarray(cell, float)
    i, j, S = (torch.from_numpy(np.ascontiguousarray(x)) for x in neighbor_list(positions, cell, pbc, model.cutoff))
    g = build_graph(torch.tensor(positions), torch.tensor(cell), i, j, S, len(numbers), model.dtype)
    return evaluate_potential(model, torch.tensor(numbers), g)


def _small_model():
    torch.manual_seed(1)
    m = build_egnn([29, 79], width=12, depth=2, n_rbf=4, readout_hidden=6)
    m.species_energy.copy_(torch.tensor([-3.71234567891, -3.21987654321], dtype=torch.float64))
    m.energy_scale.fill_(0.123456789)
    return m


def test_round_trip_is_exact(tmp_path):
    m = _small_model()
    card = {"name": "tiny", "description": "unit test", "metrics": {
        "Cu": {"n_structures": 3, "n_atoms": 12, "energy_mae_meV_per_atom": 1.5, "force_mae_meV_per_A": 20.0}}}
    save_checkpoint(m, tmp_path / "ck", card)
    files = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert files == ["MODEL_CARD.md", "config.json", "model.safetensors"]
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert meta["config"]["species"] == [29, 79] and meta["card"]["parameters"] == count_parameters(m)
    assert "| Cu | 3 | 12 | 1.50 | 20.0 |" in (tmp_path / "ck" / "MODEL_CARD.md").read_text()
    back = load_checkpoint(tmp_path / "ck")
    for (k, v), (k2, v2) in zip(m.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2 and v.dtype == v2.dtype and torch.equal(v, v2), k
    args = ([29, 79, 29], [[0, 0, 0], [2.1, 0.3, 0], [0.2, 2.3, 0.4]], np.eye(3) * 12, [False] * 3)
    a, b = _eval(m, *args), _eval(back, *args)
    assert a.energy == b.energy and torch.equal(a.forces, b.forces)
    # the registry falls back to checkpoints for paths; params reach load_checkpoint
    via_registry = load_potential(str(tmp_path / "ck"), dtype="float64")
    assert via_registry.dtype == torch.float64
    assert abs(_eval(via_registry, *args).energy - a.energy) < 1e-5
    with pytest.raises(ValueError, match="unknown key"):
        load_checkpoint(tmp_path / "ck", epsilon=1.0)


def test_loading_never_unpickles(tmp_path, monkeypatch):
    save_checkpoint(_small_model(), tmp_path / "ck", {"name": "tiny"})

    def forbidden(*a, **k):
        raise AssertionError("checkpoint loading must not unpickle")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    assert load_checkpoint(tmp_path / "ck").config.width == 12


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        load_checkpoint(tmp_path / "x")


@pytest.mark.parametrize("name", ["default", "egnn-emt-v1", "egnn-universal-v0"])
def test_bundled_checkpoint_reproduces_recorded_numbers(name):
    """Offline load by name (or the `default` alias); energies/forces/virial equal those written with
    the checkpoint."""
    from atomsim.potentials.pretrained import ALIASES

    model = load_potential(name)
    ref = json.loads((PRETRAINED / ALIASES.get(name, name) / "reference.json").read_text())
    assert str(model.dtype).endswith(ref["dtype"])
    for s in ref["structures"]:
        out = _eval(model, s["numbers"], s["positions"], s["cell"], s["pbc"])
        n = len(s["numbers"])
        assert abs(out.energy - s["energy_eV"]) < 1e-4 * n
        np.testing.assert_allclose(out.forces[:n].numpy(), s["forces_eV_per_A"], atol=2e-4)
        np.testing.assert_allclose(out.virial.numpy(), s["virial_eV"], atol=2e-3)


def test_bundled_folder_is_complete_and_small():
    folder = PRETRAINED / "egnn-emt-v1"
    for f in ("model.safetensors", "config.json", "MODEL_CARD.md", "parity.png", "reference.json"):
        assert (folder / f).is_file(), f
    assert sum(p.stat().st_size for p in folder.iterdir()) < 5e6
    card = (folder / "MODEL_CARD.md").read_text()
    assert "meV/atom" in card and "atomsim train" in card and "atomsim datagen" in card
    meta = json.loads((folder / "config.json").read_text())
    assert meta["card"]["parameters"] < 1_000_000
