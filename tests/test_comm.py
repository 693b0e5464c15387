"""engine.comm.Comm in its serial form (size 1, no MPI): every operation is MPI's on one rank.

The MPI form runs the same operations on 2 and 3 ranks in tests/test_mpi.py
(comm_ops.py, and the abort exit statuses).
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase.build import bulk

from atomsim.engine import comm as comm_mod
from atomsim.engine.comm import Comm, as_comm, compute_dims, launch_rank, launched_under_mpi, world_comm
from atomsim.engine.errors import InputError, exit_status
from atomsim.engine.safety import SimulationError

LAUNCH_VARS = comm_mod._SIZE_VARS + comm_mod._RANK_VARS


@pytest.fixture
def no_launcher(monkeypatch):
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)


def test_serial_comm_needs_no_mpi():
    c = Comm()
    assert (c.rank, c.size, c.is_root) == (0, 1, True)
    code = ("import sys; from atomsim.engine.comm import world_comm; import atomsim.engine.simulation; "
            "c = world_comm(); c.allreduce_sum(1.0); c.gather_by_id([0]); print('mpi4py' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr[-2000:]


def test_serial_reductions_return_the_one_rank_value():
    c = Comm()
    assert c.allreduce_sum(2.5) == 2.5 and c.allreduce_max(3) == 3 and c.allreduce_min(-1) == -1
    a = np.array([1.0, -2.0])
    np.testing.assert_array_equal(c.allreduce_sum(a), a)
    out = np.zeros(2)
    assert c.allreduce_max(a, out=out) is out
    np.testing.assert_array_equal(out, a)
    t = torch.tensor([1.0, 2.0], dtype=torch.bfloat16)
    assert torch.equal(c.allreduce_sum(t), t)


def test_serial_objects_and_messages_to_oneself():
    c = Comm()
    assert c.bcast({"a": 1}) == {"a": 1}
    assert c.gather("x") == ["x"] and c.allgather(3) == [3]
    assert c.alltoall([("to", 0)]) == [("to", 0)]
    with pytest.raises(ValueError, match="one entry per rank"):
        c.alltoall([1, 2])
    assert c.sendrecv({"p": 1}, dest=0, source=0) == {"p": 1}  # a periodic neighbor that is oneself
    assert c.sendrecv("lost", dest=None, source=None) is None  # an open boundary: no partner
    with pytest.raises(ValueError, match="only rank 0"):
        c.sendrecv(1, dest=1, source=1)
    send = {0: np.array([1.5, 2.5]).view(np.uint8)}
    recv = {0: np.empty(16, dtype=np.uint8)}
    c.exchange(send, recv)
    np.testing.assert_array_equal(recv[0].view(np.float64), [1.5, 2.5])
    c.barrier()
    with pytest.raises(RuntimeError, match="another rank"):
        c.send(np.zeros(2), dest=0)


def test_gather_by_id_sorts_rows_by_id_and_drops_missing_arrays():
    ids = np.array([5, 0, 3])
    g = Comm().gather_by_id(ids, pos=np.array([[5.0, 0], [0, 0], [3, 0]]), energy=ids * 2.0, forces=None)
    assert set(g) == {"ids", "pos", "energy"}
    np.testing.assert_array_equal(g["ids"], [0, 3, 5])
    np.testing.assert_array_equal(g["pos"][:, 0], [0, 3, 5])
    np.testing.assert_array_equal(g["energy"], [0, 6, 10])


def test_serial_abort_exits_with_the_code_and_the_message(capsys):
    with pytest.raises(SystemExit) as exc:
        Comm().abort(3, "stopped")
    assert exc.value.code == 3
    assert capsys.readouterr().err == "stopped\n"


def test_abort_handler_is_a_no_op_on_one_rank():
    before = sys.excepthook
    Comm().install_abort_handler()
    assert sys.excepthook is before


def test_exit_status_follows_the_cli():
    from pydantic import BaseModel, ValidationError

    class M(BaseModel):
        x: int

    try:
        M(x="no")
    except ValidationError as err:
        validation = err
    assert exit_status(InputError("bad key")) == 2
    assert exit_status(validation) == 2
    assert exit_status(FileNotFoundError("x.yaml")) == 2
    assert exit_status(SimulationError("blow-up")) == 3
    assert exit_status(RuntimeError("bug")) == 1


def test_launch_detection_reads_the_launchers_environment(no_launcher, monkeypatch):
    assert not launched_under_mpi() and launch_rank() == 0
    monkeypatch.setenv("PMI_SIZE", "1")  # `mpiexec -n 1`: serial
    assert not launched_under_mpi()
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
    assert launched_under_mpi() and launch_rank() == 3


def test_world_comm_is_serial_and_one_object_without_a_launcher(no_launcher, monkeypatch):
    monkeypatch.setattr(comm_mod, "_WORLD", None)
    w = world_comm()
    assert w.size == 1 and w is world_comm() and as_comm(None) is w
    c = Comm()
    assert as_comm(c) is c


def test_compute_dims_is_mpis_balanced_grid():
    assert compute_dims(1) == (1, 1, 1)
    pytest.importorskip("mpi4py")
    expected = {2: (2, 1, 1), 4: (2, 2, 1), 6: (3, 2, 1), 8: (2, 2, 2), 12: (3, 2, 2), 7: (7, 1, 1)}
    assert {n: compute_dims(n) for n in expected} == expected


@pytest.mark.parametrize("halo", ["full", "per-layer"])
def test_domain_decomposition_on_the_serial_comm_matches_serial_forces(halo):
    """ParallelForces on one rank without MPI: ghosts come from oneself through the Comm's self-messages."""
    from atomsim.engine.forces import SerialForces
    from atomsim.engine.parallel_forces import ParallelForces
    from atomsim.engine.state import MDState
    from atomsim.potentials.lj import LennardJones

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3))
    atoms.positions += np.random.default_rng(1).normal(0, 0.1, atoms.positions.shape)
    pot = LennardJones(epsilon=0.4, sigma=2.3, cutoff=5.0, dtype="float64")
    ref = SerialForces(pot, skin=1.0).compute(MDState.from_atoms(atoms), virial=True)
    st = MDState.from_atoms(atoms)
    prov = ParallelForces(pot, Comm(), skin=1.0, halo=halo)
    prov.prepare(st)
    res = prov.compute(st, virial=True)
    assert prov.ghosts.n > 0  # the periodic images travelled as ghosts
    order = np.argsort(st.ids.numpy())
    assert abs(res.energy - ref.energy) < 1e-10 * abs(ref.energy)
    np.testing.assert_allclose(res.forces.numpy()[order], ref.forces.numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(res.virial.numpy(), ref.virial.numpy(), rtol=0, atol=1e-9)
