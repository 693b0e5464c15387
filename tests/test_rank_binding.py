"""One rank per GPU under MPI, tested on CPU: local rank, device binding, staged halo exchanges.

Unit tests use fake launcher variables and device counts; the MPI test runs
``tests/mpi_scripts/halo_staging.py`` on 2 and 3 ranks: the halo through reused host buffers
(the pinned-staging path, pinning a no-op on CPU) and through zero-copy views, both against the
1-rank forces, energies and virial.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_mpi import _ok, mpirun

from atomsim.engine.comm import Comm, bind_device, local_rank_from_env, rank_device
from atomsim.engine.halo_staging import HaloStaging, cuda_aware_mpi


@pytest.mark.parametrize("var", ["MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK",
                                 "SLURM_LOCALID", "PALS_LOCAL_RANKID"])
def test_local_rank_from_each_launcher_variable(var):
    assert local_rank_from_env({var: "3", "PMI_RANK": "11"}) == 3
    assert local_rank_from_env({var: " 0 "}) == 0


def test_local_rank_absent_or_garbled_is_none():
    assert local_rank_from_env({}) is None
    assert local_rank_from_env({"MPI_LOCALRANKID": "x", "PMI_RANK": "2"}) is None
    # the launcher's own variable wins over a scheduler's (hydra inside a Slurm allocation)
    assert local_rank_from_env({"MPI_LOCALRANKID": "1", "SLURM_LOCALID": "0"}) == 1


@pytest.mark.parametrize("local, count, want", [(0, 4, "cuda:0"), (3, 4, "cuda:3"), (5, 4, "cuda:1"),
                                                (2, 1, "cuda:0"), (7, 8, "cuda:7")])
def test_bind_cuda_round_robin(local, count, want):
    assert bind_device("cuda", local, count) == want


def test_bind_keeps_explicit_choices_and_rejects_no_gpu():
    assert bind_device("cpu", 3, 0) == "cpu"
    assert bind_device("cuda:2", 5, 4) == "cuda:2"
    with pytest.raises(ValueError, match="potential.device"):
        bind_device("cuda", 0, 0)


def test_serial_rank_device_and_local_rank(monkeypatch):
    monkeypatch.setenv("MPI_LOCALRANKID", "1")
    assert Comm().local_rank() == 1  # the launcher's word, even on a 1-rank communicator
    assert rank_device("cpu", Comm()) == "cpu"
    monkeypatch.delenv("MPI_LOCALRANKID")
    for var in ("OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "PALS_LOCAL_RANKID"):
        monkeypatch.delenv(var, raising=False)
    assert Comm().local_rank() == 0


def test_cuda_aware_switch(monkeypatch):
    monkeypatch.setenv("ATOMSIM_CUDA_AWARE_MPI", "1")
    assert cuda_aware_mpi()
    monkeypatch.setenv("ATOMSIM_CUDA_AWARE_MPI", "0")
    assert not cuda_aware_mpi()
    monkeypatch.delenv("ATOMSIM_CUDA_AWARE_MPI")
    assert cuda_aware_mpi() in (True, False)  # asks the library; the venv's mpich wheel: no


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_staged_exchange_to_self_reuses_buffers(dtype):
    """Serial Comm: a message to oneself through the staging path equals the rows sent."""
    st = HaloStaging(Comm(), mode="pinned")
    rows = torch.arange(30, dtype=torch.float64).reshape(10, 3).to(dtype)
    got = st.finish(st.begin({0: rows}, {0: (10, 3)}, rows, tag=1))[0]
    assert got.dtype == dtype and torch.equal(got, rows)
    ptrs = {k: b.data_ptr() for k, b in st._host.items()}
    got2 = st.finish(st.begin({0: rows[:4] * 2}, {0: (4, 3)}, rows, tag=1))[0]
    assert torch.equal(got2, rows[:4] * 2) and torch.equal(got, rows)  # an earlier result is not overwritten
    assert {k: b.data_ptr() for k, b in st._host.items()} == ptrs  # no new host buffer for a smaller message
    assert st.modes_used == {"pinned"} and st.nbytes >= 2 * rows.numel() * rows.element_size()
    assert HaloStaging(Comm()).mode_for(rows) == "host"
    with pytest.raises(ValueError, match="ATOMSIM_HALO_STAGING"):
        HaloStaging(Comm(), mode="gpu")


@pytest.mark.mpi
@pytest.mark.timeout(300)
@pytest.mark.parametrize("ranks", [2, 3])
def test_staged_halo_on_n_ranks_equals_one_rank(tmp_path, ranks):
    out = tmp_path / "staging.json"
    _ok(mpirun(ranks, "halo_staging.py", out, timeout=280))
    res = json.loads(out.read_text())
    for r, got in enumerate(res):
        assert got["local_rank"] == got["split_local_rank"] == r  # one node: local rank = world rank
        assert got["env_local_rank"] in (None, r)
        assert got["bound"] == f"cuda:{r % 2}" and got["reused"]
    cases = res[0]["cases"]
    assert len(cases) == 18
    for key, c in cases.items():
        mode = key.rsplit("/", 1)[1]
        assert c["modes"] == [mode], key
        assert c["repeat_equal"] and c["rebuilt"] == 1, key
        for when in ("start", "moved"):
            for q, err in c[when].items():
                assert err < 1e-11, (key, when, q, err)
        if mode == "pinned":  # the staged path moves the same bytes: identical results
            assert c == {**cases[key.replace("pinned", "host")], "modes": ["pinned"]}, key
    assert np.isfinite([c["moved"]["forces"] for c in cases.values()]).all()
