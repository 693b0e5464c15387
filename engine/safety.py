"""Blow-up detection: stop a run whose forces went NaN/inf or past a limit.

A diverging run wastes hours and then writes garbage; checking max |F| after
every force evaluation costs one reduction and lets the engine stop with a
message that names the step and the worst atom, after saving the last good state.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


class SimulationError(RuntimeError):
    """The run cannot go on (blow-up, unusable restart). The CLI maps it to exit status 3."""

    exit_status = 3


@dataclass
class WorstAtom:
    step: int
    index: int  # local row
    atom_id: int
    symbol: str
    position: tuple
    force_norm: float  # eV/Å (inf for NaN/inf forces)

    def describe(self) -> str:
        x, y, z = self.position
        return (f"atom id {self.atom_id} ({self.symbol}) at ({x:.4f}, {y:.4f}, {z:.4f}) Å "
                f"has |F| = {self.force_norm:.4g} eV/Å")


class BlowUp(SimulationError):
    """Raised on every rank by :func:`check_forces`; ``worst`` is set on the ranks that hold an offender."""

    def __init__(self, step: int, limit: float, worst: Optional[WorstAtom]):
        self.step, self.limit, self.worst = step, limit, worst
        where = worst.describe() if worst is not None else "an atom on another rank exceeds it"
        super().__init__(f"blow-up at step {step}: {where} (limit dynamics.max_force_eV_per_A = {limit:g}; "
                         "NaN/inf count as over)")


def max_force_sq(forces: torch.Tensor) -> float:
    """Largest |F|^2 over local atoms; NaN anywhere gives inf (so one comparison catches both)."""
    if forces.numel() == 0:
        return 0.0
    m = float((forces * forces).sum(1).max())
    return m if m == m else float("inf")


def max_force_sq_tensor(forces: torch.Tensor) -> torch.Tensor:
    """Device twin of :func:`max_force_sq`: a 0-dim float64 tensor (inf for NaN), no host read."""
    if forces.numel() == 0:
        return torch.zeros((), dtype=torch.float64, device=forces.device)
    m = (forces.detach() * forces.detach()).sum(1).amax().to(torch.float64)
    return torch.nan_to_num(m, nan=float("inf"), posinf=float("inf"))  # default posinf: the float max


def check_forces(state, limit: float) -> None:
    """One global max-reduction; raises BlowUp on every rank when any |F| > limit (or NaN/inf)."""
    local = max_force_sq(state.forces)
    if float(state.comm.allreduce_max(local)) <= limit * limit:
        return
    raise BlowUp(int(state.step), limit, worst_atom(state) if local > limit * limit else None)


def worst_atom(state) -> WorstAtom:
    """The local atom with the largest |F| (NaN/inf rows first)."""
    from ase.data import chemical_symbols

    f2 = (state.forces * state.forces).sum(1)
    f2 = torch.where(torch.isfinite(f2), f2, torch.full_like(f2, float("inf")))
    k = int(torch.argmax(f2))
    pos = tuple(float(x) for x in state.positions[k].cpu())
    return WorstAtom(step=int(state.step), index=k, atom_id=int(state.ids[k]),
                     symbol=chemical_symbols[int(state.numbers[k])], position=pos,
                     force_norm=float(f2[k].sqrt()))
