"""``atomsim relax``: geometry optimisation as a job, with ASE's optimizers and filters.

Why ASE's: BFGS, LBFGS, FIRE, ``FrechetCellFilter`` and ``FixSymmetry`` are what
materials scientists already trust and compare against; atomsim supplies the
forces and stress through ``AtomsimCalculator`` (atomsim/calculator.py), so a
relaxation here is step for step the one ASE would do with that calculator.

What a relaxation leaves in its output directory:

- ``relax.log``: ASE's optimizer log (one line per step: energy, fmax);
- ``relax.traj``: every step (ASE trajectory), unless ``relax.trajectory: false``;
- ``final.extxyz`` and, for a structure read from a file ASE can write, the same
  structure in the input's own format (``final.vasp``, ``final_POSCAR``, ...);
- ``relax.json``: the summary (converged, steps, energies, fmax, stress, volume).

Exit status (``atomsim/cli.py``): 0 converged, 4 (:data:`EXIT_NOT_CONVERGED`)
when ``relax.steps`` ran out first.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from ase import Atoms, units

from atomsim.engine.config import RelaxConfig, RunConfig
from atomsim.engine.errors import InputError

EXIT_NOT_CONVERGED = 4

_OPTIMIZERS = {"bfgs": "BFGS", "lbfgs": "LBFGS", "fire": "FIRE"}


@dataclass
class RelaxResult:
    """What a relaxation reached; ``atoms`` is the final structure (calculator attached)."""

    converged: bool
    steps: int
    optimizer: str
    cell: bool
    energy_start_eV: float
    energy_eV: float
    fmax_eV_per_A: float  # largest force (with cell: true, also the cell's generalised force rows)
    fmax_target_eV_per_A: float
    max_stress_GPa: Optional[float]  # largest |stress + pressure| component (periodic cells)
    volume_start_A3: Optional[float]
    volume_A3: Optional[float]
    files: dict = field(default_factory=dict)
    atoms: Optional[Atoms] = field(default=None, repr=False)

    def summary(self) -> dict:
        """The JSON-able part (relax.json)."""
        d = asdict(self)
        d.pop("atoms")
        return d


def calculator_from_config(cfg: RunConfig, potential=None):
    """The AtomsimCalculator of a run's ``potential`` section (and ``neighbor.skin``)."""
    from atomsim.calculator import AtomsimCalculator

    pot = cfg.potential
    if potential is None:
        from atomsim.potentials import load_potential

        potential = load_potential(pot.model, **pot.params)
    return AtomsimCalculator(model=potential, device=pot.device, dtype=pot.dtype, skin=cfg.neighbor.skin)


def _fixed_indices(atoms: Atoms, cfg: RunConfig) -> np.ndarray:
    """Indices held fixed: ``dynamics.fix`` (indices, z range at the start) and the structure's FixAtoms."""
    from ase.constraints import FixAtoms

    mask = np.zeros(len(atoms), dtype=bool)
    fix = cfg.dynamics.fix
    ids = np.asarray(atoms.arrays.get("ids", np.arange(len(atoms))))
    if fix.indices:
        if max(fix.indices) >= len(atoms):
            raise InputError(f"dynamics.fix.indices: index {max(fix.indices)} is out of range; the system "
                             f"has {len(atoms)} atoms (0-based indices)")
        mask |= np.isin(ids, fix.indices)
    if fix.z_range_A is not None:
        z = atoms.positions[:, 2]
        mask |= (z >= fix.z_range_A[0]) & (z <= fix.z_range_A[1])
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            mask[c.get_indices()] = True
    return np.flatnonzero(mask)


class _StressCriterion:
    """Mixin for an ASE optimizer: converged only when the forces (ASE's own test) and the stress are.

    ASE >= 3.29 asks ``gradient_converged``, older versions ``converged``; both are wrapped.
    """

    stress_limit: Optional[float] = None  # eV/Å^3
    pressure: float = 0.0  # eV/Å^3
    stress_atoms: Optional[Atoms] = None

    def _stress_ok(self) -> bool:
        if self.stress_limit is None:
            return True
        return max_stress(self.stress_atoms, self.pressure) <= self.stress_limit

    def gradient_converged(self, gradient):
        return super().gradient_converged(gradient) and self._stress_ok()

    def converged(self, *args, **kwargs):
        return super().converged(*args, **kwargs) and self._stress_ok()


def max_stress(atoms: Atoms, pressure: float = 0.0) -> float:
    """Largest |component| of stress + pressure (eV/Å^3): zero in mechanical equilibrium at ``pressure``."""
    stress = atoms.get_stress(voigt=False)
    return float(np.abs(stress + pressure * np.eye(3)).max())


def _max_force(target) -> float:
    f = target.get_forces()
    return float(np.sqrt((f**2).sum(1).max())) if len(f) else 0.0


def relax_atoms(atoms: Atoms, relax: RelaxConfig, outdir, fixed: Optional[np.ndarray] = None,
                logfile: Optional[str] = "relax.log") -> RelaxResult:
    """Relax ``atoms`` (calculator attached) in place with ASE, writing the log/trajectory to ``outdir``."""
    import ase.optimize
    from ase.constraints import FixAtoms

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    periodic = bool(all(atoms.pbc)) and atoms.cell.rank == 3
    if relax.cell and not periodic:
        raise InputError("`relax.cell`: cell relaxation needs a cell periodic in x, y and z (the structure "
                         f"has pbc {tuple(bool(p) for p in atoms.pbc)}); set relax.cell: false")
    constraints = [c for c in atoms.constraints if not isinstance(c, FixAtoms)]
    if fixed is not None and len(fixed):
        constraints.insert(0, FixAtoms(indices=np.asarray(fixed)))
    if relax.fix_symmetry:
        try:
            import spglib  # noqa: F401  (ASE's FixSymmetry needs it)
        except ImportError:
            raise InputError("`relax.fix_symmetry` needs spglib: pip install spglib "
                             "(or pip install 'atomsim[relax]')") from None
        from ase.constraints import FixSymmetry

        constraints.append(FixSymmetry(atoms, symprec=relax.symprec))
    atoms.set_constraint(constraints)
    pressure = relax.pressure_GPa * units.GPa
    target = atoms
    if relax.cell:
        from ase.filters import FrechetCellFilter

        target = FrechetCellFilter(atoms, scalar_pressure=pressure)

    base = getattr(ase.optimize, _OPTIMIZERS[relax.optimizer])
    cls = type(base.__name__, (_StressCriterion, base), {})
    kwargs = {}
    if relax.maxstep_A is not None:
        kwargs["maxstep"] = relax.maxstep_A
    files = {}
    if logfile is not None:
        files["log"] = str(outdir / logfile)
    if relax.trajectory:
        files["trajectory"] = str(outdir / "relax.traj")
    e0 = float(atoms.get_potential_energy())
    v0 = float(atoms.get_volume()) if periodic else None
    from ase.parallel import DummyMPI

    # comm: this process alone (ASE would otherwise use MPI's world when mpi4py is loaded, and wait on
    # the other ranks, which do not relax: a relax stage under mpiexec runs on rank 0)
    with cls(target, logfile=files.get("log"), trajectory=files.get("trajectory"), comm=DummyMPI(),
             **kwargs) as opt:
        if relax.smax_GPa is not None:
            opt.stress_limit, opt.pressure, opt.stress_atoms = relax.smax_GPa * units.GPa, pressure, atoms
        converged = bool(opt.run(fmax=relax.fmax_eV_per_A, steps=relax.steps))
        n_steps = int(opt.nsteps)
    return RelaxResult(
        converged=converged, steps=n_steps, optimizer=base.__name__, cell=relax.cell,
        energy_start_eV=e0, energy_eV=float(atoms.get_potential_energy()),
        fmax_eV_per_A=_max_force(target), fmax_target_eV_per_A=relax.fmax_eV_per_A,
        max_stress_GPa=max_stress(atoms, pressure) / units.GPa if periodic else None,
        volume_start_A3=v0, volume_A3=float(atoms.get_volume()) if periodic else None,
        files=files, atoms=atoms)


def _input_format(cfg: RunConfig) -> Optional[tuple]:
    """(format, file name) to write the final structure in the input file's own format, when ASE can."""
    st = cfg.system.structure
    if st.file is None:
        return None
    from ase.io.formats import filetype, ioformats

    path = Path(st.file)
    try:
        fmt = st.format or filetype(str(path), read=False)
    except Exception:  # a name ASE cannot place
        return None
    if fmt in (None, "extxyz") or fmt not in ioformats or not ioformats[fmt].can_write:
        return None
    name = f"final{path.suffix}" if path.suffix else f"final_{path.name}"
    return fmt, name


def write_final(result: RelaxResult, cfg: RunConfig, outdir) -> None:
    """final.extxyz, the input's own format when ASE can write it, and relax.json (atomically)."""
    import ase.io

    outdir = Path(outdir)
    atoms = result.atoms
    ase.io.write(outdir / "final.extxyz", atoms, format="extxyz", parallel=False)
    result.files["final"] = str(outdir / "final.extxyz")
    own = _input_format(cfg)
    if own is not None:
        fmt, name = own
        kwargs = {"masses": True} if fmt == "lammps-data" else {}
        try:
            ase.io.write(outdir / name, atoms, format=fmt, parallel=False, **kwargs)
            result.files["final_input_format"] = str(outdir / name)
        except Exception as exc:  # a format that cannot hold this structure: say so, keep the extxyz
            result.files["final_input_format"] = f"not written ({fmt}: {type(exc).__name__}: {exc})"
    tmp = outdir / ".relax.json.tmp"
    tmp.write_text(json.dumps(result.summary(), indent=2) + "\n")
    os.replace(tmp, outdir / "relax.json")


def print_summary(result: RelaxResult, console) -> None:
    """A rich table: converged or not, steps, energies, fmax, stress, volume and the files written."""
    from rich.table import Table

    ok = "[bold green]converged[/]" if result.converged else "[bold red]NOT converged[/]"
    t = Table(title=f"relaxation ({result.optimizer}{' + FrechetCellFilter' if result.cell else ''}): {ok}",
              show_header=False)
    t.add_column("what")
    t.add_column("value")
    t.add_row("steps", str(result.steps))
    t.add_row("energy, eV", f"{result.energy_start_eV:.6f} -> {result.energy_eV:.6f} "
              f"({result.energy_eV - result.energy_start_eV:+.6f})")
    t.add_row("fmax, eV/Å", f"{result.fmax_eV_per_A:.3g} (target {result.fmax_target_eV_per_A:g})")
    if result.max_stress_GPa is not None:
        t.add_row("max |stress + p|, GPa", f"{result.max_stress_GPa:.3g}")
    if result.volume_A3 is not None:
        t.add_row("volume, Å^3", f"{result.volume_start_A3:.4f} -> {result.volume_A3:.4f}")
    for key, path in result.files.items():
        t.add_row(key, path)
    console.print(t)


def relax_config(cfg: RunConfig, atoms: Optional[Atoms] = None, potential=None, console=None,
                 outdir=None) -> RelaxResult:
    """The whole job: build the structure (or take ``atoms``), relax it, write the files, print the summary.

    ``outdir`` defaults to ``output.directory``; the settings are ``cfg.relax`` (defaults if unset).
    Fixed atoms: given ``atoms``, their FixAtoms constraints (a stage's carried state); else ``dynamics.fix``
    and the structure file's FixAtoms.
    """
    if console is None:
        from rich.console import Console

        console = Console()
    relax = cfg.relax if cfg.relax is not None else RelaxConfig()
    outdir = Path(outdir if outdir is not None else cfg.output.directory)
    if atoms is None:
        from atomsim.engine.structure import build_atoms

        atoms = build_atoms(cfg)
        fixed = _fixed_indices(atoms, cfg)
    else:
        fixed = None  # the FixAtoms already on the atoms stay
    from atomsim.engine.simulation import set_threads

    set_threads(cfg.parallel.threads, len(atoms), 1)  # as a run would: few threads for small systems
    atoms.calc = calculator_from_config(cfg, potential)
    atoms.calc.potential.check_species(atoms.numbers)
    result = relax_atoms(atoms, relax, outdir, fixed=fixed)
    from atomsim.engine.config import write_resolved_config

    write_resolved_config(cfg, outdir)
    write_final(result, cfg, outdir)
    print_summary(result, console)
    return result
