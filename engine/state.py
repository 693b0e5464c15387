"""The dynamical state of the atoms a rank owns.

Units are ASE's: Å, eV, amu, and velocities in Å per ASE time unit
(``ase.units.fs`` ≈ 0.0982 of it per fs), so states convert to and from
``ase.Atoms`` without factors. Arrays are float64 torch tensors on the run's device.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from .comm import Comm


def host_array(values: Union[np.ndarray, Tensor, None]) -> Optional[np.ndarray]:
    """Per-atom values as a host array, whichever side they live on (a device read: output steps only)."""
    if values is None or isinstance(values, np.ndarray):
        return values
    return values.detach().cpu().numpy()


@dataclass
class MDState:
    positions: Tensor  # (n, 3) float64, owned atoms
    velocities: Tensor  # (n, 3) float64, Å / ASE time unit
    masses: Tensor  # (n,) float64, amu
    numbers: Tensor  # (n,) int64 atomic numbers
    ids: Tensor  # (n,) int64 global atom ids, preserved through reordering and migration
    cell: Tensor  # (3, 3) float64, rows are cell vectors
    pbc: tuple  # (bool, bool, bool)
    n_atoms_global: int
    forces: Optional[Tensor] = None  # (n, 3) float64
    # energies: host array or device tensor (the device-resident step keeps it there; host_energies()).
    # energy: stored as given (a 0-dim device tensor from the device-resident step: no host read per
    # step); reading ``state.energy`` gives a float (a device read: output steps), ``energy_stored`` as is
    energies: Optional[Union[np.ndarray, Tensor]] = None  # (n,) per-atom potential energies
    energy: float = 0.0  # global potential energy, eV
    virial: Optional[Tensor] = None  # (3, 3) global, dE/d(strain) (ASE stress * volume)
    step: int = 0
    comm: object = field(default_factory=Comm)
    fixed: Optional[Tensor] = None  # (n,) bool, atoms held fixed (None: none)

    def apply_forces(self, result) -> None:
        """Take a force provider's result (``engine.forces.ForceResult``) as this state's forces."""
        self.forces = result.forces
        self.energies = result.energies
        self.energy = result.energy  # a 0-dim device tensor is kept as is: no host read per step
        self.virial = result.virial

    def host_energies(self) -> Optional[np.ndarray]:
        """Per-atom energies as a host array (a device read when they live on the device)."""
        return host_array(self.energies)

    def snapshot(self) -> "MDState":
        """A copy that later steps cannot change (the last good state kept for blow-up recovery)."""
        c = lambda t: None if t is None else t.detach().clone()  # noqa: E731
        e, pe = self.energies, self.energy_stored
        return replace(self, positions=c(self.positions), velocities=c(self.velocities), masses=c(self.masses),
                       numbers=c(self.numbers), ids=c(self.ids), cell=c(self.cell), forces=c(self.forces),
                       virial=c(self.virial), fixed=c(self.fixed),
                       energy=c(pe) if isinstance(pe, Tensor) else pe,
                       energies=c(e) if isinstance(e, Tensor) else (None if e is None else np.array(e)))

    def restore(self, good: "MDState") -> None:
        """Become a copy of the snapshot ``good`` in place (callers keep their reference to this state)."""
        for name, value in vars(good.snapshot()).items():
            if name != "comm":
                setattr(self, name, value)

    @property
    def n_local(self) -> int:
        return int(self.positions.shape[0])

    @property
    def volume(self) -> float:
        return float(abs(torch.linalg.det(self.cell)))

    def kinetic_energy(self) -> float:
        """Global kinetic energy in eV."""
        ke = 0.5 * float((self.masses[:, None] * self.velocities**2).sum())
        return float(self.comm.allreduce_sum(ke))

    def kinetic_tensor(self) -> Tensor:
        """Global sum m v (x) v, (3, 3), eV."""
        t = (self.masses[:, None, None] * self.velocities[:, :, None] * self.velocities[:, None, :]).sum(0)
        return self.comm.allreduce_sum(t)

    def degrees_of_freedom(self, remove_com: bool = True) -> int:
        n_free = self.n_atoms_global
        if self.fixed is not None:
            n_free -= int(self.comm.allreduce_sum(int(self.fixed.sum())))
        dof = 3 * n_free
        if remove_com and self.fixed is None:
            dof -= 3
        return max(dof, 1)

    def temperature(self, remove_com: bool = True, kinetic_energy: Optional[float] = None) -> float:
        """Instantaneous temperature in K: 2 KE / (N_dof kB).

        ``kinetic_energy``: this step's global KE when the caller already has it (saves a collective).
        """
        from ase.units import kB

        ke = self.kinetic_energy() if kinetic_energy is None else kinetic_energy
        return 2.0 * ke / (self.degrees_of_freedom(remove_com) * kB)

    def pressure(self, kinetic_energy: Optional[float] = None) -> float:
        """Instantaneous pressure in eV/Å^3: (2 KE - tr(virial)) / (3 V) (ASE sign of virial)."""
        ke = self.kinetic_energy() if kinetic_energy is None else kinetic_energy
        vir = 0.0 if self.virial is None else float(torch.trace(self.virial))
        return (2.0 * ke - vir) / (3.0 * self.volume)

    def pressure_tensor(self) -> Tensor:
        """Global pressure tensor (K - W) / V in eV/Å^3, (3, 3) float64 (collective).

        K = sum m v (x) v, W = dE/dstrain (``virial``); with zero velocities it is -ASE stress.
        """
        p = self.kinetic_tensor().detach().double()
        if self.virial is not None:
            p = p - self.virial.detach().double()
        return p / self.volume

    @classmethod
    def from_atoms(cls, atoms, device="cpu", comm=None) -> "MDState":
        n = len(atoms)
        t = lambda a, dt=torch.float64: torch.as_tensor(np.asarray(a), dtype=dt, device=device)  # noqa: E731
        ids = atoms.arrays.get("ids", np.arange(n))
        return cls(
            positions=t(atoms.get_positions()).clone(),
            velocities=t(atoms.get_velocities()).clone(),
            masses=t(atoms.get_masses()).clone(),
            numbers=t(atoms.get_atomic_numbers(), torch.int64).clone(),
            ids=t(ids, torch.int64).clone(),
            cell=t(atoms.cell.array).clone(),
            pbc=tuple(bool(p) for p in atoms.pbc),
            n_atoms_global=n,
            comm=comm or Comm(),
        )

    def to_atoms(self):
        """This rank's atoms as ase.Atoms (ids in arrays['ids'])."""
        from ase import Atoms

        atoms = Atoms(numbers=self.numbers.cpu().numpy(), positions=self.positions.cpu().numpy(),
                      cell=self.cell.cpu().numpy(), pbc=self.pbc)
        atoms.set_velocities(self.velocities.cpu().numpy())
        atoms.set_masses(self.masses.cpu().numpy())
        atoms.arrays["ids"] = self.ids.cpu().numpy().copy()
        return atoms


def _energy_get(self: MDState) -> float:
    value = self.__dict__.get("_energy", 0.0)
    return value if type(value) is float else float(value)


def _energy_set(self: MDState, value: Union[float, Tensor]) -> None:
    self.__dict__["_energy"] = value.detach() if isinstance(value, Tensor) else float(value)


# ``energy`` reads as a float wherever it is stored (after @dataclass: __init__ and replace() go through it)
MDState.energy = property(_energy_get, _energy_set, doc="Global potential energy, eV (float).")
MDState.energy_stored = property(lambda self: self.__dict__.get("_energy", 0.0),
                                 doc="The energy as stored: a float or a 0-dim device tensor (no host read).")
