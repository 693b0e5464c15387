"""NPT: Martyna–Tobias–Klein barostat with Nosé–Hoover chains on particles and cell.

The Liouville-operator factorisation, masses and variable choices follow
MTK 1994 / Tuckerman et al. 2006 exactly as ASE 3.29's ``IsotropicMTKNPT``,
``MaskedMTKNPT`` and ``MTKNPT`` do, so trajectories can be checked against ASE
step by step. Three barostats:

- ``isotropic``: one volume variable (cubic scaling of the cell);
- ``anisotropic``: three variables, one per cell vector (its direction fixed),
  each with its own target pressure (LAMMPS's ``x/y/z ... couple none``);
- ``triclinic``: the full symmetric cell-velocity tensor (shape changes too).

Global quantities (kinetic tensor, virial, cell) are identical on all ranks,
so the 3x3 linear algebra is done redundantly in numpy and the particles are
updated with the same matrices everywhere.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
from ase import units

from .base import Integrator, pressure_ramp, register_integrator
from .constraints import kinetic_energy_x2, remove_com_velocity
from .nose_hoover import NoseHooverChain

_BAROSTATS = ("isotropic", "anisotropic", "triclinic")


def _exprel(x: np.ndarray) -> np.ndarray:
    """(exp(x) - 1)/x, accurate near 0."""
    x = np.asarray(x, dtype=np.float64)
    small = np.abs(x) < 1e-5
    out = np.empty_like(x)
    xs = np.where(small, 1.0, x)
    out[~small] = (np.expm1(xs) / xs)[~small]
    out[small] = (1.0 + x / 2.0 + x * x / 6.0)[small]
    return out


def target_pressure_tensor(pressure_GPa: Union[float, Sequence], barostat: str) -> np.ndarray:
    """Target pressure as a 3x3 tensor in eV/Å^3 from a scalar, [px, py, pz] or a 3x3 list (GPa)."""
    p = np.asarray(0.0 if pressure_GPa is None else pressure_GPa, dtype=np.float64) * units.GPa
    if p.ndim == 0:
        return float(p) * np.eye(3)
    if barostat == "isotropic":
        raise ValueError("dynamics.pressure_GPa must be a single number with barostat: isotropic "
                         "(use barostat: anisotropic for per-axis targets)")
    if p.shape == (3,):
        return np.diag(p)
    if p.shape == (3, 3):
        if not np.allclose(p, p.T):
            raise ValueError("dynamics.pressure_GPa as a 3x3 tensor must be symmetric")
        return p
    raise ValueError("dynamics.pressure_GPa must be a number, [px, py, pz] or a 3x3 list, in GPa")


@register_integrator("npt")
class MTKNPT(Integrator):
    name = "npt"
    changes_cell = True

    def __init__(self, timestep_fs: float, temperature_K: float = 300.0, tdamp_fs: float = 100.0,
                 pressure_GPa: Union[float, Sequence] = 0.0, pdamp_fs: float = 1000.0,
                 barostat: str = "isotropic", chain_length: int = 3, pchain_length: int = 3,
                 tloop: int = 1, ploop: int = 1, remove_com: bool = True, **params):
        super().__init__(timestep_fs)
        if barostat not in _BAROSTATS:
            raise ValueError(f"dynamics.barostat must be one of {', '.join(_BAROSTATS)}, got {barostat!r}")
        self._set_thermostat(temperature_K, tdamp_fs)
        if not pdamp_fs > 0:
            raise ValueError("dynamics.pdamp_fs must be > 0 (barostat time constant, fs)")
        self.barostat = barostat
        self.kT = units.kB * self.temperature_K
        self.tdamp = self.tdamp_fs * units.fs
        self.pdamp = float(pdamp_fs) * units.fs
        self.p_ext, self.pressure_ramp = pressure_ramp(pressure_GPa,
                                                       lambda p: target_pressure_tensor(p, barostat))
        self.chain_length, self.pchain_length = int(chain_length), int(pchain_length)
        self.tloop, self.ploop = int(tloop), int(ploop)
        self.remove_com = bool(remove_com)
        # cell momenta: isotropic (1,), anisotropic (3,), triclinic (3, 3)
        self.p_cell = np.zeros({"isotropic": (1,), "anisotropic": (3,), "triclinic": (3, 3)}[barostat])
        self.axes = None  # anisotropic: unit vectors of the initial cell vectors (rows)
        self.thermo: NoseHooverChain | None = None
        self.baro: NoseHooverChain | None = None
        self._pending: dict | None = None
        self._started = False

    # -- set-up ---------------------------------------------------------------
    def setup(self, state) -> None:
        if state.fixed is not None:
            raise ValueError("dynamics.fix cannot be combined with integrator: npt (the cell moves all atoms)")
        if not all(state.pbc):
            raise ValueError("integrator: npt needs a periodic box in x, y and z (the structure has pbc "
                             f"{tuple(state.pbc)}); use nose-hoover or langevin for slabs and clusters")
        if not self._started and self.remove_com:
            remove_com_velocity(state)
        self.n_dof = state.degrees_of_freedom(remove_com=self.remove_com)
        kT = self.kT
        self.thermo = NoseHooverChain(self.n_dof, kT, self.tdamp, self.chain_length, self.tloop)
        if self.barostat == "isotropic":
            self.W = (self.n_dof + 3) * kT * self.pdamp**2
            self.cell_dof = 1
            q0 = 9 * kT * self.pdamp**2  # ASE's IsotropicMTKBarostat choice
        else:
            self.W = (self.n_dof + 3) / 3.0 * kT * self.pdamp**2
            self.cell_dof = 3 if self.barostat == "anisotropic" else 9
            q0 = self.cell_dof * kT * self.pdamp**2
        self.baro = NoseHooverChain(self.cell_dof, kT, self.pdamp, self.pchain_length, self.ploop)
        self.baro.Q[0] = q0
        if self.axes is None:
            h = state.cell.detach().cpu().numpy()
            self.axes = h / np.linalg.norm(h, axis=1)[:, None]
        if self._pending is not None:
            self._load(self._pending)
            self._pending = None
        self._started = True

    # -- pieces of the Trotter split -------------------------------------------
    def _v_cell(self) -> np.ndarray:
        """Cell-velocity tensor (p_g / W), symmetric 3x3, in 1/ASE-time."""
        if self.barostat == "isotropic":
            return float(self.p_cell[0]) / self.W * np.eye(3)
        if self.barostat == "anisotropic":
            return (self.p_cell / self.W * self.axes.T) @ self.axes
        return self.p_cell / self.W

    def _cell_ke(self) -> float:
        return float(np.sum(self.p_cell**2) / (2.0 * self.W))

    def _baro_nhc(self, delta: float) -> None:
        s = self.baro.propagate(2.0 * self._cell_ke(), delta)
        self.p_cell *= s

    def _follow_ramp(self, state) -> None:
        """This step's target temperature (a ramp): as LAMMPS's fix npt, the particle chain's masses follow
        it, the cell's mass and its chain's masses stay at their starting values."""
        if self.temperature.ramped:
            kT = units.kB * self.target_temperature(state.step)
            self.thermo.set_kT(kT)
            self.baro.set_kT(kT, masses=False)

    def _thermo_nhc(self, state, delta: float) -> None:
        state.velocities.mul_(self.thermo.propagate(kinetic_energy_x2(state), delta))

    def target_pressure(self, step: int) -> np.ndarray:
        """Target pressure tensor (eV/Å^3) at MD step ``step``."""
        return self.p_ext if self.pressure_ramp is None else self.pressure_ramp.at(step)

    def _kick_cell(self, state, delta: float) -> None:
        """p_cell += delta * [V (P_int - P_ext) + (sum m v^2 / N_f) 1]."""
        ktens = state.kinetic_tensor().detach().cpu().numpy()
        vir = state.virial.detach().cpu().numpy()
        vol = state.volume
        pv = ktens - vir - vol * self.target_pressure(state.step)
        kin = float(np.trace(ktens)) / self.n_dof
        if self.barostat == "isotropic":
            self.p_cell[0] += delta * (float(np.trace(pv)) + 3.0 * kin)
        elif self.barostat == "anisotropic":
            self.p_cell += delta * (np.einsum("ai,ij,aj->a", self.axes, pv, self.axes) + kin)
        else:
            self.p_cell += delta * (pv + kin * np.eye(3))

    def _eig(self, state):
        lam, U = np.linalg.eigh(self._v_cell())
        return lam, torch.as_tensor(U, dtype=state.positions.dtype, device=state.positions.device)

    def _kick_particles(self, state, delta: float) -> None:
        lam, U = self._eig(state)
        kappa = lam + float(np.sum(lam)) / self.n_dof
        a = torch.as_tensor(np.exp(-kappa * delta), dtype=U.dtype, device=U.device)
        b = torch.as_tensor(delta * _exprel(-kappa * delta), dtype=U.dtype, device=U.device)
        v = state.velocities @ U
        acc = (state.forces / state.masses[:, None]) @ U
        state.velocities.copy_((v * a + acc * b) @ U.T)

    def _drift(self, state, delta: float) -> None:
        lam, U = self._eig(state)
        a = torch.as_tensor(np.exp(lam * delta), dtype=U.dtype, device=U.device)
        b = torch.as_tensor(delta * _exprel(lam * delta), dtype=U.dtype, device=U.device)
        x = state.positions @ U
        v = state.velocities @ U
        state.positions.copy_((x * a + v * b) @ U.T)
        state.cell.copy_((state.cell @ U) * a @ U.T)

    # -- the interface ------------------------------------------------------------
    def initial_integrate(self, state) -> None:
        if self.thermo is None:
            self.setup(state)
        h = 0.5 * self.dt
        self._follow_ramp(state)
        self._baro_nhc(h)
        self._thermo_nhc(state, h)
        self._kick_cell(state, h)
        self._kick_particles(state, h)
        self._drift(state, self.dt)

    def final_integrate(self, state) -> None:
        h = 0.5 * self.dt
        self._kick_particles(state, h)
        self._kick_cell(state, h)
        self._thermo_nhc(state, h)
        self._baro_nhc(h)

    def conserved_energy_extra(self, state) -> float:
        if self.thermo is None:
            return 0.0
        p_mean = float(np.trace(self.target_pressure(state.step))) / 3.0  # exact for a hydrostatic target
        return self.thermo.energy() + self.baro.energy() + self._cell_ke() + p_mean * state.volume

    def state_dict(self) -> dict:
        d = {"started": self._started, "p_cell": self.p_cell.tolist(),
             "axes": None if self.axes is None else self.axes.tolist()}
        if self.thermo is not None:
            d["thermostat"] = self.thermo.state_dict()
            d["barostat_chain"] = self.baro.state_dict()
        return self._save_ramps(d)

    def _load(self, d: dict) -> None:
        self.p_cell = np.asarray(d["p_cell"], dtype=np.float64).reshape(self.p_cell.shape).copy()
        if d.get("axes") is not None:
            self.axes = np.asarray(d["axes"], dtype=np.float64)
        if "thermostat" in d and self.thermo is not None:
            self.thermo.load_state_dict(d["thermostat"])
            self.baro.load_state_dict(d["barostat_chain"])

    def load_state_dict(self, d: dict) -> None:
        self._load_ramps(d)
        self._started = bool(d.get("started", True))
        if d.get("axes") is not None:
            self.axes = np.asarray(d["axes"], dtype=np.float64)
        if self.thermo is not None:
            self._load(d)
        else:
            self._pending = d
