"""Label diverse small structures with an ASE calculator (EMT by default) for training.

Why this mix: a potential used for MD must see equilibrium crystals, compressed
and stretched lattices, chemical disorder, defects, surfaces and thermal
disorder, or it extrapolates silently. Every structure is small (1-40 atoms)
so labelling and training stay cheap on a laptop CPU.

EMT covers Al, Cu, Ag, Au, Ni, Pd, Pt well; its H, C, N, O parameters are
meant for those atoms dissolved in metals and describe bulk H/C/N/O badly, so
they are left out of the default element set.

Beyond EMT/LJ: ``calculator`` may name any atomsim potential (``sevennet-0`` from the
atomsim-sevenn plugin, a bundled model, a checkpoint folder), which labels through
:class:`atomsim.calculator.AtomsimCalculator`; ``generator="table"`` builds structures across
the periodic table (atomsim/training/table_structures.py); :func:`student_md_snapshots` is the
active-learning step (MD run by a student model, snapshots re-labelled by the teacher).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
from ase import Atoms
from ase.build import bulk, fcc100, fcc110, fcc111
from ase.calculators.calculator import Calculator, all_changes
from ase.data import atomic_numbers, reference_states

EMT_METALS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")
KINDS = ("crystal", "alloy", "vacancy", "surface", "rattled", "md")


ASE_CALCULATORS = ("emt", "lj")
# potentials that live in a separate plugin package: name -> (module, install command)
PLUGINS = {"sevennet-0": ("atomsim_sevenn", "pip install -e plugins/atomsim-sevenn"),
           "7net-0": ("atomsim_sevenn", "pip install -e plugins/atomsim-sevenn")}


def make_calculator(name: str, device: str = "cpu", dtype: Optional[str] = None):
    """An ASE calculator by name: 'emt', 'lj' (ASE's own) or any atomsim potential name or checkpoint.

    atomsim potentials (the registry: bundled models, plugins such as ``sevennet-0``, a checkpoint
    folder) run through :class:`atomsim.calculator.AtomsimCalculator` (float64 unless ``dtype``).
    """
    key = str(name).strip().lower()
    if key == "emt":
        from ase.calculators.emt import EMT

        return EMT()
    if key == "lj":
        from ase.calculators.lj import LennardJones

        return LennardJones()
    if key in PLUGINS:
        import importlib.util

        module, install = PLUGINS[key]
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"--calculator {name}: the plugin that provides it ({module}) is not installed; "
                             f"install it with: {install}")
    from atomsim.potentials.registry import available_potentials

    try:
        return PotentialCalculator(name, device=device, dtype=dtype)
    except ValueError as exc:
        if "unknown potential" in str(exc):
            raise ValueError(f"--calculator {name!r}: not an ASE calculator ({', '.join(ASE_CALCULATORS)}), an "
                             f"atomsim potential ({', '.join(available_potentials())}) or a checkpoint "
                             f"folder") from None
        raise


class PotentialCalculator(Calculator):
    """An atomsim potential (by name or checkpoint) as an ASE calculator, for labelling and student MD.

    The engine's SerialForces (list with skin, reused between MD steps), as the ASE front end
    (atomsim/calculator.py) uses; training code may not import that front end (tests/test_layout.py).
    float64 unless ``dtype``: labels should not carry float32 round-off.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model: str, device: str = "cpu", dtype: Optional[str] = None, skin: float = 1.0):
        import torch

        from atomsim.kernels.dtypes import resolve_device, torch_dtype
        from atomsim.potentials.registry import load_potential

        Calculator.__init__(self)
        self.device = torch.device(resolve_device(device))
        self.potential = load_potential(model).to(self.device).to(torch_dtype(dtype or "float64")).eval()
        self.skin = float(skin)
        self.parameters.update(model=str(model))
        self._forces = None

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        import torch
        from ase.stress import full_3x3_to_voigt_6_stress

        from atomsim.engine.forces import SerialForces
        from atomsim.engine.state import MDState

        Calculator.calculate(self, atoms, properties or self.implemented_properties, system_changes)
        at = self.atoms
        if self._forces is None or "numbers" in system_changes or "pbc" in system_changes:
            self.potential.check_species(at.numbers)
            self._forces = SerialForces(self.potential, skin=self.skin)
        n, f64, dev = len(at), torch.float64, self.device
        state = MDState(positions=torch.tensor(at.positions, dtype=f64, device=dev),
                        velocities=torch.zeros((n, 3), dtype=f64, device=dev),
                        masses=torch.ones(n, dtype=f64, device=dev),
                        numbers=torch.as_tensor(at.numbers, dtype=torch.int64, device=dev),
                        ids=torch.arange(n, device=dev), cell=torch.as_tensor(at.cell.array, dtype=f64, device=dev),
                        pbc=tuple(bool(p) for p in at.pbc), n_atoms_global=n)
        periodic = at.cell.rank == 3
        out = self._forces.compute(state, virial=periodic)
        self.results["energy"] = self.results["free_energy"] = float(out.energy)
        self.results["forces"] = out.forces.detach().to(f64).cpu().numpy()
        if periodic:
            self.results["stress"] = full_3x3_to_voigt_6_stress(out.virial.detach().cpu().numpy() / at.get_volume())


def calculator_elements(calc) -> Optional[list[str]]:
    """Element symbols an atomsim calculator's potential covers (None: any / not an atomsim potential)."""
    from ase.data import chemical_symbols

    species = getattr(getattr(calc, "potential", None), "species", None)
    return None if species is None else [chemical_symbols[int(z)] for z in sorted(species)]


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


def generate_structures(n: int, seed: int = 0, elements: Optional[Sequence[str]] = EMT_METALS,
                        calculator: Union[str, object] = "emt", generator: str = "metals",
                        stats: Optional[dict] = None) -> Iterator[Atoms]:
    """Yield ``n`` labelled structures (energy, forces, stress on a SinglePointCalculator).

    ``generator``: "metals" (fcc/bcc/hcp metals and alloys, EMT's range) or "table" (the periodic
    table, atomsim/training/table_structures.py; structures whose atoms overlap or whose labels
    fail the sanity limits are skipped and counted in ``stats``). ``elements`` None: every element
    the calculator's potential covers. ``calculator``: a name for :func:`make_calculator` or an
    ASE calculator.
    """
    calc = make_calculator(calculator) if isinstance(calculator, str) else calculator
    if elements is None:
        elements = calculator_elements(calc)
        if elements is None:
            raise ValueError("elements: required for this calculator (it does not list the elements it covers)")
    elements = list(elements)
    unknown = [e for e in elements if e not in atomic_numbers]
    if unknown:
        raise ValueError(f"elements: unknown symbol(s) {unknown}")
    if isinstance(calculator, str) and calculator.lower() == "emt":
        from ase.calculators.emt import parameters as emt_parameters

        bad = [e for e in elements if e not in emt_parameters]
        if bad:
            raise ValueError(f"elements: EMT has no parameters for {', '.join(bad)}; "
                             f"it covers {' '.join(emt_parameters)}")
    covered = calculator_elements(calc)
    if covered is not None and set(elements) - set(covered):
        raise ValueError(f"elements: the calculator does not cover {', '.join(sorted(set(elements) - set(covered)))}")
    if generator == "table":
        yield from _table_structures(n, seed, elements, calc, stats if stats is not None else {})
        return
    if generator != "metals":
        raise ValueError(f"--generator {generator!r}: use 'metals' or 'table'")
    rng = np.random.default_rng(seed)
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
            yield _label(at, calc, kind, check=False)
            made += 1


def _count(stats: dict, key: str) -> None:
    stats[key] = stats.get(key, 0) + 1


def _table_structures(n: int, seed: int, elements: Sequence[str], calc, stats: dict) -> Iterator[Atoms]:
    """Jobs 0, 1, 2, ... of the periodic-table generator until ``n`` structures are labelled."""
    from ase import units

    from .table_structures import TableGenerator, too_close

    gen = TableGenerator(elements, seed)
    made, job = 0, 0
    while made < n:
        at, ct, md, rng = gen.job(job)
        job += 1
        if at is None:
            _count(stats, "empty")
            continue
        if too_close(at):
            _count(stats, "rejected_close")
            continue
        extra = {"gen_id": job - 1, **{k: at.info[k] for k in ("proto", "family", "layers", "vacancy_source",
                                                               "rattle_sigma") if k in at.info}}
        labelled = _label(at, calc, ct, extra)
        if labelled is None:
            _count(stats, "rejected_label_outlier")
            continue
        if md is None:
            yield labelled
            made += 1
            continue
        # short Langevin run driven by the teacher; its start is only a sanity check here
        timestep = (0.5 if "H" in at.get_chemical_symbols() else 1.0) * units.fs
        extra.update(md_T=round(md["temperature_K"], 1), md_source=md["source"])
        for step, snap in _langevin_frames(at, calc, md["temperature_K"], timestep, md["steps"], md["every"], rng):
            if snap is None:
                _count(stats, "md_stopped")
                break
            frame = _label(snap, calc, ct, dict(extra, md_step=step))
            if frame is None:
                _count(stats, "rejected_label_outlier")
                break
            yield frame
            made += 1
            if made >= n:
                return


RUNAWAY_DISPLACEMENT = 10.0  # Å: an MD atom this far from its start ends the trajectory


def _langevin_frames(atoms: Atoms, calc, temperature_K: float, timestep: float, steps: int, every: int,
                     rng: np.random.Generator) -> Iterator[tuple[int, Optional[Atoms]]]:
    """(step, snapshot) every ``every`` steps of Langevin MD with ``calc``; (step, None) ends a bad run.

    A run ends (None) when atoms overlap, positions stop being finite or an atom moved more than
    RUNAWAY_DISPLACEMENT: the model driving it has left the physical region.
    """
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from .table_structures import too_close

    at = atoms.copy()
    at.calc = calc
    MaxwellBoltzmannDistribution(at, temperature_K=temperature_K, rng=rng)
    dyn = Langevin(at, timestep=timestep, temperature_K=temperature_K, friction=0.01 / units.fs, rng=rng,
                   fixcm=False)
    start = at.positions.copy()
    step = 0
    while step + every <= steps:
        dyn.run(every)
        step += every
        moved = at.positions - start
        if not np.all(np.isfinite(moved)) or np.abs(moved).max() > RUNAWAY_DISPLACEMENT or too_close(at):
            yield step, None
            return
        snap = Atoms(at.numbers, positions=at.positions, cell=at.cell, pbc=at.pbc)
        snap.wrap()
        yield step, snap


def _label(atoms: Atoms, calc, kind: str, extra: Optional[dict] = None,
           check: bool = True) -> Optional[Atoms]:
    """A copy labelled by ``calc``; None when ``check`` and the labels fail the sanity limits."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from .table_structures import label_outlier

    atoms = atoms.copy()
    atoms.calc = calc
    e = float(atoms.get_potential_energy())
    f = np.array(atoms.get_forces(), dtype=float)
    s = atoms.get_stress(voigt=False) if all(atoms.pbc) else None
    atoms.calc = None
    if check and label_outlier(len(atoms), e, f, s):
        return None
    res = {"energy": e, "forces": f}
    if s is not None:
        res["stress"] = s
    atoms.calc = SinglePointCalculator(atoms, **res)
    atoms.info["config_type"] = kind
    atoms.info.update(extra or {})
    return atoms


def write_dataset(path: str | Path, n: int, seed: int = 0, elements: Optional[Sequence[str]] = EMT_METALS,
                  calculator: Union[str, object] = "emt", progress: Callable[[int], None] | None = None,
                  generator: str = "metals", append: bool = False, stats: Optional[dict] = None) -> int:
    """Generate and write ``n`` structures to an extxyz file (appended if ``append``); returns the count.

    Frames are written as they are labelled, so an interrupted run keeps what it made.
    """
    from ase.io import write

    made = 0
    with open(path, "a" if append else "w") as fh:
        for at in generate_structures(n, seed, elements, calculator, generator=generator, stats=stats):
            write(fh, at, format="extxyz")
            fh.flush()
            made += 1
            if progress is not None:
                progress(made)
    return made


# ------------------------------------------------------------------ active learning --
def student_md_snapshots(
    starts: Sequence[Atoms], student: Union[str, object], teacher: Union[str, object], *, seed: int = 0,
    steps: int = 200, every: int = 50, temperatures: Sequence[float] = (300.0, 600.0, 1000.0),
    timestep_fs: Optional[float] = None, rounds: int = 1, config_type: str = "md_student",
    progress: Callable[[int, int], None] | None = None, stats: Optional[dict] = None,
) -> Iterator[tuple[int, Atoms, dict]]:
    """The active-learning step: MD with the STUDENT, snapshots re-labelled by the TEACHER.

    For each start structure (k) and round (r), a Langevin run of ``steps`` steps at a
    temperature drawn from ``temperatures`` (its generator: ``default_rng([seed, k, r])``) is
    driven by the student (an atomsim potential name / checkpoint, or an ASE calculator); every
    ``every`` steps the snapshot is labelled by the teacher and yielded as (round, frame, errors)
    with the student's errors on it (per-atom energy and force component MAE, eV and eV/Å).
    Round r > 0 continues the run from where round r - 1 ended. Where the student breaks the
    structure (overlapping atoms, runaway atoms) the run ends: the frames before it are the
    student's failure modes the teacher has labelled. Timestep default: 1 fs, 0.5 fs with H.
    """
    from ase import units

    stats = stats if stats is not None else {}
    s_calc = make_calculator(student) if isinstance(student, str) else student
    student_name = student if isinstance(student, str) else str(getattr(s_calc, "parameters", {}).get(
        "model", type(s_calc).__name__))
    t_calc = make_calculator(teacher) if isinstance(teacher, str) else teacher
    covered = calculator_elements(s_calc)
    for k, at in enumerate(starts):
        if covered is not None:
            missing = sorted(set(at.get_chemical_symbols()) - set(covered))
            if missing:
                raise ValueError(f"start structure {k} ({at.get_chemical_formula()}): the student does not cover "
                                 f"{', '.join(missing)}")
        if not all(at.pbc):
            raise ValueError(f"start structure {k} ({at.get_chemical_formula()}): must be periodic in x, y, z")
    total = len(starts) * rounds * (steps // every)
    done = 0
    for k, start in enumerate(starts):
        current = Atoms(start.numbers, positions=start.positions, cell=start.cell, pbc=True)
        for r in range(rounds):
            rng = np.random.default_rng([int(seed), k, r])
            temp = float(rng.choice(np.asarray(temperatures, dtype=float)))
            dt = timestep_fs if timestep_fs is not None else (0.5 if "H" in current.get_chemical_symbols() else 1.0)
            last = None
            for step, snap in _langevin_frames(current, s_calc, temp, dt * units.fs, steps, every, rng):
                if snap is None:
                    _count(stats, "md_stopped")
                    break
                extra = {"al_round": r, "al_start": k, "md_T": temp, "md_step": step, "md_student": student_name}
                frame = _label(snap, t_calc, config_type, extra)
                done += 1
                if progress is not None:
                    progress(done, total)
                if frame is None:
                    _count(stats, "rejected_label_outlier")
                    break
                last = snap
                yield r, frame, _student_errors(frame, s_calc)
            if last is None:
                break  # the student broke this structure at once: no later round starts from it
            current = last
    if progress is not None:
        progress(total, total)


def _student_errors(frame: Atoms, s_calc) -> dict:
    at = Atoms(frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
    at.calc = s_calc
    e_s, f_s = float(at.get_potential_energy()), np.asarray(at.get_forces())
    e_t, f_t = float(frame.get_potential_energy()), np.asarray(frame.get_forces())
    return {"n_atoms": len(frame), "energy_abs_err_per_atom": abs(e_s - e_t) / len(frame),
            "force_abs_err_sum": float(np.abs(f_s - f_t).sum()), "force_components": int(f_t.size)}


def round_errors(rows: Sequence[tuple[int, dict]]) -> dict[int, dict]:
    """Per round: frames, energy MAE (meV/atom) and force MAE (meV/Å) of the student against the teacher."""
    out: dict[int, dict] = {}
    for r, err in rows:
        acc = out.setdefault(r, {"frames": 0, "_e": 0.0, "_f": 0.0, "_n": 0})
        acc["frames"] += 1
        acc["_e"] += err["energy_abs_err_per_atom"]
        acc["_f"] += err["force_abs_err_sum"]
        acc["_n"] += err["force_components"]
    for acc in out.values():
        acc["energy_mae_meV_per_atom"] = 1000.0 * acc.pop("_e") / acc["frames"]
        acc["force_mae_meV_per_A"] = 1000.0 * acc.pop("_f") / max(acc.pop("_n"), 1)
    return out


def read_structures(path: str | Path) -> list[Atoms]:
    """All frames of a structure file (extxyz read through lzma for .xz: ASE on the .xz path is slow)."""
    from io import StringIO

    from ase.io import read

    p = str(path)
    if not Path(p).is_file():
        raise ValueError(f"--start: no such file {p}")
    if p.endswith(".xz"):
        import lzma

        with lzma.open(p, "rt") as fh:
            return read(StringIO(fh.read()), index=":", format="extxyz")
    return read(p, index=":")


# ------------------------------------------------------------------------------- CLI --
def add_arguments(p) -> None:
    """The options of `atomsim datagen` (atomsim/cli.py calls this)."""
    p.add_argument("--calculator", default="emt",
                   help="teacher that labels: emt, lj, or an atomsim potential name / checkpoint folder "
                        "(e.g. sevennet-0 from the atomsim-sevenn plugin)")
    p.add_argument("--n", type=int, default=None,
                   help="structures to label (default 2000), or with --student and no --start: start structures "
                        "to generate (default 8)")
    p.add_argument("-o", "--output", default="data.extxyz", help="extxyz file to write")
    p.add_argument("--append", action="store_true", help="append to --output instead of overwriting it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--elements", default=None,
                   help="comma-separated element symbols, or 'all' (every element the teacher covers); "
                        "default: Al,Cu,Ag,Au,Ni,Pd,Pt for emt/lj, all for an atomsim potential")
    p.add_argument("--generator", choices=("metals", "table"), default=None,
                   help="metals: fcc/bcc/hcp metals and alloys; table: crystals, compounds, alloys, perovskites, "
                        "slabs, vacancies and MD across the periodic table (default: metals for emt/lj, else table)")
    al = p.add_argument_group("active learning (MD with a student, snapshots labelled by the teacher)")
    al.add_argument("--student", default=None,
                    help="atomsim potential name or checkpoint folder that drives the MD; switches to this mode")
    al.add_argument("--start", default=None,
                    help="structures to start from (any ASE-readable file, .extxyz.xz too); default: --n "
                         "structures from the generator, unlabelled")
    al.add_argument("--md-steps", type=int, default=200, help="Langevin steps per run and round")
    al.add_argument("--snapshot-every", type=int, default=50, help="steps between labelled snapshots")
    al.add_argument("--temperatures", default="300,600,1000", help="K, comma-separated; one drawn per run")
    al.add_argument("--timestep", type=float, default=None, help="fs (default 1, 0.5 with H)")
    al.add_argument("--rounds", type=int, default=1, help="MD segments per start, each continuing the last")
    al.add_argument("--config-type", default="md_student", help="config_type of the written snapshots")


def _elements_arg(text: Optional[str], calculator: str) -> Optional[list[str]]:
    if text is None:
        return list(EMT_METALS) if calculator.lower() in ASE_CALCULATORS else None
    if text.strip().lower() == "all":
        return None
    out = [e.strip() for e in text.split(",") if e.strip()]
    bad = [e for e in out if e not in atomic_numbers]
    if bad:
        raise ValueError(f"--elements: unknown element symbol(s) {', '.join(bad)}")
    return out


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"--{name}: must be >= 1, got {value}")


def cli_main(args) -> int:
    """`atomsim datagen`: generate + label, or the active-learning step with --student."""
    import json

    from rich.progress import Progress

    if args.n is None:
        args.n = 2000 if args.student is None else 8
    _positive("n", args.n)
    elements = _elements_arg(args.elements, args.calculator)
    generator = args.generator or ("metals" if args.calculator.lower() in ASE_CALCULATORS else "table")
    teacher = make_calculator(args.calculator)
    stats: dict = {}
    if args.student is None:
        with Progress() as bar:
            task = bar.add_task(f"labelling with {args.calculator}", total=args.n)
            n = write_dataset(args.output, args.n, seed=args.seed, elements=elements, calculator=teacher,
                              progress=lambda k: bar.update(task, completed=k), generator=generator,
                              append=args.append, stats=stats)
        print(f"wrote {n} structures to {args.output}" + (f" (skipped: {stats})" if stats else ""))
        return 0
    for name in ("md_steps", "snapshot_every", "rounds"):
        _positive(name.replace("_", "-"), getattr(args, name))
    if args.snapshot_every > args.md_steps:
        raise ValueError(f"--snapshot-every ({args.snapshot_every}) exceeds --md-steps ({args.md_steps})")
    try:
        temperatures = [float(t) for t in args.temperatures.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--temperatures: comma-separated numbers (K) expected, got {args.temperatures!r}") from None
    if not temperatures or min(temperatures) <= 0:
        raise ValueError(f"--temperatures: positive values (K) expected, got {args.temperatures!r}")
    student = make_calculator(args.student)
    if args.start is not None:
        starts = read_structures(args.start)
    else:
        if elements is None:
            covered_s, covered_t = calculator_elements(student), calculator_elements(teacher)
            elements = sorted(set(covered_s or covered_t or []) & set(covered_t or covered_s or []),
                              key=lambda e: atomic_numbers[e])
        starts = [_unlabelled(at) for at in _start_structures(args.n, args.seed, elements, generator)]
    from ase.io import write

    errors = []
    with Progress() as bar, open(args.output, "a" if args.append else "w") as fh:
        task = bar.add_task(f"MD with {args.student}, labels by {args.calculator}", total=None)
        for r, frame, err in student_md_snapshots(
                starts, student, teacher, seed=args.seed, steps=args.md_steps, every=args.snapshot_every,
                temperatures=temperatures, timestep_fs=args.timestep, rounds=args.rounds,
                config_type=args.config_type, stats=stats,
                progress=lambda k, total: bar.update(task, completed=k, total=total)):
            write(fh, frame, format="extxyz")
            fh.flush()
            errors.append((r, err))
    per_round = round_errors(errors)
    for r, row in sorted(per_round.items()):
        print(f"round {r}: {row['frames']} snapshots, student vs teacher: E MAE {row['energy_mae_meV_per_atom']:.2f} "
              f"meV/atom, F MAE {row['force_mae_meV_per_A']:.1f} meV/Å")
    report = {"student": args.student, "teacher": args.calculator, "starts": len(starts), "seed": args.seed,
              "rounds": {str(k): v for k, v in sorted(per_round.items())}, "stopped_or_rejected": stats}
    Path(str(args.output) + ".al.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {len(errors)} snapshots to {args.output}" + (f" (runs ended early: {stats})" if stats else ""))
    return 0


def _unlabelled(atoms: Atoms) -> Atoms:
    return Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)


def _start_structures(n: int, seed: int, elements: Sequence[str], generator: str) -> list[Atoms]:
    """``n`` unlabelled start structures (no teacher call): the generator's non-MD jobs."""
    if generator == "table":
        from .table_structures import TableGenerator, too_close

        gen = TableGenerator(elements, seed)
        out, job = [], 0
        while len(out) < n:
            at, _, md, _ = gen.job(job)
            job += 1
            if at is not None and md is None and not too_close(at):
                out.append(at)
        return out
    rng = np.random.default_rng(seed)
    return [(_alloy(rng, elements) if rng.random() < 0.5 else _crystal(rng, elements, 0.05)) for _ in range(n)]
