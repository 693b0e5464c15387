"""`atomsim train --resume` through the command line: a training run killed (SIGKILL) after a few
epochs and resumed gives the same final model, bit for bit, as the run that was never interrupted."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from atomsim.training.datagen import write_dataset

EPOCHS = 12
CONFIG = """
data: {data}
output: {out}
name: tiny
model: {{width: 8, depth: 2, n_rbf: 4, cutoff: 4.0, readout_hidden: 4}}
batch_size: 4
epochs: {epochs}
val_fraction: 0.2
test_fraction: 0.0
lr: 0.005
seed: 0
threads: 1
"""
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
TRAIN = [sys.executable, "-m", "atomsim", "train"]


def _config(tmp_path: Path, data: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(CONFIG.format(data=data, out=tmp_path / name, epochs=EPOCHS))
    return path


def _epoch_saved(state_file: Path) -> int:
    try:
        return int(torch.load(state_file, weights_only=True)["epoch"])
    except Exception:  # not written yet
        return 0


def _history(out: Path) -> list:
    """Per-epoch losses and errors (not the wall-clock fields)."""
    rows = json.loads((out / "history.json").read_text())
    return [{k: v for k, v in r.items() if "time" not in k and not k.endswith("_s")} for r in rows]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_train_killed_and_resumed_from_the_cli_equals_uninterrupted(tmp_path):
    from safetensors.torch import load_file

    data = tmp_path / "emt.extxyz"
    write_dataset(data, 24, seed=3, elements=["Cu", "Au", "Ni"])
    full = subprocess.run(TRAIN + [str(_config(tmp_path, data, "full"))], env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-3000:]

    cut_cfg = _config(tmp_path, data, "cut")
    state_file = tmp_path / "cut" / "train_state.pt"
    proc = subprocess.Popen(TRAIN + [str(cut_cfg)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while _epoch_saved(state_file) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # as a crash or a scheduler would: no clean-up
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    killed_at = _epoch_saved(state_file)
    assert 3 <= killed_at < EPOCHS, killed_at
    assert not (tmp_path / "cut" / "model").exists()  # finalize never ran

    resumed = subprocess.run(TRAIN + [str(cut_cfg), "--resume"], env=ENV, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in " ".join(resumed.stdout.split()), resumed.stdout[-2000:]
    a = load_file(tmp_path / "full" / "model" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _history(tmp_path / "full") == _history(tmp_path / "cut")
    assert len(_history(tmp_path / "cut")) == EPOCHS
