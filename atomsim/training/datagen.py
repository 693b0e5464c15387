"""Label diverse small structures with an ASE calculator (EMT by default) for training.

Why this mix: a potential used for MD must see equilibrium crystals, compressed
and stretched lattices, chemical disorder, defects, surfaces and thermal
disorder, or it extrapolates silently. Every structure is small (1-40 atoms)
so labelling and training stay cheap on a laptop CPU.

EMT covers Al, Cu, Ag, Au, Ni, Pd, Pt well; its H, C, N, O parameters are
meant for those atoms dissolved in metals and describe bulk H/C/N/O badly, so
they are left out of the default element set.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from ase import Atoms
from ase.build import bulk, fcc100, fcc110, fcc111
from ase.data import atomic_numbers, reference_states

EMT_METALS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")
KINDS = ("crystal", "alloy", "vacancy", "surface", "rattled", "md")


def make_calculator(name: str):
    """An ASE calculator by short name (only 'emt' ships with ASE without extra files)."""
    if name.lower() == "emt":
        from ase.calculators.emt import EMT

        return EMT()
    if name.lower() == "lj":
        from ase.calculators.lj import LennardJones

        return LennardJones()
    raise ValueError(f"--calculator {name!r}: supported: emt, lj")


def _fcc_a(symbol: str) -> float:
    ref = reference_states[atomic_numbers[symbol]]
    if ref and ref.get("symmetry") == "fcc":
        return float(ref["a"])
    return 4.0


def _lattice(symbol: str, structure: str, scale: float, rng: np.random.Generator) -> Atoms:
    """A small cell of an fcc, bcc or hcp lattice with the same atomic volume as fcc * scale^3."""
    a_fcc = _fcc_a(symbol) * scale
    vol = a_fcc**3 / 4.0
    if structure == "fcc":
        return bulk(symbol, "fcc", a=a_fcc, cubic=bool(rng.random() < 0.5))
    if structure == "bcc":
        return bulk(symbol, "bcc", a=(2 * vol) ** (1 / 3), cubic=True)
    a = (2 * vol / (np.sqrt(3) / 2 * 1.633)) ** (1 / 3)
    return bulk(symbol, "hcp", a=a, c=1.633 * a)


def _repeat_to(atoms: Atoms, rng: np.random.Generator, n_min: int, n_max: int) -> Atoms:
    """Repeat so the cell has between n_min and n_max atoms and no side far below the cutoff."""
    best = atoms
    for _ in range(20):
        rep = rng.integers(1, 4, size=3)
        trial = atoms.repeat(tuple(int(r) for r in rep))
        if n_min <= len(trial) <= n_max:
            return trial
        if len(trial) <= n_max:
            best = trial
    return best


def _strain(atoms: Atoms, rng: np.random.Generator, amount: float) -> Atoms:
    eps = rng.normal(0.0, amount, size=(3, 3))
    eps = 0.5 * (eps + eps.T)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    return atoms


def _random_species(atoms: Atoms, rng: np.random.Generator, elements: Sequence[str]) -> Atoms:
    """Random substitutional alloy, lattice rescaled by Vegard's law (else it is far off-lattice)."""
    a_old = np.mean([_fcc_a(s) for s in atoms.get_chemical_symbols()])
    k = int(rng.integers(2, min(3, len(elements)) + 1))
    chosen = rng.choice(elements, size=k, replace=False)
    frac = rng.dirichlet(np.ones(k))
    atoms.set_chemical_symbols(list(rng.choice(chosen, size=len(atoms), p=frac)))
    a_new = np.mean([_fcc_a(s) for s in atoms.get_chemical_symbols()])
    atoms.set_cell(atoms.cell.array * (a_new / a_old), scale_atoms=True)
    return atoms


def _crystal(rng, elements, rattle: float) -> Atoms:
    sym = str(rng.choice(elements))
    at = _lattice(sym, str(rng.choice(["fcc", "fcc", "bcc", "hcp"])), float(rng.uniform(0.94, 1.06)), rng)
    at = _repeat_to(at, rng, 1, 32)
    _strain(at, rng, 0.02)
    if rattle:
        at.rattle(rattle, seed=int(rng.integers(2**31)))
    return at


def _alloy(rng, elements) -> Atoms:
    sym = str(rng.choice(elements))
    at = _lattice(sym, str(rng.choice(["fcc", "fcc", "bcc", "hcp"])), float(rng.uniform(0.95, 1.05)), rng)
    at = _repeat_to(at, rng, 4, 32)
    _random_species(at, rng, elements)
    _strain(at, rng, 0.015)
    at.rattle(float(rng.uniform(0.0, 0.08)), seed=int(rng.integers(2**31)))
    return at


def _vacancy(rng, elements) -> Atoms:
    at = _alloy(rng, elements) if rng.random() < 0.5 else _crystal(rng, elements, 0.03)
    if len(at) < 4:
        at = at.repeat((2, 2, 1))
    for _ in range(int(rng.integers(1, 3))):
        del at[int(rng.integers(len(at)))]
    return at


def _surface(rng, elements) -> Atoms:
    sym = str(rng.choice(elements))
    builder = [fcc111, fcc100, fcc110][int(rng.integers(3))]
    size = (int(rng.integers(1, 3)), int(rng.integers(1, 3)), int(rng.integers(3, 6)))
    at = builder(sym, size=size, a=_fcc_a(sym) * float(rng.uniform(0.97, 1.03)),
                 vacuum=float(rng.uniform(4.0, 8.0)), periodic=True)
    if rng.random() < 0.4:
        _random_species(at, rng, elements)
    at.rattle(float(rng.uniform(0.0, 0.1)), seed=int(rng.integers(2**31)))
    return at


def _md_snapshots(rng, elements, calc, n: int) -> list[Atoms]:
    """Short Langevin runs at a random temperature (300-2500 K); snapshots every 10 steps."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    at = _alloy(rng, elements) if rng.random() < 0.5 else _crystal(rng, elements, 0.0)
    if len(at) < 8:
        at = at.repeat((2, 2, 2)) if len(at) < 4 else at.repeat((2, 1, 1))
    temp = float(rng.choice([300.0, 600.0, 1000.0, 1500.0, 2500.0]))
    at.calc = calc
    MaxwellBoltzmannDistribution(at, temperature_K=temp, rng=rng)
    dyn = Langevin(at, 2.0 * units.fs, temperature_K=temp, friction=0.02, rng=rng)
    out = []
    for _ in range(n):
        dyn.run(10)
        snap = at.copy()
        snap.info["temperature_K"] = temp
        out.append(snap)
    return out


def generate_structures(n: int, seed: int = 0, elements: Sequence[str] = EMT_METALS,
                        calculator: str = "emt") -> Iterator[Atoms]:
    """Yield ``n`` labelled structures (energy, forces, stress in ``atoms.calc``-free arrays/info)."""
    unknown = [e for e in elements if e not in atomic_numbers]
    if unknown:
        raise ValueError(f"elements: unknown symbol(s) {unknown}")
    if calculator.lower() == "emt":
        from ase.calculators.emt import parameters as emt_parameters

        bad = [e for e in elements if e not in emt_parameters]
        if bad:
            raise ValueError(f"elements: EMT has no parameters for {', '.join(bad)}; "
                             f"it covers {' '.join(emt_parameters)}")
    rng = np.random.default_rng(seed)
    calc = make_calculator(calculator)
    weights = np.array([0.15, 0.3, 0.1, 0.15, 0.2, 0.06])  # md yields 5 snapshots
    made = 0
    while made < n:
        kind = KINDS[int(rng.choice(len(KINDS), p=weights / weights.sum()))]
        if kind == "md":
            batch = _md_snapshots(rng, elements, calc, min(5, n - made))
        elif kind == "crystal":
            batch = [_crystal(rng, elements, 0.0)]
        elif kind == "rattled":
            batch = [_crystal(rng, elements, float(rng.uniform(0.03, 0.12)))]
        else:
            batch = [{"alloy": _alloy, "vacancy": _vacancy, "surface": _surface}[kind](rng, elements)]
        for at in batch:
            yield _label(at, calc, kind)
            made += 1


def _label(atoms: Atoms, calc, kind: str) -> Atoms:
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = atoms.copy()
    atoms.calc = calc
    e = atoms.get_potential_energy()
    f = atoms.get_forces()
    s = atoms.get_stress(voigt=False) if all(atoms.pbc) else None
    atoms.calc = None
    res = {"energy": e, "forces": f}
    if s is not None:
        res["stress"] = s
    atoms.calc = SinglePointCalculator(atoms, **res)
    atoms.info["config_type"] = kind
    return atoms


def write_dataset(path: str | Path, n: int, seed: int = 0, elements: Sequence[str] = EMT_METALS,
                  calculator: str = "emt", progress: Callable[[int], None] | None = None) -> int:
    """Generate and write ``n`` structures to an extxyz file; returns the number written."""
    from ase.io import write

    frames = []
    for k, at in enumerate(generate_structures(n, seed, elements, calculator)):
        frames.append(at)
        if progress is not None:
            progress(k + 1)
    write(str(path), frames, format="extxyz")
    return len(frames)
