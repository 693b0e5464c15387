"""Stage hand-over on several ranks reads sharded restarts per sub-domain (tests/mpi_scripts/stage_handover.py).

What a rank holds between two stages must be its share, not the whole system: together the ranks
hold every atom exactly once, with the positions and velocities the whole-system read gives.
"""
from __future__ import annotations

import numpy as np
import pytest
from test_mpi import _ok, mpirun

pytestmark = pytest.mark.mpi


@pytest.mark.timeout(300)
@pytest.mark.parametrize("ranks", [2, 3])
def test_next_stage_reads_only_its_own_atoms_and_together_all_of_them(tmp_path, ranks):
    _ok(mpirun(ranks, "stage_handover.py", tmp_path, timeout=240))
    parts = [np.load(tmp_path / f"handover_{r}.npz") for r in range(ranks)]
    whole = np.load(tmp_path / "whole_0.npz")
    n = int(parts[0]["n_global"])
    assert n == len(whole["ids"]) == 6 * 4 * 4 * 4
    held = [len(p["ids"]) for p in parts]
    assert max(held) < n, f"a rank read the whole system: {held} of {n}"
    assert max(held) <= 1.5 * n / ranks, f"uneven or oversized shares: {held} of {n}"
    ids = np.concatenate([p["ids"] for p in parts])
    assert np.array_equal(np.sort(ids), np.arange(n)), "every atom once, on exactly one rank"
    order = np.argsort(whole["ids"])
    for p in parts:
        rows = order[np.searchsorted(whole["ids"][order], p["ids"])]
        np.testing.assert_array_equal(p["positions"], whole["positions"][rows])
        np.testing.assert_array_equal(p["velocities"], whole["velocities"][rows])
