"""Targets that change during a run: temperature and pressure ramps, and strain-rate deformation.

A ramp is linear in the MD step, as LAMMPS's ``fix nvt temp Tstart Tstop`` over
``run n``: at step s (the step being taken: ``engine/step.py`` advances
``state.step`` before integrating) the target is

    start + (stop - start) * (s - begin) / (end - begin),

so the first of n steps uses start + (stop - start)/n and the last uses stop.
The ramp is a pure function of the step; ``begin`` and ``end`` are constants
fixed when the run starts and travel in the integrator's state dict, so a
resumed run follows the same line bit for bit.

``Deformed`` wraps any integrator that keeps the cell fixed and deforms the box
at a constant engineering strain rate, as LAMMPS's ``fix deform ... erate R
remap x``: cell vector i is L0_i (1 + erate_i t) with t the time since the
start, and atoms keep their fractional coordinates (velocities are untouched).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
from ase import units

Number = Union[float, np.ndarray]


class Ramp:
    """A target value (a number or an array) linear in the step from ``start`` to ``stop``.

    ``stop=None`` (or ``end <= begin``) is a constant target: ``at`` then returns
    ``start`` itself, so a run without a ramp computes exactly what it did before.
    Past ``end`` the target stays at ``stop``.
    """

    def __init__(self, start: Number, stop: Optional[Number] = None, begin: int = 0, end: int = 0):
        self.start = start
        self.stop = stop
        self.begin, self.end = int(begin), int(end)

    @property
    def ramped(self) -> bool:
        return self.stop is not None and self.end > self.begin

    def fraction(self, step: int) -> float:
        """How far along the ramp step ``step`` is, clipped to [0, 1]."""
        if not self.ramped:
            return 0.0
        return min(max((step - self.begin) / (self.end - self.begin), 0.0), 1.0)

    def at(self, step: int) -> Number:
        """The target at MD step ``step``."""
        if not self.ramped:
            return self.start
        return self.start + (self.stop - self.start) * self.fraction(step)

    def state_dict(self) -> dict:
        return {"begin": self.begin, "end": self.end}

    def load_state_dict(self, d: Optional[dict], key: str) -> None:
        """Take ``begin`` from a restart; refuse a run length that would bend the line (``key`` names it)."""
        if not d or not self.ramped:
            return
        if int(d["end"]) != self.end:
            raise ValueError(
                f"{key} ramps over the run, and the run that wrote this restart ended at step {d['end']}, "
                f"this one at {self.end}: changing dynamics.steps would change the ramp's rate. Keep "
                f"dynamics.steps={int(d['end']) - int(d['begin'])} (or start a new run)")
        self.begin = int(d["begin"])

    def __repr__(self) -> str:
        if not self.ramped:
            return f"Ramp({self.start!r})"
        return f"Ramp({self.start!r} -> {self.stop!r}, steps {self.begin}..{self.end})"


def as_ramp(value: Union[Number, Ramp, None]) -> Optional[Ramp]:
    """A Ramp from a number/array (a constant target) or a Ramp (kept); None stays None."""
    if value is None or isinstance(value, Ramp):
        return value
    return Ramp(value)


class Deformed:
    """An integrator whose box is deformed at constant engineering strain rates (LAMMPS ``erate``).

    Before each step's own integration the cell is set to cell0 with row i scaled
    by 1 + erate_i (s - begin) dt (so after step s the cell is exactly that, with
    no accumulated round-off), and positions are mapped with the cell (fractional
    coordinates kept, LAMMPS ``remap x``). For an orthogonal box this is LAMMPS's
    ``fix deform 1 x erate ex y erate ey z erate ez remap x``; for a triclinic cell
    each cell vector's length grows at its rate and its direction is kept.
    Everything else is the wrapped integrator's.
    """

    changes_cell = True

    def __init__(self, inner, erate_per_ps: Sequence[float], begin: int = 0):
        if getattr(inner, "changes_cell", False):
            raise ValueError(f"dynamics.deform cannot be combined with a barostat or cell relaxation "
                             f"(integrator {inner.name!r} moves the cell itself); use nve, langevin, "
                             "nose-hoover or berendsen without pressure_GPa")
        rate = np.asarray(erate_per_ps, dtype=np.float64)
        if rate.shape != (3,):
            raise ValueError(f"dynamics.deform.erate_per_ps must be [ex, ey, ez] in 1/ps; got {list(rate)}")
        self.inner = inner
        self.rate = rate / (1000.0 * units.fs)  # 1/ps -> 1/ASE time unit
        self.erate_per_ps = rate
        self.begin = int(begin)
        self.cell0: Optional[np.ndarray] = None

    def __getattr__(self, name):  # name, timestep_fs, converged, temperature, ... of the wrapped integrator
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def factors(self, step: int) -> np.ndarray:
        """1 + erate_i t after step ``step`` (t = (step - begin) dt)."""
        return 1.0 + self.rate * (step - self.begin) * self.inner.dt

    def setup(self, state) -> None:
        bad = [a for a in range(3) if self.rate[a] != 0.0 and not state.pbc[a]]
        if bad:
            raise ValueError(f"dynamics.deform.erate_per_ps: axis {'xyz'[bad[0]]} is not periodic; "
                             "deform only periodic axes")
        if self.cell0 is None:
            self.cell0 = state.cell.detach().cpu().numpy().copy()
        self.inner.setup(state)

    def _deform(self, state) -> None:
        if self.cell0 is None:
            self.setup(state)
        old = state.cell.clone()
        cell = self.cell0 * self.factors(state.step)[:, None]
        new = torch.as_tensor(cell, dtype=old.dtype, device=old.device)
        state.cell.copy_(new)
        state.positions.copy_(torch.linalg.solve(old.T, state.positions.T).T @ new)

    def initial_integrate(self, state) -> None:
        self._deform(state)
        self.inner.initial_integrate(state)

    def final_integrate(self, state) -> None:
        self.inner.final_integrate(state)

    def conserved_energy_extra(self, state) -> float:
        return self.inner.conserved_energy_extra(state)

    def state_dict(self) -> dict:
        d = dict(self.inner.state_dict())
        d["deform_begin"] = self.begin
        d["deform_cell0"] = None if self.cell0 is None else self.cell0.tolist()
        return d

    def load_state_dict(self, d: dict) -> None:
        d = dict(d)
        if "deform_begin" in d:
            self.begin = int(d.pop("deform_begin"))
        cell0 = d.pop("deform_cell0", None)
        if cell0 is not None:
            self.cell0 = np.asarray(cell0, dtype=np.float64)
        self.inner.load_state_dict(d)
