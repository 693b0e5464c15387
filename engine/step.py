"""One molecular-dynamics step, and the only place that knows its order.

    initial_integrate -> forces (neighbor list / halo inside the provider) -> safety -> final_integrate

``Simulation.run`` (``engine/simulation.py``), the benchmark suite
(``atomsim/bench/weak_scaling.py``) and the halo benchmark
(``benchmarks/halo/bench_halo.py``) all call :func:`md_step`, so what they time
is what a run does. ``state.step`` advances first: integrators that draw noise
key it by the step being taken.
"""
from __future__ import annotations

import time
from typing import Dict, Optional

from .device_checks import DeferredChecks
from .forces import ForceProvider, ForceResult
from .safety import check_forces

__all__ = ["md_step", "evaluate_forces"]


def evaluate_forces(state, forces: ForceProvider, *, virial: bool, max_force: float) -> ForceResult:
    """Forces at the current positions into ``state``, then the blow-up check (raises BlowUp)."""
    result = forces.compute(state, virial=virial)
    state.apply_forces(result)
    check_forces(state, max_force)
    return result


def md_step(state, integrator, forces: ForceProvider, *, virial: bool, max_force: float,
            timers: Optional[Dict[str, float]] = None,
            checks: Optional[DeferredChecks] = None) -> ForceResult:
    """Advance ``state`` by one step; ``timers`` (if given) accumulates integrate/forces/safety seconds.

    Raises ``engine.safety.BlowUp`` (collectively, on every rank) when a force is NaN/inf
    or above ``max_force``; the state then holds the failing frame.

    ``checks`` (``engine/device_checks.py``; a provider with ``deferred_checks``): the skin
    and blow-up checks are folded into device scalars instead, no host read in the step;
    the caller reads them at its check points and replays from its last verified state
    when they fail (``engine/deferred_loop.py``); ``checks`` carries the force limit then.
    """
    perf = time.perf_counter
    t0 = perf()
    state.step += 1
    integrator.initial_integrate(state)
    t1 = perf()
    if checks is None:
        result = forces.compute(state, virial=virial)
    else:
        result = forces.compute(state, virial=virial, checks=checks)
    state.apply_forces(result)
    t2 = perf()
    if timers is not None:
        timers["integrate"] = timers.get("integrate", 0.0) + (t1 - t0)
        timers["forces"] = timers.get("forces", 0.0) + (t2 - t1)
    if checks is None:
        check_forces(state, max_force)
    else:
        checks.note_forces(state.forces)
    t3 = perf()
    integrator.final_integrate(state)
    if timers is not None:
        timers["safety"] = timers.get("safety", 0.0) + (t3 - t2)
        timers["integrate"] += perf() - t3
    return result
