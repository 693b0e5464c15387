"""The device-resident step on one rank against the same input on 2 MPI ranks (bundled GNN, float64).

One rank runs the deferred checks (``neighbor.check_every: 10``: skin and blow-up verdicts on the
device, replays after a late check); under ``mpiexec -n 2`` the MPI provider keeps its per-step
checks (one allreduce of the verdict), so the two runs share no step code beyond the model and
the integrator. Launched through the real command line; the runs differ only by summation order.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from cli_runs import run_input

from atomsim.engine.restart import find_restart

pytestmark = pytest.mark.mpi

INPUT = """
system:
  structure: {{lattice: fcc, symbols: Cu, a: 3.61, cubic: true, repeat: [6, 3, 3]}}
  temperature_K: 600
  seed: 5
potential: {{model: egnn-emt-v1, dtype: float64, device: cpu}}
dynamics: {{integrator: {integrator}, timestep_fs: 2.0, steps: 30, tdamp_fs: 100}}
neighbor: {{skin: 0.3, check_every: 10}}
parallel: {{threads: 1}}
output: {{directory: {out}, thermo_every: 15, trajectory_every: 0, restart_every: 30, progress: false}}
"""


def _run(tmp_path: Path, name: str, ranks: int, integrator: str) -> Path:
    return run_input(tmp_path, name, INPUT.format(out=tmp_path / name, integrator=integrator), ranks)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("integrator", ["nve", "langevin"])
def test_deferred_one_rank_tracks_two_ranks(tmp_path, integrator):
    one, two = _run(tmp_path, "one", 1, integrator), _run(tmp_path, "two", 2, integrator)
    a, b = find_restart(one), find_restart(two)
    assert a.step == b.step == 30
    assert np.array_equal(a.arrays["ids"], b.arrays["ids"])
    assert np.abs(a.arrays["positions"] - b.arrays["positions"]).max() < 1e-10
    assert np.abs(a.arrays["velocities"] - b.arrays["velocities"]).max() < 1e-10
    ra, rb = (list(csv.DictReader(open(o / "thermo.csv"))) for o in (one, two))
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == ["0", "15", "30"]
    for x, y in zip(ra, rb, strict=True):
        for col in ("pe_eV", "ke_eV", "conserved_eV", "pressure_GPa"):
            assert abs(float(x[col]) - float(y[col])) <= 1e-9 * max(1.0, abs(float(x[col]))), (col, x, y)
    # not trivial: the list went stale and was rebuilt on both
    assert int(ra[-1]["n_neighbor_builds"]) >= 3 and int(rb[-1]["n_neighbor_builds"]) >= 3
