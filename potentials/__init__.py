"""Potentials: the plugin interface, the registry and the built-in models."""
from .base import Potential, PotentialOutput, evaluate_potential
from .registry import available_potentials, load_potential, register_potential

__all__ = ["Potential", "PotentialOutput", "evaluate_potential", "load_potential",
           "register_potential", "available_potentials"]
