"""Nosé–Hoover chain NVT (Martyna, Klein & Tuckerman 1992), Trotter-split like MTK/ASE.

Step: NHC(dt/2) · half kick · drift | forces | half kick · NHC(dt/2). The chain
is integrated with a 4th-order Suzuki–Yoshida split (as ASE's
``NoseHooverChainNVT``), acting on the particles only through one global
scale factor of the velocities, so a step needs one extra allreduce and the
result does not depend on the rank count. ``conserved_energy_extra`` makes
KE + PE + extra a constant of motion (checked in the tests).
"""
from __future__ import annotations

import math

import numpy as np
from ase import units

from .base import Integrator, register_integrator
from .constraints import kinetic_energy_x2, remove_com_velocity
from .verlet import drift, half_kick

# H. Yoshida, Phys. Lett. A 150, 262 (1990): 4th-order composition weights.
SUZUKI_YOSHIDA_4 = (
    1.0 / (2.0 - 2.0 ** (1.0 / 3.0)),
    -(2.0 ** (1.0 / 3.0)) / (2.0 - 2.0 ** (1.0 / 3.0)),
    1.0 / (2.0 - 2.0 ** (1.0 / 3.0)),
)


class NoseHooverChain:
    """A chain of Nosé–Hoover thermostats on one kinetic energy with ``n_dof`` degrees of freedom.

    Masses: Q_1 = n_dof kT tau^2, Q_j = kT tau^2 (Tuckerman's choice, also ASE's).
    All quantities are global scalars, identical on every rank.
    """

    def __init__(self, n_dof: int, kT: float, tdamp: float, chain_length: int = 3, n_loop: int = 1):
        if chain_length < 1:
            raise ValueError("dynamics.chain_length must be >= 1")
        if tdamp <= 0:
            raise ValueError("dynamics.tdamp_fs must be > 0")
        self.n_dof = int(n_dof)
        self.kT = float(kT)
        self.tdamp = float(tdamp)
        self.M = int(chain_length)
        self.n_loop = int(n_loop)
        self._set_masses()
        self.eta = np.zeros(self.M)
        self.p_eta = np.zeros(self.M)

    def _set_masses(self) -> None:
        self.Q = np.full(self.M, self.kT * self.tdamp**2)
        self.Q[0] *= self.n_dof

    def set_kT(self, kT: float, masses: bool = True) -> None:
        """A new target (a temperature ramp); ``masses``: rescale Q with it (LAMMPS's fix nvt, each step)."""
        self.kT = float(kT)
        if masses:
            self._set_masses()

    def energy(self) -> float:
        """Thermostat energy: sum p^2/2Q + n_dof kT eta_1 + kT sum_{j>1} eta_j."""
        return float(np.sum(0.5 * self.p_eta**2 / self.Q) + self.n_dof * self.kT * self.eta[0]
                     + self.kT * np.sum(self.eta[1:]))

    def _p_eta_j(self, j: int, ke2: float, d2: float, d4: float) -> None:
        p, Q = self.p_eta, self.Q
        if j < self.M - 1:
            p[j] *= math.exp(-d4 * p[j + 1] / Q[j + 1])
        g = ke2 - self.n_dof * self.kT if j == 0 else p[j - 1] ** 2 / Q[j - 1] - self.kT
        p[j] += d2 * g
        if j < self.M - 1:
            p[j] *= math.exp(-d4 * p[j + 1] / Q[j + 1])

    def _loop(self, ke2: float, delta: float) -> float:
        d2, d4 = 0.5 * delta, 0.25 * delta
        for j in reversed(range(self.M)):
            self._p_eta_j(j, ke2, d2, d4)
        self.eta += delta * self.p_eta / self.Q
        s = math.exp(-delta * self.p_eta[0] / self.Q[0])
        ke2 *= s * s
        for j in range(self.M):
            self._p_eta_j(j, ke2, d2, d4)
        return s

    def propagate(self, ke2: float, delta: float) -> float:
        """Advance the chain by ``delta`` given 2*KE (= sum m v^2); returns the velocity scale factor."""
        scale = 1.0
        for _ in range(self.n_loop):
            for w in SUZUKI_YOSHIDA_4:
                s = self._loop(ke2 * scale * scale, w * delta / self.n_loop)
                scale *= s
        return scale

    def state_dict(self) -> dict:
        return {"eta": self.eta.tolist(), "p_eta": self.p_eta.tolist()}

    def load_state_dict(self, d: dict) -> None:
        self.eta = np.asarray(d["eta"], dtype=np.float64).copy()
        self.p_eta = np.asarray(d["p_eta"], dtype=np.float64).copy()
        if self.eta.shape != (self.M,):
            raise ValueError(f"restart has a chain of length {self.eta.shape[0]}, the input asks for "
                             f"dynamics.chain_length={self.M}")


@register_integrator("nose-hoover")
class NoseHooverChainNVT(Integrator):
    """NVT with a Nosé–Hoover chain.

    ``remove_com`` (default True): zero the centre-of-mass velocity at the start
    and thermostat 3N-3 degrees of freedom (NH dynamics conserves total momentum,
    so the COM carries no heat). With fixed atoms the dof are 3 N_mobile.
    """

    name = "nose-hoover"

    def __init__(self, timestep_fs: float, temperature_K: float = 300.0, tdamp_fs: float = 100.0,
                 chain_length: int = 3, tloop: int = 1, remove_com: bool = True, **params):
        super().__init__(timestep_fs)
        self._set_thermostat(temperature_K, tdamp_fs)
        self.chain_length = int(chain_length)
        self.tloop = int(tloop)
        self.remove_com = bool(remove_com)
        self.chain: NoseHooverChain | None = None
        self._pending: dict | None = None
        self._started = False

    def setup(self, state) -> None:
        if not self._started and self.remove_com:
            remove_com_velocity(state)
        n_dof = state.degrees_of_freedom(remove_com=self.remove_com)
        self.chain = NoseHooverChain(n_dof, units.kB * self.temperature_K, self.tdamp_fs * units.fs,
                                     self.chain_length, self.tloop)
        if self._pending is not None:
            self.chain.load_state_dict(self._pending)
        self._started = True

    def _thermostat(self, state) -> None:
        if self.temperature.ramped:
            self.chain.set_kT(units.kB * self.target_temperature(state.step))
        s = self.chain.propagate(kinetic_energy_x2(state), 0.5 * self.dt)
        state.velocities.mul_(s)

    def initial_integrate(self, state) -> None:
        if self.chain is None:
            self.setup(state)
        self._thermostat(state)
        half_kick(state, self.dt)
        drift(state, self.dt)

    def final_integrate(self, state) -> None:
        half_kick(state, self.dt)
        self._thermostat(state)

    def conserved_energy_extra(self, state) -> float:
        return 0.0 if self.chain is None else self.chain.energy()

    def state_dict(self) -> dict:
        d = {"started": self._started}
        if self.chain is not None:
            d["chain"] = self.chain.state_dict()
        return self._save_ramps(d)

    def load_state_dict(self, d: dict) -> None:
        self._load_ramps(d)
        self._started = bool(d.get("started", True))
        self._pending = d.get("chain")
        if self.chain is not None and self._pending is not None:
            self.chain.load_state_dict(self._pending)
