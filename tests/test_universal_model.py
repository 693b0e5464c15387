"""The bundled universal model (egnn-universal-v1, distilled from SevenNet-0): loads by name, covers
the 89 elements, reproduces the numbers recorded with it, its folder is small and its card states
the held-out errors per chemistry family, the commands and the training cost."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from atomsim.kernels.neighbors import neighbor_list
from atomsim.potentials.base import build_graph, evaluate_potential
from atomsim.potentials.registry import load_potential

FOLDER = Path(__file__).resolve().parents[1] / "potentials" / "pretrained" / "egnn-universal-v1"
pytestmark = pytest.mark.skipif(not (FOLDER / "config.json").is_file(), reason="egnn-universal-v1 not bundled")


def test_universal_model_reproduces_recorded_numbers_and_covers_89_elements():
    model = load_potential("egnn-universal-v1")
    assert len(model.species) == 89
    ref = json.loads((FOLDER / "reference.json").read_text())
    assert str(model.dtype).endswith(ref["dtype"])
    for s in ref["structures"]:
        pos, cell = np.asarray(s["positions"]), np.asarray(s["cell"])
        i, j, S = (torch.from_numpy(np.ascontiguousarray(x)) for x in neighbor_list(pos, cell, s["pbc"], model.cutoff))
        g = build_graph(torch.tensor(pos), torch.tensor(cell), i, j, S, len(s["numbers"]), model.dtype)
        out = evaluate_potential(model, torch.tensor(s["numbers"]), g)
        n = len(s["numbers"])
        assert abs(out.energy - s["energy_eV"]) < 1e-4 * n
        np.testing.assert_allclose(out.forces[:n].numpy(), s["forces_eV_per_A"], atol=2e-4)
        np.testing.assert_allclose(out.virial.numpy(), s["virial_eV"], atol=2e-3)


def test_universal_folder_is_complete_small_and_its_card_is_honest():
    for f in ("model.safetensors", "config.json", "MODEL_CARD.md", "parity.png", "reference.json"):
        assert (FOLDER / f).is_file(), f
    assert sum(p.stat().st_size for p in FOLDER.iterdir()) < 5e6
    card = json.loads((FOLDER / "config.json").read_text())["card"]
    assert "atomsim train" in card["training_command"] and "core-hours" in card["training"]["training time"]
    for fam in ("metals", "oxides", "halides", "covalent", "molecular/H-containing", "noble gases"):
        assert f"| test | family: {fam} |" in card["held_out_errors_by_family"], fam
    t = card["metrics"]["all"]
    assert f"{t['energy_mae_meV_per_atom']:.1f} meV/atom" in card["status"]
