"""Conformance kit: the properties every atomsim potential must have, checked in one call.

Why it exists: the engine trusts a :class:`~atomsim.potentials.base.Potential` for more than
its energies. Forces and the virial come from autograd on the edge vectors
(``potentials/base.py``), so they are only right if the energy is a differentiable
function of those vectors; the neighbor list carries a skin beyond the cutoff, so
pairs past the cutoff must contribute nothing; under MPI with ``parallel.halo:
per-layer`` ghost atoms get their features from their owners between layers
(``engine/halo.py``, ``engine/parallel_forces.py``); and unknown elements must be refused
by name rather than read as garbage. Each property is checked here against an
independent reference (finite differences, the symmetry, the periodic result), so a
plugin author adds two lines to their tests (``docs/bring_your_own_model.md``)::

    from atomsim.testing import conformance_tests
    test_conformance = conformance_tests(lambda: load_potential("my-model"))

or calls :func:`check_potential` directly. Graphs are built exactly as the engine
builds them (``kernels/neighbor_list.NeighborList`` -> ``build_graph`` ->
``evaluate_potential``); a potential with a direct path (``Potential.direct_list()``,
e.g. LJ in float64 on CPU) is evaluated through ``direct_forces`` on the same
(full) pair lists instead, as the engine would run it.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols, covalent_radii

from atomsim.kernels.graph import csr_row_ptr
from atomsim.kernels.neighbor_list import NeighborList
from atomsim.potentials.base import PairList, Potential, build_graph, evaluate_potential

__all__ = ["CHECKS", "AGREEMENT_TOLERANCE", "CheckResult", "ConformanceReport", "check_potential",
           "conformance_tests", "default_structures"]

CHECKS = ("forces", "virial", "cutoff", "smooth_cutoff", "invariance", "ghosts", "species")

# Two evaluations of the same quantity that must agree up to rounding (symmetry, skin edges,
# explicit ghosts), per evaluation dtype: (rtol, atol); error <= max(atol, rtol * scale),
# scale = max |reference| of that quantity.
AGREEMENT_TOLERANCE: Dict[torch.dtype, Tuple[float, float]] = {
    torch.float64: (1e-7, 1e-9),  # models built in float32 keep float32-rounded constants when cast
    torch.float32: (1e-5, 1e-6),
    torch.float16: (5e-3, 1e-3),
    torch.bfloat16: (2e-2, 1e-2),
}
# Central differences always run on a float64 copy: (rtol, atol) per force / virial component.
FD_RTOL, FD_ATOL = 1e-6, 1e-8
CUTOFF_DELTAS = (1e-3, 1e-4)  # Å from the cutoff, on both sides
# A pair's share that vanishes like delta^p at the cutoff shrinks 10^p-fold per 10x closer; the check
# asks for 10^p / 5 (a jump, p = 0, does not shrink at all). p = cutoff_order for the energy,
# max(cutoff_order - 1, 1) for the forces.
CUTOFF_MARGIN = 5.0

StructuresArg = Union[None, Mapping[str, Atoms], Sequence[Atoms], Callable[[], Mapping[str, Atoms]]]


# ------------------------------------------------------------------------------------ results --
@dataclass
class CheckResult:
    """One check on one structure: the measured error against its tolerance."""

    check: str
    structure: str
    passed: bool
    error: float
    tolerance: float
    detail: str

    def __str__(self) -> str:
        status = "ok  " if self.passed else "FAIL"
        return (f"{status} {self.check:<28} {self.structure:<16} error {self.error:.3g} "
                f"(tolerance {self.tolerance:.3g}) {self.detail}")


@dataclass
class ConformanceReport:
    """What :func:`check_potential` measured; ``str(report)`` is a table."""

    potential: str
    results: List[CheckResult] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)  # check -> why

    @property
    def failures(self) -> List[CheckResult]:
        return [r for r in self.results if not r.passed]

    @property
    def passed(self) -> bool:
        return not self.failures

    def failed_checks(self) -> set:
        """Names of the checks with at least one failure (``"invariance/rotation"`` -> ``"invariance"``)."""
        return {r.check.split("/")[0] for r in self.failures}

    def __str__(self) -> str:
        lines = [f"conformance of {self.potential}:"] + [f"  {r}" for r in self.results]
        lines += [f"  skip {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)

    def raise_on_failure(self) -> None:
        if self.failures:
            msgs = [f"check {r.check!r} failed on structure {r.structure!r}: {r.detail}; error {r.error:.3g} "
                    f"> tolerance {r.tolerance:.3g}" for r in self.failures]
            raise AssertionError(f"{self.potential} fails atomsim's conformance kit "
                                 f"(docs/bring_your_own_model.md):\n  " + "\n  ".join(msgs))


# --------------------------------------------------------------------------------- structures --
def _pick_elements(potential: Potential, elements: Optional[Sequence[Union[str, int]]]) -> List[int]:
    if elements is not None:
        zs = [atomic_numbers[e] if isinstance(e, str) else int(e) for e in elements]
    elif potential.species is None:
        zs = [29, 28]  # any element is accepted: two, so mixed pairs occur
    else:
        known = sorted(int(z) for z in potential.species)
        zs = known if len(known) <= 3 else [known[len(known) * k // 4] for k in (1, 2, 3)]
    if not zs:
        raise ValueError("check_potential: no elements to build structures from")
    return zs


def default_structures(elements: Sequence[int], cutoff: float, nn_distance: Optional[float] = None,
                       seed: int = 0) -> Dict[str, Atoms]:
    """Small rattled structures (4-8 atoms) covering the geometry cases the engine sees.

    Periodic cubic (a cell smaller than the cutoff: many images), strongly triclinic,
    a slab (periodic in x, y only) and a cluster (no cell). The nearest-neighbor
    distance is twice the mean covalent radius of ``elements``, kept within
    [0.3, 0.6] x cutoff so every atom has neighbors, unless ``nn_distance`` is given.
    """
    from ase.build import bulk, fcc111

    zs = [int(z) for z in elements]
    if nn_distance is None:
        d = 2.0 * float(np.mean([covalent_radii[z] for z in zs]))
        d = float(np.clip(d, 0.3 * cutoff, 0.6 * cutoff))
    else:
        d = float(nn_distance)
    rng = np.random.default_rng(seed)

    def finish(atoms: Atoms) -> Atoms:
        atoms.numbers = [zs[k % len(zs)] for k in range(len(atoms))]
        atoms.positions += rng.normal(scale=0.05 * d, size=atoms.positions.shape)
        return atoms

    a = d * np.sqrt(2.0)
    fcc = Atoms(positions=np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]]) * a,
                cell=np.eye(3) * a, pbc=True, numbers=[1] * 4)
    # primitive fcc cells (60 degree angles) under a general strain: no right angle, no symmetry
    tri = bulk("Cu", "fcc", a=a).repeat((2, 3, 1))
    shear = np.array([[1.03, 0.12, -0.05], [0.0, 0.98, 0.08], [0.0, 0.0, 1.04]])
    tri.set_cell(tri.cell.array @ shear, scale_atoms=True)
    slab = fcc111("Cu", size=(2, 2, 2), a=a, vacuum=2.0 * d, periodic=False)  # pbc (T, T, F)
    octa = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]]) * d / np.sqrt(2)
    cluster = Atoms(numbers=[1] * 6, positions=octa, pbc=False)
    return {"fcc": finish(fcc), "triclinic": finish(tri), "slab": finish(slab), "cluster": finish(cluster)}


def _as_structures(structures: StructuresArg) -> Dict[str, Atoms]:
    if callable(structures):
        structures = structures()
    if isinstance(structures, Mapping):
        return {str(k): v.copy() for k, v in structures.items()}
    out = {}
    for k, atoms in enumerate(structures):
        out[f"{k}:{atoms.get_chemical_formula()}"] = atoms.copy()
    return out


# ------------------------------------------------------------------------------- evaluation --
@dataclass
class _Eval:
    energy: float
    energies: np.ndarray
    forces: np.ndarray
    virial: np.ndarray


Edges = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _edges(positions: np.ndarray, cell: np.ndarray, pbc, radius: float, device=None) -> Edges:
    """(receivers, senders, cell_shifts) of every pair closer than ``radius``: the engine's NeighborList."""
    nl = NeighborList(radius)
    pos = torch.as_tensor(np.asarray(positions), dtype=torch.float64, device=device)
    nl.build(pos, np.asarray(cell), pbc)
    return nl.receivers, nl.senders, nl.cell_shifts


def _evaluate(potential: Potential, positions: np.ndarray, cell: np.ndarray, numbers: np.ndarray, edges,
              n_local: Optional[int] = None, hook=None) -> _Eval:
    """Energy, per-atom energies, forces (all nodes) and virial, through the engine's path."""
    dev = potential.device
    pos = torch.as_tensor(np.asarray(positions), dtype=torch.float64, device=dev)
    cel = torch.as_tensor(np.asarray(cell), dtype=torch.float64, device=dev)
    i, j, S = (t.to(dev) for t in edges)
    n_local = len(positions) if n_local is None else n_local
    nums = torch.as_tensor(np.asarray(numbers), dtype=torch.int64, device=dev)
    if potential.direct_list() is not None:  # the engine's direct path (it never calls the hook)
        pairs = PairList(row_ptr=csr_row_ptr(i, len(pos)), senders=j, cell_shifts=S, half=False)
        out = potential.direct_forces(nums, pos, cel, pairs, n_local, virial=True)
    else:
        # positional arguments: receivers, senders, integer cell shifts (whatever their names)
        graph = build_graph(pos, cel, i, j, S, n_local, potential.dtype, halo_update=hook)
        out = evaluate_potential(potential, nums, graph)
    return _Eval(out.energy, np.asarray(out.energies, dtype=np.float64), out.forces.detach().cpu().numpy(),
                 out.virial.detach().cpu().numpy())


def _fd_point(energy_at, h: float, sign: float, analytic: float, rtol: float, atol: float, noise: float):
    """Central difference ``sign * (E(+h) - E(-h)) / 2h`` against ``analytic``: (error, limit, fd, analytic)."""
    fd = sign * (energy_at(h) - energy_at(-h)) / (2 * h)
    return abs(analytic - fd), max(atol, rtol * abs(fd), noise), fd, analytic


def _atoms_edges(atoms: Atoms, radius: float, device=None) -> Edges:
    return _edges(atoms.positions, atoms.cell.array, atoms.pbc, radius, device)


def _eval_atoms(potential: Potential, atoms: Atoms, radius: float, edges=None, hook=None) -> _Eval:
    if edges is None:
        edges = _atoms_edges(atoms, radius, potential.device)
    return _evaluate(potential, atoms.positions, atoms.cell.array, atoms.numbers, edges, hook=hook)


def _cast(potential: Potential, dtype: Optional[torch.dtype]) -> Potential:
    """The potential in ``dtype``: itself if it already is, else a cast deep copy (the caller's stays)."""
    if dtype is None or potential.dtype == dtype:
        return potential
    return copy.deepcopy(potential).to(dtype)


def _agree(name: str, check: str, structure: str, got: np.ndarray, ref: np.ndarray, tol: Tuple[float, float],
           unit: str) -> CheckResult:
    got, ref = np.asarray(got, dtype=float), np.asarray(ref, dtype=float)
    err = float(np.abs(got - ref).max()) if ref.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    rtol, atol = tol
    limit = max(atol, rtol * scale)
    ok = bool(np.isfinite(err) and err <= limit)
    return CheckResult(check, structure, ok, err, limit, f"{name}: max |difference| {err:.3g} {unit} "
                       f"(scale {scale:.3g}, rtol {rtol:g}, atol {atol:g})")


def _compare(check: str, structure: str, got: _Eval, ref: _Eval, n: int, tol: Tuple[float, float],
             how: str = "") -> List[CheckResult]:
    """Per-atom energies, forces on the ``n`` atoms and the virial of two evaluations."""
    how = f" {how}" if how else ""
    return [_agree(f"energies{how}", check, structure, got.energies, ref.energies, tol, "eV"),
            _agree(f"forces{how}", check, structure, got.forces[:n], ref.forces[:n], tol, "eV/Å"),
            _agree(f"virial{how}", check, structure, got.virial, ref.virial, tol, "eV")]


class _Kit:
    """The potential (and its float64 copy), the structures and reference evaluations, built once."""

    def __init__(self, potential: Potential, structures: StructuresArg = None, *,
                 elements: Optional[Sequence[Union[str, int]]] = None,
                 dtype: Optional[torch.dtype] = torch.float64,
                 rtol: Optional[float] = None, atol: Optional[float] = None, fd_step: float = 1e-5,
                 fd_points: int = 6, fd_rtol: float = FD_RTOL, fd_atol: float = FD_ATOL, skin: float = 0.7,
                 nn_distance: Optional[float] = None, seed: int = 0, cutoff_order: int = 1):
        if not isinstance(potential, Potential):
            raise TypeError(f"check_potential needs an atomsim Potential, got {type(potential).__name__}")
        if not potential.cutoff > 0:
            raise ValueError(f"{type(potential).__name__}.cutoff must be > 0 Å, got {potential.cutoff}")
        self.name = type(potential).__name__
        self.original = potential
        self.elements = _pick_elements(potential, elements)
        self._structures = structures
        self.nn_distance, self.seed = nn_distance, seed
        self._pot: Dict[torch.dtype, Potential] = {}
        self.dtype = potential.dtype if dtype is None else dtype
        base = AGREEMENT_TOLERANCE.get(self.dtype, AGREEMENT_TOLERANCE[torch.float32])
        self.tol = (base[0] if rtol is None else rtol, base[1] if atol is None else atol)
        self.fd_step, self.fd_points, self.fd_tol = float(fd_step), int(fd_points), (fd_rtol, fd_atol)
        self.skin = float(skin)
        if int(cutoff_order) < 1:
            raise ValueError(f"cutoff_order must be >= 1 (continuous energy), got {cutoff_order}")
        self.cutoff_order = int(cutoff_order)
        self.cutoff = float(potential.cutoff)
        self.radius = self.cutoff + self.skin  # what the engine's neighbor list reaches
        self.layers = max(int(getattr(potential, "receptive_field", 1)), 1)
        self._built: Optional[Dict[str, Atoms]] = None
        self._refs: Dict[str, Tuple[tuple, _Eval]] = {}
        self._trimer: Optional[dict] = None

    # lazily built, shared by all checks
    def potential(self, dtype: Optional[torch.dtype] = None) -> Potential:
        dtype = self.dtype if dtype is None else dtype
        if dtype not in self._pot:
            self._pot[dtype] = _cast(self.original, dtype)
        return self._pot[dtype]

    @property
    def structures(self) -> Dict[str, Atoms]:
        if self._built is None:
            if self._structures is None:
                self._built = default_structures(self.elements, self.cutoff, self.nn_distance, self.seed)
            else:
                self._built = _as_structures(self._structures)
            if not self._built:
                raise ValueError("check_potential: no structures")
        return self._built

    def reference(self, name: str) -> Tuple[tuple, _Eval]:
        """(edges at cutoff + skin, evaluation in the check dtype) of a structure."""
        if name not in self._refs:
            atoms = self.structures[name]
            edges = _atoms_edges(atoms, self.radius, self.original.device)
            self._refs[name] = edges, _eval_atoms(self.potential(), atoms, self.radius, edges)
        return self._refs[name]

    def _fd_reference(self, name: str) -> Tuple[tuple, _Eval]:
        """(edges, float64 evaluation) for the finite-difference checks."""
        if self.dtype == torch.float64:
            return self.reference(name)
        atoms = self.structures[name]
        edges = _atoms_edges(atoms, self.radius, self.original.device)
        return edges, _eval_atoms(self.potential(torch.float64), atoms, self.radius, edges)

    # ------------------------------------------------------------------------------ checks --
    def check_forces(self) -> List[CheckResult]:
        """Forces = -dE/dx by central differences of the energy (float64, list held fixed)."""
        pot = self.potential(torch.float64)
        rng = np.random.default_rng(self.seed)
        out = []
        h, (rtol, atol) = self.fd_step, self.fd_tol
        for name, atoms in self.structures.items():
            edges, ref = self._fd_reference(name)
            n = len(atoms)
            fmax = float(np.abs(ref.forces[:n]).max()) if n else 0.0
            if not fmax > 1e-5:
                out.append(CheckResult("forces", name, False, fmax, 1e-5,
                                       f"all forces below 1e-5 eV/Å (max {fmax:.3g}): nothing to compare; "
                                       "use less symmetric structures"))
                continue
            noise = 10 * np.finfo(np.float64).eps * max(1.0, abs(ref.energy)) / h  # rounding of E in the FD
            points = []
            for flat in rng.choice(3 * n, size=min(self.fd_points, 3 * n), replace=False):
                a, c = divmod(int(flat), 3)

                def energy_at(d, a=a, c=c, atoms=atoms, edges=edges):
                    pos = atoms.positions.copy()
                    pos[a, c] += d
                    return _evaluate(pot, pos, atoms.cell.array, atoms.numbers, edges).energy

                points.append((*_fd_point(energy_at, h, -1.0, float(ref.forces[a, c]), rtol, atol, noise), a, c))
            err, limit, fd, f, a, c = max(points, key=lambda p: p[0] / p[1])
            out.append(CheckResult("forces", name, err <= limit, err, limit,
                                   f"|F - F_fd| at atom {a} {'xyz'[c]}: F = {f:.10g}, F_fd = {fd:.10g} eV/Å "
                                   f"(step {h:g} Å, rtol {rtol:g}, atol {atol:g})"))
        return out

    def check_virial(self) -> List[CheckResult]:
        """Virial = dE/d(strain) by central differences of a homogeneous symmetric strain (float64)."""
        pot = self.potential(torch.float64)
        out = []
        h, (rtol, atol) = self.fd_step, self.fd_tol
        rng = np.random.default_rng(self.seed)
        pairs = [(a, b) for a in range(3) for b in range(a, 3)]
        for name, atoms in self.structures.items():
            edges, ref = self._fd_reference(name)  # integer shifts stay valid under a tiny strain
            vmax = float(np.abs(ref.virial).max())
            if not vmax > 1e-6:
                out.append(CheckResult("virial", name, False, vmax, 1e-6,
                                       f"virial below 1e-6 eV (max {vmax:.3g}): nothing to compare"))
                continue
            noise = 10 * np.finfo(np.float64).eps * max(1.0, abs(ref.energy)) / h
            points = []
            for k in sorted(rng.choice(len(pairs), size=min(self.fd_points, len(pairs)), replace=False)):
                a, b = pairs[k]

                def energy_at(d, a=a, b=b, atoms=atoms, edges=edges):
                    deform = np.eye(3)
                    deform[a, b] += 0.5 * d
                    deform[b, a] += 0.5 * d
                    return _evaluate(pot, atoms.positions @ deform, atoms.cell.array @ deform,
                                     atoms.numbers, edges).energy

                points.append((*_fd_point(energy_at, h, 1.0, float(ref.virial[a, b]), rtol, atol, noise), a, b))
            err, limit, fd, v, a, b = max(points, key=lambda p: p[0] / p[1])
            out.append(CheckResult("virial", name, err <= limit, err, limit,
                                   f"|W - dE/d(strain)| at {'xyz'[a]}{'xyz'[b]}: W = {v:.10g}, "
                                   f"FD = {fd:.10g} eV (strain step {h:g}, rtol {rtol:g}, atol {atol:g})"))
        return out

    def _trimer_case(self) -> dict:
        """Three atoms: 0-1 and 1-2 well inside the cutoff, 0-2 just inside or just outside it.

        The 0-2 pair's share of the energy and forces is the full result minus the same
        geometry with the 0-2 edges deleted from the graph: it must vanish as the pair
        reaches the cutoff from inside, and be exactly zero outside.
        """
        if self._trimer is None:
            pot, rc = self.potential(), self.cutoff
            zs = [self.elements[k % len(self.elements)] for k in range(3)]
            u = np.array([np.cos(np.pi / 6), np.sin(np.pi / 6), 0.0])

            def share(r: float) -> Tuple[_Eval, _Eval]:
                atoms = Atoms(numbers=zs, positions=[[0, 0, 0], [0.55 * rc, 0, 0], r * u], pbc=False)
                i, j, S = _atoms_edges(atoms, self.radius, self.original.device)
                keep = ~(((i == 0) & (j == 2)) | ((i == 2) & (j == 0)))
                full = _eval_atoms(pot, atoms, self.radius, (i, j, S))
                cut = _eval_atoms(pot, atoms, self.radius, (i[keep], j[keep], S[keep]))
                return full, cut

            self._trimer = {"inside": {d: share(rc - d) for d in (0.3,) + CUTOFF_DELTAS},
                            "outside": share(rc + CUTOFF_DELTAS[-1])}
        return self._trimer

    def _jump_result(self, check: str, what: str, unit: str, q: str, order: int) -> CheckResult:
        t = self._trimer_case()

        def part(pair: Tuple[_Eval, _Eval]) -> float:
            full, cut = pair
            return float(np.abs(np.asarray(getattr(full, q)) - np.asarray(getattr(cut, q))).max())

        far, j1, j2 = (part(t["inside"][d]) for d in (0.3,) + CUTOFF_DELTAS)
        d1, d2 = CUTOFF_DELTAS
        scale = float(np.abs(np.asarray(getattr(t["inside"][d2][0], q))).max())
        floor = 100 * float(torch.finfo(self.dtype).eps) * max(1.0, scale)  # rounding of two evaluations
        need = 10.0**order / CUTOFF_MARGIN
        history = (f"{what} share of the pair at cutoff - delta ({self.cutoff:g} Å): {far:.3g} {unit} "
                   f"at 0.3 Å, {j1:.3g} at {d1:g} Å, {j2:.3g} at {d2:g} Å")
        if not far > floor:
            return CheckResult(check, "trimer", False, far, floor,
                               f"{history}: no share even 0.3 Å inside, nothing to compare (is `cutoff` "
                               "larger than the model's range?)")
        limit = max(floor, j1 / need)
        return CheckResult(check, "trimer", bool(j2 <= limit), j2, limit,
                           f"{history} (must shrink {need:g}x per 10x closer, like delta^{order}, or stay "
                           f"below rounding {floor:.3g})")

    def check_cutoff(self) -> List[CheckResult]:
        """Pairs beyond the cutoff contribute nothing; the energy is continuous at the cutoff."""
        out = []
        for name, atoms in self.structures.items():
            _, ref = self.reference(name)
            exact = _eval_atoms(self.potential(), atoms, self.cutoff)
            out += _compare("cutoff/skin", name, exact, ref, len(atoms), self.tol,
                            f"with a list at exactly the cutoff vs cutoff + skin {self.skin:g} Å")
        full, cut = self._trimer_case()["outside"]
        out += _compare("cutoff/skin", "trimer", full, cut, 3, self.tol,
                        f"with a pair {CUTOFF_DELTAS[-1]:g} Å outside the cutoff, its edges in the graph "
                        "vs deleted")
        out.append(self._jump_result("cutoff/energy", "energy", "eV", "energies", self.cutoff_order))
        return out

    def check_smooth_cutoff(self) -> List[CheckResult]:
        """Forces are continuous at the cutoff too (what energy conservation in MD needs)."""
        return [self._jump_result("smooth_cutoff", "force", "eV/Å", "forces", max(self.cutoff_order - 1, 1))]

    def check_invariance(self) -> List[CheckResult]:
        """Rotation, translation (with wrapping) and permutation of atoms leave the physics unchanged."""
        pot = self.potential()
        rng = np.random.default_rng(self.seed + 1)
        out = []
        for name, atoms in self.structures.items():
            _, ref = self.reference(name)
            n = len(atoms)
            q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
            q = q * np.sign(np.linalg.det(q))  # a proper rotation
            rot = atoms.copy()
            rot.set_cell(atoms.cell.array @ q.T, scale_atoms=False)
            rot.positions = atoms.positions @ q.T
            r = _eval_atoms(pot, rot, self.radius)
            rotated_back = _Eval(r.energy, r.energies, r.forces @ q, q.T @ r.virial @ q)
            out += _compare("invariance/rotation", name, rotated_back, ref, n, self.tol)
            tr = atoms.copy()
            tr.positions += rng.normal(scale=0.3 * self.cutoff, size=3)
            if tr.pbc.any():
                tr.wrap()
            moved = _eval_atoms(pot, tr, self.radius)
            out += _compare("invariance/translation", name, moved, ref, n, self.tol)
            perm = rng.permutation(n)
            p = _eval_atoms(pot, atoms[perm], self.radius)
            permuted_ref = _Eval(ref.energy, ref.energies[perm], ref.forces[perm], ref.virial)
            out += _compare("invariance/permutation", name, p, permuted_ref, n, self.tol)
        return out

    def check_ghosts(self) -> List[CheckResult]:
        """``graph.refresh_ghosts`` per layer, as ``engine/parallel_forces.py`` needs it.

        Count: every force call must call the hook at least ``receptive_field - 1`` times
        (between layers); the engine refuses fewer. Effect: the engine's per-layer scheme,
        emulated on one process (ghost copies of periodic images, edges only into owned
        atoms, the hook copying owners' features to ghosts for its first
        ``receptive_field - 1`` calls and doing nothing after), must reproduce the
        periodic result; with ``receptive_field == 1`` the ghosts also get edges among
        themselves (the full halo), whose energies must not count.
        """
        pot = self.potential()
        out = []
        need = self.layers - 1
        name = next(iter(self.structures))
        atoms = self.structures[name]
        calls = []

        def counting(h):
            calls.append(tuple(h.shape))
            return h

        edges, _ = self.reference(name)
        _eval_atoms(pot, atoms, self.radius, edges, hook=counting)
        missing = float(max(need - len(calls), 0))
        out.append(CheckResult("ghosts/count", name, len(calls) >= need, missing, 0.0,
                               f"calls missing: graph.refresh_ghosts called {len(calls)} time(s) per force "
                               f"call; receptive_field {self.layers} needs >= {need} (one between layers)"))
        periodic = [k for k, a in self.structures.items() if a.pbc.any()]
        if not periodic:
            out.append(CheckResult("ghosts/per-layer", "-", True, 0.0, 0.0, "no periodic structure: skipped"))
        for name in periodic:
            out.append(self._per_layer(name, need))
        return out

    def _per_layer(self, name: str, need: int) -> CheckResult:
        atoms = self.structures[name]
        (i, j, S), ref = self.reference(name)
        i, j, S = i.cpu().numpy(), j.cpu().numpy(), S.cpu().numpy()
        n, cell = len(atoms), atoms.cell.array
        ghost_of: Dict[tuple, int] = {}
        owner: List[int] = []
        ghost_pos = []
        senders = np.empty(len(i), dtype=np.int64)
        for e, (jj, s) in enumerate(zip(j.tolist(), map(tuple, S.tolist()))):
            if s == (0, 0, 0):
                senders[e] = jj
                continue
            if (jj, s) not in ghost_of:
                ghost_of[(jj, s)] = n + len(owner)
                owner.append(jj)
                ghost_pos.append(atoms.positions[jj] + np.array(s) @ cell)
            senders[e] = ghost_of[(jj, s)]
        if not owner:
            return CheckResult("ghosts/per-layer", name, True, 0.0, 0.0, "no periodic images: nothing to do")
        pos = np.vstack([atoms.positions, np.array(ghost_pos)])
        numbers = np.concatenate([atoms.numbers, atoms.numbers[owner]])
        recv = [i]
        send = [senders]
        if self.layers == 1:  # full halo: ghosts are receivers too, their energies must not count
            gi, gj, _ = _edges(pos[n:], np.zeros((3, 3)), [False] * 3, self.radius, self.original.device)
            recv.append(gi.cpu().numpy() + n)
            send.append(gj.cpu().numpy() + n)
        recv, send = np.concatenate(recv), np.concatenate(send)
        order = np.argsort(recv, kind="stable")
        edges = (torch.from_numpy(recv[order]), torch.from_numpy(send[order]),
                 torch.zeros((len(order), 3), dtype=torch.int64))
        owner_t = torch.as_tensor(owner, dtype=torch.int64, device=self.potential().device)
        calls = []

        def refresh(h):
            calls.append(1)
            if len(calls) > need:  # the engine exchanges only between layers
                return h
            return torch.cat([h[:n], h.index_select(0, owner_t)])

        g = _evaluate(self.potential(), pos, np.zeros((3, 3)), numbers, edges, n_local=n, hook=refresh)
        folded = g.forces[:n].copy()
        np.add.at(folded, np.array(owner), g.forces[n:])
        how = f"with {len(owner)} explicit ghosts ({len(calls)} refresh call(s)) vs periodic"
        got = _Eval(g.energy, g.energies, folded, g.virial)
        results = _compare("ghosts/per-layer", name, got, ref, n, self.tol, how)
        return max(results, key=lambda r: (not r.passed, r.error / max(r.tolerance, 1e-300)))

    def check_species(self) -> List[CheckResult]:
        """An element outside ``species`` raises ValueError naming it, up front and when evaluated."""
        species = self.original.species
        known = set(int(z) for z in species)
        z_bad = next(z for z in range(1, len(chemical_symbols)) if z not in known)
        sym = chemical_symbols[z_bad]
        z_ok = self.elements[0] if self.elements[0] in known else min(known)
        d = 0.5 * self.cutoff
        atoms = Atoms(numbers=[z_ok, z_bad], positions=[[0, 0, 0], [d, 0, 0]], pbc=False)
        pattern = re.compile(rf"\b{re.escape(sym)}\b")
        out = []
        for where, call in (("check_species", lambda: self.original.check_species(atoms.numbers)),
                            ("evaluation", lambda: _eval_atoms(self.potential(), atoms, self.radius))):
            try:
                call()
            except ValueError as exc:
                ok = bool(pattern.search(str(exc)))
                detail = f"{where} raised ValueError {'naming' if ok else 'NOT naming'} {sym}: {exc}"
            except Exception as exc:  # noqa: BLE001  (any other error is a failure, reported)
                ok, detail = False, f"{where} raised {type(exc).__name__} instead of ValueError: {exc}"
            else:
                ok, detail = False, f"{where} accepted {sym} (Z={z_bad}), which is not in species"
            pair = f"{chemical_symbols[z_ok]}{sym}"
            out.append(CheckResult(f"species/{where}", pair, ok, float(not ok), 0.0, detail))
        return out

    def run(self, checks: Iterable[str], report: ConformanceReport) -> None:
        for check in checks:
            if check not in CHECKS:
                raise ValueError(f"unknown conformance check {check!r}; choose from {', '.join(CHECKS)}")
            if check == "species" and self.original.species is None:
                report.skipped[check] = "species is None (the potential accepts every element)"
                continue
            report.results += getattr(self, f"check_{check}")()


# ------------------------------------------------------------------------------------ entry --
def check_potential(potential: Potential, structures: StructuresArg = None, *,
                    checks: Sequence[str] = CHECKS, elements: Optional[Sequence[Union[str, int]]] = None,
                    dtype: Optional[torch.dtype] = torch.float64, rtol: Optional[float] = None,
                    atol: Optional[float] = None, fd_step: float = 1e-5, fd_points: int = 6,
                    fd_rtol: float = FD_RTOL, fd_atol: float = FD_ATOL, skin: float = 0.7,
                    nn_distance: Optional[float] = None, seed: int = 0, cutoff_order: int = 1,
                    raise_on_failure: bool = True) -> ConformanceReport:
    """Check ``potential`` against the contract the engine relies on; raise AssertionError on failure.

    Checks (``checks``; see docs/bring_your_own_model.md for each tolerance):

    - ``forces``: forces equal central differences of the energy (float64 copy,
      ``fd_points`` coordinates per structure, step ``fd_step`` Å).
    - ``virial``: the virial equals the strain derivative of the energy (float64,
      min(``fd_points``, 6) strain components).
    - ``cutoff``: pairs past the cutoff (the list's skin) change nothing, and a pair's share
      of the energy vanishes like delta^``cutoff_order`` as it reaches the cutoff.
    - ``smooth_cutoff``: its share of the forces vanishes too (like delta^max(order - 1, 1)).
    - ``invariance``: rotation, translation and permutation.
    - ``ghosts``: ``graph.refresh_ghosts`` between layers, reproducing the periodic result
      with explicit ghost atoms as the MPI per-layer halo does.
    - ``species``: an unknown element raises ValueError naming it (skipped if ``species`` is None).

    ``structures``: dict name -> Atoms, a list of Atoms, or a callable returning either;
    default :func:`default_structures` from ``elements`` (default: up to three of the
    potential's species). Everything except the finite differences runs in ``dtype``
    (default float64, on a cast copy; None: the potential's own) with the agreement
    tolerance ``rtol``/``atol`` of that dtype (``AGREEMENT_TOLERANCE``); the finite
    differences use ``fd_rtol``/``fd_atol``. ``skin`` is the neighbor-list skin the graphs
    carry beyond the cutoff, as in MD. ``raise_on_failure=False`` only returns the report.
    """
    kit = _Kit(potential, structures, elements=elements, dtype=dtype, rtol=rtol, atol=atol, fd_step=fd_step,
               fd_points=fd_points, fd_rtol=fd_rtol, fd_atol=fd_atol, skin=skin, nn_distance=nn_distance,
               seed=seed, cutoff_order=cutoff_order)
    report = ConformanceReport(kit.name)
    kit.run(checks, report)
    if raise_on_failure:
        report.raise_on_failure()
    return report


def conformance_tests(factory: Callable[[], Potential], structures: StructuresArg = None, *,
                      checks: Sequence[str] = CHECKS, **options) -> Callable[[str], None]:
    """A pytest test function, parametrized over ``checks``, for a plugin's test module::

        test_conformance = conformance_tests(lambda: load_potential("my-model"))

    pytest collects it under the name it is assigned to (one test per check); the
    factory and the structures are built once, at the first test that runs.
    Options are those of :func:`check_potential`.
    """
    import pytest

    state: Dict[str, _Kit] = {}

    def kit() -> _Kit:
        if "kit" not in state:
            state["kit"] = _Kit(factory(), structures, **options)
        return state["kit"]

    @pytest.mark.parametrize("check", list(checks))
    def test_conformance(check: str) -> None:
        k = kit()
        report = ConformanceReport(k.name)
        k.run([check], report)
        if check in report.skipped:
            pytest.skip(report.skipped[check])
        report.raise_on_failure()

    return test_conformance
