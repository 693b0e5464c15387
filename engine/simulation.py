"""The run loop: config -> potential, state, integrator, force provider -> steps -> outputs.

Each step is ``engine.step.md_step`` (integrate, forces, safety, integrate);
around it this module only decides when to write thermo rows, trajectory
frames and restarts. Everything that makes a run reproducible (positions,
velocities, integrator state, the neighbor list's reference positions) goes
into the restart file, so ``--resume`` continues bit for bit. The force
provider (``engine/forces.py``'s ``ForceProvider``) is ``SerialForces`` on one
rank and ``ParallelForces`` under ``mpiexec -n N``; a caller may pass its own.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Optional

import torch

from atomsim.kernels.dtypes import resolve_device, torch_dtype
from atomsim.kernels.threads import configure_threads, ranks_per_node

from . import parallel_io as pio
from .comm import rank_device, world_comm
from .config import RunConfig, load_config, write_resolved_config
from .deferred_loop import DeferredLoop, check_interval
from .forces import ForceProvider, SerialForces
from .memory import MemoryMeter, format_report
from .progress import RunProgress
from .restart import PREVIOUS_NAME, RESTART_NAME, Restart, find_restart, write_restart
from .safety import BlowUp, SimulationError
from .state import MDState
from .step import evaluate_forces, md_step
from .thermo import ThermoWriter, thermo_row
from .trajectory import TRAJECTORY_FILES, HostFrameCopier, open_trajectory, state_to_atoms

__all__ = ["Simulation", "SimulationError", "set_threads"]


def _cast_potential(potential, device: str, dtype: torch.dtype):
    potential = potential.to(device=device, dtype=dtype)
    has_float = any(t.is_floating_point() for t in list(potential.parameters()) + list(potential.buffers()))
    if not has_float:  # parameter-free potentials report their dtype through _dtype
        potential._dtype = dtype
    return potential


def set_threads(setting, n_atoms: int, n_ranks: int, comm=None) -> int:
    """Threads per rank for torch, numba and BLAS alike (kernels/threads.py); returns the count set.

    ``"auto"``: the cores available divided by the ranks on this node (counted over ``comm`` by host
    name; without one, all ``n_ranks`` are taken to share the node), at most one thread per 1000
    atoms of a rank: on a small system every extra thread is pure synchronisation cost (on a busy
    2-core machine 2 threads made a 108-atom step ~15x slower than 1).
    """
    per_node = ranks_per_node(comm) if setting == "auto" and comm is not None else max(1, n_ranks)
    return configure_threads(setting, atoms_per_rank=n_atoms // max(1, n_ranks), ranks_per_node=per_node)


def restart_owner(restart, comm, grid) -> Optional["pio.SubDomain"]:
    """Whose atoms this rank reads from ``restart``: its sub-domain's for sharded restarts on several
    ranks (no rank reads the whole system), None (every atom) for a single file or one rank."""
    from .restart import ShardedRestart

    if not isinstance(restart, ShardedRestart) or comm is None or comm.size == 1:
        return None
    return pio.SubDomain(restart.meta["cell"], restart.meta["pbc"], comm, None if grid == "auto" else grid)


class Simulation:
    """A molecular-dynamics run described by a RunConfig.

    ``atoms`` (ase.Atoms: velocities used as given, FixAtoms honoured) and ``potential`` override what
    the config would build; ``forces`` replaces the force provider.
    ``run()`` continues to ``dynamics.steps`` (the TOTAL step count, resumes included);
    ``run(n)`` takes n more steps. ``state`` (an MDState, e.g. the previous stage's final one from
    engine/stages.py) is used as is: positions, velocities, cell, step and fixed atoms.
    """

    def __init__(self, config: RunConfig, atoms=None, potential=None, comm=None, *,
                 forces: Optional[ForceProvider] = None, restart: Optional[Restart] = None, console=None,
                 state: Optional[MDState] = None):
        self.config = config
        self.comm = comm if comm is not None else world_comm()
        self.memory = MemoryMeter(self.comm)  # peak RSS per owned atom, printed at start and in thermo
        self.is_root = self.comm.rank == 0
        # under MPI, "cuda" means this rank's GPU: cuda:{local rank % GPUs} (engine/comm.py rank_device)
        self.device = rank_device(resolve_device(config.potential.device, "potential.device"), self.comm)
        self.outdir = Path(config.output.directory)
        self.restart = restart
        # per-rank shards instead of gathering to rank 0 (engine/parallel_io.py)
        self.sharded = pio.use_shards(config.output.parallel, self.comm.size)
        if console is None:
            from rich.console import Console

            console = Console(quiet=not self.is_root)
        self.console = console

        if potential is None:
            from atomsim.potentials import load_potential

            potential = load_potential(config.potential.model, **config.potential.params)
        self.potential = _cast_potential(potential, self.device, torch_dtype(config.potential.dtype))

        if restart is not None:
            self.state = restart.to_state(self.device, self.comm,
                                          owner=restart_owner(restart, self.comm, config.parallel.grid))
        elif state is not None:
            self.state = state
        elif atoms is None:  # each rank builds only its own sub-domain's atoms (engine/structure.py)
            from .structure import build_local_state

            grid = config.parallel.grid
            self.state, self._fix = build_local_state(config, self.comm, self.device,
                                                      None if grid == "auto" else grid)
        else:
            self.state = MDState.from_atoms(atoms, device=self.device, comm=self.comm)
        self.potential.check_species(self.state.numbers.cpu().numpy())
        self.threads = set_threads(config.parallel.threads, self.state.n_atoms_global, self.comm.size,
                                   self.comm)

        dyn = config.dynamics
        target_T = dyn.temperature_K if dyn.temperature_K is not None else config.system.temperature_K
        from atomsim.integrators import make_integrator
        from atomsim.integrators.base import integrator_kwargs
        from atomsim.integrators.constraints import fixed_from_config

        kwargs = integrator_kwargs(dyn, target_T, config.system.seed, start_step=self.state.step)
        self.integrator = make_integrator(dyn.integrator, dyn.timestep_fs, **kwargs)
        if restart is None and state is None:  # a restart or handed-over state carries its own mask
            from .structure import with_file_constraints

            fix = self._fix if atoms is None else with_file_constraints(dyn.fix, atoms)
            fixed_from_config(self.state, fix)  # + the file's FixAtoms
        self.forces: ForceProvider = forces if forces is not None else self._default_forces()
        self.forces.prepare(self.state)
        if restart is not None or state is not None:
            held = int(self.comm.allreduce_sum(self.state.n_local))
            if held != self.state.n_atoms_global:  # each atom read by exactly one owner, or stop here
                from .restart import RestartError

                what = (f"--resume: the ranks hold {held} of the {self.state.n_atoms_global} atoms of "
                        f"{restart.path}; the restart does not match its manifest" if restart is not None else
                        f"the ranks hold {held} of the {self.state.n_atoms_global} atoms of the state handed "
                        "over from the previous stage")
                raise RestartError(what)
        if restart is not None:
            self.integrator.load_state_dict(restart.integrator_state)
            self._restore_neighbor_list(restart)

        self.timings = {"neighbor": 0.0, "forces": 0.0, "integrate": 0.0, "safety": 0.0, "output": 0.0}
        self._ready = False
        self._thermo = self._traj = None
        self._last_good: Optional[dict] = None  # state + integrator + list reference at the last thermo row
        self._frames = HostFrameCopier()  # trajectory frames copied to the host without waiting (CUDA)
        self._pending_frame = None  # (host frame, copy event) still to be written
        self.last_thermo: Optional[dict] = None

    def _default_forces(self) -> ForceProvider:
        skin = self.config.neighbor.skin
        if self.comm.size == 1:
            return SerialForces(self.potential, skin=skin)
        from .parallel_forces import ParallelForces

        self.comm.install_abort_handler()
        self.comm.watch_for_silent_death(self.outdir)
        par = self.config.parallel
        return ParallelForces(self.potential, self.comm, skin=skin, halo=par.halo,
                              grid=None if par.grid == "auto" else par.grid)

    # -- construction -----------------------------------------------------
    @classmethod
    def from_yaml(cls, path, overrides: Iterable[str] = (), resume: bool = False, **kw) -> "Simulation":
        return cls.from_config(load_config(path, list(overrides)), resume=resume, **kw)

    @classmethod
    def from_config(cls, cfg: RunConfig, resume: bool = False, **kw) -> "Simulation":
        """A fresh run, or (resume=True) the continuation of the newest restart in output.directory."""
        restart = None
        if resume:
            restart = find_restart(cfg.output.directory,
                                   device=resolve_device(cfg.potential.device, "potential.device"))
            restart.check_config(cfg)
        return cls(cfg, restart=restart, **kw)

    def _restore_neighbor_list(self, restart: Restart) -> None:
        """Rebuild the list at the saved reference positions: same pairs, same order, same bits."""
        ref = restart.neighbor_state
        if "positions" not in ref:
            return
        extra = {}
        if "ids" in ref and self.comm.size > 1:  # a sharded restart: this rank's atoms only, by id
            extra["ids"] = ref["ids"]
        dev = self.device
        self.forces.restore_reference(self.state, ref["positions"].to(dev), ref["cell"].to(dev), **extra)
        self.forces.n_builds = int(restart.meta.get("n_neighbor_builds", self.forces.n_builds))

    # -- set-up and outputs ----------------------------------------------
    def _setup(self) -> None:
        cfg, out = self.config, self.config.output
        resumed = self.restart is not None
        if self.is_root:
            self.outdir.mkdir(parents=True, exist_ok=True)
            if not resumed:  # a fresh run must never be resumed from an older run's files
                for name in (RESTART_NAME, PREVIOUS_NAME):
                    (self.outdir / name).unlink(missing_ok=True)
                pio.remove_sharded_output(self.outdir)
                if self.sharded:  # nor an older run's single-file frames be mistaken for this run's
                    for name in TRAJECTORY_FILES.values():
                        (self.outdir / name).unlink(missing_ok=True)
            write_resolved_config(cfg, self.outdir)
        self._thermo = ThermoWriter(self.outdir / "thermo.csv", console=self.console, enabled=self.is_root,
                                    resume_step=self.restart.step if resumed else None)
        if resumed and self.is_root:  # frames after the restart, in the other mode's files, are dropped too
            pio.drop_frames_after(self.outdir, self.restart.step)
            if self.sharded:
                open_trajectory(out.trajectory_format, self.outdir, cfg.dynamics.timestep_fs, enabled=True,
                                append=True, resume_step=self.restart.step, per_atom=out.per_atom)
        if self.sharded and out.trajectory_every > 0:
            self._traj = pio.ShardedTrajectory(self.outdir, cfg.dynamics.timestep_fs, self.comm,
                                               fmt=out.trajectory_format, append=resumed,
                                               resume_step=self.restart.step if resumed else None,
                                               per_atom=out.per_atom)
        else:
            self._traj = open_trajectory(out.trajectory_format, self.outdir, cfg.dynamics.timestep_fs,
                                         enabled=self.is_root and out.trajectory_every > 0, append=resumed,
                                         resume_step=self.restart.step if resumed else None,
                                         per_atom=out.per_atom)
        if "stresses" in out.per_atom and out.trajectory_every > 0:
            self._check_atom_stresses()
        t = time.perf_counter()
        self.memory.mark_before_forces()
        try:
            evaluate_forces(self.state, self.forces, virial=True, max_force=cfg.dynamics.max_force_eV_per_A)
        except BlowUp as exc:
            self._stop(exc)
        self.timings["forces"] += time.perf_counter() - t
        self.memory.mark_after_forces()
        self.integrator.setup(self.state)
        self._keep_last_good()
        self.memory_report = self.memory.report(self.state, self.forces, self._last_good)  # collective
        self.console.print(format_report(self.memory_report))
        if not resumed:
            self._write_thermo(0.0)
            if out.trajectory_every > 0:
                self._write_trajectory()
        self._ready = True

    def _gathered(self, state: MDState) -> Optional[MDState]:
        """The whole system on rank 0 (None elsewhere), atoms sorted by id."""
        if self.comm.size == 1:
            return state
        parts = {k: getattr(state, k).detach().cpu().numpy()
                 for k in ("positions", "velocities", "masses", "numbers", "ids")}
        for k in ("forces", "fixed"):
            if getattr(state, k) is not None:
                parts[k] = getattr(state, k).detach().cpu().numpy()
        if state.energies is not None:
            parts["energies"] = state.host_energies()
        g = self.comm.gather_by_id(parts.pop("ids"), **parts)
        if g is None:
            return None
        t = lambda a, dt=torch.float64: torch.from_numpy(a).to(dt)  # noqa: E731
        return MDState(positions=t(g["positions"]), velocities=t(g["velocities"]), masses=t(g["masses"]),
                       numbers=t(g["numbers"], torch.int64), ids=t(g["ids"], torch.int64),
                       cell=state.cell.detach().cpu(), pbc=state.pbc, n_atoms_global=state.n_atoms_global,
                       step=state.step, energy=float(state.energy),
                       forces=t(g["forces"]) if "forces" in g else None,
                       fixed=torch.from_numpy(g["fixed"]) if "fixed" in g else None,
                       energies=g.get("energies"))

    def _write_thermo(self, rate: float) -> None:
        t = time.perf_counter()
        row = thermo_row(self.state, self.integrator, self.config.dynamics.timestep_fs, rate,
                         self.forces.n_builds, peak_rss_B_per_atom=self.memory.per_atom(self.state.n_local))
        self.last_thermo = row
        self._thermo.write(row)
        self.timings["output"] += time.perf_counter() - t

    def _write_trajectory(self) -> None:
        self._flush_frame()
        t = time.perf_counter()
        stresses = None
        if "stresses" in self.config.output.per_atom:
            stresses = self._atom_stresses(gather=not self.sharded)
        if self.sharded:  # every rank writes its own atoms: nothing is gathered
            self._traj.write(self.state, stresses=stresses)
            self.timings["output"] += time.perf_counter() - t
            return
        if self.comm.size == 1 and stresses is None:  # CUDA: copies start now, written after the next step
            frame, event = self._frames.start(self.state)
            if event is None:
                self._traj.write(frame)
            else:
                self._pending_frame = (frame, event)
            self.timings["output"] += time.perf_counter() - t
            return
        g = self._gathered(self.state)
        if g is not None:
            self._traj.write(g, stresses=stresses)
        self.timings["output"] += time.perf_counter() - t

    def _flush_frame(self) -> None:
        """Write the frame whose host copies were started at its step (engine/trajectory.py)."""
        if self._pending_frame is None:
            return
        t = time.perf_counter()
        frame, event = self._pending_frame
        self._pending_frame = None
        event.synchronize()
        self._traj.write(frame)
        self.timings["output"] += time.perf_counter() - t

    def _check_atom_stresses(self) -> None:
        """``output.per_atom: [stresses]`` needs a cell with a volume and a provider giving atom virials."""
        import inspect

        from .errors import InputError

        if self.state.volume <= 0:
            raise InputError("`output.per_atom`: stresses are virial / volume and this structure's cell has "
                             "no volume (no three cell vectors); drop stresses or give the structure a cell")
        if "atom_virial" not in inspect.signature(self.forces.compute).parameters:
            raise InputError(f"`output.per_atom`: stresses need per-atom virials, which the force provider "
                             f"{type(self.forces).__name__} does not offer (compute(..., atom_virial=True)); "
                             "drop stresses from output.per_atom")

    def _atom_stresses(self, gather: bool = True):
        """Per-atom stresses (n, 6) in eV/Å^3 of all atoms by id on rank 0, None elsewhere (collective).

        ``gather=False``: this rank's owned atoms, in state order (sharded frames).

        ASE's ``get_stresses()`` convention: atom virial / cell volume, Voigt order, summing
        to the stress. One more force evaluation at the frame's positions (no list rebuild:
        nothing moved) asks the provider for the atom virials; the run's state is untouched.
        """
        from ase.stress import full_3x3_to_voigt_6_stress

        result = self.forces.compute(self.state, virial=False, atom_virial=True)
        stresses = full_3x3_to_voigt_6_stress(result.atom_virials.detach().cpu().numpy()) / self.state.volume
        if self.comm.size == 1 or not gather:
            return stresses
        g = self.comm.gather_by_id(self.state.ids.cpu().numpy(), stresses=stresses)
        return None if g is None else g["stresses"]

    def write_restart(self, name: str = RESTART_NAME, good: Optional[dict] = None) -> Optional[Path]:
        """Atomically write the current state (or a kept ``good`` one) to output.directory (collective)."""
        t = time.perf_counter()
        if good is None:
            good = {"state": self.state, "integrator": self.integrator.state_dict(),
                    "neighbor": self.forces.reference_state(self.state), "n_builds": self.forces.n_builds}
        st = good["state"]
        if self.sharded:
            path = self._write_sharded_restart(good)
            self.timings["output"] += time.perf_counter() - t
            return path
        g = self._gathered(st)
        ref = good["neighbor"]
        ref_all = None
        if ref:  # the list's reference positions of every atom, by id: a resume rebuilds exactly there
            ref_all = self.comm.gather_by_id(ref["ids"].cpu().numpy(), positions=ref["positions"].cpu().numpy())
        path = None
        if g is not None:
            arrays = {"positions": g.positions, "velocities": g.velocities, "masses": g.masses,
                      "numbers": g.numbers, "ids": g.ids, "cell": g.cell, "pbc": torch.tensor(g.pbc)}
            if g.fixed is not None:
                arrays["fixed"] = g.fixed
            nl = {}
            if ref_all is not None:
                nl = {"positions": torch.from_numpy(ref_all["positions"]), "cell": ref["cell"].cpu()}
            path = write_restart(self.outdir, arrays, self.integrator.name, good["integrator"], nl, g.step,
                                 self.config, good["n_builds"], name=name)
        self.timings["output"] += time.perf_counter() - t
        return path

    def _write_sharded_restart(self, good: dict) -> Path:
        """Each rank writes its owned atoms as one shard; rank 0 the manifest, last (collective)."""
        from .restart import restart_meta

        st, ref = good["state"], good["neighbor"]
        np_ = lambda x: x.detach().cpu().numpy()  # noqa: E731
        arrays = {k: np_(getattr(st, k)) for k in ("ids", "positions", "velocities", "masses", "numbers")}
        if st.fixed is not None:
            arrays["fixed"] = np_(st.fixed).astype(bool)
        cell = None
        if ref:  # the list's reference positions: rows of this rank's atoms (a resume rebuilds there)
            if not torch.equal(ref["ids"].cpu(), st.ids.cpu()):
                raise RuntimeError("restart: the neighbor list's reference rows are not the state's atoms")
            arrays["nl_positions"] = np_(ref["positions"]).astype(float)
            cell = ref["cell"]
        meta = restart_meta(self.config, self.integrator.name, good["integrator"], st.step, good["n_builds"],
                            cell)
        grid = self.config.parallel.grid
        return pio.write_sharded_restart(self.comm, self.outdir, arrays, meta, np_(st.cell), st.pbc,
                                         None if grid == "auto" else grid)

    # -- blow-up recovery -------------------------------------------------
    def _keep_last_good(self) -> None:
        """Keep the state of this (thermo / restart) step: what a blow-up later saves, without a clone per step."""
        st = self.state
        ref = self.forces.reference_state(st)
        self._last_good = None  # the old copy goes first: never two copies at once (memory per atom)
        self._last_good = {"state": st.snapshot(), "integrator": self.integrator.state_dict(),
                           "neighbor": {k: v.detach().clone() for k, v in ref.items()},
                           "n_builds": self.forces.n_builds}

    def _stop(self, exc: BlowUp) -> None:
        """Save the failing frame and the last good state, then stop with a message naming the atom."""
        self._flush_frame()
        good = self._last_good
        blow = self.outdir / "blowup.extxyz"
        bad = None
        if self.sharded:  # each rank writes its atoms of the failing frame: nothing is gathered
            out = self.config.output
            pio.ShardedTrajectory(self.outdir, self.config.dynamics.timestep_fs, self.comm,
                                  fmt=out.trajectory_format, append=False, resume_step=None,
                                  per_atom=out.per_atom, folder=pio.BLOWUP_SHARDS).write(self.state)
            where = self.outdir / pio.BLOWUP_SHARDS
            blow = f"{where} (to view: atomsim convert {where} blowup.extxyz)"
        else:
            bad = self._gathered(self.state)
        if bad is not None:
            from ase.io import write

            frames = []
            if good is not None and self.comm.size == 1:
                good_atoms = state_to_atoms(good["state"], energies=False)
                good_atoms.info["state"] = "last_good"
                frames.append(good_atoms)
            bad_atoms = state_to_atoms(bad)
            bad_atoms.info["state"] = "blowup"
            frames.append(bad_atoms)
            self.outdir.mkdir(parents=True, exist_ok=True)
            write(blow, frames, format="extxyz", parallel=False)  # rank 0 only: no ASE MPI broadcast
        saved = "no earlier good state to save (the starting structure itself is bad)"
        if good is not None:
            st = good["state"]
            self.state = st.snapshot()
            self.integrator.load_state_dict(good["integrator"])
            path = self.write_restart(good=good)
            saved = f"last good state (step {st.step}) saved to {path or self.outdir / RESTART_NAME}"
        raise SimulationError(
            f"{exc}. {saved}; failing frame in {blow}. The atoms are probably too close: "
            "check the structure, or lower dynamics.timestep_fs.") from None

    # -- the loop -----------------------------------------------------------
    def _deferred_checks(self) -> Optional[DeferredLoop]:
        """The device-resident step's checks when this run can defer them (``neighbor.check_every``)."""
        every = check_interval(self.config.neighbor.check_every, self.device)
        integ = self.integrator
        if (every <= 1 or not getattr(self.forces, "deferred_checks", False) or integ.changes_cell
                or not getattr(integ, "device_resident", False)):
            return None
        return DeferredLoop(self, every)

    def run(self, steps: Optional[int] = None) -> dict:
        """Run to dynamics.steps in total (steps=None) or `steps` more steps; return a summary."""
        if not self._ready:
            self._setup()
        st, integ, cfg = self.state, self.integrator, self.config
        out, dyn = cfg.output, cfg.dynamics
        start = st.step
        end = dyn.steps if steps is None else start + int(steps)
        n_steps = 0 if integ.converged else max(end - start, 0)  # a resumed, converged minimisation stays put
        thermo_every, traj_every, restart_every = out.thermo_every, out.trajectory_every, out.restart_every
        virial_always = bool(integ.changes_cell)
        n_atoms = st.n_atoms_global
        perf = time.perf_counter
        timings = self.timings
        neighbor0 = self.forces.timers["neighbor"]
        timings_at_start = dict(timings)

        progress = RunProgress(self.console, total=end, start=start,
                               enabled=out.progress and self.is_root and n_steps > 0)
        deferred = self._deferred_checks()
        t_run = perf()
        t_row, step_row = t_run, start
        last_restart = None
        with progress:
            for _ in range(n_steps):
                step = st.step + 1
                thermo_now = step % thermo_every == 0 or step == end
                output_now = thermo_now or (traj_every and step % traj_every == 0) or (
                    restart_every and step % restart_every == 0)
                try:
                    if deferred is None:
                        md_step(st, integ, self.forces, virial=virial_always or thermo_now,
                                max_force=dyn.max_force_eV_per_A, timers=timings)
                    else:
                        deferred.step(virial_always or thermo_now, bool(output_now), timings,
                                      keep=not thermo_now)
                except BlowUp as exc:
                    self._stop(exc)
                self._flush_frame()  # the previous output step's frame, copied while this step ran
                if thermo_now:
                    now = perf()
                    self._write_thermo(n_atoms * (step - step_row) / max(now - t_row, 1e-12))
                    t_row, step_row = now, step
                    self._keep_last_good()
                if traj_every and step % traj_every == 0:
                    self._write_trajectory()
                if restart_every and step % restart_every == 0:
                    self.write_restart()
                    last_restart = step
                progress.update(step)
                if integ.converged:  # a minimiser (fire) is done
                    if not thermo_now:
                        self._write_thermo(n_atoms * (step - step_row) / max(perf() - t_row, 1e-12))
                    break
        self._flush_frame()
        if out.restart_every and st.step > start and last_restart != st.step:
            self.write_restart()
        wall = perf() - t_run
        timings["neighbor"] += self.forces.timers["neighbor"] - neighbor0
        breakdown = {k: v - timings_at_start[k] for k, v in timings.items()}  # this call's loop only
        breakdown["forces"] = max(breakdown["forces"] - breakdown["neighbor"], 0.0)  # without list builds
        return {
            "steps": st.step - start,
            "final_step": st.step,
            "n_atoms": n_atoms,
            "wall_s": wall,
            "atom_steps_per_s": n_atoms * (st.step - start) / wall if wall > 0 else 0.0,
            "n_neighbor_builds": self.forces.n_builds,
            "deferred_checks": None if deferred is None else dict(deferred.stats, check_every=deferred.every),
            "timings_s": breakdown,
            "thermo": self.last_thermo,
            "output_directory": str(self.outdir),
        }
