"""Memory per atom as a run reports it (engine/memory.py), against counts made here and psutil."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from atomsim.engine.config import RunConfig
from atomsim.engine.memory import breakdown, nbytes, peak_rss
from atomsim.engine.simulation import Simulation

psutil = pytest.importorskip("psutil")


def _config(tmp_path, repeat=4):
    return RunConfig.model_validate({
        "system": {"structure": {"lattice": "fcc", "symbols": "Ar", "a": 5.26, "cubic": True,
                                 "repeat": [repeat] * 3}, "temperature_K": 60},
        "potential": {"model": "lj", "params": {"epsilon": 0.0104, "sigma": 3.4, "cutoff": 8.5},
                      "dtype": "float64", "device": "cpu"},
        "dynamics": {"steps": 6},
        "output": {"directory": str(tmp_path / "run"), "thermo_every": 3, "trajectory_every": 0,
                   "restart_every": 0, "progress": False},
    })


def test_run_reports_peak_rss_per_atom_and_the_state_bytes(tmp_path, capsys):
    rss_before = psutil.Process().memory_info().rss
    sim = Simulation(_config(tmp_path))
    sim.run()
    n = sim.state.n_atoms_global
    rep = sim.memory_report
    # state: positions, velocities, forces (3 x 24 B), masses, numbers, ids, per-atom energies (4 x 8 B),
    # twice (the last good copy kept for blow-up recovery), + its list reference (positions, ids, cell)
    assert rep["state_B_per_atom"] == pytest.approx(2 * (3 * 24 + 4 * 8) + 24 + 8 + 72 / n, rel=1e-12)
    nl = sim.forces.nlist
    assert rep["neighbor_list_B_per_atom"] >= nl.n_edges * 4 / n  # at least an int32 index per pair
    assert rep["ghosts_B_per_atom"] == 0  # one rank: periodic images come from the list's shifts
    # the peak RSS the run states is the process's own, at least what psutil saw before it began
    # (the kernel updates its high-water mark lazily: it may trail the current RSS by a few pages)
    lag = 8 * 2**20
    assert rss_before <= rep["peak_rss_B"] + lag and rep["peak_rss_B"] <= peak_rss()
    assert rep["peak_rss_B_per_atom"] == pytest.approx(rep["peak_rss_B"] / n)
    rows = list(csv.DictReader(open(tmp_path / "run" / "thermo.csv")))
    col = np.array([float(r["peak_rss_B_per_atom"]) for r in rows])
    assert np.all(np.diff(col) >= 0), "a peak never decreases"
    assert rss_before - lag <= col[0] * n and col[-1] * n <= peak_rss()
    assert "B per owned atom" in capsys.readouterr().out  # printed at start


def test_byte_counts_follow_storage():
    import torch

    zeros = torch.zeros((1, 3), dtype=torch.float64).expand(1000, 3)  # a broadcast view holds one row
    assert nbytes(zeros) == 24
    assert nbytes(np.zeros(10, dtype=np.int32), None, "not an array") == 40

    class Bare:  # a provider without a list or ghosts
        pass

    from ase.build import bulk

    from atomsim.engine.state import MDState

    st = MDState.from_atoms(bulk("Cu", cubic=True))  # 4 atoms: positions, velocities, masses, numbers, ids
    assert breakdown(st, Bare()) == {"state": 4 * (24 + 24 + 8 + 8 + 8), "neighbor_list": 0, "ghosts": 0}
