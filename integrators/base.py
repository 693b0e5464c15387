"""The integrator plug-in interface, in LAMMPS's fix style.

The engine calls, each step:
    integrator.initial_integrate(state)   # e.g. half kick + drift (may change the cell)
    <engine: halo update / neighbor rebuild / forces into state.forces, state.virial>
    integrator.final_integrate(state)     # e.g. second half kick, thermostat
Integrators use only ``state.comm`` reductions for global quantities (MPI-safe),
draw random numbers from ``integrators.noise`` keyed by (seed, step, atom id) so
results do not depend on the rank count, and keep every other piece of state in
``state_dict()`` so restarts continue bit for bit.
"""
from __future__ import annotations

from typing import Callable, Dict

from ase import units

_REGISTRY: Dict[str, Callable[..., "Integrator"]] = {}


class Integrator:
    name = "base"
    changes_cell = False  # True for barostats: the engine rebuilds neighbors on cell change
    converged = False  # minimisers (fire) set True when done: the run loop then stops

    def __init__(self, timestep_fs: float, **params):
        self.timestep_fs = float(timestep_fs)
        self.dt = self.timestep_fs * units.fs  # ASE time units

    def _set_thermostat(self, temperature_K: float, tdamp_fs: float,
                        meaning: str = "thermostat time constant") -> None:
        """Check and keep a thermostat's target (K) and time constant (fs), alike in every ensemble."""
        if not tdamp_fs > 0:
            raise ValueError(f"dynamics.tdamp_fs must be > 0 ({meaning}, fs)")
        self.temperature_K = float(temperature_K)
        self.tdamp_fs = float(tdamp_fs)

    def setup(self, state) -> None:
        """Called once before the first step (forces are already in state)."""

    def initial_integrate(self, state) -> None:
        raise NotImplementedError

    def final_integrate(self, state) -> None:
        raise NotImplementedError

    def conserved_energy_extra(self, state) -> float:
        """Energy of thermostat/barostat variables (eV) to add to KE + PE."""
        return 0.0

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, d: dict) -> None:
        pass


def register_integrator(name: str):
    def deco(cls):
        _REGISTRY[name] = cls
        return cls

    return deco


def make_integrator(name: str, timestep_fs: float, **params) -> Integrator:
    from . import langevin, verlet  # noqa: F401  (register built-ins)

    for mod in ("nose_hoover", "npt", "berendsen", "fire"):
        try:
            __import__(f"{__package__}.{mod}")
        except ImportError:
            pass
    if name not in _REGISTRY:
        raise ValueError(f"unknown integrator {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](timestep_fs, **params)


_CONFIG_KEYS = ("chain_length", "pressure_GPa", "pdamp_fs", "barostat", "compressibility_per_GPa",
                "fmax_eV_per_A", "relax_cell", "remove_com")


def integrator_kwargs(dynamics, temperature_K: float, seed: int) -> dict:
    """make_integrator keyword arguments from a DynamicsConfig; each integrator ignores keys it does not use."""
    kw = dict(temperature_K=temperature_K, tdamp_fs=dynamics.tdamp_fs, seed=seed)
    for key in _CONFIG_KEYS:
        if hasattr(dynamics, key):
            kw[key] = getattr(dynamics, key)
    return kw
