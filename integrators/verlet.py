"""Velocity Verlet (NVE)."""
from __future__ import annotations

from .base import Integrator, register_integrator


def half_kick(state, dt: float) -> None:
    """v += dt/2 F/m (fixed atoms keep v = 0)."""
    state.velocities += (0.5 * dt) * state.forces / state.masses[:, None]
    if state.fixed is not None:  # masked_fill: a boolean index would read the mask's count to the host
        state.velocities.masked_fill_(state.fixed[:, None], 0.0)


def drift(state, dt: float) -> None:
    state.positions += dt * state.velocities


@register_integrator("nve")
class VelocityVerlet(Integrator):
    name = "nve"
    device_resident = True

    def initial_integrate(self, state) -> None:
        half_kick(state, self.dt)
        drift(state, self.dt)

    def final_integrate(self, state) -> None:
        half_kick(state, self.dt)
