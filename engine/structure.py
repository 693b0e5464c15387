"""The starting system: atoms from a file or a built lattice, alloying, vacuum, velocities, constraints.

Everything here is deterministic given ``system.seed``, so every MPI rank can
build the same starting system independently and a run is reproducible. What a
structure file carries besides positions is kept: its velocities (ASE momenta,
the Velocities section of a LAMMPS data file) unless ``system.velocities`` asks
for new ones, and its ``FixAtoms`` constraints (extxyz ``move_mask``), which
become fixed atoms like ``dynamics.fix``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
from ase import Atoms

from .config import FixConfig, RunConfig, StructureConfig, SystemConfig, split_symbols
from .errors import InputError

# Stream tags for the seed: the alloy and the velocities draw from independent generators.
_ALLOY_STREAM = 0xA110
_VELOCITY_STREAM = 0x7E10


def build_atoms(cfg: RunConfig) -> Atoms:
    """The starting ``ase.Atoms`` of a run, with ``arrays['ids'] = arange(n)``.

    Order: read the file or build the lattice, repeat, substitute the alloy
    (random sites from ``system.seed``), add vacuum, set ``pbc``. A file's
    momenta and FixAtoms constraints come along (repeated with the cell); new
    velocities are :func:`initial_velocities`'s business. Bad input raises
    InputError naming the ``system.structure`` key.
    """
    st = cfg.system.structure
    atoms = _read_file(st) if st.file is not None else _build_lattice(st)
    fixed_by_constraints(atoms, f"`system.structure.file` ({st.file})")  # refuse what cannot be honoured
    if tuple(st.repeat) != (1, 1, 1):
        _check_repeatable(atoms, st)
        atoms = atoms.repeat(tuple(st.repeat))
    if st.alloy:
        velocities = atoms.get_velocities() if atoms.has("momenta") else None
        substitute_alloy(atoms, st.alloy, cfg.system.seed, site=st.alloy_site)
        if velocities is not None:  # ASE stores momenta: keep the velocities, not p, of substituted atoms
            atoms.set_velocities(velocities)
    if st.vacuum_A is not None:
        add_vacuum(atoms, st.vacuum_A)
    if st.pbc is not None:
        atoms.pbc = list(st.pbc)
    _check_atoms(atoms, st)
    atoms.arrays["ids"] = np.arange(len(atoms), dtype=np.int64)
    return atoms


def _read_file(st: StructureConfig) -> Atoms:
    import ase.io

    path = Path(st.file)
    if not path.is_file():
        raise InputError(f"`system.structure.file`: no such file {str(path)!r}")
    try:
        frames = ase.io.read(path, index=st.index, format=st.format)
    except Exception as exc:  # ase raises many types for unreadable files
        fmt = f"format {st.format!r}" if st.format else "the format guessed from its name"
        raise InputError(
            f"`system.structure.file`: cannot read {str(path)!r} with {fmt} "
            f"(index {st.index!r}): {type(exc).__name__}: {exc}; check the file, or set "
            "`system.structure.format` (an ase.io format such as extxyz, vasp, cif, lammps-data)"
        ) from None
    if isinstance(frames, list):
        if len(frames) != 1:
            raise InputError(
                f"`system.structure.index` = {st.index!r} selects {len(frames)} frames of {str(path)!r}; "
                "select one frame, e.g. index: -1 (the last) or index: 0"
            )
        frames = frames[0]
    return frames


def default_lattice_constant(symbol: str, lattice: str) -> float:
    """ASE's reference lattice constant of an element in its reference structure, or InputError."""
    from ase.data import atomic_numbers, reference_states

    ref = reference_states[atomic_numbers[symbol]] or {}
    have = ref.get("symmetry")
    if have == lattice and "a" in ref:
        return float(ref["a"])
    known = f"its reference structure is {have} with a = {ref['a']} Å" if have and "a" in ref else (
        "ASE has no reference lattice data for it")
    raise InputError(
        f"`system.structure.a` is needed: no reference lattice constant for {symbol} as {lattice} "
        f"({known}); set system.structure.a in Å"
    )


def _build_lattice(st: StructureConfig) -> Atoms:
    from ase.build import bulk

    elements = split_symbols(st.symbols)
    a = st.a
    if a is None:
        if len(set(elements)) != 1 or len(elements) != 1:
            raise InputError(
                f"`system.structure.a` is needed for the compound {st.symbols!r} "
                "(ASE has reference lattice constants for elements only); set it in Å"
            )
        a = default_lattice_constant(elements[0], st.lattice)
    kwargs = dict(a=a, cubic=st.use_cubic(), orthorhombic=st.use_orthorhombic())
    for key in ("b", "c", "alpha"):
        if getattr(st, key) is not None:
            kwargs[key] = getattr(st, key)
    try:
        return bulk(st.symbols, st.lattice, **kwargs)
    except Exception as exc:  # ase.build.bulk raises ValueError/KeyError/RuntimeError for bad combinations
        raise InputError(
            f"`system.structure`: ase.build.bulk cannot build {st.symbols!r} as {st.lattice!r} "
            f"({', '.join(f'{k}={v}' for k, v in kwargs.items())}): {exc}; check `symbols` "
            "(rocksalt/zincblende/cesiumchloride/wurtzite need two elements, fluorite three atoms, "
            "fcc/bcc/hcp/diamond/sc one) and the lattice constants"
        ) from None


def _check_repeatable(atoms: Atoms, st: StructureConfig) -> None:
    for axis, n in enumerate(st.repeat):
        if n > 1 and np.linalg.norm(atoms.cell[axis]) == 0:
            raise InputError(
                f"`system.structure.repeat`: axis {'xyz'[axis]} has no cell vector to repeat along "
                "(the structure has no cell there); use repeat 1 on that axis or give the file a cell"
            )


def alloy_counts(fractions: Dict[str, float], n_sites: int) -> Dict[str, int]:
    """Exact atom counts for the fractions of ``n_sites``: largest-remainder rounding.

    The total is round(sum(fractions) * n_sites) and each count is the floor or
    the ceiling of fraction * n_sites, so sums <= 1 never oversubscribe the sites.
    """
    targets = {el: f * n_sites for el, f in fractions.items()}
    counts = {el: int(np.floor(t + 1e-9)) for el, t in targets.items()}
    total = min(n_sites, int(round(sum(targets.values()) + 1e-9)))
    order = sorted(targets, key=lambda el: (-(targets[el] - counts[el]), el))
    for el in order[: max(0, total - sum(counts.values()))]:
        counts[el] += 1
    return counts


def substitute_alloy(atoms: Atoms, fractions: Dict[str, float], seed: int, site: str | None = None) -> Atoms:
    """Replace random ``site`` atoms by the alloy elements in exact counts (see alloy_counts), in place.

    The sites are drawn from a numpy Generator seeded by (seed, alloy stream),
    so the same seed always gives the same alloy.
    """
    present = sorted(set(atoms.get_chemical_symbols()))
    if site is None:
        if len(present) != 1:
            raise InputError(
                f"`system.structure.alloy_site` is required: the structure has {', '.join(present)}; "
                f"say whose sites the alloy substitutes (e.g. alloy_site: {present[0]})"
            )
        site = present[0]
    if site not in present:
        raise InputError(
            f"`system.structure.alloy_site` = {site!r} is not in the structure ({', '.join(present)})"
        )
    sites = np.flatnonzero(atoms.symbols == site)
    counts = alloy_counts(fractions, len(sites))
    for el, n in counts.items():
        if n == 0:
            raise InputError(
                f"`system.structure.alloy.{el}`: fraction {fractions[el]} of {len(sites)} {site} sites "
                "rounds to 0 atoms; use a larger `repeat` or a larger fraction"
            )
    rng = np.random.default_rng([seed, _ALLOY_STREAM])
    chosen = rng.permutation(sites)
    numbers = atoms.get_atomic_numbers()
    from ase.data import atomic_masses, atomic_numbers

    start = 0
    for el in fractions:  # in the order written, so counts map to fixed slices of the permutation
        n = counts[el]
        numbers[chosen[start : start + n]] = atomic_numbers[el]
        start += n
    changed = numbers != atoms.numbers
    atoms.set_atomic_numbers(numbers)
    if atoms.has("masses"):  # masses from the file (e.g. LAMMPS data): the new elements get their own
        masses = atoms.get_masses()
        masses[changed] = atomic_masses[numbers[changed]]
        atoms.set_masses(masses)
    return atoms


def add_vacuum(atoms: Atoms, vacuum_A: float) -> Atoms:
    """``vacuum_A`` of empty space on each side along z, periodicity unchanged.

    Exactly ``Atoms.center(vacuum=vacuum_A, axis=2)``: a periodic z keeps its
    images 2 * vacuum_A apart (a slab in a periodic box, as DFT codes use it);
    ``system.structure.pbc: [true, true, false]`` makes z open.
    """
    if np.linalg.norm(atoms.cell[2]) == 0:
        atoms.cell[2] = [0.0, 0.0, 1.0]
    atoms.center(vacuum=vacuum_A, axis=2)
    return atoms


def _check_atoms(atoms: Atoms, st: StructureConfig) -> None:
    source = f"`system.structure.file` ({st.file})" if st.file else "`system.structure`"
    if len(atoms) == 0:
        raise InputError(f"{source} has no atoms")
    bad = sorted({int(z) for z in atoms.numbers if not 1 <= z <= 118})
    if bad:
        raise InputError(f"{source}: unknown element (atomic number {bad[0]}); every atom needs a real element")
    cell = np.asarray(atoms.cell)
    for axis in range(3):
        if atoms.pbc[axis] and np.linalg.norm(cell[axis]) == 0:
            raise InputError(f"{source} is periodic along {'xyz'[axis]} but has no cell vector there; "
                             "give the file a cell or make that axis non-periodic")
    if all(atoms.pbc) and abs(np.linalg.det(cell)) < 1e-6:
        raise InputError(f"{source}: the cell has zero volume; its vectors are linearly dependent")
    if not np.all(np.isfinite(atoms.positions)):
        raise InputError(f"{source}: some positions are not finite numbers")


def fixed_by_constraints(atoms: Atoms, source: str = "the structure") -> np.ndarray:
    """Bool mask of the atoms held fixed by ``atoms``' ASE constraints (FixAtoms; extxyz move_mask).

    A ``FixCartesian`` that fixes all three directions is a fixed atom (extxyz
    writes FixAtoms as a 3-column move_mask too) and one that fixes none is no
    constraint. Anything else (a partial FixCartesian, FixBondLength, FixedPlane,
    filters, ...) has no equivalent in the engine and raises InputError naming it.
    """
    from ase.constraints import FixAtoms, FixCartesian

    mask = np.zeros(len(atoms), dtype=bool)
    refused = []
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            mask[np.asarray(c.index, dtype=np.int64)] = True
        elif isinstance(c, FixCartesian) and np.all(c.mask):
            mask[np.asarray(c.index, dtype=np.int64)] = True
        elif isinstance(c, FixCartesian) and not np.any(c.mask):
            continue
        else:
            name = type(c).__name__
            refused.append(f"{name} (mask {np.asarray(c.mask).astype(int).tolist()})" if name == "FixCartesian"
                           else name)
    if refused:
        raise InputError(
            f"{source} carries ASE constraint(s) atomsim cannot honour: {', '.join(dict.fromkeys(refused))}; "
            "only FixAtoms (extxyz move_mask, whole atoms fixed) is kept. Remove the others from the file "
            "(del atoms.constraints) or fix whole atoms with FixAtoms / dynamics.fix"
        )
    return mask


def constrained_ids(atoms: Atoms) -> np.ndarray:
    """Global ids (``arrays['ids']``, else indices) of the atoms the structure's FixAtoms hold fixed."""
    mask = fixed_by_constraints(atoms)
    ids = atoms.arrays.get("ids", np.arange(len(atoms)))
    return np.asarray(ids, dtype=np.int64)[mask]


def with_file_constraints(fix: FixConfig, atoms: Atoms) -> FixConfig:
    """``dynamics.fix`` plus the atoms the structure's own FixAtoms hold fixed (their union)."""
    ids = constrained_ids(atoms)
    if not len(ids):
        return fix
    return fix.model_copy(update={"indices": sorted(set(fix.indices) | set(ids.tolist()))})


def initial_velocities(atoms: Atoms, system: SystemConfig) -> str:
    """Set the starting velocities as ``system.velocities`` says; returns where they came from.

    ``auto``: the file's velocities when it has them (ASE momenta; a LAMMPS data
    file's Velocities section), else Maxwell-Boltzmann at ``system.temperature_K``.
    ``from_file`` insists on the file's (InputError when it has none);
    ``maxwell_boltzmann`` always draws new ones (:func:`initialize_velocities`).
    """
    has = atoms.has("momenta")
    if system.velocities == "from_file" and not has:
        raise InputError(
            f"`system.velocities` = 'from_file', but {system.structure.file or 'the structure'} has no "
            "velocities (no momenta / Velocities section); use auto or maxwell_boltzmann"
        )
    if system.velocities == "maxwell_boltzmann" or not has:
        initialize_velocities(atoms, system.temperature_K, system.seed)
        return "maxwell_boltzmann"
    return "from_file"


def initialize_velocities(atoms: Atoms, temperature_K: float, seed: int) -> np.ndarray:
    """Maxwell–Boltzmann velocities at exactly ``temperature_K``, zero total momentum; set on ``atoms``.

    Convention (same as MDState.temperature): T = 2 KE / ((3N - 3) k_B), i.e. the
    3 centre-of-mass degrees of freedom removed. Velocities are drawn from a numpy
    Generator seeded by (seed, velocity stream), the centre-of-mass velocity is
    subtracted, then all velocities are scaled so this T equals ``temperature_K``
    exactly. Units: Å per ASE time unit. One atom, or T = 0, gives zero velocities.
    Returns the (n, 3) float64 velocities.
    """
    from ase.units import kB

    if temperature_K < 0:
        raise InputError(f"`system.temperature_K` = {temperature_K} must be >= 0")
    n = len(atoms)
    masses = atoms.get_masses().astype(np.float64)
    velocities = np.zeros((n, 3), dtype=np.float64)
    dof = 3 * n - 3
    if temperature_K > 0 and dof > 0:
        rng = np.random.default_rng([seed, _VELOCITY_STREAM])
        velocities = rng.standard_normal((n, 3)) * np.sqrt(kB * temperature_K / masses)[:, None]
        velocities -= (masses[:, None] * velocities).sum(0) / masses.sum()
        kinetic = 0.5 * float((masses[:, None] * velocities**2).sum())
        velocities *= np.sqrt(temperature_K / (2.0 * kinetic / (dof * kB)))
    atoms.set_velocities(velocities)
    return velocities
