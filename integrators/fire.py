"""FIRE minimisation of positions and, optionally, the cell (Bitzek et al. 2006, ASE's variant).

Degrees of freedom are those of ASE's ``FrechetCellFilter``: atom positions in
the undeformed reference cell, r_ref = r F^-T, plus ``exp_cell_factor`` times
the matrix log of the deformation gradient F (cell = cell0 F^T). The gradient
with respect to log F uses the Fréchet derivative of expm, so energy and
forces stay consistent (no spurious pressure from a linearised strain).

The FIRE velocity of the atoms is kept in ``state.velocities`` (it travels with
atoms across ranks and into restart files); the cell part and the FIRE
scalars live in ``state_dict``. Convergence: ``converged`` becomes True when every
atom's (filtered) force and every cell row's generalised force are below
``fmax_eV_per_A``; the run loop stops there.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from ase import units

from .base import Integrator, register_integrator


def expm(x: np.ndarray) -> np.ndarray:
    """Matrix exponential of a 3x3 (torch's Padé: small-matrix LAPACK-free, same on every rank)."""
    return torch.linalg.matrix_exp(torch.as_tensor(x, dtype=torch.float64)).numpy()


def expm_frechet_basis(x: np.ndarray) -> np.ndarray:
    """L[m, n] = Fréchet derivative of expm at ``x`` in the direction E_mn, shape (3, 3, 3, 3).

    Uses expm([[X, E], [0, X]]) = [[e^X, L(X, E)], [0, e^X]] for all nine E at once.
    """
    xt = torch.as_tensor(x, dtype=torch.float64)
    big = torch.zeros((9, 6, 6), dtype=torch.float64)
    big[:, :3, :3] = xt
    big[:, 3:, 3:] = xt
    idx = torch.arange(9)
    big[idx, idx // 3, 3 + idx % 3] = 1.0
    return torch.linalg.matrix_exp(big)[:, :3, 3:].reshape(3, 3, 3, 3).numpy()


@register_integrator("fire")
class FIRE(Integrator):
    name = "fire"

    def __init__(self, timestep_fs: float = 1.0, fmax_eV_per_A: float = 0.05, relax_cell: bool = False,
                 pressure_GPa: Optional[float] = 0.0, maxstep_A: float = 0.2, dt_start: float = 0.1,
                 dtmax: float = 1.0, Nmin: int = 5, finc: float = 1.1, fdec: float = 0.5,
                 astart: float = 0.1, fa: float = 0.99, exp_cell_factor: Optional[float] = None, **params):
        super().__init__(timestep_fs)
        if fmax_eV_per_A <= 0:
            raise ValueError("dynamics.fmax_eV_per_A must be > 0")
        if maxstep_A <= 0:
            raise ValueError("dynamics.maxstep_A must be > 0")
        self.fmax = float(fmax_eV_per_A)
        self.relax_cell = bool(relax_cell)
        self.changes_cell = self.relax_cell
        if pressure_GPa is not None and np.ndim(pressure_GPa) != 0:
            raise ValueError("dynamics.pressure_GPa must be a single number with integrator: fire")
        self.scalar_pressure = float(pressure_GPa or 0.0) * units.GPa
        self.maxstep = float(maxstep_A)
        self.dtmax, self.Nmin, self.finc, self.fdec = float(dtmax), int(Nmin), float(finc), float(fdec)
        self.astart, self.fa = float(astart), float(fa)
        self.exp_cell_factor = exp_cell_factor
        # FIRE scalars and cell variables (global, identical on all ranks)
        self.fire_dt = float(dt_start)
        self.a = self.astart
        self.n_pos = 0  # ASE's Nsteps: consecutive downhill steps
        self.first = True
        self.converged = False
        self.last_fmax = float("inf")
        self.cell0: Optional[np.ndarray] = None
        self.log_f = np.zeros((3, 3))  # matrix log of the deformation gradient
        self.v_cell = np.zeros((3, 3))

    def setup(self, state) -> None:
        if self.cell0 is None:
            self.cell0 = state.cell.detach().cpu().numpy().copy()
        if self.exp_cell_factor is None:
            self.exp_cell_factor = float(state.n_atoms_global)
        if self.first:
            state.velocities.zero_()

    # -- generalised forces ---------------------------------------------------
    def _deform(self) -> np.ndarray:
        return expm(self.log_f)

    def _cell_force(self, state, F: np.ndarray) -> np.ndarray:
        """-dH/d(dof) for dof = exp_cell_factor * log F, H = E + p V."""
        vol = state.volume
        w = state.virial.detach().cpu().numpy() + self.scalar_pressure * vol * np.eye(3)
        dHdF = w @ np.linalg.inv(F).T
        # dH/dlogF_{mu nu} = sum_ij dH/dF_ij * L(log F, E_{mu nu})_ij, L the Frechet derivative of expm
        return -np.einsum("ij,mnij->mn", dHdF, expm_frechet_basis(self.log_f)) / self.exp_cell_factor

    def _forces(self, state):
        F = self._deform() if self.relax_cell else np.eye(3)
        Ft = torch.as_tensor(F, dtype=state.positions.dtype, device=state.positions.device)
        f_atoms = state.forces @ Ft
        if state.fixed is not None:
            f_atoms = f_atoms.clone()
            f_atoms[state.fixed] = 0.0
        f_cell = self._cell_force(state, F) if self.relax_cell else None
        return F, f_atoms, f_cell

    def max_force(self, state) -> float:
        """Largest generalised force norm (atoms, and cell rows when relaxing the cell), eV/Å."""
        _, f_atoms, f_cell = self._forces(state)
        return self._fmax(state, f_atoms, f_cell)

    def _fmax(self, state, f_atoms, f_cell) -> float:
        local = float((f_atoms**2).sum(1).max()) if f_atoms.shape[0] else 0.0
        fm2 = float(state.comm.allreduce_max(local))
        if f_cell is not None:
            fm2 = max(fm2, float((f_cell**2).sum(1).max()))
        return fm2**0.5

    def _dot(self, state, a_atoms, b_atoms, a_cell, b_cell) -> float:
        s = float(state.comm.allreduce_sum(float((a_atoms * b_atoms).sum())))
        if a_cell is not None:
            s += float(np.sum(a_cell * b_cell))
        return s

    # -- one FIRE step ------------------------------------------------------------
    def initial_integrate(self, state) -> None:
        if self.cell0 is None:
            self.setup(state)
        F, g, g_cell = self._forces(state)
        self.last_fmax = self._fmax(state, g, g_cell)
        if self.last_fmax < self.fmax:
            self.converged = True
            return
        v = state.velocities
        vc = self.v_cell if self.relax_cell else None
        if self.first:
            v.zero_()
            self.v_cell[:] = 0.0
            self.first = False
        else:
            vf = self._dot(state, g, v, g_cell, vc)
            if vf > 0.0:
                g2 = self._dot(state, g, g, g_cell, g_cell)
                v2 = self._dot(state, v, v, vc, vc)
                mix = self.a * (v2 / g2) ** 0.5
                v.mul_(1.0 - self.a).add_(mix * g)
                if self.relax_cell:
                    self.v_cell = (1.0 - self.a) * self.v_cell + mix * g_cell
                if self.n_pos > self.Nmin:
                    self.fire_dt = min(self.fire_dt * self.finc, self.dtmax)
                    self.a *= self.fa
                self.n_pos += 1
            else:
                v.zero_()
                self.v_cell[:] = 0.0
                self.a = self.astart
                self.fire_dt *= self.fdec
                self.n_pos = 0
        dt = self.fire_dt
        v.add_(dt * g)
        if state.fixed is not None:
            v[state.fixed] = 0.0
        if self.relax_cell:
            self.v_cell = self.v_cell + dt * g_cell
        vc = self.v_cell if self.relax_cell else None
        norm = dt * self._dot(state, v, v, vc, vc) ** 0.5
        step = dt if norm <= self.maxstep else dt * self.maxstep / norm
        if not self.relax_cell:
            state.positions.add_(step * v)
            return
        Ft = torch.as_tensor(F, dtype=state.positions.dtype, device=state.positions.device)
        r_ref = torch.linalg.solve(Ft, state.positions.T).T  # r F^-T
        r_ref.add_(step * v)
        self.log_f = self.log_f + step * self.v_cell / self.exp_cell_factor
        F_new = self._deform()
        Fn = torch.as_tensor(F_new, dtype=state.positions.dtype, device=state.positions.device)
        state.positions.copy_(r_ref @ Fn.T)
        state.cell.copy_(torch.as_tensor(self.cell0 @ F_new.T, dtype=state.cell.dtype, device=state.cell.device))

    def final_integrate(self, state) -> None:
        """Nothing: FIRE acts once per force evaluation, in initial_integrate."""

    def state_dict(self) -> dict:
        return {
            "fire_dt": self.fire_dt, "a": self.a, "n_pos": self.n_pos, "first": self.first,
            "converged": self.converged, "exp_cell_factor": self.exp_cell_factor,
            "cell0": None if self.cell0 is None else self.cell0.tolist(),
            "log_f": self.log_f.tolist(), "v_cell": self.v_cell.tolist(),
        }

    def load_state_dict(self, d: dict) -> None:
        self.fire_dt, self.a, self.n_pos = float(d["fire_dt"]), float(d["a"]), int(d["n_pos"])
        self.first, self.converged = bool(d["first"]), bool(d["converged"])
        self.exp_cell_factor = d["exp_cell_factor"]
        self.cell0 = None if d["cell0"] is None else np.asarray(d["cell0"], dtype=np.float64)
        self.log_f = np.asarray(d["log_f"], dtype=np.float64)
        self.v_cell = np.asarray(d["v_cell"], dtype=np.float64)
