"""The run loop's side of the device-resident step: when to read the deferred checks, and the replay.

Why a module of its own: ``engine/simulation.py`` decides what is written when;
this decides when the host looks at the device (``engine/device_checks.py``)
and how a failed check is undone, so that a run with deferred checks follows
the per-step path's trajectory bit for bit:

- steps run with ``md_step(..., checks=)``: no host read inside;
- at a check point (an output step, the last step, every ``check_every`` steps,
  or a host-side rebuild) ONE read of the running maxima; on success the state
  becomes the rollback point (``Simulation._keep_last_good``);
- on a stale list or a blow-up, the state and integrator go back to the rollback
  point and the interval is replayed with per-step host checks: the rebuild (or
  the ``BlowUp``, with its message and failing frame) happens at the very step the
  per-step path has it. The list is unchanged since the rollback point (deferred
  steps never rebuild, and a rebuild in host mode moves the rollback point), so
  the replay sees the same list;
- near a forecast rebuild (``SkinForecast``) the loop checks every step on the
  host until the rebuild, so replays stay rare.
"""
from __future__ import annotations

from typing import Dict, Optional

from .device_checks import DeferredChecks, SkinForecast
from .step import md_step

__all__ = ["DeferredLoop", "check_interval", "GPU_CHECK_EVERY"]

GPU_CHECK_EVERY = 20  # ``neighbor.check_every: auto`` off the CPU (a CPU has no host round trip to save)


def check_interval(setting, device) -> int:
    """Steps between host reads for ``neighbor.check_every`` (``auto``: 1 on CPU, 20 elsewhere)."""
    if setting == "auto":
        return 1 if str(device).startswith("cpu") else GPU_CHECK_EVERY
    return int(setting)


class DeferredLoop:
    """Runs one step at a time for ``Simulation.run`` with deferred checks, replaying when one fails."""

    def __init__(self, sim, every: int):
        self.sim = sim
        self.every = int(every)
        nlist = sim.forces.nlist
        self.max_force = float(sim.config.dynamics.max_force_eV_per_A)
        self.checks = DeferredChecks(sim.state.positions.device, nlist.stale_threshold, self.max_force)
        self.forecast = SkinForecast(nlist.skin)
        self.forecast.rebuilt(sim.state.step)  # conservative: a list built earlier only moved more slowly
        self.host_mode = False  # per-step host checks until the next rebuild (near a forecast rebuild)
        self.budget = self.every  # deferred steps left before the next read
        self.stats = {"reads": 0, "host_steps": 0, "deferred_steps": 0, "replays": 0, "replayed_steps": 0}

    def step(self, virial: bool, must_check: bool, timers: Optional[Dict[str, float]],
             keep: bool = True) -> None:
        """One MD step; ``must_check``: verify it now (an output follows); ``keep``: then snapshot it."""
        sim = self.sim
        st = sim.state
        if self.host_mode:
            result = md_step(st, sim.integrator, sim.forces, virial=virial, max_force=self.max_force,
                             timers=timers)
            self.stats["host_steps"] += 1
            if result.rebuilt:  # a fresh list: back to deferred checks, rolling back to here at most
                self._after_rebuild(st.step)
                sim._keep_last_good()
            return
        result = md_step(st, sim.integrator, sim.forces, virial=virial, max_force=self.max_force,
                         timers=timers, checks=self.checks)
        self.stats["deferred_steps"] += 1
        self.budget -= 1
        if not (must_check or result.rebuilt or self.budget <= 0):
            return
        verdict = self.checks.read()
        self.stats["reads"] += 1
        if verdict.ok:
            self.forecast.observe(st.step, verdict.max_disp_sq)
            self._plan(st.step)
        else:
            self._replay(st.step, virial, timers)
        if keep or result.rebuilt:
            sim._keep_last_good()

    def _plan(self, step: int) -> None:
        """Deferred steps until the next read, or per-step host checks when the list is about to go stale."""
        self.budget = self.forecast.horizon(step, self.every)
        self.host_mode = self.budget < 1

    def _after_rebuild(self, step: int) -> None:
        self.forecast.rebuilt(step)
        self.checks.reset()
        self._plan(step)

    def _replay(self, target: int, virial: bool, timers: Optional[Dict[str, float]]) -> None:
        """Back to the last verified state, then per-step host checks up to ``target`` (may raise BlowUp)."""
        sim = self.sim
        st = sim.state
        good = sim._last_good
        st.restore(good["state"])
        sim.integrator.load_state_dict(good["integrator"])
        self.checks.reset()
        self.host_mode = True
        self.stats["replays"] += 1
        self.stats["replayed_steps"] += target - st.step
        rebuilt = False
        while st.step < target:
            want = virial if st.step + 1 == target else False  # no thermo step lies inside the interval
            result = md_step(st, sim.integrator, sim.forces, virial=want, max_force=self.max_force,
                             timers=timers)
            if result.rebuilt:
                self.forecast.rebuilt(st.step)
                rebuilt = True
        if rebuilt:
            self._plan(target)
        # else: a failed check always replays into a rebuild or a BlowUp; stay on per-step checks anyway
