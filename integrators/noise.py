"""Counter-based Gaussian noise keyed by (seed, step, atom id, component).

Thermostat noise must not depend on how atoms are split over ranks or ordered
in memory, and must need no RNG state in restart files: hashing the key with
splitmix64 gives both. :func:`gaussian_noise` is the numpy reference;
:func:`gaussian_noise_torch` computes the same bits on the ids' device (int64
arithmetic wraps like uint64; logical shifts by masking), so a GPU step needs
no host round trip for its noise.
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


def _signed(c: int) -> int:
    """A uint64 constant as the int64 with the same bits."""
    return c - (1 << 64) if c >= 1 << 63 else c


_TM1, _TM2, _TGOLD = _signed(int(_M1)), _signed(int(_M2)), _signed(int(_GOLD))
_TMIX = _signed(0xD1B54A32D192ED03)


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _splitmix64_torch(x: torch.Tensor) -> torch.Tensor:
    x = x + _TGOLD
    x = (x ^ _shr(x, 30)) * _TM1
    x = (x ^ _shr(x, 27)) * _TM2
    return x ^ _shr(x, 31)


def _uniform_torch(keys: torch.Tensor) -> torch.Tensor:
    bits = _shr(_splitmix64_torch(keys), 11)  # 53 bits: exact in float64
    return (bits.to(torch.float64) + 0.5) / float(1 << 53)


def gaussian_noise_torch(seed: int, step: int, ids: torch.Tensor, stream: int = 0,
                         dim: int = 3) -> torch.Tensor:
    """:func:`gaussian_noise` where the ids live: same hash bits, (len(ids), dim) float64, no host read."""
    with np.errstate(over="ignore"):
        base = _splitmix64(np.uint64(seed) * np.uint64(0x100000001B3) + np.uint64(stream))
        base = int(_splitmix64(base ^ np.uint64(step)))
    comp = torch.arange(dim, dtype=torch.int64, device=ids.device)
    k = _splitmix64_torch(_signed(base) ^ (ids.to(torch.int64)[:, None] * 8 + comp[None, :]))
    u1 = _uniform_torch(k)
    u2 = _uniform_torch(k ^ _TMIX)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * np.pi * u2)


def gaussian_noise_on(seed: int, step: int, ids: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Noise as a tensor like ``like``, computed where ``ids`` live: numpy on the CPU (the reference,
    bit for bit; ``.numpy()`` there is a view, not a copy), torch on a GPU (no host read)."""
    if ids.device.type == "cpu":
        return torch.from_numpy(gaussian_noise(seed, step, ids.numpy())).to(like)
    return gaussian_noise_torch(seed, step, ids).to(like)
