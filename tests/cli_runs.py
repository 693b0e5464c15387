"""Run an input file through the real command line, on one rank or under the venv's mpiexec.

Shared by the multi-rank tests that compare N ranks with one rank (test_mpi_gnn_md.py,
test_device_step_mpi.py): same launcher, environment and failure report for both.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

MPIEXEC = Path(sys.executable).parent / "mpiexec"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def run_input(tmp_path: Path, name: str, text: str, ranks: int, timeout: int = 400) -> Path:
    """Write ``text`` as ``<name>.yaml``, run `atomsim run` on ``ranks`` ranks; the output folder."""
    inp = tmp_path / f"{name}.yaml"
    inp.write_text(text)
    cmd = [sys.executable, "-m", "atomsim", "run", str(inp)]
    if ranks > 1:
        if not MPIEXEC.exists():
            pytest.skip(f"no mpiexec next to {sys.executable} (install atomsim[mpi])")
        cmd = [str(MPIEXEC), "-n", str(ranks), *cmd]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return tmp_path / name
