"""The input file's schema (pydantic): every key, its unit, default and bounds.

Unknown keys are errors; the CLI turns validation errors into one message that
names the key and the fix (see engine/errors.py).
"""
from __future__ import annotations

from typing import Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StructureConfig(_Strict):
    """A file ase.io.read reads, or a lattice built with ase.build.bulk."""

    file: Optional[str] = Field(None, description="structure file read by ase.io.read")
    index: Union[int, str] = Field(-1, description="frame of `file` to use")
    format: Optional[str] = Field(None, description="ase.io format if not guessed from the name")
    lattice: Optional[str] = Field(None, description="fcc | bcc | hcp | diamond | rocksalt | zincblende | ...")
    symbols: Optional[str] = Field(None, description="element(s) of the lattice, e.g. Cu or NaCl")
    a: Optional[float] = Field(None, gt=0, le=100, description="lattice constant, Å")
    c: Optional[float] = Field(None, gt=0, le=100, description="hcp c, Å")
    cubic: bool = Field(True, description="conventional cubic cell")
    repeat: List[int] = Field(default_factory=lambda: [1, 1, 1], description="supercell [nx, ny, nz]")
    alloy: Dict[str, float] = Field(default_factory=dict, description="random substitution {element: fraction}")
    vacuum_A: Optional[float] = Field(None, ge=0, description="vacuum added along z (makes a slab, pbc z off)")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.file is None) == (self.lattice is None):
            raise ValueError("give exactly one of system.structure.file or system.structure.lattice")
        if self.lattice is not None and not self.symbols:
            raise ValueError("system.structure.symbols is required with a lattice (e.g. symbols: Cu)")
        if len(self.repeat) != 3 or any(r < 1 for r in self.repeat):
            raise ValueError("system.structure.repeat must be three integers >= 1, e.g. [4, 4, 4]")
        return self


class SystemConfig(_Strict):
    structure: StructureConfig
    temperature_K: float = Field(300.0, ge=0, le=1e5, description="initial Maxwell-Boltzmann temperature, K")
    seed: int = Field(1, ge=0, description="seed of velocities and thermostat noise")


class PotentialConfig(_Strict):
    model: str = Field("default", description="bundled pretrained name, a checkpoint file, `lj`, or a plugin")
    params: dict = Field(default_factory=dict, description="model-specific parameters")
    dtype: Literal["float32", "float64", "bfloat16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"


class DynamicsConfig(_Strict):
    integrator: Literal["nve", "langevin", "nose-hoover", "npt", "berendsen", "fire"] = "nve"
    timestep_fs: float = Field(1.0, gt=0, le=10, description="timestep, fs (0 < dt <= 10)")
    steps: int = Field(1000, ge=0, description="number of steps")
    temperature_K: Optional[float] = Field(None, ge=0, le=1e5, description="thermostat target, K (default: system.temperature_K)")
    tdamp_fs: float = Field(100.0, gt=0, description="thermostat time constant, fs")
    max_force_eV_per_A: float = Field(1000.0, gt=0, description="stop when any force exceeds this, eV/Å")


class NeighborConfig(_Strict):
    skin: float = Field(1.0, ge=0, le=10, description="Verlet skin, Å")


class ParallelConfig(_Strict):
    grid: Union[Literal["auto"], List[int]] = "auto"
    halo: Literal["per-layer", "full"] = "per-layer"

    @model_validator(mode="after")
    def _grid(self):
        if self.grid != "auto" and (len(self.grid) != 3 or any(g < 1 for g in self.grid)):
            raise ValueError("parallel.grid must be 'auto' or three integers >= 1, e.g. [2, 1, 1]")
        return self


class OutputConfig(_Strict):
    directory: str = "run"
    thermo_every: int = Field(10, ge=1)
    trajectory_every: int = Field(100, ge=0, description="0 disables the trajectory")
    restart_every: int = Field(500, ge=0, description="0 disables restart files")
    progress: bool = True


class RunConfig(_Strict):
    system: SystemConfig
    potential: PotentialConfig = Field(default_factory=PotentialConfig)
    dynamics: DynamicsConfig = Field(default_factory=DynamicsConfig)
    neighbor: NeighborConfig = Field(default_factory=NeighborConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
