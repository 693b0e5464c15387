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

from typing import Callable, Dict, Optional

from ase import units

from .schedule import Deformed, Ramp, as_ramp

_REGISTRY: Dict[str, Callable[..., "Integrator"]] = {}


class Integrator:
    name = "base"
    changes_cell = False  # True for barostats: the engine rebuilds neighbors on cell change
    converged = False  # minimisers (fire) set True when done: the run loop then stops
    # True when a step reads nothing back to the host (no Python numbers from device tensors): the run
    # loop may then defer its skin and blow-up checks (engine/device_checks.py). Barostats, Nose-Hoover
    # chains and minimisers read global sums every step and keep the per-step checks.
    device_resident = False

    def __init__(self, timestep_fs: float, **params):
        self.timestep_fs = float(timestep_fs)
        self.dt = self.timestep_fs * units.fs  # ASE time units

    def _set_thermostat(self, temperature_K, tdamp_fs: float,
                        meaning: str = "thermostat time constant") -> None:
        """Check and keep a thermostat's target (K: a number or a ``schedule.Ramp``) and time constant (fs).

        ``self.temperature_K`` is the starting target; ``self.target_temperature(step)`` the one at a step.
        """
        if not tdamp_fs > 0:
            raise ValueError(f"dynamics.tdamp_fs must be > 0 ({meaning}, fs)")
        ramp = as_ramp(temperature_K)
        self.temperature = Ramp(float(ramp.start), None if ramp.stop is None else float(ramp.stop),
                                ramp.begin, ramp.end)
        self.temperature_K = self.temperature.start
        self.tdamp_fs = float(tdamp_fs)

    def target_temperature(self, step: int) -> float:
        """Thermostat target (K) at MD step ``step`` (a ramp is linear in the step)."""
        return self.temperature.at(step)

    def _ramps(self) -> dict:
        """The ramps whose begin/end a restart must carry: {state-dict key: (Ramp, input key)}."""
        out = {}
        if getattr(self, "temperature", None) is not None and self.temperature.ramped:
            out["temperature_ramp"] = (self.temperature, "dynamics.temperature_K")
        if getattr(self, "pressure_ramp", None) is not None and self.pressure_ramp.ramped:
            out["pressure_ramp"] = (self.pressure_ramp, "dynamics.pressure_GPa")
        return out

    def _save_ramps(self, d: dict) -> dict:
        for key, (ramp, _) in self._ramps().items():
            d[key] = ramp.state_dict()
        return d

    def _load_ramps(self, d: dict) -> None:
        for key, (ramp, name) in self._ramps().items():
            ramp.load_state_dict(d.get(key), name)

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
    deform = params.pop("deform", None)
    integ = _REGISTRY[name](timestep_fs, **params)
    if deform is not None:  # (erate_per_ps, begin step)
        integ = Deformed(integ, deform[0], begin=deform[1])
    return integ


_CONFIG_KEYS = ("chain_length", "pressure_GPa", "pdamp_fs", "barostat", "compressibility_per_GPa",
                "fmax_eV_per_A", "relax_cell", "remove_com")


def integrator_kwargs(dynamics, temperature_K: float, seed: int, start_step: int = 0) -> dict:
    """make_integrator keyword arguments from a DynamicsConfig; each integrator ignores keys it does not use.

    Ramps (``temperature_stop_K``, ``pressure_stop_GPa``) and ``deform`` run from ``start_step`` (the
    state's step when the run starts) to ``dynamics.steps``; a restart replaces ``start_step`` by the
    one it saved.
    """
    end = int(getattr(dynamics, "steps", 0))
    t_stop = getattr(dynamics, "temperature_stop_K", None)
    temp = Ramp(temperature_K, t_stop, start_step, end) if t_stop is not None else temperature_K
    kw = dict(temperature_K=temp, tdamp_fs=dynamics.tdamp_fs, seed=seed)
    for key in _CONFIG_KEYS:
        if hasattr(dynamics, key):
            kw[key] = getattr(dynamics, key)
    p_stop = getattr(dynamics, "pressure_stop_GPa", None)
    if p_stop is not None:
        kw["pressure_GPa"] = Ramp(kw.get("pressure_GPa"), p_stop, start_step, end)
    deform = getattr(dynamics, "deform", None)
    if deform is not None:
        kw["deform"] = (list(deform.erate_per_ps), start_step)
    return kw


def pressure_ramp(pressure_GPa, convert: Callable) -> "tuple[object, Optional[Ramp]]":
    """(target at the start, Ramp of converted targets or None) from a pressure_GPa number/list or Ramp.

    ``convert`` maps a pressure_GPa value to the integrator's own representation (eV/Å^3 scalar or tensor).
    """
    if isinstance(pressure_GPa, Ramp):
        if pressure_GPa.start is None:
            raise ValueError("dynamics.pressure_stop_GPa needs dynamics.pressure_GPa (where the ramp starts)")
        start = convert(pressure_GPa.start)
        stop = convert(pressure_GPa.stop)
        return start, Ramp(start, stop, pressure_GPa.begin, pressure_GPa.end)
    return convert(pressure_GPa), None
