"""Berendsen weak coupling of temperature and (optionally) pressure, for quick equilibration.

It does not sample a canonical ensemble (KE fluctuations are suppressed): use it
to reach a target T/P, then switch to nose-hoover, langevin or npt. The
algorithm is ASE's ``NVTBerendsen`` / ``NPTBerendsen`` /
``Inhomogeneous_NPTBerendsen``: rescale velocities by
sqrt(1 + dt/tau_T (T0/T - 1)) clipped to [0.9, 1.1], and the cell (with the
atoms) by 1 - beta dt/(3 tau_P) (P0 - P), then a velocity-Verlet step.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from ase import units

from .base import Integrator, pressure_ramp, register_integrator
from .constraints import kinetic_energy_x2, remove_com_velocity
from .verlet import drift, half_kick


@register_integrator("berendsen")
class Berendsen(Integrator):
    name = "berendsen"  # what restart files record (was the base class's "base")

    def __init__(self, timestep_fs: float, temperature_K: float = 300.0, tdamp_fs: float = 100.0,
                 pressure_GPa: Optional[float] = None, pdamp_fs: float = 1000.0,
                 compressibility_per_GPa: float = 0.01, barostat: str = "isotropic",
                 remove_com: bool = True, **params):
        super().__init__(timestep_fs)
        self._set_thermostat(temperature_K, tdamp_fs)
        if not pdamp_fs > 0:
            raise ValueError("dynamics.pdamp_fs must be > 0 (barostat time constant, fs)")
        if barostat not in ("isotropic", "anisotropic"):
            raise ValueError("dynamics.barostat must be isotropic or anisotropic with integrator: berendsen")
        if compressibility_per_GPa <= 0:
            raise ValueError("dynamics.compressibility_per_GPa must be > 0 (about 1/bulk modulus)")
        self.pdamp_fs = float(pdamp_fs)
        ends = (pressure_GPa.start, pressure_GPa.stop) if hasattr(pressure_GPa, "stop") else (pressure_GPa,)
        if any(p is not None and np.ndim(p) != 0 for p in ends):
            raise ValueError("dynamics.pressure_GPa must be a single number with integrator: berendsen")
        self.pressure, self.pressure_ramp = pressure_ramp(
            pressure_GPa, lambda p: None if p is None else float(p) * units.GPa)
        self.compressibility = float(compressibility_per_GPa) / units.GPa
        self.barostat = barostat
        self.remove_com = bool(remove_com)
        self.changes_cell = self.pressure is not None
        self._started = False

    def setup(self, state) -> None:
        if self.changes_cell and state.fixed is not None:
            raise ValueError("dynamics.fix cannot be combined with a Berendsen barostat (pressure_GPa)")
        if not self._started and self.remove_com:
            remove_com_velocity(state)
        self._started = True

    def _scale_velocities(self, state) -> None:
        dof = state.degrees_of_freedom(remove_com=self.remove_com)
        t_now = kinetic_energy_x2(state) / (dof * units.kB)
        if t_now <= 0.0:
            return
        target = self.target_temperature(state.step)
        lam = math.sqrt(1.0 + (target / t_now - 1.0) * self.timestep_fs / self.tdamp_fs)
        state.velocities.mul_(min(max(lam, 0.9), 1.1))

    def _scale_cell(self, state) -> None:
        vol = state.volume
        ptens = (state.kinetic_tensor() - state.virial).detach().cpu().numpy() / vol
        c = self.compressibility * self.timestep_fs / (3.0 * self.pdamp_fs)
        p0 = self.pressure if self.pressure_ramp is None else self.pressure_ramp.at(state.step)
        if self.barostat == "isotropic":
            mu = np.full(3, 1.0 - c * (p0 - float(np.trace(ptens)) / 3.0))
        else:
            mu = 1.0 - c * (p0 - np.diag(ptens))
        mu = np.where(np.asarray(state.pbc), mu, 1.0)
        old = state.cell.clone()
        state.cell.mul_(torch.as_tensor(mu, dtype=old.dtype, device=old.device)[:, None])
        # positions follow the cell (fractional coordinates kept)
        state.positions.copy_(torch.linalg.solve(old.T, state.positions.T).T @ state.cell)

    def initial_integrate(self, state) -> None:
        if not self._started:
            self.setup(state)
        self._scale_velocities(state)
        if self.pressure is not None:
            self._scale_cell(state)
        half_kick(state, self.dt)
        drift(state, self.dt)

    def final_integrate(self, state) -> None:
        half_kick(state, self.dt)

    def state_dict(self) -> dict:
        return self._save_ramps({"started": self._started})

    def load_state_dict(self, d: dict) -> None:
        self._load_ramps(d)
        self._started = bool(d.get("started", True))
