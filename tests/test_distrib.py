"""Distributed setup and neighbour-only communication, against serial builds and the 1-rank run.

One launch of ``mpiexec -n 4 tests/mpi_scripts/distrib_probe.py`` runs every rank count 1..4 on
sub-communicators: the per-rank build of lattices (alloys, a slab with vacuum, a triclinic cell)
and of a file (read on rank 0, scattered in chunks) must gather to the system ``build_atoms`` +
``initial_velocities`` make on one process; a count probe bounds the atoms any rank holds (build
included) by its share plus the halo; no all-to-all/allgather is called in the run loop; a hot run on
sub-boxes thinner than the halo (grid [k, 1, 1]) follows the 1-rank trajectory.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from ase.build import bulk
from ase.constraints import FixAtoms
from test_mpi import SCRIPTS, _ok, mpirun

from atomsim.engine.comm import Comm
from atomsim.engine.structure import alloy_counts, build_atoms, build_local_state, initial_velocities

pytestmark = pytest.mark.mpi
sys.path.insert(0, str(SCRIPTS))
import distrib_probe  # noqa: E402  (the MPI script's cases and config, shared)

RANKS = 4


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    out = tmp_path_factory.mktemp("distrib")
    rng = np.random.default_rng(0)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3))
    atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
    atoms.set_velocities(rng.normal(0, 0.01, atoms.positions.shape))
    atoms.set_constraint(FixAtoms([0, 5, 77]))
    atoms.write(out / "in.extxyz")
    _ok(mpirun(RANKS, "distrib_probe.py", out, out / "in.extxyz", timeout=540))
    return out, json.loads((out / "probe.json").read_text())


@pytest.mark.timeout(600)
def test_per_rank_build_equals_the_serial_build_on_1_to_4_ranks(probe):
    out, res = probe
    cases = distrib_probe.setup_cases(out / "in.extxyz")
    for name, system in cases.items():
        cfg = distrib_probe.run_config(system, out / "unused", 1)
        ref_atoms = build_atoms(cfg)  # the whole system on one process, through ASE
        initial_velocities(ref_atoms, cfg.system)
        ref_state, ref_fix = build_local_state(cfg, Comm())
        for k in range(1, RANKS + 1):
            got = np.load(out / f"build_{name}_{k}.npz")
            where = f"{name} on {k} rank(s)"
            # bit for bit the 1-process per-rank build, whatever the rank count
            for f in ("ids", "positions", "velocities", "numbers", "masses"):
                assert np.array_equal(got[f], getattr(ref_state, f).numpy()), f"{where}: {f}"
            assert np.array_equal(got["cell"], ref_state.cell.numpy()), where
            assert tuple(got["pbc"]) == ref_state.pbc, where
            assert list(got["fix"]) == list(ref_fix.indices), where
            # and ASE's build of the whole system
            assert np.array_equal(got["ids"], ref_atoms.arrays["ids"]), where
            assert np.array_equal(got["numbers"], ref_atoms.numbers), where
            np.testing.assert_allclose(got["positions"], ref_atoms.positions, rtol=0, atol=1e-12,
                                       err_msg=where)
            np.testing.assert_allclose(got["cell"], ref_atoms.cell.array, rtol=0, atol=1e-12, err_msg=where)
            np.testing.assert_allclose(got["masses"], ref_atoms.get_masses(), rtol=1e-15, err_msg=where)
            np.testing.assert_allclose(got["velocities"], ref_atoms.get_velocities(), rtol=0, atol=1e-14,
                                       err_msg=where)
    # the alloy has exactly the requested counts; the file's FixAtoms (repeated twice) became fixed ids
    alloy = np.load(out / f"build_alloy_{RANKS}.npz")
    n = len(alloy["ids"])
    want = alloy_counts({"Au": 0.3, "Ag": 0.1}, n)
    assert (alloy["numbers"] == 79).sum() == want["Au"] and (alloy["numbers"] == 47).sum() == want["Ag"]
    assert list(np.load(out / f"build_file_{RANKS}.npz")["fix"]) == [0, 5, 77, 108, 113, 185]


@pytest.mark.timeout(600)
def test_no_rank_holds_more_than_its_share_plus_halo_and_no_all_to_all(probe):
    _, res = probe
    p = res["probe"]
    n, size = p["n_global"], res["size"]
    box, depth = np.array(p["box"]), p["depth"]
    sub = box / np.array(p["dims"])
    density = n / box.prod()
    halo = density * (np.prod(sub + 2 * depth) - sub.prod())  # the shell within the halo depth
    bound = 1.1 * n / size + 1.2 * halo
    assert bound < 0.8 * n, "the system is too small for the probe to tell a share from the whole"
    for r, held in enumerate(p["held"]):
        assert held["build"] <= bound, f"rank {r} held {held['build']} atoms building (bound {bound:.0f})"
        assert held["owned+ghost"] <= bound, f"rank {r} held {held} (bound {bound:.0f})"
        assert held["owned"] <= 1.1 * n / size, f"rank {r} owned {held['owned']} of {n}"
    for k, stats in res["build"].items():  # the lattice cases on every rank count (a file: rank 0 reads it)
        for name in ("alloy", "slab", "triclinic"):
            share = stats[name]["n"] / int(k)
            assert max(stats[name]["held"]) <= 2.5 * share + 60, f"{name} on {k} ranks: {stats[name]}"
    assert p["builds"] >= 3 and p["migrated"] > 0, "the run must rebuild and migrate"
    banned = set(distrib_probe.ALL_TO_ALL)
    for r, calls in enumerate(p["loop_calls"]):
        assert not banned & set(calls), f"rank {r} called {sorted(banned & set(calls))} in the loop: {calls}"
        assert calls.get("sendrecv", 0) > 0 and calls.get("isend", 0) > 0, calls  # it did communicate
    for r, calls in enumerate(p["setup_calls"]):
        assert not banned & set(calls), f"rank {r} called {sorted(banned & set(calls))} while setting up"


@pytest.mark.timeout(600)
def test_thin_sub_domains_follow_the_one_rank_trajectory(probe):
    out, _ = probe
    ref = np.load(out / "thin_1.npz")
    lx = 4 * 3.61
    for k in range(2, RANKS + 1):
        got = np.load(out / f"thin_{k}.npz")
        assert np.array_equal(got["ids"], ref["ids"])
        assert np.abs(got["positions"] - ref["positions"]).max() < 1e-10, k
        assert np.abs(got["velocities"] - ref["velocities"]).max() < 1e-10, k
        assert int(got["builds"]) >= 2 and int(got["migrated"]) > 0, k
    assert lx / 3 < 5.0 + 0.6 and lx / 4 < 5.0 + 0.6, "3 and 4 ranks: sub-boxes thinner than the halo"
