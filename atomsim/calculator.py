"""ASE calculator front end: any atomsim Potential behind ``ase.calculators.calculator.Calculator``.

Why: users drive atomsim potentials from ASE (ase.md, ase.optimize, cell
filters). The force provider is the engine's (``engine/forces.py``'s SerialForces):
built at cutoff + skin and reused between calls until an atom moved more than
skin/2, so an MD or relaxation step does not rebuild it every time.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from atomsim.engine.forces import SerialForces, host_array
from atomsim.engine.state import MDState
from atomsim.kernels.dtypes import resolve_device, torch_dtype
from atomsim.kernels.threads import configure_threads, configured_threads
from atomsim.potentials.base import Potential
from atomsim.potentials.registry import load_potential


class AtomsimCalculator(Calculator):
    """ASE calculator for atomsim potentials.

    ``AtomsimCalculator(model="lj", epsilon=0.0104, sigma=3.4)`` builds the
    potential with ``load_potential(model, **params)``; ``model`` may also be a
    :class:`Potential` instance. ``skin`` (Å) is the neighbor-list skin.

    ``dtype`` (``"float32"``, ``"float64"``, ``"bfloat16"``) converts the model. Default:
    float64 for a model built by name, because ASE drives relaxations to small fmax,
    finite-difference phonons and elastic constants and EOS fits, where float32 round-off
    in forces and stress shows (``atomsim lammps export`` defaults to float64 for the same
    reason; ``atomsim run`` MD uses float32 for speed). A Potential instance keeps its own
    dtype unless ``dtype`` is given: casting would change the caller's module in place.

    Stress (Voigt xx yy zz yz xz xy, eV/Å^3) is virial / volume and, like
    ASE's LennardJones, exists only when the cell has three independent
    vectors; otherwise ``get_stress`` raises PropertyNotImplementedError.
    ``get_stresses()`` gives per-atom stresses as ASE's LennardJones does (atom
    virial / volume, summing to the stress; kernels/edge_ops.py's edge split).

    ``threads`` sets torch, numba and BLAS threads together (kernels/threads.py): an integer at
    construction; ``"auto"`` (default) at the first calculation, as ``atomsim run`` would for the
    system, unless the process already chose (``configure_threads`` or an atomsim run/relax
    did); None leaves every pool as it is.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress", "stresses"]
    nolabel = True

    def __init__(self, model: Union[str, Potential] = "default", device: str = "auto",
                 dtype: Optional[str] = None, skin: float = 1.0, atoms=None,
                 threads: Union[int, str, None] = "auto", **params):
        Calculator.__init__(self)
        if skin < 0:
            raise ValueError(f"skin must be >= 0 Å, got {skin}")
        if threads is not None and threads != "auto":
            configure_threads(threads)  # raises for anything but "auto" or an integer >= 1
        self._auto_threads = threads == "auto"
        self.device = torch.device(resolve_device(device))
        if isinstance(model, Potential):
            if params:
                raise ValueError("params are for building a potential by name; "
                                 f"got a Potential instance and params {sorted(params)}")
            potential = model
        else:
            potential = load_potential(model, **params)
            dtype = "float64" if dtype is None else dtype
        potential = potential.to(self.device)
        if dtype is not None:
            potential = potential.to(torch_dtype(dtype))
        potential.eval()
        self.potential = potential
        self.skin = float(skin)
        self.parameters.update(model=model if isinstance(model, str) else type(model).__name__,
                               skin=self.skin, **params)
        self._forces = None  # SerialForces, rebuilt when numbers/pbc change
        if atoms is not None:
            self.potential.check_species(atoms.numbers)
            atoms.calc = self

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        if properties is None:
            properties = self.implemented_properties
        Calculator.calculate(self, atoms, properties, system_changes)
        atoms = self.atoms
        if self._auto_threads:
            if configured_threads() is None:
                configure_threads("auto", atoms_per_rank=len(atoms))
            self._auto_threads = False
        if self._forces is None or "numbers" in system_changes or "pbc" in system_changes:
            self.potential.check_species(atoms.numbers)
            self._forces = SerialForces(self.potential, skin=self.skin)
        periodic_cell = atoms.cell.rank == 3
        per_atom = periodic_cell and "stresses" in properties  # one more pass over the edges: on request
        out = self._forces.compute(self._state(atoms), virial=periodic_cell, atom_virial=per_atom)

        self.results["energy"] = float(out.energy)
        self.results["free_energy"] = float(out.energy)
        self.results["energies"] = np.asarray(host_array(out.energies), dtype=np.float64).copy()
        self.results["forces"] = out.forces.detach().to(torch.float64).cpu().numpy()
        if atoms.cell.rank == 3:
            virial = out.virial.detach().cpu().numpy()
            self.results["stress"] = full_3x3_to_voigt_6_stress(virial / atoms.get_volume())
        if per_atom:
            atom_virials = out.atom_virials.detach().cpu().numpy()
            self.results["stresses"] = full_3x3_to_voigt_6_stress(atom_virials) / atoms.get_volume()

    def _state(self, atoms) -> MDState:
        """A minimal MDState (positions, cell, pbc, numbers) on the model's device."""
        dev = self.device
        n = len(atoms)
        f64 = torch.float64
        return MDState(
            positions=torch.tensor(atoms.positions, dtype=f64, device=dev),
            velocities=torch.zeros((n, 3), dtype=f64, device=dev),
            masses=torch.ones(n, dtype=f64, device=dev),
            numbers=torch.as_tensor(atoms.numbers, dtype=torch.int64, device=dev),
            ids=torch.arange(n, device=dev),
            cell=torch.as_tensor(atoms.cell.array, dtype=f64, device=dev),
            pbc=tuple(bool(p) for p in atoms.pbc),
            n_atoms_global=n,
        )

    @property
    def n_neighbor_builds(self) -> int:
        """How many times the neighbor list was built (skin reuse check)."""
        return 0 if self._forces is None else self._forces.n_builds
