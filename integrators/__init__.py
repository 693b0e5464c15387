"""Integrators and ensembles behind one interface (see base.Integrator)."""
from .base import Integrator, make_integrator, register_integrator

__all__ = ["Integrator", "make_integrator", "register_integrator"]
