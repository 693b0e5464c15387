"""The workflow examples (examples/alloy_relax_md.yaml, examples/melt_quench.yaml) run end to end at a tiny
size: every stage, the same input otherwise. What they compute is checked against references in
tests/test_stages.py, tests/test_relax.py and tests/test_schedules.py; here: they run, each stage
writes its files, and the stages hand over (each stage's first thermo row is the previous one's last step).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from atomsim.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def tiny(name: str, tmp_path: Path) -> Path:
    """The example with 2x2x2 cells, 6 steps per MD stage, a loose relaxation and output into tmp_path."""
    data = yaml.safe_load((EXAMPLES / name).read_text())
    data["system"]["structure"]["repeat"] = [2, 2, 2]
    data["output"].update(directory=str(tmp_path / "run"), thermo_every=2, trajectory_every=3,
                          restart_every=4, progress=False)
    for stage in data["stages"]:
        if "dynamics" in stage:
            stage["dynamics"]["steps"] = 6
        if "relax" in stage:
            stage["relax"]["fmax_eV_per_A"] = 0.1  # a few optimizer steps
        stage.get("output", {}).pop("trajectory_every", None)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("name", ["alloy_relax_md.yaml", "melt_quench.yaml"])
def test_workflow_example_runs_every_stage(name, tmp_path):
    path = tiny(name, tmp_path)
    assert main(["run", str(path)]) == 0
    stages = yaml.safe_load(path.read_text())["stages"]
    run = tmp_path / "run"
    dirs = sorted(p for p in run.iterdir() if p.is_dir())
    assert len(dirs) == len(stages)
    step = 0
    for d, stage in zip(dirs, stages):
        info = json.loads((d / "stage.json").read_text())
        assert info["status"] == "done" and info["start_step"] == step
        if "relax" in stage:
            assert info["converged"] and (d / "final.extxyz").exists() and (d / "relax.log").exists()
        else:
            rows = list(csv.DictReader(open(d / "thermo.csv")))
            assert int(rows[0]["step"]) == step and int(rows[-1]["step"]) == step + 6
            step += 6
            assert (d / "trajectory.extxyz").exists()
        assert info["final_step"] == step
