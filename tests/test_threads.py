"""kernels/threads.py: one call sets torch, numba, BLAS and OpenMP pools to the same count.

The references are each library's own report (torch.get_num_threads, numba.get_num_threads,
threadpoolctl.threadpool_info) read in a fresh process, and the process's CPU affinity mask.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from atomsim.engine.config import load_config
from atomsim.engine.errors import InputError
from atomsim.kernels.threads import available_cores, resolve_threads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLEAN_ENV = {k: v for k, v in os.environ.items()
             if k not in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def _run(code: str, env=None) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                         env=CLEAN_ENV if env is None else env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


REPORT_AFTER = """
import json, numpy, scipy.linalg, torch, numba  # load every BLAS/OpenMP library first
from atomsim.kernels.threads import configure_threads, thread_report
reports = [(k, configure_threads(k), thread_report()) for k in {ks}]
print(json.dumps(reports))
"""


@pytest.mark.skipif(available_cores() < 2, reason="needs 2 cores: OpenBLAS caps its pool at the cores it saw")
def test_configure_threads_sets_every_pool():
    """2 then 1 then 2: torch, numba, every BLAS and OpenMP library report the count just set;
    torch's inter-op pool takes the first count only (torch allows setting it once)."""
    reports = _run(REPORT_AFTER.format(ks=(2, 1, 2)))
    for k, set_to, rep in reports:
        assert set_to == k
        assert rep["torch"] == k and rep["numba"] == k, rep
        blas = [p for p in rep["pools"] if p["user_api"] == "blas"]
        assert blas, "no BLAS library loaded: numpy/scipy should have brought OpenBLAS"
        assert all(p["num_threads"] == k for p in rep["pools"]), rep["pools"]
        assert rep["torch_interop"] == 2


def test_auto_follows_affinity_env_and_system_size():
    """auto = the affinity mask (not os.cpu_count), divided by ranks per node, one thread per
    1000 atoms at most; OMP_NUM_THREADS wins when set."""
    code = """
import json, os
from atomsim.kernels.threads import resolve_threads
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
print(json.dumps([resolve_threads("auto"), os.cpu_count()]))
"""
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this platform")
    n_auto, n_cpu = _run(code)
    assert n_auto == 1  # one CPU in the mask, whatever cpu_count says
    cores = len(os.sched_getaffinity(0))
    env = os.environ.get("OMP_NUM_THREADS")
    if env is None:
        assert resolve_threads("auto") == cores
        assert resolve_threads("auto", ranks_per_node=cores) == 1
        assert resolve_threads("auto", ranks_per_node=2 * cores) == 1
        assert resolve_threads("auto", atoms_per_rank=500) == 1
        assert resolve_threads("auto", atoms_per_rank=10**6) == cores
    assert resolve_threads(3) == 3
    with pytest.raises(ValueError, match="integer >= 1"):
        resolve_threads(0)
    with pytest.raises(ValueError, match="integer >= 1"):
        resolve_threads(True)
    with_env = _run("import json; from atomsim.kernels.threads import resolve_threads; "
                    "print(json.dumps(resolve_threads('auto', atoms_per_rank=10)))",
                    env={**CLEAN_ENV, "OMP_NUM_THREADS": "3"})
    assert with_env == 3


@pytest.mark.parametrize("value", ["0", "-2", "two", "true", "2.5", "'4'"])
def test_yaml_threads_field_rejects_with_a_clear_message(value):
    with pytest.raises(InputError) as err:
        load_config(os.path.join(ROOT, "examples", "lj_argon.yaml"), [f"parallel.threads={value}"])
    msg = str(err.value)
    assert "parallel.threads" in msg and "'auto' or an integer >= 1" in msg, msg


@pytest.mark.parametrize("value,expected", [("auto", "auto"), ("1", 1), ("3", 3)])
def test_yaml_threads_field_accepts(value, expected):
    cfg = load_config(os.path.join(ROOT, "examples", "lj_argon.yaml"), [f"parallel.threads={value}"])
    assert cfg.parallel.threads == expected


def test_run_and_calculator_configure_every_pool(tmp_path):
    """A Simulation with parallel.threads: 1 and an AtomsimCalculator(threads=1) leave torch, numba
    and every BLAS/OpenMP pool at 1 (they start at the cores' count in a fresh process)."""
    code = f"""
import json, numpy, scipy.linalg
from ase.build import bulk
from atomsim.engine.config import load_config
from atomsim.engine.simulation import Simulation
from atomsim.kernels.threads import configure_threads, thread_report
from atomsim.calculator import AtomsimCalculator
out = []
cfg = load_config({os.path.join(ROOT, "examples", "lj_argon.yaml")!r},
                  ["parallel.threads=1", "dynamics.steps=2", "output.directory={tmp_path / 'run'}",
                   "system.structure.repeat=[2,2,2]"])
sim = Simulation(cfg)
sim.run()
out.append(thread_report())
configure_threads(2)
atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((2, 2, 2))
atoms.calc = AtomsimCalculator("lj", threads=1, epsilon=0.0104, sigma=3.4, cutoff=6.0)
atoms.get_forces()
out.append(thread_report())
print(json.dumps(out))
"""
    for rep in _run(code):
        assert rep["torch"] == 1 and rep["numba"] == 1, rep
        assert all(p["num_threads"] == 1 for p in rep["pools"]), rep["pools"]


def test_ranks_per_node_counts_ranks_on_this_host(monkeypatch):
    """Ranks on the same host share its cores: 3 ranks here and 1 elsewhere -> 3 (the 4th -> 1)."""
    import socket

    from atomsim.kernels import threads

    class TwoHosts:
        size = 4

        def __init__(self, rank):
            self.rank = rank

        def allgather(self, mine):
            hosts = ["here", "here", "there", "here"]
            assert mine == hosts[self.rank]
            return hosts

    monkeypatch.setattr(socket, "gethostname", lambda: "here")
    assert threads.ranks_per_node(TwoHosts(0)) == 3
    monkeypatch.setattr(socket, "gethostname", lambda: "there")
    assert threads.ranks_per_node(TwoHosts(2)) == 1
    assert threads.ranks_per_node(None) == 1
