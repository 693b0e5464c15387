"""Load a SevenNet checkpoint with ``torch.load(weights_only=True)`` and an explicit allow-list.

Why: sevenn's own loader calls ``torch.load(weights_only=False)``, which may
execute code stored in the file. atomsim's rule is that loading a model never
does. SevenNet-0's ``.pth`` holds, besides tensors and plain Python values,
a few numpy arrays (per-species energy shifts in its config); unpickling
them needs exactly the numpy globals below, nothing else.

The rest of sevenn's loading (config back-compatibility, model build,
state-dict patching) is reused as is: only the unpickler is swapped, for the
duration of one load, by patching the name sevenn's checkpoint module calls.
If a later sevenn renames it, loading fails loudly instead of silently
falling back to an unsafe load.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator
from unittest import mock

import numpy as np
import torch

#: numpy globals a SevenNet checkpoint's config may contain: ndarray reconstruction
#: and the dtypes of its arrays. Nothing that runs arbitrary code.
NUMPY_ALLOW_LIST = [
    (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
    np.ndarray,
    np.dtype,
    type(np.dtype(np.float32)),
    type(np.dtype(np.float64)),
    type(np.dtype(np.int64)),
    type(np.dtype(np.int32)),
    type(np.dtype(np.bool_)),
]


def safe_torch_load(path, map_location="cpu", **_ignored):
    """``torch.load`` that always uses ``weights_only=True`` with :data:`NUMPY_ALLOW_LIST`."""
    with torch.serialization.safe_globals(NUMPY_ALLOW_LIST):
        return torch.load(path, map_location=map_location, weights_only=True)


@contextmanager
def _sevenn_loads_safely() -> Iterator[None]:
    import sevenn.checkpoint as sc

    if not hasattr(sc, "torch_load"):
        raise RuntimeError(
            "this sevenn version no longer loads checkpoints through sevenn.checkpoint.torch_load; "
            "atomsim-sevenn was checked against sevenn==0.13.0 and will not fall back to an unsafe load"
        )
    with mock.patch.object(sc, "torch_load", safe_torch_load):
        yield


def load_sevenn_checkpoint(name_or_path: str):
    """A loaded ``sevenn.checkpoint.SevenNetCheckpoint`` (name like ``7net-0`` or a file path)."""
    import sevenn.util

    cp = sevenn.util.load_checkpoint(name_or_path)  # resolves the name; reads nothing yet
    with _sevenn_loads_safely():
        cp.config  # noqa: B018  (first access unpickles the file, through safe_torch_load)
    return cp
