"""`atomsim train --resume` under data parallelism: a 2-rank training run killed (SIGKILL on the
launcher's process group) after a few epochs and resumed on 2 ranks gives the same final model, bit
for bit, and the same per-epoch history as the 2-rank run that was never interrupted.

The reference is the uninterrupted run on the same rank count, so the gradient allreduce sums in
the same order and any difference comes from what the resume restores (weights, EMA, optimiser,
step counter, learning-rate schedule, history).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from atomsim.training.datagen import write_dataset

from test_train_cli import CONFIG, _epoch_saved, _history  # the same tiny config and readers as 1 rank

pytestmark = pytest.mark.mpi

EPOCHS = 40  # ~0.2 s each: seconds of margin for the kill after epoch 2 on a loaded machine
MPIEXEC = Path(sys.executable).parent / "mpiexec"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONWARNINGS": "ignore"}


def _train(config: Path, *extra: str) -> list[str]:
    return [str(MPIEXEC), "-n", "2", sys.executable, "-m", "atomsim", "train", str(config), *extra]


def _config(tmp_path: Path, data: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(CONFIG.format(data=data, out=tmp_path / name, epochs=EPOCHS))
    return path


def _kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL mpiexec's process group and every process it started (no clean-up, as a crash)."""
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    os.killpg(proc.pid, signal.SIGKILL)
    for child in children:  # a rank outside the group must not write train_state.pt afterwards
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=60)
    psutil.wait_procs(children, timeout=30)


@pytest.mark.timeout(300)
def test_train_on_2_ranks_killed_and_resumed_equals_uninterrupted(tmp_path):
    from safetensors.torch import load_file

    if not MPIEXEC.exists():
        pytest.skip(f"no mpiexec next to {sys.executable} (install atomsim[mpi])")
    data = tmp_path / "emt.extxyz"
    write_dataset(data, 24, seed=3, elements=["Cu", "Au", "Ni"])
    full = subprocess.run(_train(_config(tmp_path, data, "full")), env=ENV, capture_output=True, text=True,
                          timeout=120)
    assert full.returncode == 0, full.stderr[-3000:]
    assert "2 rank(s)" in full.stdout, full.stdout[-2000:]

    cut_cfg = _config(tmp_path, data, "cut")
    state_file = tmp_path / "cut" / "train_state.pt"
    proc = subprocess.Popen(_train(cut_cfg), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        while _epoch_saved(state_file) < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
    finally:
        _kill_job(proc)
    killed_at = _epoch_saved(state_file)
    assert 2 <= killed_at < EPOCHS, f"killed at epoch {killed_at} (training must be cut short)"
    assert not (tmp_path / "cut" / "model").exists()  # finalize never ran

    resumed = subprocess.run(_train(cut_cfg, "--resume"), env=ENV, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = " ".join(resumed.stdout.split())
    assert f"at epoch {killed_at}" in out and "2 rank(s)" in out, resumed.stdout[-2000:]
    a = load_file(tmp_path / "full" / "model" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    full = _history(tmp_path / "full")
    assert full == _history(tmp_path / "cut")
    assert len(full) >= killed_at + 3  # the resumed run trained on (early stopping may end both before EPOCHS)
