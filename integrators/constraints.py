"""Fixed atoms and centre-of-mass drift: the two constraints every integrator honours.

Both are written against ``state.comm`` reductions and global atom ids, so the
same call gives the same result on one rank and on many.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np
import torch


def fixed_mask(ids: torch.Tensor, positions: torch.Tensor, indices: Optional[Iterable[int]] = None,
               z_range_A: Optional[Sequence[float]] = None) -> Optional[torch.Tensor]:
    """Bool mask of the atoms to hold fixed: global ``indices`` and/or a z slab [z_min, z_max] (Å).

    Atoms are selected by global id (so the mask follows atoms across ranks).
    Returns None only when no fix is configured: a rank that happens to own no
    fixed atom still gets an all-False mask, so every rank takes part in the
    same reductions (``MDState.degrees_of_freedom``).
    """
    mask = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    if indices is not None:
        idx = torch.as_tensor(np.asarray(list(indices), dtype=np.int64), device=ids.device)
        if idx.numel():
            if int(idx.min()) < 0:
                raise ValueError("dynamics.fix.indices must be atom indices >= 0")
            mask |= torch.isin(ids, idx)
    if z_range_A is not None:
        if len(z_range_A) != 2 or z_range_A[0] > z_range_A[1]:
            raise ValueError("dynamics.fix.z_range_A must be [z_min, z_max] in Å with z_min <= z_max")
        z = positions[:, 2]
        mask |= (z >= float(z_range_A[0])) & (z <= float(z_range_A[1]))
    configured = (indices is not None and len(list(indices)) > 0) or z_range_A is not None
    return mask if configured else None


def apply_fixed(state) -> None:
    """Zero velocities (and forces, if present) of fixed atoms."""
    if state.fixed is None:
        return
    state.velocities[state.fixed] = 0.0
    if state.forces is not None:
        state.forces[state.fixed] = 0.0


def com_velocity(state) -> torch.Tensor:
    """Global mass-weighted mean velocity of the mobile atoms, (3,)."""
    m = state.masses if state.fixed is None else state.masses * (~state.fixed)
    p = (m[:, None] * state.velocities).sum(0)
    msum = m.sum()
    p = state.comm.allreduce_sum(p)
    msum = float(state.comm.allreduce_sum(float(msum)))
    return p / max(msum, 1e-300)


def remove_com_velocity(state) -> None:
    """Subtract the centre-of-mass velocity (no-op with fixed atoms, which anchor the system)."""
    if state.fixed is not None and bool(state.comm.allreduce_sum(int(state.fixed.sum())) > 0):
        return
    state.velocities -= com_velocity(state)[None, :]


def kinetic_energy_x2(state) -> float:
    """Global sum m v^2 (= 2 KE), eV."""
    return float(state.comm.allreduce_sum(float((state.masses[:, None] * state.velocities**2).sum())))


def fixed_from_config(state, fix) -> None:
    """Set ``state.fixed`` from a ``dynamics.fix`` section (indices and/or z_range_A) and zero their velocities.

    Call once on a fresh start; a restart must restore the saved mask instead
    (atoms that later wander into the z range are not fixed).
    """
    if fix is None:
        return
    indices = list(getattr(fix, "indices", []) or [])
    if indices and max(indices) >= state.n_atoms_global:
        raise ValueError(f"dynamics.fix.indices: index {max(indices)} is out of range; the system has "
                         f"{state.n_atoms_global} atoms (0-based indices)")
    state.fixed = fixed_mask(state.ids, state.positions, indices, getattr(fix, "z_range_A", None))
    apply_fixed(state)
