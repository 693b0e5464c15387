"""Multi-stage runs (``stages:`` in the input): relax -> heat -> NPT -> NVE in one file.

Each stage is one ``Simulation`` (or one relaxation) in its own folder,
``<output.directory>/stage<k>_<name>/``, with its own thermo.csv, trajectory,
restarts and resolved_config.yaml. A stage starts from the previous stage's
full state -- positions, velocities, cell, step counter and fixed atoms -- read
back from the previous stage's final restart file, so a stage started in the
same process and one started after ``--resume`` start from the same bits.
Thermostat, barostat and minimiser variables never carry over: every stage
starts its integrator afresh (as a new LAMMPS fix would).

Steps count on across stages (as LAMMPS's timestep does): a stage of n steps
that starts at step s ends at s + n, its ramps run from s to s + n, and in its
resolved_config.yaml ``dynamics.steps`` is s + n. A relaxation takes no MD
steps; the stage after it starts with Maxwell-Boltzmann velocities at
``system.temperature_K`` (seed ``system.seed``), as a run from the relaxed
structure would.

A finished stage leaves ``stage.json`` (status done, final step). ``--resume``
skips the finished stages, continues the stage in progress from its newest
restart, or starts it from the previous stage's final state when it has none.

The relaxation itself (ASE optimizers) is a front end (atomsim/relax.py): the
caller passes it in as ``relax`` so that engine/ imports no front end.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Optional

import torch

from .comm import world_comm
from .config import RunConfig, StageConfig, write_resolved_config
from .errors import InputError
from .restart import RESTART_NAME, find_restart, has_restart, write_restart

__all__ = ["STAGE_FILE", "stage_directory", "stage_config", "run_stages"]

STAGE_FILE = "stage.json"


def stage_directory(cfg: RunConfig, stage: StageConfig) -> Path:
    """Where a stage writes: its ``output.directory``, relative to the run's ``output.directory``."""
    own = Path(stage.output.directory)
    return own if own.is_absolute() else Path(cfg.output.directory) / own


def stage_config(cfg: RunConfig, stage: StageConfig, start_step: int) -> RunConfig:
    """The single-run config of one stage starting at ``start_step``: the base sections with the
    stage's ``dynamics`` (``steps`` made the step it ends at) and ``output`` (its own folder)."""
    update = {"stages": None, "relax": stage.relax,
              "output": stage.output.model_copy(update={"directory": str(stage_directory(cfg, stage))})}
    if stage.dynamics is not None:
        update["dynamics"] = stage.dynamics.model_copy(update={"steps": start_step + stage.dynamics.steps})
    return cfg.model_copy(update=update)


def _read_done(directory: Path) -> Optional[dict]:
    path = directory / STAGE_FILE
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("status") == "done" else None


def _write_done(directory: Path, info: dict) -> None:
    tmp = directory / f".{STAGE_FILE}.tmp"
    tmp.write_text(json.dumps({**info, "status": "done"}, indent=2) + "\n")
    os.replace(tmp, directory / STAGE_FILE)


def _state_from(directory: Path, device, comm, grid="auto"):
    """The final state a finished stage left in its restart file.

    Sharded restarts on several ranks: each rank reads only its sub-domain's atoms under ``grid``
    (the next stage's ``parallel.grid``), as ``--resume`` does, so no rank holds the whole system;
    a single-file restart gives every rank the whole system (the force provider keeps its own).
    """
    from .simulation import restart_owner

    restart = find_restart(directory, device)  # single file or shards (output.parallel)
    done = _read_done(directory)
    if done is not None and restart.step != done["final_step"]:
        raise InputError(f"{restart.path} is at step {restart.step}, but the stage ended at step "
                         f"{done['final_step']} ({directory / STAGE_FILE}); run again without --resume")
    return restart.to_state(device, comm, owner=restart_owner(restart, comm, grid))


def _relaxed_restart(cfg: RunConfig, atoms, step: int, directory: Path) -> None:
    """A relaxed structure as a restart, with Maxwell-Boltzmann velocities at system.temperature_K."""
    import numpy as np

    from .state import MDState
    from .structure import fixed_by_constraints, initialize_velocities

    initialize_velocities(atoms, cfg.system.temperature_K, cfg.system.seed)
    st = MDState.from_atoms(atoms)
    arrays = {"positions": st.positions, "velocities": st.velocities, "masses": st.masses,
              "numbers": st.numbers, "ids": st.ids, "cell": st.cell, "pbc": torch.tensor(st.pbc)}
    mask = np.asarray(fixed_by_constraints(atoms), dtype=bool)
    if mask.any():
        arrays["fixed"] = torch.from_numpy(mask)
    write_restart(directory, arrays, "relax", {}, None, step, cfg, 0)


def _atoms_from_state(state):
    """ase.Atoms of a (whole-system) state with its fixed atoms as FixAtoms, for a relaxation stage."""
    from ase.constraints import FixAtoms

    atoms = state.to_atoms()
    if state.fixed is not None and bool(state.fixed.any()):
        atoms.set_constraint(FixAtoms(mask=state.fixed.cpu().numpy()))
    return atoms


def run_stages(cfg: RunConfig, resume: bool = False, relax: Optional[Callable] = None, console=None,
               comm=None, potential=None) -> dict:
    """Run (or with ``resume``, continue) every stage of ``cfg.stages``; returns a summary.

    ``relax(stage_cfg, atoms=, console=, potential=) -> result`` (with ``.converged`` and ``.atoms``;
    ``atoms`` None: build the structure from the config) runs a relaxation stage: atomsim/relax.py's
    ``relax_config``. ``potential`` (built from ``cfg.potential`` when None) serves every stage. The
    summary's ``status`` is ``done``, or ``not_converged`` when a relaxation stage ran out of steps
    (the later stages are not run).
    """
    from atomsim.kernels.dtypes import resolve_device

    if not cfg.stages:
        raise InputError("run_stages: the input has no `stages`")
    comm = comm if comm is not None else world_comm()
    root = comm.rank == 0
    if console is None:
        from rich.console import Console

        console = Console(quiet=not root)
    device = resolve_device(cfg.potential.device, "potential.device")
    base = Path(cfg.output.directory)
    dirs = [stage_directory(cfg, s) for s in cfg.stages]
    if len(set(map(str, dirs))) != len(dirs):
        raise InputError("`stages`: two stages write to the same folder; give them different names")
    if root:
        base.mkdir(parents=True, exist_ok=True)
        write_resolved_config(cfg, base)
    if resume and not any(_read_done(d) or has_restart(d) for d in dirs):
        raise InputError(f"--resume: no stage in output.directory {str(base)!r} has started (no "
                         f"{STAGE_FILE} or {RESTART_NAME}); run without --resume first")

    if potential is None:
        from atomsim.potentials import load_potential

        potential = load_potential(cfg.potential.model, **cfg.potential.params)
    summary: dict = {"stages": [], "status": "done", "output_directory": str(base)}
    prev: Optional[Path] = None
    n = len(cfg.stages)
    for k, (stage, sdir) in enumerate(zip(cfg.stages, dirs), 1):
        continuing = False
        if resume:
            done = _read_done(sdir)
            if done is not None:
                console.print(f"[dim]stage {k}/{n} ({sdir.name}): done earlier, "
                              f"step {done['final_step']}[/dim]")
                summary["stages"].append(done)
                prev = sdir
                continue
            continuing = not stage.is_relax and has_restart(sdir)
            resume = False  # the stages after this one start afresh
        start = 0 if prev is None else find_restart(prev).step
        scfg = stage_config(cfg, stage, start)
        if root:
            sdir.mkdir(parents=True, exist_ok=True)
            (sdir / STAGE_FILE).unlink(missing_ok=True)
        comm.barrier()
        if stage.is_relax:
            info = _relax_stage(k, n, scfg, sdir, prev, start, relax, console, comm, potential)
            summary["stages"].append(info)
            if not info["converged"]:
                summary["status"] = "not_converged"
                return summary
        else:
            info = _md_stage(k, n, scfg, stage, sdir, prev, start, console, comm, device, potential,
                             continuing)
            summary["stages"].append(info)
        if root:
            _write_done(sdir, info)
        comm.barrier()
        prev = sdir
    return summary


def _md_stage(k, n, scfg, stage, sdir, prev, start, console, comm, device, potential, continuing) -> dict:
    """One MD stage: continued from its own newest restart, or started from the previous stage's state."""
    from .simulation import Simulation

    steps = stage.dynamics.steps
    where = f"stage {k}/{n} ({sdir.name}): {stage.dynamics.integrator}"
    if continuing:
        restart = find_restart(sdir, device=device)
        restart.check_config(scfg)
        console.print(f"[bold]{where}, resumed at step {restart.step} "
                      f"(steps {start}..{start + steps})[/bold]")
        sim = Simulation(scfg, comm=comm, restart=restart, console=console, potential=potential)
    else:
        state = None if prev is None else _state_from(prev, device, comm, scfg.parallel.grid)
        console.print(f"[bold]{where}, {steps} steps (steps {start}..{start + steps})[/bold]")
        sim = Simulation(scfg, comm=comm, state=state, console=console, potential=potential)
    out = sim.run()
    if not (scfg.output.restart_every and out["steps"] > 0):  # run() wrote none at its last step
        sim.write_restart()
    return {"stage": k, "name": sdir.name, "kind": "md", "integrator": stage.dynamics.integrator,
            "start_step": start, "final_step": int(out["final_step"]), "directory": str(sdir)}


def _relax_stage(k, n, scfg, sdir, prev, start, relax, console, comm, potential) -> dict:
    """One relaxation stage, on rank 0 (ASE is serial); its result goes to the others through the restart."""
    if relax is None:
        raise InputError(f"stage {k} is a relaxation, which needs atomsim's relax front end "
                         "(run it with `atomsim run`)")
    console.print(f"[bold]stage {k}/{n} ({sdir.name}): relaxation ({scfg.relax.optimizer})[/bold]")
    converged = False
    if comm.rank == 0:
        atoms = None if prev is None else _atoms_from_state(_state_from(prev, "cpu", None))
        result = relax(scfg, atoms=atoms, console=console, potential=potential)
        converged = bool(result.converged)
        _relaxed_restart(scfg, result.atoms, start, sdir)
    converged = comm.bcast(converged)
    return {"stage": k, "name": sdir.name, "kind": "relax", "converged": converged,
            "start_step": start, "final_step": start, "directory": str(sdir)}
