"""Each front end's default model precision is the one docs/input_reference.md documents."""
from __future__ import annotations

import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "input_reference.md"


def _documented() -> dict:
    text = DOC.read_text(encoding="utf-8").split("### Default precision of each front end", 1)[1]
    rows = {}
    for line in text.split("\n\n", 3)[2].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and cells[0] not in ("front end", "---"):
            rows[cells[0]] = re.findall(r"`(float\d+)`", cells[2])[0]
    return rows


def test_front_end_defaults_match_the_docs():
    from atomsim import AtomsimCalculator
    from atomsim.cli import build_parser
    from atomsim.engine.config import PotentialConfig
    from atomsim.potentials import load_potential
    from atomsim.training.trainer import TrainConfig

    doc = _documented()
    assert doc["`atomsim run`"] == PotentialConfig().dtype == "float32"
    assert doc["`atomsim train`"] == TrainConfig(data="x").dtype == "float32"
    export = build_parser().parse_args(["lammps", "export"])
    assert doc["`atomsim lammps export`"] == export.dtype == "float64"
    by_name = AtomsimCalculator(model="default", device="cpu")
    assert doc["ASE `AtomsimCalculator`"] == "float64" and by_name.potential.dtype == torch.float64
    instance = load_potential("default")
    assert instance.dtype == torch.float32
    assert AtomsimCalculator(model=instance, device="cpu").potential.dtype == torch.float32  # not cast
    assert AtomsimCalculator(model="default", device="cpu", dtype="float32").potential.dtype == torch.float32
