"""The dtype and device names atomsim accepts, resolved in one place.

Why here: every layer (potentials, engine, front ends) turns a user's
``dtype: float32`` / ``device: auto`` into torch objects, and kernels/ is the
one subpackage all of them may import. One table means one set of accepted
names and one error message.
"""
from __future__ import annotations

from typing import Union

import torch

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
# torch's own aliases (torch.float, torch.double), accepted as names too
_ALIASES = {"float": "float32", "double": "float64"}


def torch_dtype(name: Union[str, torch.dtype], what: str = "dtype") -> torch.dtype:
    """``"float32"`` / ``"torch.float64"`` / ``"double"`` / a torch.dtype -> the torch.dtype.

    ``what`` names the setting in the error (e.g. ``"potential.dtype"``).
    """
    if isinstance(name, torch.dtype):
        return name
    key = str(name).strip().lower().removeprefix("torch.")
    key = _ALIASES.get(key, key)
    if key not in DTYPES:
        raise ValueError(f"{what}: unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[key]


def resolve_device(name: Union[str, torch.device], what: str = "device") -> str:
    """``"auto"`` -> ``"cuda"`` when torch sees a GPU, else ``"cpu"``; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` checked.

    Checking here turns a missing GPU or a wrong index into one clear message
    instead of a CUDA error deep inside the first kernel.
    """
    key = str(name).strip().lower()
    if key == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if key == "cpu":
        return "cpu"
    kind, _, index = key.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ValueError(f"{what}: unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(f"{what} is {name!r} but torch sees no CUDA device; use 'auto' or 'cpu'")
    if index and int(index) >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise ValueError(f"{what} is {name!r} but torch sees {n} CUDA device(s): cuda:0 .. cuda:{n - 1}")
    return key
