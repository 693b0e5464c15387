"""The run loop: config -> potential, state, integrator -> steps -> thermo/trajectory/restart.

One step is
    initial_integrate -> forces (neighbor list reused within the skin) -> safety check
    -> final_integrate -> outputs
and everything that makes a run reproducible (positions, velocities, integrator
state, the neighbor list's reference positions) goes into the restart file, so
``--resume`` continues bit for bit. The force provider is pluggable: the MPI
engine passes its own object with the ``compute(state)`` contract of
``engine.forces.SerialForces`` (plus ``reference_state()`` / ``n_builds``).
"""
from __future__ import annotations

import os

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable, Optional

import numpy as np
import torch

from .config import RunConfig
from .forces import SerialForces
from .progress import RunProgress
from .restart import PREVIOUS_NAME, RESTART_NAME, Restart, find_restart, write_restart
from .safety import SimulationError, max_force_sq, worst_atom
from .state import MDState
from .thermo import ThermoWriter, thermo_row
from .trajectory import TrajectoryWriter, state_to_atoms

__all__ = ["Simulation", "SimulationError"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> str:
    """`auto` -> cuda when torch sees a GPU, else cpu."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("potential.device is 'cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")
    return name


def _load_config(path, overrides: Iterable[str] = ()) -> RunConfig:
    """Use the config module's loader when it has one (nearest-key hints, --set parsing)."""
    from . import config as config_mod

    loader = getattr(config_mod, "load_config", None)
    if loader is not None:
        return loader(path, overrides)
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    for item in overrides:
        key, _, value = str(item).partition("=")
        node = data
        parts = key.strip().split(".")
        for k in parts[:-1]:
            node = node.setdefault(k, {})
        node[parts[-1]] = yaml.safe_load(value)
    return RunConfig.model_validate(data)


def _write_resolved_config(cfg: RunConfig, directory: Path) -> None:
    from . import config as config_mod

    write_resolved_config = getattr(config_mod, "write_resolved_config", None)
    if write_resolved_config is not None:
        write_resolved_config(cfg, directory)
        return
    import yaml

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.resolved.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def _cast_potential(potential, device: str, dtype: torch.dtype):
    potential = potential.to(device=device, dtype=dtype)
    has_float = any(t.is_floating_point() for t in list(potential.parameters()) + list(potential.buffers()))
    if not has_float:  # parameter-free potentials report their dtype through _dtype
        potential._dtype = dtype
    return potential


def set_threads(setting, n_atoms: int, n_ranks: int) -> int:
    """Torch (and numba) threads per rank; returns the number set.

    Why a heuristic: on a small system every extra thread is pure
    synchronisation cost (on a busy 2-core machine 2 threads made a 108-atom
    step ~15x slower than 1), and ranks sharing a node must split its cores.
    """
    if setting == "auto":
        if os.environ.get("OMP_NUM_THREADS"):
            return torch.get_num_threads()
        cores_per_rank = max(1, (os.cpu_count() or 1) // max(1, n_ranks))
        n = max(1, min(cores_per_rank, (n_atoms // max(1, n_ranks)) // 1000))
    else:
        n = int(setting)
    try:  # numba first: starting its OpenMP layer resets OpenMP's (and so torch's) thread count
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except Exception:  # numba absent or its threading layer already fixed
        pass
    torch.set_num_threads(n)
    return n


class Simulation:
    """A molecular-dynamics run described by a RunConfig.

    ``atoms`` (ase.Atoms, velocities used as given) and ``potential`` override what
    the config would build; ``forces`` replaces the serial force provider (MPI).
    ``run()`` continues to ``dynamics.steps`` (the TOTAL step count, resumes included);
    ``run(n)`` takes n more steps.
    """

    def __init__(self, config: RunConfig, atoms=None, potential=None, comm=None, *,
                 forces=None, restart: Optional[Restart] = None, console=None):
        self.config = config
        if comm is None:  # under `mpiexec -n N` (N > 1): MPI over COMM_WORLD
            from .comm import world_comm

            comm = world_comm()
        self.comm = comm
        self.is_root = getattr(self.comm, "rank", 0) == 0
        self.device = resolve_device(config.potential.device)
        self.outdir = Path(config.output.directory)
        self.restart = restart
        if console is None:
            from rich.console import Console

            console = Console(quiet=not self.is_root)
        self.console = console

        if potential is None:
            from atomsim.potentials import load_potential

            potential = load_potential(config.potential.model, **config.potential.params)
        self.potential = _cast_potential(potential, self.device, _DTYPES[config.potential.dtype])

        if restart is not None:
            self.state = restart.to_state(self.device, self.comm)
        else:
            if atoms is None:
                from .structure import build_atoms, initialize_velocities

                atoms = build_atoms(config)
                initialize_velocities(atoms, config.system.temperature_K, config.system.seed)
            self.state = MDState.from_atoms(atoms, device=self.device, comm=self.comm)
        self.potential.check_species(self.state.numbers.cpu().numpy())
        self.threads = set_threads(config.parallel.threads, self.state.n_atoms_global,
                                   getattr(self.comm, "size", 1))

        dyn = config.dynamics
        target_T = dyn.temperature_K if dyn.temperature_K is not None else config.system.temperature_K
        from atomsim.integrators import make_integrator
        from atomsim.integrators.base import integrator_kwargs
        from atomsim.integrators.constraints import fixed_from_config

        self.integrator = make_integrator(dyn.integrator, dyn.timestep_fs,
                                          **integrator_kwargs(dyn, target_T, config.system.seed))
        if restart is None:  # a restart carries its own mask (atoms may since have entered a z range)
            fixed_from_config(self.state, dyn.fix)
        if forces is None and getattr(self.comm, "size", 1) > 1:  # domain decomposition
            from .abort import install_abort_handler
            from .parallel_forces import ParallelForces

            install_abort_handler(self.comm)
            par = config.parallel
            forces = ParallelForces(self.potential, self.comm, skin=config.neighbor.skin, halo=par.halo,
                                    grid=None if par.grid == "auto" else par.grid)
            forces.distribute(self.state)  # every rank built the same system: keep the owned atoms
        self.forces = forces if forces is not None else SerialForces(self.potential, skin=config.neighbor.skin)
        if restart is not None:
            self.integrator.load_state_dict(restart.integrator_state)
            self._restore_neighbor_list(restart)

        self.timings = {"neighbor": 0.0, "forces": 0.0, "integrate": 0.0, "safety": 0.0, "output": 0.0}
        self._wrap_rebuild_timer()
        self._ready = False
        self._thermo = self._traj = None
        self.last_thermo: Optional[dict] = None

    # -- construction -----------------------------------------------------
    @classmethod
    def from_yaml(cls, path, overrides: Iterable[str] = (), resume: bool = False, **kw) -> "Simulation":
        return cls.from_config(_load_config(path, overrides), resume=resume, **kw)

    @classmethod
    def from_config(cls, cfg: RunConfig, resume: bool = False, **kw) -> "Simulation":
        """A fresh run, or (resume=True) the continuation of the newest restart in output.directory."""
        restart = None
        if resume:
            restart = find_restart(cfg.output.directory, device=resolve_device(cfg.potential.device))
            restart.check_config(cfg)
        return cls(cfg, restart=restart, **kw)

    def _restore_neighbor_list(self, restart: Restart) -> None:
        """Rebuild the list at the saved reference positions: same pairs, same order, same bits."""
        ref = restart.neighbor_state
        if "positions" in ref and hasattr(self.forces, "restore_reference"):  # MPI: same ranks, same bits
            self.forces.restore_reference(self.state, ref["positions"].to(self.device), ref["cell"].to(self.device))
            self.forces.n_builds = int(restart.meta.get("n_neighbor_builds", self.forces.n_builds))
            return
        if "positions" not in ref or not hasattr(self.forces, "rebuild"):
            return
        self.forces.rebuild(SimpleNamespace(positions=ref["positions"].to(self.device),
                                            cell=ref["cell"].to(self.device), pbc=self.state.pbc))
        if hasattr(self.forces, "n_builds"):
            self.forces.n_builds = int(restart.meta.get("n_neighbor_builds", self.forces.n_builds))

    def _wrap_rebuild_timer(self) -> None:
        rebuild = getattr(self.forces, "rebuild", None)
        if rebuild is None:
            return
        timings = self.timings

        def timed_rebuild(state, _inner=rebuild):
            t = time.perf_counter()
            _inner(state)
            timings["neighbor"] += time.perf_counter() - t

        self.forces.rebuild = timed_rebuild

    # -- set-up and outputs ----------------------------------------------
    def _setup(self) -> None:
        cfg, st, out = self.config, self.state, self.config.output
        resumed = self.restart is not None
        if self.is_root:
            self.outdir.mkdir(parents=True, exist_ok=True)
            if not resumed:  # a fresh run must never be resumed from an older run's files
                for name in (RESTART_NAME, PREVIOUS_NAME):
                    (self.outdir / name).unlink(missing_ok=True)
            _write_resolved_config(cfg, self.outdir)
        self._thermo = ThermoWriter(self.outdir / "thermo.csv", console=self.console, enabled=self.is_root,
                                    resume_step=self.restart.step if resumed else None)
        self._traj = TrajectoryWriter(self.outdir / "trajectory.extxyz", cfg.dynamics.timestep_fs,
                                      enabled=self.is_root and out.trajectory_every > 0, append=resumed,
                                      resume_step=self.restart.step if resumed else None)
        self._compute_forces(virial=True)
        self._check_safety(prev=None)
        self.integrator.setup(st)
        if not resumed:
            self._write_thermo(0.0)
            if out.trajectory_every > 0:
                self._write_trajectory()
        self._ready = True

    def _compute_forces(self, virial: bool) -> None:
        if hasattr(self.forces, "compute_virial"):
            self.forces.compute_virial = virial
        t = time.perf_counter()
        self.forces.compute(self.state)
        self.timings["forces"] += time.perf_counter() - t

    def _gathered(self) -> Optional[MDState]:
        """The whole system on rank 0 (None elsewhere), atoms sorted by id when gathered."""
        st = self.state
        if getattr(self.comm, "size", 1) == 1:
            return st
        mpi = self.comm.comm  # mpi4py communicator (engine.comm.MPIComm)
        part = {k: getattr(st, k).detach().cpu().numpy() for k in ("positions", "velocities", "masses", "numbers", "ids")}
        part["forces"] = st.forces.detach().cpu().numpy() if st.forces is not None else None
        part["fixed"] = st.fixed.detach().cpu().numpy() if st.fixed is not None else None
        part["energies"] = np.asarray(st.energies) if st.energies is not None else None
        parts = mpi.gather(part, root=0)
        energy = float(st.energy)  # global on every rank (MDState contract)
        if not self.is_root:
            return None
        cat = {k: np.concatenate([p[k] for p in parts]) for k in ("positions", "velocities", "masses", "numbers", "ids")}
        order = np.argsort(cat["ids"], kind="stable")
        t = lambda a, dt=torch.float64: torch.from_numpy(np.ascontiguousarray(a[order])).to(dt)  # noqa: E731
        g = MDState(positions=t(cat["positions"]), velocities=t(cat["velocities"]), masses=t(cat["masses"]),
                    numbers=t(cat["numbers"], torch.int64), ids=t(cat["ids"], torch.int64),
                    cell=st.cell.detach().cpu(), pbc=st.pbc, n_atoms_global=st.n_atoms_global, step=st.step,
                    energy=energy)
        if all(p["forces"] is not None for p in parts):
            g.forces = t(np.concatenate([p["forces"] for p in parts]))
        if all(p["fixed"] is not None for p in parts):
            g.fixed = torch.from_numpy(np.concatenate([p["fixed"] for p in parts])[order])
        if all(p["energies"] is not None for p in parts):
            g.energies = np.concatenate([p["energies"] for p in parts])[order]
        return g

    def _write_thermo(self, rate: float) -> None:
        t = time.perf_counter()
        row = thermo_row(self.state, self.integrator, self.config.dynamics.timestep_fs, rate,
                         getattr(self.forces, "n_builds", 0))
        self.last_thermo = row
        self._thermo.write(row)
        self.timings["output"] += time.perf_counter() - t

    def _write_trajectory(self) -> None:
        t = time.perf_counter()
        g = self._gathered()
        if g is not None:
            self._traj.write(g)
        self.timings["output"] += time.perf_counter() - t

    def write_restart(self, name: str = RESTART_NAME, neighbor_state: Optional[dict] = None,
                      integrator_state: Optional[dict] = None) -> Optional[Path]:
        """Atomically write the current state to output.directory/restart.npz (rank 0)."""
        t = time.perf_counter()
        g = self._gathered()
        nl_mpi = {}
        if getattr(self.comm, "size", 1) > 1 and neighbor_state is None and hasattr(
                self.forces, "gathered_reference_state"):
            nl_mpi = self.forces.gathered_reference_state(self.state)  # collective; by id on rank 0
        path = None
        if g is not None:
            arrays = {"positions": g.positions, "velocities": g.velocities, "masses": g.masses,
                      "numbers": g.numbers, "ids": g.ids, "cell": g.cell, "pbc": np.array(g.pbc, dtype=bool)}
            if g.fixed is not None:
                arrays["fixed"] = g.fixed
            nl = neighbor_state if neighbor_state is not None else (
                self.forces.reference_state() if hasattr(self.forces, "reference_state") else {})
            if getattr(self.comm, "size", 1) > 1:
                nl = nl_mpi  # all atoms' rebuild positions by id: a resume rebuilds exactly there
            path = write_restart(
                self.outdir, arrays, self.integrator.name,
                integrator_state if integrator_state is not None else self.integrator.state_dict(),
                nl, g.step, self.config, getattr(self.forces, "n_builds", 0), name=name)
        self.timings["output"] += time.perf_counter() - t
        return path

    # -- safety -------------------------------------------------------------
    def _check_safety(self, prev) -> None:
        st = self.state
        limit = self.config.dynamics.max_force_eV_per_A
        local = max_force_sq(st.forces)
        if float(self.comm.allreduce_max(local)) <= limit * limit:
            return
        self._blowup(prev, local, limit)

    def _blowup(self, prev, local: float, limit: float) -> None:
        """Save the failing frame and the last good state, then stop with a message naming the atom."""
        st = self.state
        bad_step = st.step
        if local > limit * limit and st.n_local:
            w = worst_atom(st)
            where = (f"atom id {w.atom_id} ({w.symbol}) at ({w.position[0]:.4f}, {w.position[1]:.4f}, "
                     f"{w.position[2]:.4f}) Å has |F| = {w.force_norm:.4g} eV/Å")
        else:
            where = "an atom on another rank exceeds it"
        blow = self.outdir / "blowup.extxyz"
        g = self._gathered()
        if g is not None:
            from ase.io import write

            frames = []
            bad = state_to_atoms(g)
            bad.info["state"] = "blowup"
            if prev is not None:
                good = MDState(positions=prev["positions"], velocities=prev["velocities"], masses=st.masses,
                               numbers=st.numbers, ids=st.ids, cell=st.cell, pbc=st.pbc,
                               n_atoms_global=st.n_atoms_global, forces=prev["forces"],
                               energy=prev["energy"], step=bad_step - 1)
                good_atoms = state_to_atoms(good, energies=False) if getattr(self.comm, "size", 1) == 1 else None
                if good_atoms is not None:
                    good_atoms.info["state"] = "last_good"
                    frames.append(good_atoms)
            frames.append(bad)
            self.outdir.mkdir(parents=True, exist_ok=True)
            write(blow, frames, format="extxyz", parallel=False)  # rank 0 only: no ASE MPI broadcast
        saved = "no earlier good state to save (the starting structure itself is bad)"
        if prev is not None:
            st.positions, st.velocities = prev["positions"], prev["velocities"]
            st.forces, st.energy, st.step = prev["forces"], prev["energy"], bad_step - 1
            self.integrator.load_state_dict(prev["integrator"])
            path = self.write_restart(neighbor_state=prev["neighbor"], integrator_state=prev["integrator"])
            saved = f"last good state (step {bad_step - 1}) saved to {path or self.outdir / RESTART_NAME}"
        raise SimulationError(
            f"blow-up at step {bad_step}: {where} (limit dynamics.max_force_eV_per_A = {limit:g}; "
            f"NaN/inf count as over). {saved}; failing frame in {blow}. The atoms are probably too close: "
            "check the structure, or lower dynamics.timestep_fs.")

    # -- the loop -----------------------------------------------------------
    def run(self, steps: Optional[int] = None) -> dict:
        """Run to dynamics.steps in total (steps=None) or `steps` more steps; return a summary."""
        if not self._ready:
            self._setup()
        st, integ, cfg = self.state, self.integrator, self.config
        out, dyn = cfg.output, cfg.dynamics
        start = st.step
        end = dyn.steps if steps is None else start + int(steps)
        n_steps = max(end - start, 0)
        thermo_every, traj_every, restart_every = out.thermo_every, out.trajectory_every, out.restart_every
        virial_always = bool(getattr(integ, "changes_cell", False))
        limit2 = dyn.max_force_eV_per_A ** 2
        timings = self.timings
        n_atoms = st.n_atoms_global
        keep_prev = hasattr(self.forces, "reference_state")
        perf = time.perf_counter

        progress = RunProgress(self.console, total=end, start=start,
                               enabled=out.progress and self.is_root and n_steps > 0)
        t_run = perf()
        t_row, step_row = t_run, start
        timings_at_start = dict(timings)
        last_restart = None
        with progress:
            for _ in range(n_steps):
                t0 = perf()
                prev = {"positions": st.positions.clone(), "velocities": st.velocities.clone(),
                        "forces": st.forces, "energy": st.energy, "integrator": integ.state_dict(),
                        "neighbor": dict(self.forces.reference_state()) if keep_prev else {}}
                st.step += 1
                step = st.step
                integ.initial_integrate(st)
                t1 = perf()
                thermo_now = step % thermo_every == 0 or step == end
                if hasattr(self.forces, "compute_virial"):
                    self.forces.compute_virial = virial_always or thermo_now
                self.forces.compute(st)
                t2 = perf()
                local = max_force_sq(st.forces)
                if not float(self.comm.allreduce_max(local)) <= limit2:
                    timings["integrate"] += t1 - t0
                    timings["forces"] += t2 - t1
                    self._blowup(prev, local, dyn.max_force_eV_per_A)
                t3 = perf()
                integ.final_integrate(st)
                t4 = perf()
                timings["integrate"] += (t1 - t0) + (t4 - t3)
                timings["forces"] += t2 - t1
                timings["safety"] += t3 - t2
                if thermo_now:
                    now = perf()
                    rate = n_atoms * (step - step_row) / max(now - t_row, 1e-12)
                    t_row, step_row = now, step
                    self._write_thermo(rate)
                if traj_every and step % traj_every == 0:
                    self._write_trajectory()
                if restart_every and step % restart_every == 0:
                    self.write_restart()
                    last_restart = step
                progress.update(step)
                if getattr(integ, "converged", False):  # a minimiser (fire) is done
                    if not thermo_now:
                        self._write_thermo(n_atoms * (step - step_row) / max(perf() - t_row, 1e-12))
                    break
        if out.restart_every and st.step > start and last_restart != st.step:
            self.write_restart()
        wall = perf() - t_run
        breakdown = {k: v - timings_at_start[k] for k, v in timings.items()}  # this call's loop only
        breakdown["forces"] = max(breakdown["forces"] - breakdown["neighbor"], 0.0)  # without list builds
        return {
            "steps": st.step - start,
            "final_step": st.step,
            "n_atoms": n_atoms,
            "wall_s": wall,
            "atom_steps_per_s": n_atoms * (st.step - start) / wall if wall > 0 else 0.0,
            "n_neighbor_builds": getattr(self.forces, "n_builds", 0),
            "timings_s": breakdown,
            "thermo": self.last_thermo,
            "output_directory": str(self.outdir),
        }
