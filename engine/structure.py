"""The starting system: atoms from a file or a built lattice, alloying, vacuum, velocities, constraints.

Everything here is deterministic given ``system.seed``, so every MPI rank can
build the same starting system independently and a run is reproducible. What a
structure file carries besides positions is kept: its velocities (ASE momenta,
the Velocities section of a LAMMPS data file) unless ``system.velocities`` asks
for new ones, and its ``FixAtoms`` constraints (extxyz ``move_mask``), which
become fixed atoms like ``dynamics.fix``.

Random choices are keyed by global atom id, not by position in an array: an
alloy takes the sites whose hash of (seed, id) is smallest, and each atom's
Maxwell-Boltzmann velocity comes from a counter-based hash of (seed, id), with
sums over atoms done exactly (fixed point). So :func:`build_local_state`,
which builds on each MPI rank only the atoms of its own sub-domain (lattices:
the unit-cell repeats that fall there; files: read once on rank 0, sent to
their owners in chunks), gives the same system on any rank count, equal to
:func:`build_atoms` + :func:`initial_velocities` on one process.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple

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


# -- the per-rank build ---------------------------------------------------------------------
_SCATTER_CHUNK = 1 << 16  # atoms per message when rank 0 sends a file's atoms to their owners
_TAG_SCATTER = 91


def build_local_state(cfg: RunConfig, comm, device="cpu", grid=None, probe=None):
    """This rank's starting atoms (those of its sub-domain) as an MDState, and the ``dynamics.fix``
    that adds the file's FixAtoms. Collective.

    Lattices (no ``system.structure.file``) are enumerated per rank: only the unit-cell repeats
    whose atoms fall in this rank's sub-domain are generated (global id = ((i * ny + j) * nz + k)
    * n_basis + b, the order of ASE's ``repeat``), so no rank holds more than its share. A file is
    read once, on rank 0 (ASE readers read a whole frame; every rank reading it would multiply
    that), built there as :func:`build_atoms` does, and sent to the owners in chunks of
    ``_SCATTER_CHUNK`` atoms. Velocities and alloys are keyed by id: the same on any rank count.
    ``probe(n_atoms)``, if given, is called with every count of atoms this rank holds meanwhile.
    """
    import torch

    from .state import MDState

    probe = probe or (lambda n: None)
    grid = None if comm.size == 1 else grid  # parallel.grid applies under MPI only
    st, system = cfg.system.structure, cfg.system
    if st.file is None:
        local, cell, pbc, n_global = _lattice_local(cfg, comm, grid, probe)
        fix = cfg.dynamics.fix
        from_file = False
    else:
        local, cell, pbc, n_global, constrained = _file_scattered(cfg, comm, grid, probe)
        fix = cfg.dynamics.fix
        if len(constrained):
            fix = fix.model_copy(update={"indices": sorted(set(fix.indices) | set(constrained.tolist()))})
        has = bool(comm.allreduce_max(int(local["velocities"] is not None)))
        from_file = has and system.velocities != "maxwell_boltzmann"
        if system.velocities == "from_file" and not has:
            raise InputError(
                f"`system.velocities` = 'from_file', but {st.file} has no velocities (no momenta / "
                "Velocities section); use auto or maxwell_boltzmann")
    if not from_file:
        local["velocities"] = maxwell_boltzmann(local["ids"], local["masses"], system.temperature_K,
                                                system.seed, n_global, comm)
    t = lambda a, dt=torch.float64: torch.as_tensor(np.ascontiguousarray(a), dtype=dt, device=device)  # noqa: E731
    order = np.argsort(local["ids"], kind="stable")
    state = MDState(positions=t(local["positions"][order]), velocities=t(local["velocities"][order]),
                    masses=t(local["masses"][order]), numbers=t(local["numbers"][order], torch.int64),
                    ids=t(local["ids"][order], torch.int64), cell=t(cell), pbc=tuple(bool(p) for p in pbc),
                    n_atoms_global=int(n_global), comm=comm)
    probe(state.n_local)
    return state, fix


def _lattice_local(cfg: RunConfig, comm, grid, probe):
    """Arrays of this rank's lattice atoms, the cell, pbc and the global count (see build_local_state)."""
    from ase.data import atomic_masses, atomic_numbers

    from .domain import Decomposition

    st = cfg.system.structure
    unit = _build_lattice(st)
    reps = np.asarray(st.repeat, dtype=np.int64)
    nb = len(unit)
    n_global = int(nb * np.prod(reps))
    ucell = np.asarray(unit.cell.array, dtype=np.float64)
    cell = np.array([reps[c] * ucell[c] for c in range(3)])  # as Atoms.repeat
    basis = np.asarray(unit.positions, dtype=np.float64)
    translation = np.zeros(3)
    if st.vacuum_A is not None:
        cell, translation = _centered_cell(cell, ucell, basis, reps, st.vacuum_A)
    pbc = tuple(st.pbc) if st.pbc is not None else tuple(bool(p) for p in unit.pbc)
    if all(pbc) and abs(np.linalg.det(cell)) < 1e-6:
        raise InputError("`system.structure`: the cell has zero volume; its vectors are linearly dependent")
    decomp = Decomposition(cell, pbc, comm.size, comm.rank, grid)
    # fractional coordinates in the final cell are affine per axis: frac_d = m_d * T[d, d] + g[b, d]
    inv = np.linalg.inv(cell)
    T = ucell @ inv
    g = (basis + translation) @ inv
    lo, hi = decomp.lo.astype(float), decomp.hi.astype(float)
    for d in range(3):
        if not pbc[d]:  # strays beyond an open face belong to the edge rank
            lo[d] = -np.inf if decomp.coords[d] == 0 else lo[d]
            hi[d] = np.inf if decomp.coords[d] == decomp.dims[d] - 1 else hi[d]
    candidates = [_candidate_repeats(T[d, d], g[:, d], reps[d], lo[d], hi[d], pbc[d]) for d in range(3)]
    site_z = None
    if st.alloy:
        per_cell = int(np.sum(unit.symbols == (st.alloy_site or unit.get_chemical_symbols()[0])))
        site, counts = alloy_plan(unit.get_chemical_symbols(), st.alloy, per_cell * int(np.prod(reps)),
                                  st.alloy_site)
        site_z = atomic_numbers[site]
    parts = []
    m1, m2, b = np.meshgrid(candidates[1], candidates[2], np.arange(nb), indexing="ij")
    m1, m2, b = m1.ravel(), m2.ravel(), b.ravel()
    held = 0
    for i in candidates[0]:  # one slab of repeats at a time: at most a slab more than the share is held
        pos = basis[b] + (i * ucell[0] + m1[:, None] * ucell[1] + m2[:, None] * ucell[2]) + translation
        probe(held + len(pos))
        frac, _ = decomp.wrap(pos)
        mine = decomp.owner_of(frac) == decomp.rank
        ids = ((i * reps[1] + m1[mine]) * reps[2] + m2[mine]) * nb + b[mine]
        parts.append((pos[mine], ids, b[mine]))
        held += int(mine.sum())
    pos = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, 3))
    ids = np.concatenate([p[1] for p in parts]).astype(np.int64) if parts else np.zeros(0, np.int64)
    numbers = (np.asarray(unit.numbers, dtype=np.int64)[np.concatenate([p[2] for p in parts])] if parts
               else np.zeros(0, np.int64))
    if site_z is not None:
        numbers = alloy_numbers(ids, numbers, site_z, counts, cfg.system.seed, comm)
    if not np.all(np.isfinite(pos)):
        raise InputError("`system.structure`: some positions are not finite numbers")
    local = {"positions": pos, "ids": ids, "numbers": numbers,
             "masses": atomic_masses[numbers].astype(np.float64), "velocities": None}
    return local, cell, pbc, n_global


def _candidate_repeats(slope: float, g: np.ndarray, n: int, lo: float, hi: float,
                       periodic: bool) -> np.ndarray:
    """Repeat indices m in [0, n) whose atoms (frac = m * slope + g, wrapped if periodic) may be in [lo, hi).

    Generous by one repeat on each side: the exact owner test follows.
    """
    top = (n - 1) * slope + g.max()
    images = range(int(np.floor(g.min())) - 1, int(np.ceil(top)) + 2) if periodic else (0,)
    keep = np.zeros(n, dtype=bool)
    for k in images:
        a = -np.inf if lo == -np.inf else (lo + k - g.max()) / slope
        z = np.inf if hi == np.inf else (hi + k - g.min()) / slope
        first = 0 if a == -np.inf else max(int(np.ceil(a)) - 1, 0)
        last = n - 1 if z == np.inf else min(int(np.floor(z)) + 1, n - 1)
        if first <= last:
            keep[first:last + 1] = True
    return np.flatnonzero(keep)


def _centered_cell(cell: np.ndarray, ucell: np.ndarray, basis: np.ndarray, reps: np.ndarray, vacuum: float):
    """Cell and translation of ``Atoms.center(vacuum=vacuum, axis=2)`` on the repeated lattice, without it.

    The extreme heights of a lattice lie on its corner repeats, so only those are evaluated.
    """
    dirs = np.cross(cell[1], cell[0])
    dirs /= np.linalg.norm(dirs)
    if dirs @ cell[2] < 0.0:
        dirs *= -1
    ends = [(0, r - 1) for r in reps]
    corners = np.array([[i, j, k] for i in ends[0] for j in ends[1] for k in ends[2]])
    off = corners[:, 0:1] * ucell[0] + corners[:, 1:2] * ucell[1] + corners[:, 2:3] * ucell[2]
    heights = ((basis[None, :, :] + off[:, None, :]).reshape(-1, 3)) @ dirs
    p0, p1 = heights.min(), heights.max()
    length = np.linalg.norm(cell[2])
    height = cell[2] @ dirs
    lng = (p1 - p0 + 2 * vacuum) - height
    top = lng + height - p1
    shf = 0.5 * (top - p0)
    cosphi = cell[2] @ dirs / length
    new = cell.copy()
    new[2] = cell[2] * (1 + (lng / cosphi) / length)
    return new, (shf / cosphi) * cell[2] / length


def _file_scattered(cfg: RunConfig, comm, grid, probe):
    """Rank 0 reads and builds the file's system (build_atoms) and sends each rank its atoms in chunks."""
    from .domain import Decomposition

    head = None
    if comm.rank == 0:
        try:
            atoms = build_atoms(cfg)
            constrained = constrained_ids(atoms)
        except InputError as exc:
            head = {"error": str(exc)}
        else:
            head = {"cell": np.asarray(atoms.cell.array, dtype=np.float64),
                    "pbc": tuple(bool(p) for p in atoms.pbc), "n": len(atoms),
                    "velocities": atoms.has("momenta"), "constrained": constrained}
    head = comm.bcast(head)
    if "error" in head:
        raise InputError(head["error"])
    # one rank owns everything (and a cell-less cluster has no sub-boxes to decompose)
    decomp = Decomposition(head["cell"], head["pbc"], comm.size, comm.rank, grid) if comm.size > 1 else None
    fields = ("positions", "ids", "numbers", "masses") + (("velocities",) if head["velocities"] else ())
    if comm.rank == 0:
        probe(len(atoms))
        arrays = {"positions": atoms.get_positions(), "ids": atoms.arrays["ids"].astype(np.int64),
                  "numbers": atoms.numbers.astype(np.int64), "masses": atoms.get_masses().astype(np.float64)}
        if head["velocities"]:
            arrays["velocities"] = atoms.get_velocities()
        del atoms
        owner = (decomp.owner_of(decomp.wrap(arrays["positions"])[0]) if decomp is not None
                 else np.zeros(len(arrays["ids"]), dtype=np.int64))
        for r in range(1, comm.size):
            rows = np.flatnonzero(owner == r)
            chunks = [rows[i:i + _SCATTER_CHUNK] for i in range(0, len(rows), _SCATTER_CHUNK)]
            comm.sendrecv(len(chunks), dest=r, source=None, tag=_TAG_SCATTER)
            for c in chunks:
                comm.sendrecv({f: arrays[f][c] for f in fields}, dest=r, source=None, tag=_TAG_SCATTER)
        mine = owner == 0
        local = {f: arrays[f][mine] for f in fields}
    else:
        n_chunks = comm.sendrecv(None, dest=None, source=0, tag=_TAG_SCATTER)
        got = []
        for _ in range(n_chunks):
            got.append(comm.sendrecv(None, dest=None, source=0, tag=_TAG_SCATTER))
            probe(sum(len(x["ids"]) for x in got))
        empty = {f: np.zeros((0, 3) if f in ("positions", "velocities") else 0) for f in fields}
        local = {f: (np.concatenate([x[f] for x in got]) if got else empty[f]) for f in fields}
        local["ids"] = local["ids"].astype(np.int64)
        local["numbers"] = local["numbers"].astype(np.int64)
    local.setdefault("velocities", None)
    return local, head["cell"], head["pbc"], head["n"], np.asarray(head["constrained"], dtype=np.int64)


def _read_file(st: StructureConfig) -> Atoms:
    import ase.io

    path = Path(st.file)
    if not path.is_file():
        raise InputError(f"`system.structure.file`: no such file {str(path)!r}")
    try:
        # parallel=False: only the reading rank calls this (ASE would broadcast over MPI_COMM_WORLD)
        frames = ase.io.read(path, index=st.index, format=st.format, parallel=False)
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


def alloy_plan(present, fractions: Dict[str, float], n_sites: int,
               site: Optional[str]) -> Tuple[str, Dict[str, int]]:
    """The substituted element and exact counts, or InputError naming the alloy key at fault."""
    present = sorted(set(present))
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
    counts = alloy_counts(fractions, n_sites)
    for el, n in counts.items():
        if n == 0:
            raise InputError(
                f"`system.structure.alloy.{el}`: fraction {fractions[el]} of {n_sites} {site} sites "
                "rounds to 0 atoms; use a larger `repeat` or a larger fraction"
            )
    return site, counts


def alloy_numbers(ids: np.ndarray, numbers: np.ndarray, site_z: int, counts: Dict[str, int], seed: int,
                  comm=None) -> np.ndarray:
    """Atomic numbers after substitution: of all ``site_z`` sites (over every rank of ``comm``), the
    ones with the smallest hash of (seed, id) take the first element's count, the next ones the next.

    The choice depends only on the ids, so any partition of the atoms over ranks gives the same alloy.
    Collective (a bisection of ~64 allreduces per element) when ``comm`` has several ranks.
    """
    from ase.data import atomic_numbers

    comm = _serial_if_none(comm)
    out = np.array(numbers, dtype=np.int64, copy=True)
    sites = np.flatnonzero(out == site_z)
    keys = _hash_ids(np.asarray(ids, dtype=np.int64)[sites], seed, _ALLOY_STREAM)
    below, taken = None, 0
    for el, n in counts.items():  # in the order written: counts map to consecutive ranks of the keys
        taken += n
        top = _kth_smallest(keys, taken, comm)
        chosen = keys <= np.uint64(top)
        if below is not None:
            chosen &= keys > np.uint64(below)
        out[sites[chosen]] = atomic_numbers[el]
        below = top
    return out


def substitute_alloy(atoms: Atoms, fractions: Dict[str, float], seed: int, site: str | None = None) -> Atoms:
    """Replace random ``site`` atoms by the alloy elements in exact counts (see alloy_counts), in place.

    The sites are chosen by a hash of (seed, atom id) (:func:`alloy_numbers`; ids are
    ``arrays['ids']`` or the indices), so the same seed always gives the same alloy,
    on one process or built per rank.
    """
    from ase.data import atomic_masses, atomic_numbers

    site, counts = alloy_plan(atoms.get_chemical_symbols(), fractions,
                              int(np.sum(atoms.symbols == (site or atoms.get_chemical_symbols()[0]))), site)
    ids = atoms.arrays.get("ids", np.arange(len(atoms)))
    numbers = alloy_numbers(ids, atoms.numbers, atomic_numbers[site], counts, seed)
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
    3 centre-of-mass degrees of freedom removed. Each atom's draw is keyed by its id
    (``arrays['ids']`` or the index; :func:`maxwell_boltzmann`), so a per-rank build gives
    the same velocities. Units: Å per ASE time unit. One atom, or T = 0, gives zero
    velocities. Returns the (n, 3) float64 velocities.
    """
    ids = atoms.arrays.get("ids", np.arange(len(atoms)))
    masses = atoms.get_masses().astype(np.float64)
    velocities = maxwell_boltzmann(ids, masses, temperature_K, seed, len(atoms))
    atoms.set_velocities(velocities)
    return velocities


def maxwell_boltzmann(ids: np.ndarray, masses: np.ndarray, temperature_K: float, seed: int, n_global: int,
                      comm=None) -> np.ndarray:
    """Velocities (n, 3) of the atoms ``ids`` (any subset per rank): normals hashed from (seed, id), the
    centre-of-mass velocity removed and scaled to exactly ``temperature_K`` (3N - 3 degrees of freedom).

    The sums over atoms are exact (:func:`exact_sum`), so the result does not depend on how the atoms
    are split over the ranks of ``comm`` (collective when it has several).
    """
    from ase.units import kB

    if temperature_K < 0:
        raise InputError(f"`system.temperature_K` = {temperature_K} must be >= 0")
    comm = _serial_if_none(comm)
    masses = np.asarray(masses, dtype=np.float64)
    velocities = np.zeros((len(masses), 3), dtype=np.float64)
    dof = 3 * int(n_global) - 3
    if not (temperature_K > 0 and dof > 0):
        return velocities
    scale = np.sqrt(kB * temperature_K / masses)[:, None]
    velocities = _normals_by_id(np.asarray(ids, dtype=np.int64), seed) * scale
    sums = exact_sum(np.column_stack([masses[:, None] * velocities, masses]), comm)
    velocities -= sums[:3] / sums[3]
    kinetic = 0.5 * float(exact_sum(masses[:, None] * velocities**2, comm).sum())
    velocities *= np.sqrt(temperature_K / (2.0 * kinetic / (dof * kB)))
    return velocities


# -- counter-based randomness keyed by atom id ---------------------------------------------
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection of uint64 that scrambles every bit (vectorised, wraps mod 2^64)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _stream_key(seed: int, stream: int) -> np.uint64:
    return np.random.SeedSequence([int(seed), int(stream)]).generate_state(1, np.uint64)[0]


def _hash_ids(counters: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """uint64 hash of each counter under (seed, stream); distinct counters give distinct hashes."""
    with np.errstate(over="ignore"):
        return _mix64(counters.astype(np.uint64) * _GOLDEN + _stream_key(seed, stream))


def _normals_by_id(ids: np.ndarray, seed: int) -> np.ndarray:
    """(n, 3) standard normals, a function of (seed, id) only: Box-Muller on 4 hashed 53-bit uniforms."""
    counters = (ids[:, None] * 4 + np.arange(4)[None, :]).ravel()
    u = (_hash_ids(counters, seed, _VELOCITY_STREAM) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    u = u.reshape(-1, 4)
    r1, r2 = np.sqrt(-2.0 * np.log1p(-u[:, 0])), np.sqrt(-2.0 * np.log1p(-u[:, 2]))
    return np.column_stack([r1 * np.cos(2 * np.pi * u[:, 1]), r1 * np.sin(2 * np.pi * u[:, 1]),
                            r2 * np.cos(2 * np.pi * u[:, 3])])


def exact_sum(values: np.ndarray, comm=None) -> np.ndarray:
    """Column sums of ``values`` (n, k) over all ranks, independent of how the rows are split.

    Each value is rounded to a fixed-point integer (2^-62 of the largest magnitude; far below
    float64 resolution of the sum) and the integers are summed exactly, in two 31-bit halves.
    """
    comm = _serial_if_none(comm)
    values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    k = values.shape[1]
    big = float(comm.allreduce_max(np.abs(values).max(axis=0) if len(values) else np.zeros(k)).max())
    if big == 0.0:
        return np.zeros(k)
    exp = 62 - np.frexp(big)[1]  # |value| * 2^exp < 2^62
    fixed = np.rint(np.ldexp(values, exp)).astype(np.int64)
    lo = fixed & np.int64(0x7FFFFFFF)
    hi = fixed >> np.int64(31)
    parts = comm.allreduce_sum(np.concatenate([hi.sum(axis=0), lo.sum(axis=0)]).astype(np.int64))
    return np.array([float((int(parts[i]) << 31) + int(parts[k + i])) * 2.0**-exp for i in range(k)])


def _kth_smallest(keys: np.ndarray, k: int, comm) -> int:
    """The k-th smallest (1-based) uint64 key over all ranks, by bisection on the count below a value."""
    lo, hi = 0, 2**64 - 1
    while lo < hi:
        mid = (lo + hi) // 2
        below = int(comm.allreduce_sum(int(np.count_nonzero(keys <= np.uint64(mid)))))
        if below >= k:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _serial_if_none(comm):
    if comm is None:
        from .comm import Comm

        return Comm()
    return comm
