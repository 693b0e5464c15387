"""The input file's schema (pydantic): every key, its unit, default and bounds.

Unknown keys are errors; the CLI turns validation errors into one message that
names the key and the fix (see engine/errors.py).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Literal, Optional, Union, get_origin

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Lattices ase.build.bulk builds, and which of them have a cubic / orthorhombic cell.
LATTICES = (
    "sc", "fcc", "bcc", "hcp", "diamond", "zincblende", "rocksalt", "cesiumchloride",
    "fluorite", "wurtzite", "tetragonal", "bct", "rhombohedral", "orthorhombic", "mcl",
)
CUBIC_LATTICES = ("sc", "fcc", "bcc", "diamond", "zincblende", "rocksalt", "cesiumchloride", "fluorite")
ORTHORHOMBIC_LATTICES = CUBIC_LATTICES[:-1] + ("hcp", "wurtzite")
_LATTICE_ONLY = ("symbols", "a", "b", "c", "alpha", "cubic", "orthorhombic")


def _check_element(symbol: str, key: str) -> str:
    from ase.data import chemical_symbols

    from .errors import suggest

    if symbol not in chemical_symbols[1:]:
        raise ValueError(
            f"unknown element {symbol!r} in `{key}`;{suggest(symbol, chemical_symbols[1:]) or ''} "
            f"use a chemical symbol such as Cu, Ar or Na (capital first letter)"
        )
    return symbol


def split_symbols(symbols: str) -> List[str]:
    """'NaCl' -> ['Na', 'Cl'], 'Cu2O' -> ['Cu', 'Cu', 'O'] (ASE's formula parsing)."""
    from ase.symbols import string2symbols

    try:
        return list(string2symbols(symbols))
    except Exception:
        raise ValueError(
            f"cannot read {symbols!r} as a chemical formula; write element symbols such as Cu or NaCl"
        ) from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StructureConfig(_Strict):
    """A file ase.io.read reads, or a lattice built with ase.build.bulk; then repeat, alloy, vacuum."""

    file: Optional[str] = Field(None, description="structure file read by ase.io.read (relative to the input file)")
    index: Union[int, str] = Field(-1, description="frame of `file` to use (ase.io.read index)")
    format: Optional[str] = Field(None, description="ase.io format if not guessed from the file name")
    lattice: Optional[str] = Field(None, description="crystal structure for ase.build.bulk: " + ", ".join(LATTICES))
    symbols: Optional[str] = Field(None, description="element(s) of the lattice, e.g. Cu or NaCl")
    a: Optional[float] = Field(None, gt=0, le=100, description="lattice constant a, Å (default: ASE reference data)")
    b: Optional[float] = Field(None, gt=0, le=100, description="lattice constant b, Å (orthorhombic, mcl)")
    c: Optional[float] = Field(None, gt=0, le=100, description="lattice constant c, Å (hcp, wurtzite, tetragonal, ...)")
    alpha: Optional[float] = Field(None, gt=0, lt=180, description="lattice angle, degrees (rhombohedral, mcl)")
    cubic: Optional[bool] = Field(None, description="conventional cubic cell (default: where the lattice has one)")
    orthorhombic: Optional[bool] = Field(
        None, description="orthorhombic cell (default: for hcp/wurtzite, which have no cubic cell)"
    )
    repeat: List[int] = Field(default_factory=lambda: [1, 1, 1], description="supercell [nx, ny, nz] (or one integer)")
    alloy: Dict[str, float] = Field(
        default_factory=dict, description="random substitution {element: fraction of the alloy_site sites}"
    )
    alloy_site: Optional[str] = Field(
        None, description="element whose sites the alloy substitutes (default: the only element present)"
    )
    vacuum_A: Optional[float] = Field(
        None, ge=0, le=1000,
        description="vacuum on each side along z, Å (periodicity kept, as ASE's center(vacuum=); see pbc)"
    )
    pbc: Optional[List[bool]] = Field(
        None, description="periodicity [x, y, z] (or one bool), applied last (default: the structure's own)"
    )

    @field_validator("pbc", mode="before")
    @classmethod
    def _pbc_scalar(cls, value):
        return [value] * 3 if isinstance(value, bool) else value

    @field_validator("pbc")
    @classmethod
    def _pbc(cls, value):
        if value is not None and len(value) != 3:
            raise ValueError(f"must be three booleans [x, y, z] (or one), e.g. [true, true, false]; got {value}")
        return value

    @field_validator("lattice")
    @classmethod
    def _known_lattice(cls, value):
        from .errors import suggest

        if value is not None and value not in LATTICES:
            hint = suggest(value, LATTICES)
            raise ValueError(f"unknown lattice {value!r};{hint} supported: {', '.join(LATTICES)}")
        return value

    @field_validator("symbols")
    @classmethod
    def _known_symbols(cls, value):
        if value is not None:
            elements = split_symbols(value)
            if not elements:
                raise ValueError("is empty; give the element(s) of the lattice, e.g. Cu or NaCl")
            for el in elements:
                _check_element(el, "system.structure.symbols")
        return value

    @field_validator("repeat", mode="before")
    @classmethod
    def _repeat_scalar(cls, value):
        return [value] * 3 if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("repeat")
    @classmethod
    def _repeat(cls, value):
        if len(value) != 3 or any(r < 1 for r in value):
            raise ValueError(f"must be three integers >= 1, e.g. [4, 4, 4]; got {value}")
        if value[0] * value[1] * value[2] > 10**8:
            raise ValueError(f"{value} makes more than 1e8 copies of the cell; use a smaller repeat")
        return value

    @field_validator("alloy_site")
    @classmethod
    def _site(cls, value):
        return None if value is None else _check_element(value, "system.structure.alloy_site")

    @field_validator("alloy")
    @classmethod
    def _alloy(cls, value):
        for el, frac in value.items():
            _check_element(el, "system.structure.alloy")
            if not 0 < frac <= 1:
                raise ValueError(f"fraction of {el} is {frac}; each fraction must be in (0, 1]")
        total = sum(value.values())
        if total > 1 + 1e-9:
            raise ValueError(
                f"fractions sum to {total:g} > 1 ({', '.join(f'{k}: {v:g}' for k, v in value.items())}); "
                "they are fractions of the substituted sites, so they must sum to at most 1"
            )
        return value

    @model_validator(mode="after")
    def _one_source(self):
        if (self.file is None) == (self.lattice is None):
            raise ValueError(
                "give exactly one of `system.structure.file` (a structure file) or "
                "`system.structure.lattice` (with `symbols`, e.g. lattice: fcc, symbols: Cu)"
            )
        if self.file is not None:
            extra = [k for k in _LATTICE_ONLY if getattr(self, k) is not None]
            if extra:
                raise ValueError(
                    f"`system.structure.{extra[0]}` applies to a built lattice, not to a structure "
                    f"file; remove it or drop `file`"
                )
            return self
        if not self.symbols:
            raise ValueError("`system.structure.symbols` is required with a lattice (e.g. symbols: Cu)")
        if self.cubic and self.orthorhombic:
            raise ValueError("set only one of `system.structure.cubic` and `system.structure.orthorhombic`")
        if self.cubic and self.lattice not in CUBIC_LATTICES:
            raise ValueError(
                f"`system.structure.cubic`: lattice {self.lattice!r} has no cubic cell; set cubic: false "
                f"(or orthorhombic: true where it has one: {', '.join(ORTHORHOMBIC_LATTICES)})"
            )
        if self.orthorhombic and self.lattice not in ORTHORHOMBIC_LATTICES + ("orthorhombic",):
            raise ValueError(
                f"`system.structure.orthorhombic`: lattice {self.lattice!r} has no orthorhombic cell; "
                "set orthorhombic: false"
            )
        distinct = sorted(set(split_symbols(self.symbols)))
        if self.alloy and self.alloy_site is None and len(distinct) > 1:
            raise ValueError(
                f"`system.structure.alloy_site` is required: the lattice has {', '.join(distinct)}; "
                "say whose sites the alloy substitutes (e.g. alloy_site: " + distinct[0] + ")"
            )
        if self.alloy_site is not None and self.alloy_site not in distinct:
            raise ValueError(
                f"`system.structure.alloy_site` = {self.alloy_site!r} is not in the lattice "
                f"({', '.join(distinct)}); use one of those"
            )
        return self

    def use_cubic(self) -> bool:
        """Whether to build the cubic cell (explicit value, else: where the lattice has one)."""
        if self.cubic is not None:
            return self.cubic
        return self.lattice in CUBIC_LATTICES and not self.orthorhombic

    def use_orthorhombic(self) -> bool:
        """Whether to build the orthorhombic cell (explicit value, else: hcp/wurtzite)."""
        if self.orthorhombic is not None:
            return self.orthorhombic
        return not self.use_cubic() and self.cubic is None and self.lattice in ("hcp", "wurtzite")


class SystemConfig(_Strict):
    structure: StructureConfig
    temperature_K: float = Field(300.0, ge=0, le=1e5, description="initial Maxwell-Boltzmann temperature, K")
    seed: int = Field(1, ge=0, description="seed of velocities and thermostat noise")
    velocities: Literal["auto", "from_file", "maxwell_boltzmann"] = Field(
        "auto", description="initial velocities: the file's momenta (auto: when it has them) or "
        "Maxwell-Boltzmann at temperature_K")

    @model_validator(mode="after")
    def _velocities_need_a_file(self):
        if self.velocities == "from_file" and self.structure.file is None:
            raise ValueError("`system.velocities` = 'from_file' needs `system.structure.file`; a built lattice "
                             "has no velocities (use auto or maxwell_boltzmann)")
        return self


class PotentialConfig(_Strict):
    model: str = Field("default", description="bundled pretrained name, a checkpoint file, `lj`, or a plugin")
    params: dict = Field(default_factory=dict, description="model-specific parameters")
    dtype: Literal["float32", "float64", "bfloat16"] = Field("float32", description="model precision")
    device: str = Field("auto", description="auto (CUDA when available, else CPU), cpu, cuda or cuda:N")

    @field_validator("device")
    @classmethod
    def _device_name(cls, value):
        import re

        from .errors import suggest

        key = value.strip().lower()
        if key in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", key):
            return key
        raise ValueError(f"unknown device {value!r};{suggest(key, ('auto', 'cpu', 'cuda')) or ''} "
                         "use auto, cpu, cuda or cuda:N (N: the GPU index, e.g. cuda:1)")


class DynamicsConfig(_Strict):
    integrator: Literal["nve", "langevin", "nose-hoover", "npt", "berendsen", "fire"] = Field(
        "nve", description="time integrator / ensemble"
    )
    timestep_fs: float = Field(1.0, gt=0, le=10, description="timestep, fs (0 < dt <= 10)")
    steps: int = Field(1000, ge=0, description="number of steps")
    temperature_K: Optional[float] = Field(
        None, ge=0, le=1e5, description="thermostat target, K (default: system.temperature_K); "
        "[start, stop] ramps it (same as temperature_stop_K)")
    temperature_stop_K: Optional[float] = Field(
        None, ge=0, le=1e5, description="thermostat target at the last step, K: a ramp linear in the step "
        "from temperature_K (LAMMPS fix nvt temp Tstart Tstop)")
    tdamp_fs: float = Field(100.0, gt=0, description="thermostat time constant, fs")
    max_force_eV_per_A: float = Field(1000.0, gt=0,
                                      description="force limit, eV/Å: the run stops when any force exceeds it")
    # ensembles (integrators/): thermostat chain, barostat, minimiser, constraints
    chain_length: int = Field(3, ge=1, le=20, description="Nose-Hoover chain length (nose-hoover, npt)")
    pressure_GPa: Optional[Union[float, List[float], List[List[float]]]] = Field(
        None, description="target pressure, GPa: a number; [px, py, pz] (barostat: anisotropic); 3x3 (triclinic). "
        "npt: default 0; berendsen: unset = NVT only; fire + relax_cell: the pV term")
    pressure_stop_GPa: Optional[Union[float, List[float], List[List[float]]]] = Field(
        None, description="target pressure at the last step, GPa, same shape as pressure_GPa: a ramp linear "
        "in the step from pressure_GPa (npt, berendsen)")
    pdamp_fs: float = Field(1000.0, gt=0, description="barostat time constant, fs")
    barostat: Literal["isotropic", "anisotropic", "triclinic"] = Field(
        "isotropic", description="npt cell freedom: volume only, three cell lengths, or the full cell")
    compressibility_per_GPa: float = Field(0.01, gt=0, description="berendsen barostat: about 1/bulk modulus, 1/GPa")
    fmax_eV_per_A: float = Field(0.05, gt=0, description="fire: converged when every force is below this, eV/Å")
    relax_cell: bool = Field(False, description="fire: relax the cell too (at pressure_GPa, default 0)")
    remove_com: bool = Field(True, description="zero the centre-of-mass velocity (nose-hoover, npt, berendsen)")
    fix: "FixConfig" = Field(default_factory=lambda: FixConfig(),
                             description="atoms held fixed (e.g. the bottom of a slab)")
    deform: Optional["DeformConfig"] = Field(
        None, description="deform the box at constant strain rates (LAMMPS fix deform erate, remap x)")

    @model_validator(mode="before")
    @classmethod
    def _temperature_pair(cls, data):
        """``temperature_K: [start, stop]`` is shorthand for temperature_K + temperature_stop_K."""
        if isinstance(data, dict) and isinstance(data.get("temperature_K"), (list, tuple)):
            pair = data["temperature_K"]
            if len(pair) != 2:
                raise ValueError(f"`dynamics.temperature_K` must be a number or [start, stop] in K; "
                                 f"got {pair}")
            if data.get("temperature_stop_K") is not None:
                raise ValueError("give the ramp once: `dynamics.temperature_K: [start, stop]` or "
                                 "`temperature_K` + `temperature_stop_K`, not both")
            data = {**data, "temperature_K": pair[0], "temperature_stop_K": pair[1]}
        return data

    @model_validator(mode="after")
    def _ramp_shapes(self):
        if self.pressure_stop_GPa is not None:
            if self.pressure_GPa is None:
                raise ValueError("`dynamics.pressure_stop_GPa` needs `dynamics.pressure_GPa` (where the ramp "
                                 "starts, GPa)")
            if _shape(self.pressure_stop_GPa) != _shape(self.pressure_GPa):
                raise ValueError(f"`dynamics.pressure_stop_GPa` = {self.pressure_stop_GPa} must have the "
                                 f"shape of `dynamics.pressure_GPa` = {self.pressure_GPa} (a number, "
                                 "[px, py, pz] or 3x3)")
        if self.deform is not None:
            t_ps = self.steps * self.timestep_fs * 1e-3
            for axis, rate in zip("xyz", self.deform.erate_per_ps):
                if 1.0 + rate * t_ps <= 0.0:
                    raise ValueError(f"`dynamics.deform.erate_per_ps` = {rate} along {axis} shrinks the "
                                     f"box to nothing within the run ({t_ps:g} ps: 1 + erate t <= 0); use a "
                                     "smaller rate or fewer steps")
        return self

    def ensemble_problems(self, key: str = "dynamics") -> List[str]:
        """Ramps and deformation the chosen integrator cannot honour, each naming its key (under ``key``)."""
        out = []
        thermostats = ("langevin", "nose-hoover", "npt", "berendsen")
        if self.temperature_stop_K is not None and self.integrator not in thermostats:
            out.append(f"`{key}.temperature_stop_K`: a temperature ramp needs a thermostat "
                       f"(integrator: {', '.join(thermostats)}); {self.integrator!r} has none")
        barostat = self.integrator == "npt" or (
            self.integrator == "berendsen" and self.pressure_GPa is not None)
        if self.pressure_stop_GPa is not None and not barostat:
            out.append(f"`{key}.pressure_stop_GPa`: a pressure ramp needs a barostat (integrator: npt, or "
                       f"berendsen with pressure_GPa); {self.integrator!r} has none")
        moves_cell = barostat or (self.integrator == "fire" and self.relax_cell)
        if self.deform is not None and moves_cell:
            out.append(f"`{key}.deform`: cannot be combined with a barostat or cell relaxation "
                       f"(integrator {self.integrator!r} moves the cell itself); use nve, langevin, "
                       "nose-hoover or berendsen without pressure_GPa")
        return out

    @field_validator("pressure_GPa", "pressure_stop_GPa")
    @classmethod
    def _pressure_shape(cls, value):
        if isinstance(value, list) and not (
            len(value) == 3 and (all(isinstance(v, (int, float)) for v in value)
                                 or all(isinstance(r, list) and len(r) == 3 for r in value))
        ):
            raise ValueError(f"must be a number, [px, py, pz] or a 3x3 list (GPa); got {value}")
        return value


def _shape(value) -> tuple:
    """(), (3,) or (3, 3) of a validated pressure value."""
    return (len(value),) + _shape(value[0]) if isinstance(value, list) else ()


class DeformConfig(_Strict):
    """Box deformation at constant engineering strain rates: L(t) = L0 (1 + erate t), atoms remapped."""

    erate_per_ps: List[float] = Field(
        description="[ex, ey, ez], 1/ps: strain rate of each cell vector's length (0: left alone)")

    @field_validator("erate_per_ps")
    @classmethod
    def _three(cls, value):
        if len(value) != 3:
            raise ValueError(f"must be three rates [ex, ey, ez] in 1/ps, e.g. [0.1, 0, 0]; got {value}")
        if any(abs(r) > 100 for r in value):
            raise ValueError(f"rates must be within [-100, 100] 1/ps; got {value}")
        return value


class FixConfig(_Strict):
    indices: List[int] = Field(default_factory=list, description="0-based indices of atoms held fixed")
    z_range_A: Optional[List[float]] = Field(
        None, description="[z_min, z_max], Å: atoms in this slab at the start are held fixed")

    @field_validator("z_range_A")
    @classmethod
    def _range(cls, value):
        if value is not None and (len(value) != 2 or value[0] > value[1]):
            raise ValueError(f"must be [z_min, z_max] with z_min <= z_max, Å; got {value}")
        return value


DynamicsConfig.model_rebuild()


class NeighborConfig(_Strict):
    skin: float = Field(1.0, ge=0, le=10, description="Verlet skin, Å")
    check_every: Union[Literal["auto"], int] = Field(
        "auto", description="host reads of the skin and blow-up checks (engine/device_checks.py): 1 = every "
        "step; N > 1 = reduced on the device and read every N steps and at output steps, replaying from the "
        "last verified step when one failed (same trajectory); auto: 1 on CPU, 20 on a GPU")

    @field_validator("check_every", mode="before")
    @classmethod
    def _check_every(cls, value):
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError(f"must be 'auto' or an integer >= 1 (steps between host reads); got {value!r}")


class ParallelConfig(_Strict):
    grid: Union[Literal["auto"], List[int]] = Field("auto", description="MPI rank grid: auto or [nx, ny, nz]")
    halo: Literal["per-layer", "full"] = Field("per-layer", description="ghost-atom scheme for message passing")
    threads: Union[Literal["auto"], int] = Field(
        "auto", description="threads per rank for torch, numba and BLAS alike (kernels/threads.py): "
        "an integer >= 1, or auto: OMP_NUM_THREADS if set, else the cores this process may use divided "
        "by the ranks on the node, at most one per 1000 atoms of a rank")

    @field_validator("threads", mode="before")
    @classmethod
    def _threads(cls, value):
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError(f"must be 'auto' or an integer >= 1 (threads per rank); got {value!r}")

    @field_validator("grid", mode="before")
    @classmethod
    def _grid_word(cls, value):
        if isinstance(value, str) and value != "auto":
            raise ValueError(f"must be 'auto' or three integers >= 1, e.g. [2, 1, 1]; got {value!r}")
        return value

    @field_validator("grid")
    @classmethod
    def _grid(cls, value):
        if value != "auto" and (len(value) != 3 or any(g < 1 for g in value)):
            raise ValueError(f"must be 'auto' or three integers >= 1, e.g. [2, 1, 1]; got {value}")
        return value


class OutputConfig(_Strict):
    directory: str = Field("run", min_length=1, description="output directory (relative to the working directory)")
    thermo_every: int = Field(10, ge=1, description="thermo line and thermo.csv row every N steps")
    trajectory_every: int = Field(100, ge=0, description="trajectory frame every N steps (0: none)")
    restart_every: int = Field(500, ge=0, description="restart file every N steps (0: none)")
    progress: bool = Field(True, description="show a progress bar")
    trajectory_format: Literal["extxyz", "traj", "h5md"] = Field(
        "extxyz", description="trajectory file: trajectory.extxyz, trajectory.traj (ASE) or "
        "trajectory.h5md (H5MD)")
    parallel: Literal["auto", "gather", "sharded"] = Field(
        "auto", description="restarts and trajectory frames of a multi-rank run: sharded (one file per "
        "rank + a manifest; `atomsim convert` merges them), gather (one file, via rank 0: small runs), "
        "auto (sharded on more than one rank)")
    per_atom: List[Literal["energies", "stresses"]] = Field(
        default_factory=lambda: ["energies"],
        description="per-atom quantities in trajectory frames: energies (eV), stresses "
        "(virial / volume, eV/Å^3)")

    @field_validator("per_atom", mode="before")
    @classmethod
    def _per_atom_word(cls, value):
        return [value] if isinstance(value, str) else value

    @field_validator("per_atom")
    @classmethod
    def _per_atom_once(cls, value):
        return list(dict.fromkeys(value))


class RelaxConfig(_Strict):
    """A geometry optimisation with ASE's optimizers and filters (atomsim/relax.py)."""

    optimizer: Literal["bfgs", "lbfgs", "fire"] = Field("bfgs",
                                                        description="ASE optimizer: BFGS, LBFGS or FIRE")
    fmax_eV_per_A: float = Field(0.05, gt=0, le=100, description="converged when every force (and, with "
                                 "cell: true, every row of the cell's generalised force) is below this, eV/Å")
    smax_GPa: Optional[float] = Field(None, gt=0, le=100, description="with cell: true, also converged only "
                                      "when every component of stress + pressure is below this, GPa")
    steps: int = Field(1000, ge=1, le=10**7,
                       description="most optimizer steps; not converged by then: exit status 4")
    cell: bool = Field(False, description="relax the cell too (ASE FrechetCellFilter)")
    pressure_GPa: float = Field(0.0, ge=-1000, le=1000, description="external pressure with cell: true, GPa "
                                "(FrechetCellFilter scalar_pressure)")
    fix_symmetry: bool = Field(False,
                               description="keep the starting space group (ASE FixSymmetry, needs spglib)")
    symprec: float = Field(0.01, gt=0, le=1, description="spglib tolerance for fix_symmetry, Å")
    maxstep_A: Optional[float] = Field(None, gt=0, le=5, description="largest atom move per step, Å "
                                       "(default: the optimizer's own, 0.2)")
    trajectory: bool = Field(True, description="write every step to relax.traj (ASE trajectory)")

    @model_validator(mode="after")
    def _cell_only(self):
        if not self.cell:
            for key, default in (("smax_GPa", None), ("pressure_GPa", 0.0)):
                if getattr(self, key) != default:
                    raise ValueError(f"`relax.{key}` applies to cell relaxation; set `relax.cell: true` "
                                     "or remove it")
        return self


_STAGE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$"


class StageConfig(_Strict):
    """One stage of a multi-stage run: MD with its own dynamics/output, or a relaxation (engine/stages.py).

    The base ``dynamics`` and ``output`` sections are merged under the stage's own keys before validation
    (RunConfig._merge_stages), so every stage holds complete sections.
    """

    name: Optional[str] = Field(None, pattern=_STAGE_NAME, description="stage name (default: `relax` or the "
                                "integrator); its files go to <output.directory>/stage<k>_<name>")
    relax: Optional[RelaxConfig] = Field(None, description="make this stage a relaxation (ASE optimizer)")
    dynamics: Optional[DynamicsConfig] = Field(None, description="this stage's dynamics: the base `dynamics` "
                                               "with these keys replaced; `steps` is this stage's length")
    output: Optional[OutputConfig] = Field(None, description="this stage's output: the base `output` with "
                                           "these keys replaced; `directory` relative to the base one")

    @model_validator(mode="after")
    def _kind(self):
        if self.relax is not None and self.dynamics is not None:
            raise ValueError("a stage is either a relaxation (`relax:`) or MD (`dynamics:`), not both; "
                             "split it into two stages")
        return self

    @property
    def is_relax(self) -> bool:
        return self.relax is not None


def _merged(base, override):
    """``override`` deep-merged over ``base`` (mappings merge key by key; anything else is replaced)."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return override
    out = dict(base)
    for key, value in override.items():
        out[key] = _merged(base.get(key), value) if isinstance(value, dict) else value
    return out


class RunConfig(_Strict):
    system: SystemConfig
    potential: PotentialConfig = Field(default_factory=PotentialConfig)
    dynamics: DynamicsConfig = Field(default_factory=DynamicsConfig)
    neighbor: NeighborConfig = Field(default_factory=NeighborConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    relax: Optional[RelaxConfig] = Field(None, description="relax the structure instead of MD "
                                         "(`atomsim relax`; or one stage of `stages`)")
    stages: Optional[List[StageConfig]] = Field(None, min_length=1, description="a multi-stage run: each "
                                                "stage starts from the previous stage's final state")

    @model_validator(mode="before")
    @classmethod
    def _merge_stages(cls, data):
        """Complete each stage's ``dynamics``/``output`` from the base sections (the stage's keys win)."""
        if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
            return data
        base_dyn = data.get("dynamics") if isinstance(data.get("dynamics"), dict) else {}
        base_out = data.get("output") if isinstance(data.get("output"), dict) else {}
        base_out = {k: v for k, v in base_out.items() if k != "directory"}
        stages = []
        for k, stage in enumerate(data["stages"], 1):
            if not isinstance(stage, dict):
                stages.append(stage)
                continue
            stage = dict(stage)
            for key in ("relax", "dynamics", "output"):
                if key in stage and stage[key] is None:  # `dynamics:` with no keys: the base section as is
                    stage[key] = {}
            if "relax" not in stage:
                own = stage.get("dynamics", {})
                base = base_dyn
                if isinstance(own, dict) and isinstance(own.get("temperature_K"), (list, tuple)):
                    base = {key: v for key, v in base.items() if key != "temperature_stop_K"}
                stage["dynamics"] = _merged(base, own)
            own_out = stage.get("output", {})
            stage["output"] = _merged(base_out, own_out)
            if isinstance(stage["output"], dict) and "directory" not in stage["output"]:
                name = stage.get("name")
                if name is None:
                    dyn = stage.get("dynamics")
                    name = "relax" if "relax" in stage else (
                        dyn.get("integrator", "nve") if isinstance(dyn, dict) else "md")
                    if isinstance(name, str) and re.fullmatch(_STAGE_NAME, name):
                        stage["name"] = name
                stage["output"]["directory"] = f"stage{k}_{name}"
            stages.append(stage)
        return {**data, "stages": stages}

    @model_validator(mode="after")
    def _one_job(self):
        if self.stages is not None and self.relax is not None:
            raise ValueError("`relax` and `stages` do not go together: make the relaxation a stage "
                             "(stages: [{relax: {...}}, {dynamics: {...}}, ...])")
        problems = []
        if self.stages is None:
            if self.relax is None:
                problems = self.dynamics.ensemble_problems()
        else:
            for k, stage in enumerate(self.stages):
                if stage.dynamics is not None:
                    problems += stage.dynamics.ensemble_problems(f"stages[{k}].dynamics")
        if problems:
            raise ValueError("; ".join(problems))
        return self


# ---------------------------------------------------------------- loading --

RESOLVED_NAME = "resolved_config.yaml"


def _yaml_loader():
    """SafeLoader that rejects duplicate keys and reads 1e-3 as a float (YAML 1.2), not a string."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    # copy the resolver table deeply: PyYAML's add_implicit_resolver would otherwise edit SafeLoader's lists
    Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )

    def mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                from .errors import InputError

                mark = key_node.start_mark
                raise InputError(f"line {mark.line + 1}: key {key!r} appears twice in the same section; keep one")
            seen.add(key)
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


def parse_yaml(text: str, source: str = "<input>"):
    """YAML text -> Python data; syntax errors become InputError with the line and column."""
    import yaml

    from .errors import InputError

    try:
        return yaml.load(text, Loader=_yaml_loader())
    except InputError as exc:
        raise InputError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        started = getattr(exc, "context_mark", None)
        if context and started is not None and (mark is None or started.line != mark.line):
            context += f" that starts at line {started.line + 1}"
        detail = f"{problem} ({context})" if context else problem
        raise InputError(f"{source}:{where}: YAML syntax error: {detail}; check indentation and ':'") from None


def apply_override(data: dict, assignment: str) -> None:
    """Apply one ``--set a.b.c=value`` to the raw input dict (value parsed as YAML).

    The key path is checked against the schema so a typo gets the same
    "did you mean" message as in the file; below free-form mappings
    (``potential.params``, ``system.structure.alloy``) any key is allowed.
    A number indexes a list of sections from 0: ``--set stages.1.dynamics.steps=500``.
    """
    from .errors import InputError, model_at, suggest

    if "=" not in assignment:
        raise InputError(f"--set {assignment!r}: write KEY.PATH=VALUE, e.g. --set dynamics.steps=100")
    path, _, raw = assignment.partition("=")
    parts = [p.strip() for p in path.strip().split(".")]
    if not path.strip() or any(not p for p in parts):
        raise InputError(f"--set {assignment!r}: empty key in {path!r}; write e.g. --set dynamics.steps=100")
    value = parse_yaml(raw, source=f"--set {path}") if raw.strip() else None

    model = RunConfig
    free = False  # inside a free-form mapping
    node = data
    for depth, part in enumerate(parts):
        here = ".".join(parts[: depth + 1])
        last = depth == len(parts) - 1
        if isinstance(node, list):  # an index into a list of sections (stages)
            above = ".".join(parts[:depth])
            if not part.isdigit() or int(part) >= len(node):
                raise InputError(f"--set {path}: `{above}` is a list of {len(node)}; index it with a number "
                                 f"from 0 to {len(node) - 1}, e.g. --set {above}.0.KEY=VALUE")
            if last:
                node[int(part)] = value
                return
            if node[int(part)] is None:
                node[int(part)] = {}
            node = node[int(part)]
            if not isinstance(node, dict):
                raise InputError(f"--set {path}: `{here}` holds {node!r}, not a section of keys")
            continue
        if not free:
            if model is None:
                raise InputError(
                    f"--set {path}: `{'.'.join(parts[:depth])}` is a value, not a section; "
                    f"set it directly, e.g. --set {'.'.join(parts[:depth])}=..."
                )
            if part not in model.model_fields:
                where = ".".join(parts[:depth]) or "the top level"
                raise InputError(
                    f"--set {path}: unknown key `{here}`;{suggest(part, model.model_fields)} "
                    f"valid keys in {where}: {', '.join(model.model_fields)}"
                )
            annotation = model.model_fields[part].annotation
            model = model_at(RunConfig, [int(p) if p.isdigit() else p for p in parts[: depth + 1]])
            free = annotation is dict or get_origin(annotation) is dict
        if last:
            node[part] = value
            return
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, (dict, list)):
            raise InputError(f"--set {path}: `{here}` holds {child!r}, not a section of keys")
        node = child


def _empty_sections(data: dict, model) -> None:
    """A section written with no keys (``dynamics:``) reads as None in YAML; treat it as all defaults."""
    from .errors import _model_in

    for name, field in model.model_fields.items():
        sub = _model_in(field.annotation)
        if sub is None or name not in data:
            continue
        if data[name] is None:
            data[name] = {}
        if isinstance(data[name], dict):
            _empty_sections(data[name], sub)


def _resolve_paths(data: dict, base: Path) -> None:
    """Make structure/model file names relative to the input file's folder absolute."""
    structure = (data.get("system") or {}).get("structure") if isinstance(data.get("system"), dict) else None
    if isinstance(structure, dict) and isinstance(structure.get("file"), str):
        name = Path(structure["file"]).expanduser()
        structure["file"] = str(name if name.is_absolute() else (base / name).resolve())
    potential = data.get("potential")
    if isinstance(potential, dict) and isinstance(potential.get("model"), str):
        name = Path(potential["model"]).expanduser()
        if not name.is_absolute() and (base / name).is_file():
            potential["model"] = str((base / name).resolve())


def load_config(path, overrides: Optional[List[str]] = None) -> "RunConfig":
    """Read, override and validate an input file; every user mistake raises InputError.

    ``overrides`` are ``KEY.PATH=VALUE`` strings (``--set``), values parsed as YAML.
    ``system.structure.file`` and a ``potential.model`` file written in the input
    file are taken relative to its folder (given with ``--set``: relative to the
    working directory); ``output.directory`` relative to the working directory.
    """
    from pydantic import ValidationError

    from .errors import InputError, format_validation_error

    path = Path(path)
    if not path.is_file():
        raise InputError(f"input file {str(path)!r} not found" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read input file {str(path)!r}: {exc}") from None
    data = parse_yaml(text, source=str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: the input file must be a mapping of sections (system:, potential:, ...), "
                         f"not a {type(data).__name__}")
    _resolve_paths(data, path.parent.resolve())  # names in the file: from the file's folder
    for assignment in overrides or []:
        apply_override(data, assignment)
    _empty_sections(data, RunConfig)
    _resolve_paths(data, Path.cwd())  # names given with --set: from the working directory
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"{path}: {format_validation_error(exc, RunConfig)}") from None
    structure = cfg.system.structure
    if structure.file is not None and not Path(structure.file).is_file():
        raise InputError(
            f"{path}: `system.structure.file`: no such file {structure.file!r} "
            "(relative names are taken from the input file's folder)"
        )
    return cfg


def _drop_unset_sections(data: dict, model) -> None:
    """Leave out optional sections that are unset (``relax``, ``stages``, ``dynamics.deform``, ...).

    Written as ``relax: null`` they would read back as an empty section, i.e. one with every default.
    """
    from .errors import _model_in

    for name, field in model.model_fields.items():
        sub = _model_in(field.annotation)
        if sub is None or name not in data:
            continue
        if data[name] is None:
            del data[name]
        elif isinstance(data[name], dict):
            _drop_unset_sections(data[name], sub)
        elif isinstance(data[name], list):
            for item in data[name]:
                if isinstance(item, dict):
                    _drop_unset_sections(item, sub)


def write_resolved_config(cfg: "RunConfig", directory) -> Path:
    """Write the full validated config (defaults filled in) to ``directory/resolved_config.yaml``.

    Written atomically (temp file + rename). Under MPI call it on rank 0 only.
    """
    import os

    import yaml

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / RESOLVED_NAME
    tmp = directory / (RESOLVED_NAME + ".tmp")
    data = cfg.model_dump(mode="json")
    _drop_unset_sections(data, RunConfig)
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
    tmp.write_text("# atomsim: the input as run, every default filled in\n" + body, encoding="utf-8")
    os.replace(tmp, target)
    return target
