"""The MPI engine against one rank: forces/energy/virial, NVE tracking, restart N->M, abort.

Every case launches the venv's ``mpiexec`` (oversubscribed: the CI machine
has 2 cores) on a script in tests/mpi_scripts/ with a subprocess timeout, so a
deadlock fails the test instead of hanging CI. References are 1-rank runs of
the same code path (atomsim.engine.forces.SerialForces, periodic lists).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from atomsim.engine.thermo import MEASURED

pytestmark = pytest.mark.mpi

SCRIPTS = Path(__file__).parent / "mpi_scripts"
MPIEXEC = Path(sys.executable).parent / "mpiexec"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONWARNINGS": "ignore"}


def _run(cmd, timeout):
    try:
        return subprocess.run(cmd, cwd=SCRIPTS, env=ENV, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(map(str, cmd))} did not finish in {timeout} s (deadlock?)\n{exc.stdout}\n{exc.stderr}")


def mpirun(n: int, script: str, *args, timeout: float = 240):
    if not MPIEXEC.exists():
        pytest.skip(f"no mpiexec next to {sys.executable} (install atomsim[mpi])")
    return _run([str(MPIEXEC), "-n", str(n), sys.executable, script, *map(str, args)], timeout)


def serial(script: str, *args, timeout: float = 240):
    return _run([sys.executable, script, *map(str, args)], timeout)


def _ok(proc):
    assert proc.returncode == 0, \
        f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def force_reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("mpi") / "forces_ref.pkl"
    _ok(serial("check_forces.py", "--reference", path))
    return path


# 2 and 4 ranks: every case incl. float32; 3 and 8 ranks: the float64 cases (CI time).
@pytest.mark.timeout(300)
@pytest.mark.parametrize("n", [2, 3, 4, 8])
def test_energy_forces_virial_match_one_rank(n, force_reference, tmp_path):
    out = tmp_path / "out.json"
    extra = ["--float64-only"] if n in (1, 3, 8) else []
    _ok(mpirun(n, "check_forces.py", force_reference, out, *extra))
    res = json.loads(out.read_text())
    assert res["size"] == n
    checked = 0
    for key, r in res["results"].items():
        tol = 1e-10 if key.endswith("float64") else 1e-5
        for stage in ("start", "moved"):  # moved: ghost positions refreshed, lists reused
            for q in ("energy", "forces", "virial", "energies"):
                assert r[stage][q] < tol, f"{n} ranks, {key}, {stage}: {q} rel. error {r[stage][q]:.2e} > {tol}"
        assert r["n_builds"] == 1, f"{key}: a move below skin/2 must not rebuild"
        assert sum(r["n_owned"]) == {"ortho": 108, "triclinic": 64, "slab": 36, "small": 32}[key.split("/")[0]]
        checked += 1
    assert checked == (20 if n in (2, 4) else 12)
    slab = res["results"]["slab/lj/full/float64"]
    assert slab["grid"] == [1, 1, n] and (n == 1 or 0 in slab["n_owned"]), "the slab must leave a rank empty"
    # the small box's halo is thicker than a sub-box: ghosts outnumber all atoms in the box
    small = res["results"]["small/gnn/full/float64"]
    assert min(small["n_ghost"]) > 32


@pytest.mark.timeout(300)
def test_nve_200_steps_on_4_ranks_tracks_one_rank(tmp_path):
    ref = tmp_path / "nve_ref.npz"
    out = tmp_path / "nve.json"
    _ok(serial("nve_track.py", "--reference", ref))
    _ok(mpirun(4, "nve_track.py", ref, out))
    res = json.loads(out.read_text())
    assert res["max_dpos_A"] < 1e-8, res
    assert res["max_denergy_eV"] < 1e-8, res
    assert res["n_builds"] >= 5 and res["n_migrated"] > 20, f"expected several rebuilds and migrations: {res}"


@pytest.mark.timeout(300)
def test_restart_written_on_4_ranks_resumes_on_2_and_on_4_exactly(tmp_path):
    a, b = tmp_path / "four", tmp_path / "two"
    _ok(mpirun(4, "restart_nm.py", a, 20))  # restarts at steps 10 and 20
    c = tmp_path / "four_again"
    for d in (b, c):
        shutil.copytree(a, d)
        (d / "restart.npz").unlink()  # leaves restart.prev.npz: step 10, written on 4 ranks
        (d / "trajectory.extxyz").unlink()
    _ok(mpirun(4, "restart_nm.py", c, 20, "--resume"))  # same rank count: bit for bit
    rc = np.load(c / "restart.npz")
    assert np.array_equal(np.load(a / "restart.npz")["positions"], rc["positions"])
    assert np.array_equal(np.load(a / "restart.npz")["velocities"], rc["velocities"])
    _ok(mpirun(2, "restart_nm.py", b, 20, "--resume"))
    ra, rb = np.load(a / "restart.npz"), np.load(b / "restart.npz")
    assert np.array_equal(ra["ids"], rb["ids"])
    assert np.abs(ra["positions"] - rb["positions"]).max() < 1e-8
    assert np.abs(ra["velocities"] - rb["velocities"]).max() < 1e-8
    from ase.io import read

    fa = read(a / "trajectory.extxyz", ":")
    fb = read(b / "trajectory.extxyz", ":")
    assert [f.info["step"] for f in fb] == [15, 20]
    for x, y in zip(fa[-2:], fb, strict=True):
        assert x.info["step"] == y.info["step"]
        assert np.abs(x.positions - y.positions).max() < 1e-8
    # every thermo column (energies, pressure and its tensor, volume, conserved quantity, neighbor
    # builds), except the timing and memory columns, which measure the machine
    ta, tb = (np.genfromtxt(d / "thermo.csv", delimiter=",", names=True) for d in (a, b))
    cols = [c for c in ta.dtype.names if c not in MEASURED]
    assert ta.dtype.names == tb.dtype.names and len(cols) == len(ta.dtype.names) - len(MEASURED) >= 16, \
        ta.dtype.names
    for col in cols:
        assert np.abs(ta[col][-2:] - tb[col][-2:]).max() < 1e-8, col


@pytest.mark.timeout(120)
def test_failure_on_one_rank_aborts_the_job():
    t0 = time.perf_counter()
    proc = mpirun(3, "abort_one_rank.py", timeout=60)
    took = time.perf_counter() - t0
    assert proc.returncode != 0
    assert "[rank 1/3]" in proc.stderr and "forced failure on purpose" in proc.stderr, proc.stderr[-2000:]
    assert took < 30, f"abort took {took:.1f} s"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind, status", [("input", 2), ("simulation", 3)])
def test_exception_on_one_rank_aborts_the_job_with_its_exit_status(kind, status):
    """InputError -> 2 and SimulationError -> 3, as the CLI reports them, survive MPI_Abort."""
    proc = mpirun(2, "abort_one_rank.py", kind, timeout=60)
    assert proc.returncode == status, f"exit {proc.returncode}\n{proc.stderr[-2000:]}"
    name = {"input": "InputError", "simulation": "SimulationError"}[kind]
    assert f"[rank 1/2] aborting all ranks (exit status {status}): {name}: forced failure on purpose" \
        in proc.stderr, proc.stderr[-2000:]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 3])
def test_comm_operations_on_n_ranks(n, tmp_path):
    """engine.comm.Comm over MPI against values written out from the rank numbers."""
    out = tmp_path / "comm.json"
    _ok(mpirun(n, "comm_ops.py", out, timeout=90))
    ranks = json.loads(out.read_text())
    S = n * (n - 1) / 2  # sum of the rank numbers
    assert [g["rank"] for g in ranks] == list(range(n)) and {g["size"] for g in ranks} == {n}
    for r, g in enumerate(ranks):
        assert g["is_root"] == (r == 0)
        assert g["sum_float"] == S + 0.5 * n and g["max_int"] == 10 * (n - 1) and g["min_int"] == 3
        assert g["sum_numpy"] == [S, 2 * S, n]
        assert g["max_numpy_out"] == [n - 1, 0, 7] and g["max_numpy_out_is_out"]
        assert g["sum_torch"] == [[S, n], [2 * n, S]] and g["sum_torch_dtype"] == "torch.float64"
        assert g["sum_bf16"] == [n * (n + 1) / 2] * 4 and g["sum_bf16_dtype"] == "torch.bfloat16"
        assert g["bcast"] == {"from": 0, "x": [1, 2]}
        assert g["gather"] == ([["r", s] for s in range(n)] if r == 0 else None)
        assert g["allgather"] == [s * s for s in range(n)]
        assert g["alltoall"] == [[s, r] for s in range(n)]
        assert g["ring"] == {"from": (r - 1) % n} and g["to_nobody"] is None
        assert g["exchange"] == {str(s): [s, r, 100 * s + r] for s in range(n)}
        if r > 0:
            assert g["gather_by_id"] is None
    assert ranks[0]["pingpong"] == [6.0, 8.0] and ranks[1]["pingpong"] == [3.0, 4.0]
    ids = list(range(3 * n))
    assert ranks[0]["gather_by_id"] == {"ids": ids, "value": [1.5 * i for i in ids],
                                        "vec": [[i, -i] for i in ids]}  # "partial" is None on rank 1: left out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sevennet_per_layer_halo_on_2_ranks_matches_one_rank(tmp_path):
    pytest.importorskip("sevenn")
    out = tmp_path / "sevenn.json"
    _ok(mpirun(2, "check_sevenn.py", out))
    res = json.loads(out.read_text())
    assert res["layers"] == 5
    for q in ("energy", "forces", "virial", "energies"):  # float32 model
        assert res[q] < 1e-5, res
