"""Bundled pretrained models: one folder each (model.safetensors, config.json, MODEL_CARD.md, ...).

Importing this package registers every bundled folder under its name, plus the
aliases below, with :func:`atomsim.potentials.registry.register_potential`.
Loading reads safetensors + JSON only (no code from the files).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

from ..registry import register_potential

HERE = Path(__file__).resolve().parent
ALIASES = {"default": "egnn-universal-v1"}  # `atomsim run` / AtomsimCalculator() default


def bundled_path(name: str) -> Path:
    """Folder of a bundled model (aliases resolved)."""
    return HERE / ALIASES.get(name, name)


def _load(folder: Path, **params):
    from ..checkpoint import load_checkpoint

    return load_checkpoint(folder, **params)


def bundled_models() -> list[str]:
    return sorted(p.name for p in HERE.iterdir() if (p / "config.json").is_file())


for _name in bundled_models():
    register_potential(_name, partial(_load, HERE / _name))
for _alias, _target in ALIASES.items():
    if (HERE / _target / "config.json").is_file():
        register_potential(_alias, partial(_load, HERE / _target))
