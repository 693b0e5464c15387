"""The atomsim command: bad input -> exit 2 with one message naming the key and no traceback.

Most cases call ``atomsim.cli.main(argv)`` in-process (an import of torch costs
seconds per subprocess); three go through a real ``python -m atomsim``.
"""
from __future__ import annotations

import csv
import subprocess
import sys
import types

import pytest
import yaml

from atomsim.cli import COMMANDS, EXIT_STOPPED, main

GOOD = {
    "system": {"structure": {"lattice": "fcc", "symbols": "Ar", "a": 5.26, "repeat": [2, 2, 2]},
               "temperature_K": 50, "seed": 3},
    "potential": {"model": "lj", "params": {"epsilon": 0.0104, "sigma": 3.4, "cutoff": 6.0}, "dtype": "float64",
                  "device": "cpu"},
    "dynamics": {"integrator": "nve", "timestep_fs": 2.0, "steps": 4},
    "output": {"directory": "out", "thermo_every": 2, "trajectory_every": 0, "restart_every": 0, "progress": False},
}


def _input(tmp_path, data=GOOD, name="in.yaml") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


@pytest.fixture
def fake_simulation(monkeypatch):
    """Stand-in for engine.simulation: records how the CLI drives it, or raises a chosen error."""
    calls = {}
    module = types.ModuleType("atomsim.engine.simulation")

    class Simulation:
        raise_on_create = None

        @classmethod
        def from_config(cls, cfg, resume=False):
            calls.update(cfg=cfg, resume=resume)
            if cls.raise_on_create is not None:
                raise cls.raise_on_create
            return cls()

        def run(self):
            calls["ran"] = True

    module.Simulation = Simulation
    monkeypatch.setitem(sys.modules, "atomsim.engine.simulation", module)
    return Simulation, calls


BAD = [  # (overrides on GOOD, or raw YAML text; text the message must contain)
    (["dynamics.timestep_fs=0"], "dynamics.timestep_fs"),
    (["dynamics.timestep_fs=11"], "dynamics.timestep_fs"),
    (["system.temperature_K=-1"], "system.temperature_K"),
    (["system.structure.repeat=[0,1,1]"], "system.structure.repeat"),
    (["neighbor.skin=-1"], "neighbor.skin"),
    (["dynamics.steps=many"], "dynamics.steps"),
    (["dynamics.timestep=1"], "did you mean `timestep_fs`?"),
    (["system.structure.lattice=fcx"], "did you mean `fcc`?"),
    (["system.structure.symbols=Qz"], "unknown element 'Qz'"),
    (["system.structure.alloy={Kr: 0.6, Xe: 0.6}"], "system.structure.alloy"),
    (["system.structure.lattice=null", "system.structure.symbols=null", "system.structure.a=null",
      "system.structure.file=missing.extxyz"], "system.structure.file"),
    ("system:\n  structure: {lattice: fcc\n", "YAML syntax error"),
]


@pytest.mark.parametrize("case,text", BAD, ids=[str(b[0])[:40] for b in BAD])
def test_bad_input_exit_2_one_message(tmp_path, capsys, fake_simulation, case, text):
    overrides = [] if isinstance(case, str) else case
    path = _input(tmp_path, case if isinstance(case, str) else GOOD)
    argv = ["run", path] + [a for o in overrides for a in ("--set", o)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("atomsim: error: ") and text in err and "Traceback" not in err, err
    assert "cfg" not in fake_simulation[1]  # nothing ran


def test_run_passes_config_and_resume(tmp_path, fake_simulation):
    _, calls = fake_simulation
    path = _input(tmp_path)
    assert main(["run", path, "--resume", "--set", "dynamics.steps=7", "--set", "parallel.grid=[1,1,1]"]) == 0
    assert calls["resume"] is True and calls["ran"] is True
    assert calls["cfg"].dynamics.steps == 7 and calls["cfg"].parallel.grid == [1, 1, 1]
    assert main(["run", path]) == 0 and calls["resume"] is False


def test_errors_raised_by_the_engine(tmp_path, capsys, fake_simulation, monkeypatch):
    sim, _ = fake_simulation
    path = _input(tmp_path)
    sim.raise_on_create = ValueError("unknown potential 'ljj': available: lj")
    assert main(["run", path]) == 2 and "unknown potential 'ljj'" in capsys.readouterr().err
    sim.raise_on_create = TypeError("LennardJones.__init__() got an unexpected keyword argument 'epsilom'")
    assert main(["run", path]) == 2
    err = capsys.readouterr().err
    assert "`potential.params`" in err and "epsilom" in err
    from atomsim.engine.safety import SimulationError

    sim.raise_on_create = SimulationError("step 12: force 2e3 eV/Å on atom 5")
    assert main(["run", path]) == EXIT_STOPPED and "step 12" in capsys.readouterr().err
    sim.raise_on_create = RuntimeError("a bug")  # unexpected: propagates (traceback, exit 1)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["run", path])
    monkeypatch.setenv("ATOMSIM_DEBUG", "1")  # debugging: input errors show their traceback too
    sim.raise_on_create = ValueError("bad")
    with pytest.raises(ValueError, match="bad"):
        main(["run", path])


def test_usage_errors_and_help(capsys):
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(cmd.name in out for cmd in COMMANDS)


def _atomsim(*args, cwd):
    return subprocess.run([sys.executable, "-m", "atomsim", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_subprocess_bad_key_no_traceback(tmp_path):
    data = {**GOOD, "dynamics": {"timestep_fs": 1.0, "stpes": 10}}
    proc = _atomsim("run", _input(tmp_path, data), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "unknown key `dynamics.stpes`; did you mean `steps`?" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("atomsim: error:") == 1


def test_subprocess_info_reports_versions(tmp_path):
    import ase
    import numpy
    import torch

    proc = _atomsim("info", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for version in (torch.__version__, numpy.__version__, ase.__version__):
        assert version in proc.stdout
    assert "lj" in proc.stdout and "MPI library" in proc.stdout


def test_subprocess_run_applies_overrides_and_writes_resolved_config(tmp_path):
    pytest.importorskip("atomsim.engine.simulation")
    proc = _atomsim("run", _input(tmp_path), "--set", "dynamics.steps=6", "--set", "output.directory=res",
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load((tmp_path / "res" / "resolved_config.yaml").read_text())
    assert resolved["dynamics"]["steps"] == 6 and resolved["potential"]["params"]["sigma"] == 3.4
    rows = list(csv.DictReader((tmp_path / "res" / "thermo.csv").open()))
    assert [int(r["step"]) for r in rows] == [0, 2, 4, 6]
    assert float(rows[0]["temperature_K"]) == pytest.approx(50.0, rel=1e-6)  # exact initial temperature


def test_info_lists_bundled_models(monkeypatch, capsys):
    import atomsim.cli as cli

    card = {"config": {"species": [29, 79]}, "card": {"parameters": 123456}}
    monkeypatch.setattr(cli, "_bundled_models", lambda: {"tiny-test": card})
    monkeypatch.setattr(cli, "_mpi_library", lambda: "stub MPI")  # keep MPI uninitialised in pytest
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "tiny-test" in out and "123,456" in out and "Cu, Au" in out and "stub MPI" in out


def test_element_summary_counts_and_compacts_runs():
    from atomsim.cli import element_summary

    assert element_summary([29, 79]) == "2: Cu, Au"
    assert element_summary(["Au", "Cu", 29]) == "2: Cu, Au"  # symbols or Z, duplicates once
    z89 = list(range(1, 84)) + list(range(89, 95))  # SevenNet-0's elements: H..Bi, Ac..Pu
    assert element_summary(z89) == "89: H-Bi, Ac-Pu"
    assert element_summary([1, 2, 3, 5, 8, 29, 30, 31, 32, 33, 34, 35, 36, 40]) == "14: H-Li, B, O, Cu-Kr, Zr"


def test_info_lists_real_bundled_models_with_coverage_and_errors(monkeypatch, capsys):
    """Every folder under potentials/pretrained/ appears with its element count and its card's test error."""
    import json
    from pathlib import Path

    import atomsim.cli as cli

    monkeypatch.setattr(cli, "_mpi_library", lambda: "stub MPI")
    monkeypatch.setenv("COLUMNS", "320")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    folders = [p for p in (Path(__file__).resolve().parents[1] / "potentials" / "pretrained").iterdir()
               if (p / "config.json").is_file()]
    assert {"egnn-emt-v1", "egnn-universal-v0", "egnn-universal-v1"} <= {p.name for p in folders}
    shown = 0
    for folder in folders:
        meta = json.loads((folder / "config.json").read_text())
        line = next(ln for ln in out.splitlines() if folder.name in ln and "alias" not in ln)
        assert f"{len(meta['config']['species'])}: " in line, line
        assert f"{meta['card']['parameters']:,}" in line, line
        test = meta["card"].get("metrics", {}).get("all")
        if test:  # a card with held-out errors shows them
            assert f"E {test['energy_mae_meV_per_atom']:.1f} meV/atom" in line, line
            shown += 1
    assert shown >= 3  # every bundled model carries held-out errors
    assert "89: H-Bi, Ac-Pu" in out and "7: Al, Ni, Cu, Pd, Ag, Pt, Au" in out
    assert "default" in next(ln for ln in out.splitlines() if "alias of egnn-universal-v1" in ln)
