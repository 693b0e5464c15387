"""Counter-based Gaussian noise keyed by (seed, step, atom id, component).

Thermostat noise must not depend on how atoms are split over ranks or ordered
in memory, and must need no RNG state in restart files: hashing the key with
splitmix64 gives both.
"""
from __future__ import annotations

import numpy as np
import torch

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + _GOLD
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def _uniform(keys: np.ndarray) -> np.ndarray:
    """(0, 1) doubles from 53 random bits."""
    bits = _splitmix64(keys) >> np.uint64(11)
    return (bits.astype(np.float64) + 0.5) / float(1 << 53)


def gaussian_noise(seed: int, step: int, ids, stream: int = 0, dim: int = 3) -> np.ndarray:
    """Standard normals, shape (len(ids), dim), a pure function of the key."""
    ids = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids, dtype=np.uint64)
    with np.errstate(over="ignore"):
        base = _splitmix64(np.uint64(seed) * np.uint64(0x100000001B3) + np.uint64(stream))
        base = _splitmix64(base ^ np.uint64(step))
        comp = np.arange(dim, dtype=np.uint64)
        k = _splitmix64(base ^ (ids[:, None] * np.uint64(8) + comp[None, :]))
        u1 = _uniform(k)
        u2 = _uniform(k ^ np.uint64(0xD1B54A32D192ED03))
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
