"""Langevin NVT with the BAOAB splitting (Leimkuhler & Matthews), rank-count independent noise."""
from __future__ import annotations

import math

import torch
from ase import units

from .base import Integrator, register_integrator
from .noise import gaussian_noise_on
from .verlet import drift, half_kick


@register_integrator("langevin")
class LangevinBAOAB(Integrator):
    name = "langevin"
    device_resident = True

    def __init__(self, timestep_fs: float, temperature_K: float = 300.0, tdamp_fs: float = 100.0,
                 seed: int = 1, **params):
        super().__init__(timestep_fs)
        self._set_thermostat(temperature_K, tdamp_fs, "friction time")
        self.seed = int(seed)
        self.c1 = math.exp(-self.timestep_fs / self.tdamp_fs)
        self.c2 = math.sqrt(1.0 - self.c1 * self.c1)

    def initial_integrate(self, state) -> None:
        half_kick(state, self.dt)  # B
        drift(state, 0.5 * self.dt)  # A
        # O: exact Ornstein-Uhlenbeck step; noise keyed by (seed, step, id)
        xi = gaussian_noise_on(self.seed, state.step, state.ids, state.velocities)
        sigma = torch.sqrt(units.kB * self.target_temperature(state.step) / state.masses)[:, None]
        state.velocities.mul_(self.c1).add_(self.c2 * sigma * xi)
        if state.fixed is not None:  # masked_fill: a boolean index would read the mask's count to the host
            state.velocities.masked_fill_(state.fixed[:, None], 0.0)
        drift(state, 0.5 * self.dt)  # A

    def final_integrate(self, state) -> None:
        half_kick(state, self.dt)  # B

    def state_dict(self) -> dict:
        return self._save_ramps({})

    def load_state_dict(self, d: dict) -> None:
        self._load_ramps(d)
