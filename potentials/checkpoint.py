"""Checkpoints: safetensors weights + JSON config + a Markdown model card.

Loading reads only tensors (safetensors) and JSON, so a checkpoint can never
execute code (no pickle), which makes shipping and downloading models safe.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from atomsim.kernels.dtypes import resolve_device, torch_dtype

FORMAT = "atomsim-egnn"
FORMAT_VERSION = 1


def save_checkpoint(model, directory: str | Path, card: dict | None = None) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``MODEL_CARD.md`` into ``directory``."""
    from safetensors.torch import save_file

    from .egnn import EGNNPotential, count_parameters

    if not isinstance(model, EGNNPotential):
        raise TypeError(f"save_checkpoint: EGNNPotential expected, got {type(model).__name__}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": FORMAT})
    card = dict(card or {})
    card.setdefault("parameters", count_parameters(model))
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": "EGNNPotential",
        "config": model.config.to_dict(),
        "dtype": str(model.dtype).replace("torch.", ""),
        "card": _jsonable(card),
    }
    (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(render_model_card(card, model))
    return out


def load_checkpoint(path: str | Path, dtype: str | torch.dtype | None = None,
                    device: str | torch.device | None = None, **params: Any):
    """Load a checkpoint folder (or its config.json / model.safetensors) as an EGNNPotential."""
    from safetensors.torch import load_file

    from .egnn import EGNNConfig, EGNNPotential

    if params:
        raise ValueError(
            f"potential.params: unknown key(s) {sorted(params)} for an EGNN checkpoint; "
            f"accepted: dtype, device"
        )
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    cfg_file, weights = folder / "config.json", folder / "model.safetensors"
    if not cfg_file.is_file() or not weights.is_file():
        raise ValueError(f"{path}: not an atomsim checkpoint (needs config.json and model.safetensors)")
    meta = json.loads(cfg_file.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{cfg_file}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{cfg_file}: format_version {meta['format_version']} is newer than this atomsim")
    model = EGNNPotential(EGNNConfig(**meta["config"]))
    state = load_file(str(weights))
    model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in state.items()}, strict=True)
    model.card = meta.get("card", {})
    model.checkpoint_path = str(folder)
    if dtype is not None:
        model = model.to(torch_dtype(dtype, "potential.dtype"))
    if device is not None:
        model = model.to(resolve_device(device, "potential.device"))
    return model.eval()


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def render_model_card(card: dict, model=None) -> str:
    """Markdown card: free-text sections, then a metrics table per element system."""
    lines = [f"# {card.get('name', 'atomsim EGNN model')}", ""]
    if card.get("description"):
        lines += [str(card["description"]), ""]
    if model is not None:
        c = model.config
        from ase.data import chemical_symbols

        lines += [
            "## Architecture", "",
            f"- EGNN energy potential (atomsim.potentials.egnn), {card.get('parameters'):,} parameters",
            f"- width {c.width}, depth {c.depth} (receptive field {c.depth} x {c.cutoff} Å), "
            f"{c.n_rbf} Bessel radial functions, cutoff {c.cutoff} Å, readout hidden {c.readout_hidden}",
            f"- elements: {' '.join(chemical_symbols[z] for z in c.species)}",
            "",
        ]
    skip = {"name", "description", "metrics", "parameters"}
    for key, value in card.items():
        if key in skip:
            continue
        lines += [f"## {key.replace('_', ' ').capitalize()}", ""]
        if isinstance(value, dict):
            lines += [f"- {k}: {v}" for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            lines += [f"- {v}" for v in value]
        else:
            text = str(value)
            lines += [f"```\n{text}\n```" if key.endswith("command") else text]
        lines.append("")
    metrics = card.get("metrics")
    if metrics:
        lines += ["## Held-out errors", "",
                  "| system | structures | atoms | energy MAE (meV/atom) | force MAE (meV/Å) |",
                  "|---|---|---|---|---|"]
        for system, m in metrics.items():
            lines.append(f"| {system} | {m['n_structures']} | {m['n_atoms']} | "
                         f"{m['energy_mae_meV_per_atom']:.2f} | {m['force_mae_meV_per_A']:.1f} |")
        lines += ["", "![parity plot](parity.png)", ""]
    return "\n".join(lines)


def reference_structures(species_symbols: list[str]):
    """Two tiny structures (periodic alloy, slab) over a model's elements, for reference.json."""
    from ase.build import bulk, fcc111

    syms = list(species_symbols)
    a = bulk(syms[0], "fcc", a=3.7, cubic=True).repeat((1, 1, 2))
    a.set_chemical_symbols([syms[k % len(syms)] for k in range(len(a))])
    a.rattle(0.05, seed=0)
    s = fcc111(syms[-1], size=(2, 2, 3), a=3.8, vacuum=5.0, periodic=True)
    s.rattle(0.05, seed=1)
    return [a, s]


def write_reference(model, directory: str | Path) -> Path:
    """Record energies/forces/stress of the model on reference_structures() in reference.json.

    The test suite reloads the bundled checkpoint and compares against these numbers,
    so any change in weights, loading or the model code that alters results is caught.
    """
    import numpy as np
    from ase.data import chemical_symbols

    from atomsim.kernels.neighbors import neighbor_list

    from .base import build_graph, evaluate_potential

    out = []
    for atoms in reference_structures([chemical_symbols[z] for z in model.species]):
        pos = torch.tensor(atoms.get_positions())
        cell = torch.tensor(atoms.cell.array)
        i, j, S = (torch.from_numpy(np.ascontiguousarray(x)) for x in
                   neighbor_list(atoms.get_positions(), atoms.cell.array, atoms.pbc, model.cutoff))
        g = build_graph(pos, cell, i, j, S, len(atoms), model.dtype)
        res = evaluate_potential(model, torch.tensor(atoms.numbers), g)
        out.append({
            "numbers": atoms.numbers.tolist(), "positions": atoms.get_positions().tolist(),
            "cell": atoms.cell.array.tolist(), "pbc": [bool(p) for p in atoms.pbc],
            "energy_eV": res.energy, "forces_eV_per_A": res.forces[: len(atoms)].tolist(),
            "virial_eV": res.virial.tolist(),
        })
    path = Path(directory) / "reference.json"
    path.write_text(json.dumps({"dtype": str(model.dtype).replace("torch.", ""), "structures": out}, indent=1) + "\n")
    return path
