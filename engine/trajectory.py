"""Trajectory frames in three formats (``output.trajectory_format``): extxyz, ASE .traj, H5MD.

Each frame carries positions, velocities, forces, per-atom ids, the cell, the
step, the time and the potential energy, plus the per-atom quantities of
``output.per_atom`` (energies, eV; stresses, eV/Å^3, ASE's Voigt order and
sign). Fixed atoms are written as an ASE ``FixAtoms`` (extxyz: ``move_mask``),
so a frame read back as a structure keeps them (engine/structure.py).

- ``extxyz``: ``trajectory.extxyz``, text that ASE, OVITO and VMD read;
  velocities as ASE momenta, so ``atoms.get_velocities()`` gives them back.
- ``traj``: ``trajectory.traj``, ASE's binary Trajectory (full precision).
- ``h5md``: ``trajectory.h5md``, HDF5 in the H5MD 1.1 layout (``/h5md`` with
  author and creator; ``/particles/all/{position,velocity,force}`` and
  ``box/edges`` as time-dependent ``{step, time, value}`` groups; ``species``,
  ``mass`` and ``id`` time-independent; ``/observables/potential_energy``), with
  H5MD unit attributes: Å, ps, Å/ps, eV/Å, u, eV. Other H5MD readers
  (MDAnalysis, h5py) read it; :func:`read_h5md` turns it back into ``ase.Atoms``.

Only rank 0 writes, from the state gathered by atom id. Each write opens and
closes the file, so a crash leaves every finished frame readable. A resumed run
first drops the frames written after its restart step, in every format.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from .state import host_array

TRAJECTORY_FILES = {"extxyz": "trajectory.extxyz", "traj": "trajectory.traj", "h5md": "trajectory.h5md"}


def state_to_atoms(state, energies=True, stresses: Optional[np.ndarray] = None):
    """ase.Atoms of the (gathered) state with a SinglePointCalculator holding energy/forces.

    ``stresses``: (n, 6) per-atom stresses in eV/Å^3 (Voigt) to store as the ``stresses`` result.
    """
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixAtoms

    atoms = state.to_atoms()
    if state.fixed is not None and bool(state.fixed.any()):
        atoms.set_constraint(FixAtoms(mask=state.fixed.detach().cpu().numpy().astype(bool)))
    results = {"energy": float(state.energy)}
    if state.forces is not None:
        results["forces"] = state.forces.detach().cpu().numpy()
    if energies and state.energies is not None and len(state.energies) == len(atoms):
        results["energies"] = np.asarray(host_array(state.energies), dtype=float)
    if stresses is not None:
        results["stresses"] = np.asarray(stresses, dtype=float)
    atoms.calc = SinglePointCalculator(atoms, **results)
    atoms.info["step"] = int(state.step)
    return atoms


class HostFrameCopier:
    """Host copies of a frame's arrays started without waiting for the device.

    On CUDA the arrays go to pinned host buffers (kept between frames) with non-blocking copies
    and an event: the run queues the next step before the frame is written, so writing the file
    overlaps the GPU's work (``Simulation`` flushes a pending frame after the next step). On any
    other device the state is handed over as it is and written at once, as before.
    """

    _ARRAYS = ("positions", "velocities", "masses", "numbers", "ids", "cell", "forces", "virial", "fixed")

    def __init__(self):
        self._buffers: dict = {}

    def _pinned(self, name: str, t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if t is None:
            return None
        key = (name, tuple(t.shape), t.dtype)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        return buf.copy_(t.detach(), non_blocking=True)

    def start(self, state):
        """(frame state, event or None): the event completes when the frame's copies are on the host."""
        if state.positions.device.type != "cuda":
            return state, None
        from dataclasses import replace

        arrays = {k: self._pinned(k, getattr(state, k)) for k in self._ARRAYS}
        energy = state.energy_stored
        if isinstance(energy, torch.Tensor):
            energy = self._pinned("energy", energy)
        energies = state.energies
        if isinstance(energies, torch.Tensor):
            energies = self._pinned("energies", energies)
        frame = replace(state, **arrays, energy=energy, energies=energies)
        event = torch.cuda.Event()
        event.record()
        return frame, event


_STEP = re.compile(r"(?:^|\s)step=(\d+)")


def truncate_after(path: Path, step: int) -> None:
    """Drop extxyz frames written after ``step`` (a resumed run rewrites them), atomically.

    Reads the extxyz frame by frame as text (atom-count line, comment line with
    ``step=N``, N atom lines), so it stays cheap for long trajectories.
    """
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    dropped = False
    with open(path) as src, open(tmp, "w") as dst:
        while True:
            head = src.readline()
            if not head.strip():
                break
            comment = src.readline()
            body = [src.readline() for _ in range(int(head))]
            m = _STEP.search(comment)
            if m is not None and int(m.group(1)) > step:
                dropped = True
                continue
            dst.write(head)
            dst.write(comment)
            dst.writelines(body)
    if dropped:
        os.replace(tmp, path)
    else:
        tmp.unlink()


class TrajectoryWriter:
    """Extended XYZ frames (``output.trajectory_format: extxyz``)."""

    def __init__(self, path, timestep_fs: float, enabled: bool = True, append: bool = False,
                 resume_step: Optional[int] = None, per_atom: Sequence[str] = ("energies",)):
        self.path = Path(path)
        self.timestep_fs = timestep_fs
        self.enabled = enabled
        self.per_atom = tuple(per_atom)
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not append and self.path.exists():
                self.path.unlink()
            elif resume_step is not None and self.path.exists():
                self._truncate(resume_step)

    def _truncate(self, step: int) -> None:
        truncate_after(self.path, step)

    def _atoms(self, state, stresses):
        atoms = state_to_atoms(state, energies="energies" in self.per_atom, stresses=stresses)
        atoms.info["time_ps"] = state.step * self.timestep_fs * 1e-3
        return atoms

    def write(self, state, stresses: Optional[np.ndarray] = None) -> None:
        """Append one frame; ``stresses``: (n, 6) per-atom stresses, eV/Å^3, when asked for."""
        if not self.enabled:
            return
        from ase.io import write

        # parallel=False: only rank 0 gets here; ASE would otherwise broadcast over MPI and hang/garble
        write(self.path, self._atoms(state, stresses), format="extxyz", append=True, parallel=False)


class AseTrajWriter(TrajectoryWriter):
    """ASE Trajectory frames (``output.trajectory_format: traj``), full binary precision."""

    def _truncate(self, step: int) -> None:
        from ase.io.trajectory import Trajectory

        with Trajectory(self.path, "r") as old:
            frames = list(old)
        keep = [a for a in frames if int(a.info.get("step", -1)) <= step]
        if len(keep) == len(frames):
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp.{os.getpid()}")
        with Trajectory(tmp, "w", master=True) as new:
            for atoms in keep:
                new.write(atoms)
        os.replace(tmp, self.path)

    def write(self, state, stresses: Optional[np.ndarray] = None) -> None:
        if not self.enabled:
            return
        from ase.io.trajectory import Trajectory

        with Trajectory(self.path, "a", master=True) as traj:  # master: only rank 0 calls this
            traj.write(self._atoms(state, stresses))


# H5MD: element name -> (unit of its value, None for dimensionless)
_H5MD_UNITS = {"position": "Angstrom", "velocity": "Angstrom ps-1", "force": "eV Angstrom-1",
               "potential_energy": "eV", "stress": "eV Angstrom-3", "edges": "Angstrom"}


def _velocity_to_A_per_ps() -> float:
    from ase import units

    return 1000.0 * units.fs  # v[Å/ps] = v[Å per ASE time unit] * (ASE time units per ps)


class H5MDWriter(TrajectoryWriter):
    """H5MD 1.1 frames (``output.trajectory_format: h5md``); needs h5py."""

    def _truncate(self, step: int) -> None:
        import h5py

        with h5py.File(self.path, "a") as f:
            for group in _time_groups(f):
                n_keep = int(np.searchsorted(group["step"][()], step, side="right"))
                for name in ("step", "time", "value"):
                    ds = group[name]
                    ds.resize(n_keep, axis=0)

    def write(self, state, stresses: Optional[np.ndarray] = None) -> None:
        if not self.enabled:
            return
        import h5py

        step = int(state.step)
        time_ps = step * self.timestep_fs * 1e-3
        with h5py.File(self.path, "a") as f:
            if "particles" not in f:
                self._create(f, state)
            part = f["particles/all"]
            n = int(part["id"].shape[0])
            if state.positions.shape[0] != n:
                raise ValueError(f"{self.path}: holds {n} atoms, the run has {state.positions.shape[0]}")
            t = lambda x: x.detach().cpu().numpy().astype(np.float64)  # noqa: E731
            _append(part, "box/edges", step, time_ps, t(state.cell))
            _append(part, "position", step, time_ps, t(state.positions))
            _append(part, "velocity", step, time_ps, t(state.velocities) * _velocity_to_A_per_ps())
            if state.forces is not None:
                _append(part, "force", step, time_ps, t(state.forces))
            if "energies" in self.per_atom and state.energies is not None:
                _append(part, "potential_energy", step, time_ps,
                        np.asarray(host_array(state.energies), dtype=np.float64))
            if stresses is not None:
                _append(part, "stress", step, time_ps, np.asarray(stresses, dtype=np.float64))
            _append(f["observables"], "potential_energy", step, time_ps, np.float64(float(state.energy)))

    @staticmethod
    def _create(f, state) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            creator_version = version("atomsim")  # metadata: engine/ must not import the front ends
        except PackageNotFoundError:
            creator_version = "unknown"
        h5md = f.create_group("h5md")
        h5md.attrs["version"] = np.array([1, 1], dtype=np.int32)
        h5md.create_group("author").attrs["name"] = "atomsim"
        creator = h5md.create_group("creator")
        creator.attrs["name"] = "atomsim"
        creator.attrs["version"] = creator_version
        part = f.create_group("particles/all")
        box = part.create_group("box")
        box.attrs["dimension"] = np.int32(3)
        box.attrs["boundary"] = np.array([b"periodic" if p else b"none" for p in state.pbc])
        part.create_dataset("species", data=state.numbers.cpu().numpy().astype(np.int32))
        part.create_dataset("id", data=state.ids.cpu().numpy().astype(np.int64))
        mass = part.create_dataset("mass", data=state.masses.cpu().numpy().astype(np.float64))
        mass.attrs["unit"] = "u"
        if state.fixed is not None and bool(state.fixed.any()):
            part.create_dataset("fixed", data=state.fixed.cpu().numpy().astype(np.int8))
        f.create_group("observables")


def _append(parent, name: str, step: int, time_ps: float, value: np.ndarray) -> None:
    """Append one frame to the time-dependent H5MD element ``parent/name`` ({step, time, value})."""
    value = np.asarray(value)
    if name not in parent:
        g = parent.create_group(name)
        g.create_dataset("step", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(1024,))
        time = g.create_dataset("time", shape=(0,), maxshape=(None,), dtype=np.float64, chunks=(1024,))
        time.attrs["unit"] = "ps"
        # one frame per chunk, at most 2^20 atoms per chunk (HDF5 caps a chunk at 4 GiB)
        chunks = (1,) + tuple(min(s, 1 << 20) if k == 0 else s for k, s in enumerate(value.shape)) \
            if value.ndim else (1024,)
        val = g.create_dataset("value", shape=(0,) + value.shape, maxshape=(None,) + value.shape,
                               dtype=value.dtype, chunks=chunks)
        unit = _H5MD_UNITS.get(name.rsplit("/", 1)[-1])
        if unit:
            val.attrs["unit"] = unit
    g = parent[name]
    k = g["step"].shape[0]
    for ds_name, data in (("step", step), ("time", time_ps), ("value", value)):
        ds = g[ds_name]
        ds.resize(k + 1, axis=0)
        ds[k] = data


def _time_groups(f) -> List:
    """Every time-dependent element ({step, time, value} group) in an H5MD file."""
    found = []

    def visit(_, obj):
        if hasattr(obj, "keys") and {"step", "time", "value"} <= set(obj.keys()):
            found.append(obj)

    f.visititems(visit)
    return found


def read_h5md(path, group: str = "all") -> list:
    """The frames of an H5MD file as ``ase.Atoms`` (velocities, forces, energies, stresses when present).

    Reads ``particles/<group>`` as :class:`H5MDWriter` writes it: the value of each
    element at the frames of ``position``'s steps.
    """
    import h5py
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixAtoms

    frames = []
    with h5py.File(path, "r") as f:
        part = f[f"particles/{group}"]
        steps = part["position/step"][()]
        times = part["position/time"][()]
        numbers = part["species"][()]
        masses = part["mass"][()] if "mass" in part else None
        ids = part["id"][()] if "id" in part else np.arange(len(numbers))
        fixed = part["fixed"][()].astype(bool) if "fixed" in part else None
        pbc = [b in (b"periodic", "periodic") for b in part["box"].attrs["boundary"]]
        energy = None
        if "observables/potential_energy" in f:
            energy = dict(zip(f["observables/potential_energy/step"][()].tolist(),
                              f["observables/potential_energy/value"][()].tolist()))

        rows = {name: {int(s): r for r, s in enumerate(part[f"{name}/step"][()])}
                for name in ("box/edges", "velocity", "force", "potential_energy", "stress") if name in part}

        def at(name, k):
            row = rows.get(name, {}).get(int(steps[k]))
            return None if row is None else part[f"{name}/value"][row]

        for k in range(len(steps)):
            edges = at("box/edges", k)
            cell = np.diag(edges) if edges is not None and edges.ndim == 1 else edges
            atoms = Atoms(numbers=numbers, positions=part["position/value"][k], cell=cell, pbc=pbc)
            if masses is not None:
                atoms.set_masses(masses)
            v = at("velocity", k)
            if v is not None:
                atoms.set_velocities(v / _velocity_to_A_per_ps())
            if fixed is not None and fixed.any():
                atoms.set_constraint(FixAtoms(mask=fixed))
            atoms.arrays["ids"] = np.asarray(ids, dtype=np.int64).copy()
            results = {}
            if energy is not None and int(steps[k]) in energy:
                results["energy"] = float(energy[int(steps[k])])
            for name, key in (("force", "forces"), ("potential_energy", "energies"), ("stress", "stresses")):
                value = at(name, k)
                if value is not None:
                    results[key] = np.asarray(value)
            if results:
                atoms.calc = SinglePointCalculator(atoms, **results)
            atoms.info.update(step=int(steps[k]), time_ps=float(times[k]))
            frames.append(atoms)
    return frames


def read_trajectory(path) -> list:
    """Every frame of a trajectory file in any of the three formats, as ``ase.Atoms``."""
    path = Path(path)
    if path.suffix == ".h5md":
        return read_h5md(path)
    from ase.io import read

    return list(read(path, index=":"))


_WRITERS = {"extxyz": TrajectoryWriter, "traj": AseTrajWriter, "h5md": H5MDWriter}


def open_trajectory(fmt: str, directory, timestep_fs: float, *, enabled: bool, append: bool,
                    resume_step: Optional[int], per_atom: Sequence[str]) -> TrajectoryWriter:
    """The writer for ``output.trajectory_format`` = ``fmt``, writing ``directory/TRAJECTORY_FILES[fmt]``."""
    return _WRITERS[fmt](Path(directory) / TRAJECTORY_FILES[fmt], timestep_fs, enabled=enabled, append=append,
                         resume_step=resume_step, per_atom=per_atom)
