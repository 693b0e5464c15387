"""Potential registry: built-in names, checkpoint files, and entry-point plugins.

Third-party packages register a factory under the entry-point group
``atomsim.potentials``; the factory takes keyword params and returns a Potential.
"""
from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable, Dict

from .base import Potential

_FACTORIES: Dict[str, Callable[..., Potential]] = {}


def register_potential(name: str, factory: Callable[..., Potential]) -> None:
    _FACTORIES[name.lower()] = factory


def _builtin_factories() -> Dict[str, Callable[..., Potential]]:
    from . import lj  # noqa: F401  (registers "lj")
    try:
        from . import pretrained  # noqa: F401  (registers bundled models, "default")
    except ImportError:
        pass
    return _FACTORIES


def _plugin_factories() -> Dict[str, Callable[..., Potential]]:
    found = {}
    for ep in entry_points(group="atomsim.potentials"):
        found[ep.name.lower()] = ep
    return found


def available_potentials() -> list[str]:
    return sorted(set(_builtin_factories()) | set(_plugin_factories()))


def load_potential(name_or_path: str, **params) -> Potential:
    """A bundled/built-in name, a plugin name, or a checkpoint path."""
    key = str(name_or_path).lower()
    factories = _builtin_factories()
    if key in factories:
        return factories[key](**params)
    plugins = _plugin_factories()
    if key in plugins:
        return plugins[key].load()(**params)
    path = Path(name_or_path)
    if path.exists():
        from .checkpoint import load_checkpoint  # lazy: only when a checkpoint file is named

        return load_checkpoint(path, **params)
    raise ValueError(
        f"unknown potential {name_or_path!r}: not a built-in name, an installed plugin or an "
        f"existing file; available: {', '.join(available_potentials())}"
    )
