"""N->M rank restarts for thermostatted and barostatted runs: a restart written on 2 ranks resumes
on 1 rank and on 3 ranks and continues the uninterrupted 2-rank trajectory to round-off.

Langevin noise is a pure function of (seed, step, atom id) (integrators/noise.py), and the
Nose-Hoover chain / barostat state lives in the restart file, so the resumed runs may differ from
the reference only by the order of the force and reduction sums. Each case launches
``python -m atomsim run`` (under the venv's mpiexec for several ranks) on a YAML input.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from atomsim.engine.restart import ShardedRestart, find_restart
from atomsim.engine.thermo import MEASURED

pytestmark = pytest.mark.mpi

MPIEXEC = Path(sys.executable).parent / "mpiexec"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONWARNINGS": "ignore"}
# round-off (1e-16 relative) amplified over 10 hot-LJ steps stays far below this
TOL = 1e-10
INPUT = """
system: {{structure: {{lattice: fcc, symbols: Cu, a: 3.61, repeat: [3, 3, 3]}}, temperature_K: 1500, seed: 5}}
potential: {{model: lj, params: {{epsilon: 0.4, sigma: 2.3, cutoff: 5.0}}, dtype: float64, device: cpu}}
dynamics: {{timestep_fs: 2.0, steps: 20, tdamp_fs: 50.0, {dynamics}}}
neighbor: {{skin: 0.6}}
parallel: {{halo: full}}
output: {{directory: out, thermo_every: 5, trajectory_every: 0, restart_every: 10, progress: false}}
"""
CASES = {
    "langevin": "integrator: langevin",
    "npt": "integrator: npt, pressure_GPa: 2.0, pdamp_fs: 100.0",  # Nose-Hoover chain + barostat
}


def _run(directory: Path, ranks: int, *extra: str) -> None:
    cmd = [sys.executable, "-m", "atomsim", "run", "input.yaml", *extra]
    if ranks > 1:
        if not MPIEXEC.exists():
            pytest.skip(f"no mpiexec next to {sys.executable} (install atomsim[mpi])")
        cmd = [str(MPIEXEC), "-n", str(ranks), *cmd]
    try:
        proc = subprocess.run(cmd, cwd=directory, env=ENV, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{ranks} rank(s) did not finish in 120 s (deadlock?)\n{exc.stdout}\n{exc.stderr}")
    assert proc.returncode == 0, f"{ranks} rank(s): exit {proc.returncode}\n{proc.stderr[-3000:]}"


def _restart(directory: Path) -> tuple[dict, dict]:
    """The newest restart's arrays (whole system, by id) and its metadata (step, integrator state).

    2 and 3 ranks write sharded restarts (restart.json + shards), 1 rank restart.npz; integrator
    state is JSON in both (array values under ``integ/`` in the .npz, none for these integrators).
    """
    r = find_restart(directory / "out")
    out = {k: r.arrays[k] for k in ("positions", "velocities", "masses", "numbers", "ids", "cell")}
    meta = dict(r.meta)
    if isinstance(r, ShardedRestart):
        meta["integrator_state"] = {k: v[1] for k, v in meta["integrator_state"].items()}
    else:
        with np.load(r.path) as d:
            out.update({k: d[k] for k in d.files if k.startswith("integ/")})
        meta["integrator_state"] = {k: v[1] for k, v in meta["integrator_state"].items() if v[0] == "json"}
    return out, meta


def _floats(tree, prefix=""):
    """Every number in a nested JSON value, by dotted key."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _floats(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in _floats(sub, f"{prefix}{i}.").items()}
    return {prefix: tree} if isinstance(tree, (int, float)) and not isinstance(tree, bool) else {}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("case", list(CASES))
def test_restart_written_on_2_ranks_resumes_on_1_and_3(case, tmp_path):
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "input.yaml").write_text(INPUT.format(dynamics=CASES[case]))
    _run(ref, 2)  # sharded restarts at steps 10 (restart.prev.json) and 20 (restart.json)
    ra, meta_a = _restart(ref)
    assert meta_a["step"] == 20 and meta_a["integrator"] == CASES[case].split(",")[0].split()[1]
    ta = np.genfromtxt(ref / "out" / "thermo.csv", delimiter=",", names=True)
    cols = [c for c in ta.dtype.names if c not in MEASURED]  # timing, memory: they measure the machine
    for ranks in (1, 3):
        d = tmp_path / f"resumed_on_{ranks}"
        shutil.copytree(ref, d)
        (d / "out" / "restart.json").unlink()  # leaves the step-10 (sharded) restart written on 2 ranks
        _run(d, ranks, "--resume")
        rb, meta_b = _restart(d)
        assert meta_b["step"] == 20
        assert np.array_equal(ra["ids"], rb["ids"])
        for key in ("positions", "velocities", "cell"):
            err = np.abs(ra[key] - rb[key]).max()
            assert err < TOL, f"{case} on {ranks} rank(s): {key} differs by {err:.2e}"
        assert sorted(ra) == sorted(rb)
        for key in ra:
            if key.startswith("integ/"):
                assert np.abs(ra[key] - rb[key]).max() < TOL, f"{case} on {ranks} rank(s): {key}"
        sa, sb = _floats(meta_a["integrator_state"]), _floats(meta_b["integrator_state"])
        assert sa.keys() == sb.keys()
        for key in sa:  # thermostat chain, barostat momenta, ...
            assert abs(sa[key] - sb[key]) <= TOL * max(1.0, abs(sa[key])), f"{case} on {ranks}: {key}"
        tb = np.genfromtxt(d / "out" / "thermo.csv", delimiter=",", names=True)
        assert ta.dtype.names == tb.dtype.names
        assert list(ta["step"][-2:]) == [15, 20] and list(tb["step"][-2:]) == [15, 20]
        for col in cols:  # energies, temperature, pressure tensor, volume, conserved quantity
            err = np.abs(ta[col][-2:] - tb[col][-2:]).max()
            assert err <= TOL * max(1.0, np.abs(ta[col][-2:]).max()), f"{case} on {ranks}: {col} {err:.2e}"
