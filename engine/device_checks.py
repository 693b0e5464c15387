"""Deferred step checks: the skin check and the blow-up check reduced on the device, read at check points.

Why: on a GPU every host read of a device value (``float(t)``, ``bool(t)``,
``.item()``, ``.cpu()``) waits for the whole queue, so a per-step skin or
blow-up verdict stalls the step. Here each step only folds its verdicts into two
device scalars (running maxima of the atoms' squared displacement from the list's
reference positions and of |F|^2); ``engine/simulation.py`` reads them with ONE host read
at check points (every output step and at most every ``neighbor.check_every``
steps). Correctness, JAX-MD style: compute, then check, redo when needed. When
a check finds that a step ran on a stale list or blew up, the run goes back to
the last verified state (kept at each check point) and replays the interval
with per-step host checks, which rebuild at the very step the per-step path
rebuilds and stop at the very step it stops. So the trajectory is that of the
per-step path, bit for bit; only the number of host reads changes.

:class:`SkinForecast` keeps replays rare: from the list's last lifetime and the
displacement seen at check points it predicts how long the list stays fresh;
past that the loop checks every step (the per-step path) until the rebuild.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .safety import max_force_sq_tensor

__all__ = ["DeferredChecks", "Verdict", "SkinForecast"]


@dataclass
class Verdict:
    """What one host read of the deferred checks found since the previous read."""

    max_disp_sq: float  # Å^2, largest squared displacement from the list's reference (inf: the cell moved)
    max_force_sq: float  # (eV/Å)^2, largest |F|^2 (inf for NaN/inf)
    stale: bool  # some step ran on a list that may have missed a pair
    blown: bool  # some step's forces were over the limit (or NaN/inf)

    @property
    def ok(self) -> bool:
        return not (self.stale or self.blown)


class DeferredChecks:
    """Two running maxima on the device, [squared displacement, |F|^2], and their host read."""

    def __init__(self, device, stale_threshold: float, max_force: float):
        self.acc = torch.zeros(2, dtype=torch.float64, device=device)
        self.stale_threshold = float(stale_threshold)
        self.limit_sq = float(max_force) ** 2

    def note_displacement(self, disp_sq: torch.Tensor) -> None:
        """Fold a step's skin check (``NeighborList.displacement_sq``) in, on the device."""
        torch.maximum(self.acc[0], disp_sq, out=self.acc[0])

    def note_forces(self, forces: torch.Tensor) -> None:
        """Fold a step's max |F|^2 in, on the device; NaN counts as inf."""
        torch.maximum(self.acc[1], max_force_sq_tensor(forces), out=self.acc[1])

    def read(self) -> Verdict:
        """ONE device-to-host read of both maxima since the last read (or reset); both start over."""
        disp, force = self.acc.tolist()
        self.reset()
        return Verdict(disp, force, stale=disp > self.stale_threshold, blown=not force <= self.limit_sq)

    def reset(self) -> None:
        """Forget everything folded in (after a rollback to a verified state)."""
        self.acc.zero_()


class SkinForecast:
    """How many steps may run on deferred checks before the list may go stale: keeps replays rare.

    Two estimates, the smaller wins: the list's last lifetime (steps between its last two
    builds) and the displacement rate seen at check points (a maximum displacement d Å,
    n steps after the build, grows by at most about d/n per step on average; twice the
    fastest rate seen is assumed). A wrong forecast costs a replay, never a wrong force.
    """

    def __init__(self, skin: float):
        self.half_skin = 0.5 * float(skin)
        self.lifetime: Optional[int] = None
        self.build_step: Optional[int] = None
        self.rebuilt(0)

    def rebuilt(self, step: int) -> None:
        if self.build_step is not None and step > self.build_step:
            self.lifetime = step - self.build_step
        self.build_step, self.last_step, self.last_disp, self.rate = step, step, 0.0, 0.0

    def observe(self, step: int, disp_sq: float) -> None:
        """A check point's largest squared displacement from the list's reference (Å^2)."""
        d = math.sqrt(disp_sq) if disp_sq < math.inf else math.inf
        if step > self.last_step:
            self.rate = max(self.rate, (d - self.last_disp) / (step - self.last_step),
                            d / max(step - self.build_step, 1))
        self.last_step, self.last_disp = step, d

    def horizon(self, step: int, limit: int) -> int:
        """Steps from ``step`` that may run deferred before the next host check (0: check every step)."""
        n = limit
        if self.lifetime is not None:
            n = min(n, int(0.6 * self.lifetime) - (step - self.build_step))
        if self.rate > 0 or self.last_disp > 0:
            if not self.last_disp < self.half_skin:
                return 0
            if self.rate > 0:
                n = min(n, int((self.half_skin - self.last_disp) / (2.0 * self.rate)))
        return max(n, 0)
