"""Trajectory frames: extended XYZ that ASE, OVITO and VMD read.

Each frame carries positions, forces, velocities (as ASE momenta, so
``atoms.get_velocities()`` gives them back), per-atom ids and energies, and
the step / time / potential energy in the comment line. Only rank 0 writes.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

import numpy as np


def state_to_atoms(state, energies=True):
    """ase.Atoms of the (gathered) state with a SinglePointCalculator holding energy/forces."""
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = state.to_atoms()
    results = {"energy": float(state.energy)}
    if state.forces is not None:
        results["forces"] = state.forces.detach().cpu().numpy()
    if energies and state.energies is not None and len(state.energies) == len(atoms):
        results["energies"] = np.asarray(state.energies, dtype=float)
    atoms.calc = SinglePointCalculator(atoms, **results)
    atoms.info["step"] = int(state.step)
    return atoms


_STEP = re.compile(r"(?:^|\s)step=(\d+)")


def truncate_after(path: Path, step: int) -> None:
    """Drop frames written after ``step`` (a resumed run rewrites them), atomically.

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
    def __init__(self, path, timestep_fs: float, enabled: bool = True, append: bool = False,
                 resume_step: Optional[int] = None):
        self.path = Path(path)
        self.timestep_fs = timestep_fs
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not append and self.path.exists():
                self.path.unlink()
            elif resume_step is not None and self.path.exists():
                truncate_after(self.path, resume_step)

    def write(self, state) -> None:
        if not self.enabled:
            return
        from ase.io import write

        atoms = state_to_atoms(state)
        atoms.info["time_ps"] = state.step * self.timestep_fs * 1e-3
        # parallel=False: only rank 0 gets here; ASE would otherwise broadcast over MPI and hang/garble
        write(self.path, atoms, format="extxyz", append=True, parallel=False)
