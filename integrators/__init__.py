"""Integrators and ensembles behind one interface (see base.Integrator)."""
from .base import Integrator, integrator_kwargs, make_integrator, register_integrator

__all__ = ["Integrator", "integrator_kwargs", "make_integrator", "register_integrator"]
