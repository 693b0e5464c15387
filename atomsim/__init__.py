"""atomsim: molecular dynamics with graph-neural-network interatomic potentials."""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["AtomsimCalculator", "load_potential", "Simulation", "__version__"]


def __getattr__(name):  # lazy: `import atomsim` stays cheap for the CLI
    if name == "AtomsimCalculator":
        from atomsim.calculator import AtomsimCalculator

        return AtomsimCalculator
    if name == "load_potential":
        from atomsim.potentials.registry import load_potential

        return load_potential
    if name == "Simulation":
        from atomsim.engine.simulation import Simulation

        return Simulation
    raise AttributeError(f"module 'atomsim' has no attribute {name!r}")
