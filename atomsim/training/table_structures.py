"""Small periodic structures across the periodic table, for labelling by a universal teacher.

Why this mix: a student distilled from a universal potential must see every element in the
bonding it meets in practice (metals, oxides, nitrides, halides, chalcogenides, covalent
solids, molecules' elements inside solids, noble gases) and away from equilibrium (strained,
compressed, rattled, defected, surfaces). Each job draws its own generator,
``numpy.random.default_rng([seed, job])``, so a structure depends only on (seed, job index) and
ranges of jobs can be made independently and concatenated. Structures have 1-48 atoms and are
periodic in all three directions (slabs carry 8 Å of vacuum, more than a 5 Å cutoff).

Nearest-neighbour distances come from covalent radii (vdW radii for noble gases); H, N, O, F use
0.85 x vdW and C 1.3 x covalent for homo-nuclear close packing: with plain covalent radii those
lattices are so compressed that teachers' predictions diverge. A sanity filter
(:func:`label_outlier`) drops labels far outside anything a teacher was trained on.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from ase import Atoms
from ase.build import bulk, surface
from ase.data import atomic_numbers, covalent_radii, vdw_radii

MAX_ATOMS = 48
GRAPH_CUTOFF = 5.0  # Å: only used to bound the estimated edge count (labelling cost)
EDGE_BUDGET = 4000
NOBLE = frozenset({"He", "Ne", "Ar", "Kr", "Xe"})
NONMETALS = frozenset({"H", "He", "B", "C", "N", "O", "F", "Ne", "Si", "P", "S", "Cl", "Ar", "As", "Se", "Br",
                       "Kr", "Te", "I", "Xe"})
DIAMOND_OK = frozenset({"C", "Si", "Ge", "Sn", "Pb", "B", "Al", "Ga", "In", "P", "As", "Sb", "S", "Se", "Te"})
# anion families: (name, weight, members)
ANION_FAMILIES = (("oxide", 0.30, ("O",)), ("nitride", 0.12, ("N",)), ("halide", 0.22, ("F", "Cl", "Br", "I")),
                  ("chalcogenide", 0.14, ("S", "Se", "Te")),
                  ("pnictide_carbide_hydride", 0.10, ("C", "H", "B", "P", "As", "Sb", "Si")))
PEROVSKITE_A = ("Li", "Na", "K", "Rb", "Cs", "Ca", "Sr", "Ba", "Pb", "Bi", "La", "Ce", "Pr", "Nd", "Sm", "Eu",
                "Gd", "Y", "Cd", "Ag", "Tl")
PEROVSKITE_B = ("Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Zr", "Nb", "Mo", "Ru", "Rh", "Hf", "Ta", "W",
                "Re", "Ir", "Al", "Ga", "In", "Sc", "Sn", "Mg", "Ge", "Pt", "Pd", "Os", "Tc")
JOB_KINDS = (("bulk", 0.32), ("binary", 0.24), ("alloy", 0.14), ("perovskite", 0.05), ("slab", 0.08),
             ("vacancy", 0.08), ("md", 0.035))
# label sanity limits: outside them a teacher extrapolates into numerically meaningless values
MAX_ABS_FORCE = 50.0  # eV/Å, any component
ENERGY_PER_ATOM_RANGE = (-25.0, 5.0)  # eV/atom
MAX_ABS_STRESS = 1.0  # eV/Å^3 (~160 GPa), any component


def size_radius(sym: str) -> float:
    """Radius for hetero-nuclear bond lengths: covalent (vdW for noble gases)."""
    z = atomic_numbers[sym]
    return float(vdw_radii[z]) if sym in NOBLE else float(covalent_radii[z])


def element_radius(sym: str) -> float:
    """Radius for homo-nuclear contacts in close-packed lattices (see the module docstring)."""
    if sym in ("H", "N", "O", "F"):
        return 0.85 * float(vdw_radii[atomic_numbers[sym]])
    if sym == "C":
        return 1.3 * float(covalent_radii[6])
    return size_radius(sym)


def too_close(atoms: Atoms, factor: float = 0.6) -> bool:
    """Any pair (periodic images included) closer than factor x (r_i + r_j) covalent radii."""
    from ase.neighborlist import neighbor_list

    i, _ = neighbor_list("ij", atoms, (factor * covalent_radii[atoms.numbers]).tolist(), self_interaction=False)
    return len(i) > 0


def label_outlier(n_atoms: int, energy: float, forces: np.ndarray, stress: Optional[np.ndarray]) -> bool:
    """True for labels outside the sanity limits (or not finite)."""
    if not (np.isfinite(energy) and np.all(np.isfinite(forces))):
        return True
    if stress is not None and (not np.all(np.isfinite(stress)) or np.abs(stress).max() > MAX_ABS_STRESS):
        return True
    epa = energy / max(n_atoms, 1)
    return bool((forces.size and np.abs(forces).max() > MAX_ABS_FORCE)
                or not ENERGY_PER_ATOM_RANGE[0] <= epa <= ENERGY_PER_ATOM_RANGE[1])


class TableGenerator:
    """Structure jobs over ``elements`` (symbols); ``job(i)`` is deterministic in (seed, i)."""

    def __init__(self, elements: Sequence[str], seed: int):
        unknown = [e for e in elements if e not in atomic_numbers]
        if unknown:
            raise ValueError(f"elements: unknown symbol(s) {unknown}")
        self.elements = sorted(set(elements), key=lambda s: atomic_numbers[s])
        if not self.elements:
            raise ValueError("elements: empty element list")
        eset = set(self.elements)
        self.seed = int(seed)
        self.metals = [e for e in self.elements if e not in NONMETALS] or list(self.elements)
        self.non_noble = [e for e in self.elements if e not in NOBLE] or list(self.elements)
        self.families = [(n, w, [m for m in mem if m in eset]) for n, w, mem in ANION_FAMILIES]
        self.families = [f for f in self.families if f[2]]
        self.perov_a = [e for e in PEROVSKITE_A if e in eset]
        self.perov_b = [e for e in PEROVSKITE_B if e in eset]
        kinds = [(k, w) for k, w in JOB_KINDS if k != "perovskite" or (self.perov_a and self.perov_b and "O" in eset)]
        self.kinds = [k for k, _ in kinds]
        w = np.array([w for _, w in kinds])
        self.kind_p = w / w.sum()

    # ---------------------------------------------------------------- helpers --
    @staticmethod
    def _scale(rng: np.random.Generator) -> float:
        return float(rng.uniform(0.85, 1.2) ** (1.0 / 3.0))  # volume factor 0.85-1.2

    @staticmethod
    def _max_atoms_for(atoms: Atoms) -> int:
        nn = 4.0 / 3.0 * math.pi * GRAPH_CUTOFF**3 * len(atoms) / atoms.get_volume()
        return int(min(MAX_ATOMS, max(len(atoms), EDGE_BUDGET // max(nn, 1.0))))

    @staticmethod
    def _reps(rng: np.random.Generator, n0: int, max_atoms: int) -> tuple:
        cands = [(1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 2), (2, 2, 1), (2, 1, 2), (1, 2, 2), (2, 2, 2)]
        w = np.array([4.0, 1.3, 1.3, 1.3, 1.0, 1.0, 1.0, 1.2])
        ok = [k for k, r in enumerate(cands) if n0 * int(np.prod(r)) <= max_atoms]
        return cands[ok[int(rng.choice(len(ok), p=w[ok] / w[ok].sum()))]]

    @staticmethod
    def strain_rattle(atoms: Atoms, rng: np.random.Generator, rattle: Optional[float] = None) -> Atoms:
        """Random strain (±4% normal, ±2% shear) and Gaussian rattle (0.01-0.15 Å unless given)."""
        eps = np.diag(rng.uniform(-0.04, 0.04, 3))
        for i, j in ((0, 1), (0, 2), (1, 2)):
            eps[i, j] = eps[j, i] = rng.uniform(-0.04, 0.04) / 2.0
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
        sigma = float(rng.uniform(0.01, 0.15)) if rattle is None else float(rattle)
        atoms.positions += rng.normal(0.0, sigma, atoms.positions.shape)
        atoms.info["rattle_sigma"] = round(sigma, 4)
        return atoms

    def _pick(self, rng, pool):
        return pool[int(rng.integers(len(pool)))]

    def _pick_bulk_element(self, rng) -> str:
        w = np.array([3.0 if e in NONMETALS else 1.0 for e in self.elements])  # rare in the other generators
        return self.elements[int(rng.choice(len(self.elements), p=w / w.sum()))]

    def _pick_pair(self, rng) -> tuple[str, str, str]:
        u = rng.uniform()
        if u < 0.62 and self.families:
            w = np.array([f[1] for f in self.families])
            fam, _, members = self.families[int(rng.choice(len(self.families), p=w / w.sum()))]
            b = self._pick(rng, members)
            cands = [e for e in self.non_noble if e != b] or [b]
            return self._pick(rng, cands), b, fam
        pool, fam = (self.metals, "intermetallic") if u < 0.90 and len(self.metals) > 1 else (self.elements, "random")
        a = self._pick(rng, pool)
        others = [e for e in pool if e != a] or [a]
        return a, self._pick(rng, others), fam

    # ------------------------------------------------------------- generators --
    def elemental(self, rng, sym=None, lattice=None, supercell=True, cubic=None) -> tuple[Atoms, str]:
        sym = sym or self._pick_bulk_element(rng)
        lats = ["fcc", "bcc", "hcp", "sc"] + (["diamond"] if sym in DIAMOND_OK else [])
        lat = lattice or self._pick(rng, lats)
        d = 2.0 * element_radius(sym) * self._scale(rng)
        cub = bool(rng.uniform() < 0.35) if cubic is None else cubic
        cub = cub and lat != "hcp"
        if lat == "fcc":
            at = bulk(sym, "fcc", a=d * math.sqrt(2), cubic=cub)
        elif lat == "bcc":
            at = bulk(sym, "bcc", a=2 * d / math.sqrt(3), cubic=cub)
        elif lat == "hcp":
            at = bulk(sym, "hcp", a=d, c=d * rng.uniform(1.55, 1.70))
        elif lat == "sc":
            at = bulk(sym, "sc", a=d)
        else:
            at = bulk(sym, "diamond", a=4 * d / math.sqrt(3), cubic=cub)
        if supercell:
            at = at.repeat(self._reps(rng, len(at), self._max_atoms_for(at)))
        at.info["proto"] = lat
        return at, "bulk_" + lat

    def binary(self, rng, supercell=True, cubic=None) -> tuple[Atoms, str]:
        a, b, fam = self._pick_pair(rng)
        proto = self._pick(rng, ["rocksalt", "cesiumchloride", "zincblende", "wurtzite", "fluorite"])
        d = (size_radius(a) + size_radius(b)) * self._scale(rng)
        cub = bool(rng.uniform() < 0.35) if cubic is None else cubic
        if proto == "rocksalt":
            at = bulk(a + b, "rocksalt", a=2 * d, cubic=cub)
        elif proto == "cesiumchloride":
            at = bulk(a + b, "cesiumchloride", a=2 * d / math.sqrt(3))
        elif proto == "zincblende":
            at = bulk(a + b, "zincblende", a=4 * d / math.sqrt(3), cubic=cub)
        elif proto == "wurtzite":
            aa = d * math.sqrt(8.0 / 3.0)
            at = bulk(a + b, "wurtzite", a=aa, c=aa * rng.uniform(1.58, 1.68))
        else:
            at = bulk(a + b + "2", "fluorite", a=4 * d / math.sqrt(3), cubic=cub)
        if supercell:
            at = at.repeat(self._reps(rng, len(at), self._max_atoms_for(at)))
        at.info["proto"], at.info["family"] = proto, fam
        return at, "binary_" + {"cesiumchloride": "cscl"}.get(proto, proto)

    def alloy(self, rng) -> tuple[Atoms, str]:
        pool = self.metals if rng.uniform() < 0.8 else self.elements
        k = min(2 if rng.uniform() < 0.6 else 3, len(pool))
        els = [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]
        frac = rng.dirichlet(np.ones(k) * 1.5)
        lat = "fcc" if rng.uniform() < 0.5 else "bcc"
        base = 4 if lat == "fcc" else 2
        d = sum(f * 2 * element_radius(e) for f, e in zip(frac, els)) * self._scale(rng)  # Vegard
        cell0 = bulk("X", lat, a=d * math.sqrt(2) if lat == "fcc" else 2 * d / math.sqrt(3), cubic=True)
        mx = self._max_atoms_for(cell0)
        combos = [r for r in [(1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2), (3, 1, 1), (3, 2, 1), (3, 2, 2),
                              (3, 3, 1), (4, 2, 1), (4, 2, 2), (3, 3, 2), (4, 3, 2)]
                  if 4 <= base * int(np.prod(r)) <= min(MAX_ATOMS, mx)] or [(1, 1, 1)]
        at = cell0.repeat(self._pick(rng, combos))
        n = len(at)
        counts = np.floor(frac * n).astype(int)
        while counts.sum() < n:
            counts[int(rng.integers(k))] += 1
        symbols = np.array(sum(([e] * int(c) for e, c in zip(els, counts)), []))[rng.permutation(n)]
        at.set_chemical_symbols(list(symbols))
        at.info["proto"] = lat
        return at, f"alloy_{'binary' if k == 2 else 'ternary' if k == 3 else 'elemental'}_{lat}"

    def perovskite(self, rng, supercell=True) -> tuple[Atoms, str]:
        a_site, b_site = self._pick(rng, self.perov_a), self._pick(rng, self.perov_b)
        r_o = size_radius("O")
        a0 = 0.5 * (2 * (size_radius(b_site) + r_o) + math.sqrt(2) * (size_radius(a_site) + r_o)) * self._scale(rng)
        at = Atoms(a_site + b_site + "O3", scaled_positions=[(0, 0, 0), (.5, .5, .5), (.5, .5, 0), (.5, 0, .5),
                                                             (0, .5, .5)], cell=np.eye(3) * a0, pbc=True)
        if supercell:
            at = at.repeat(self._reps(rng, 5, self._max_atoms_for(at)))
        at.info["proto"] = "perovskite"
        return at, "perovskite"

    def slab(self, rng) -> tuple[Optional[Atoms], str]:
        if rng.uniform() < 0.6:
            sym = self._pick_bulk_element(rng)
            lats = ["fcc", "bcc", "hcp"] + (["diamond"] if sym in DIAMOND_OK else [])
            prim, _ = self.elemental(rng, sym=sym, lattice=self._pick(rng, lats), supercell=False, cubic=True)
            tag = "elemental"
        else:
            for _ in range(20):
                prim, _ = self.binary(rng, supercell=False, cubic=True)
                if prim.info["proto"] in ("rocksalt", "cesiumchloride", "zincblende"):
                    break
            tag = "binary"
        proto = prim.info["proto"]
        millers = [(0, 0, 1), (1, 0, 0), (1, 0, 1)] if proto == "hcp" else [(1, 0, 0), (1, 1, 0), (1, 1, 1)]
        miller = self._pick(rng, millers)
        layers = int(rng.integers(2, 5))
        slab = surface(prim, miller, layers, vacuum=4.0, periodic=True)
        slab.pbc = True
        ok = [r for r in [(1, 1, 1), (2, 1, 1), (1, 2, 1), (2, 2, 1)]
              if len(slab) * int(np.prod(r)) <= self._max_atoms_for(prim)]
        if not ok:
            return None, "slab_" + tag
        slab = slab.repeat(self._pick(rng, ok))
        slab.info["proto"], slab.info["layers"] = f"{proto}_{''.join(map(str, miller))}", layers
        return slab, "slab_" + tag

    def _any_bulk(self, rng, u: float) -> tuple[Atoms, str]:
        if u < 0.4:
            return self.elemental(rng)
        if u < 0.7:
            return self.binary(rng)
        if u < 0.9 or not self.perov_a or not self.perov_b or "O" not in self.elements:
            return self.alloy(rng)
        return self.perovskite(rng)

    def vacancy(self, rng) -> tuple[Optional[Atoms], str]:
        u = rng.uniform()
        for _ in range(50):
            at, src = self._any_bulk(rng, u)
            if len(at) >= 8:
                break
        if len(at) < 8:
            return None, "vacancy"
        del at[int(rng.integers(len(at)))]
        at.info["vacancy_source"] = src
        return at, "vacancy"

    def md_start(self, rng) -> tuple[Atoms, str]:
        """A 4-24 atom bulk structure to start a short MD from."""
        u = rng.uniform()
        for _ in range(50):
            at, src = self._any_bulk(rng, u)
            if 4 <= len(at) <= 24:
                break
        return at, src

    def job(self, i: int) -> tuple[Optional[Atoms], str, Optional[dict], np.random.Generator]:
        """(structure or None, config_type, MD spec or None, the job's generator)."""
        rng = np.random.default_rng([self.seed, int(i), 0])
        kind = self.kinds[int(rng.choice(len(self.kinds), p=self.kind_p))]
        md = None
        if kind == "md":
            at, src = self.md_start(rng)
            ct = "md"
            md = {"temperature_K": float(rng.uniform(300, 1500)), "steps": int(rng.integers(20, 51)), "every": 10,
                  "source": src}
        else:
            at, ct = getattr(self, {"bulk": "elemental"}.get(kind, kind))(rng)
        if at is not None:
            self.strain_rattle(at, rng, rattle=rng.uniform(0.01, 0.05) if md else None)
        return at, ct, md, rng
