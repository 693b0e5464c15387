"""kernels/dtypes.py: the one table of dtype names and the one device resolver."""
from __future__ import annotations

import pytest
import torch

from atomsim.kernels import dtypes
from atomsim.kernels.dtypes import resolve_device, torch_dtype


@pytest.mark.parametrize("name", ["float32", "float64", "bfloat16", "float", "double"])
def test_names_are_torchs_own(name):
    # torch's attribute of the same name is the independent answer (torch.float is float32, torch.double float64)
    want = getattr(torch, name)
    assert torch_dtype(name) is want
    assert torch_dtype(f"torch.{name}") is want
    assert torch_dtype(name.upper()) is want
    assert torch_dtype(want) is want


@pytest.mark.parametrize("bad", ["float16x", "int64", "", "fp33"])
def test_unknown_dtype_names_the_allowed_ones(bad):
    with pytest.raises(ValueError, match=r"potential\.dtype: unknown dtype .*float32, float64, bfloat16"):
        torch_dtype(bad, "potential.dtype")


def test_auto_follows_torch(monkeypatch):
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(dtypes.torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    assert resolve_device(torch.device("cpu")) == "cpu"
    with pytest.raises(ValueError, match="sees no CUDA device"):
        resolve_device("cuda")


@pytest.mark.parametrize("bad", ["gpu", "mps", "cuda:x", "cuda:-1", "cpu:0:1"])
def test_unknown_device_is_refused(bad):
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device(bad)


def test_cuda_index_checked_against_device_count(monkeypatch):
    monkeypatch.setattr(dtypes.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dtypes.torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda") == "cuda"
    assert resolve_device("CUDA:1") == "cuda:1"
    assert torch.device(resolve_device("cuda:1")) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"'cuda:2' but torch sees 2 CUDA device\(s\): cuda:0 \.\. cuda:1"):
        resolve_device("cuda:2", "potential.device")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resolved_cuda_devices_are_usable():
    for name in ["auto", "cuda", f"cuda:{torch.cuda.device_count() - 1}"]:
        x = torch.ones(3, device=resolve_device(name))
        assert x.is_cuda and float(x.sum()) == 3.0
