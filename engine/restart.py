"""Restart files: atomic .npz snapshots that let `--resume` continue a run bit for bit.

Format (version 1), one ``numpy.savez`` archive, loaded with ``allow_pickle=False``
so reading a restart never executes code:
  positions, velocities, masses (float64), numbers, ids (int64), cell (3,3), pbc (3,),
  nl/<key>          the neighbor list's reference arrays (positions/cell it was built at),
  integ/<key>       array-valued integrator state,
  meta              JSON: format_version, step, config_hash, physics config,
                    integrator name + scalar state, n_neighbor_builds.
Writes go to a temporary file in the same directory, are fsync'ed, and replace
``restart.npz`` with ``os.replace``; the previous file is kept as ``restart.prev.npz``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

FORMAT_VERSION = 1
RESTART_NAME = "restart.npz"
PREVIOUS_NAME = "restart.prev.npz"

# Keys that do not change the trajectory: where output goes, how long to run,
# how ranks are laid out (multi-rank results equal 1-rank ones to round-off).
_NON_PHYSICS = {("output",), ("dynamics", "steps"), ("parallel",), ("potential", "device")}


def physics_config(cfg) -> dict:
    """The resolved config minus the keys a resumed run may change."""
    d = cfg.model_dump(mode="json") if hasattr(cfg, "model_dump") else dict(cfg)
    d = json.loads(json.dumps(d))
    for path in _NON_PHYSICS:
        node = d
        for k in path[:-1]:
            node = node.get(k, {})
        node.pop(path[-1], None)
    return d


def config_hash(cfg) -> str:
    """sha256 of the physics-relevant resolved config (canonical JSON)."""
    blob = json.dumps(physics_config(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(saved: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ between two physics configs."""
    a, b = _flatten(saved), _flatten(current)
    return sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))


def _np(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _encode_state_dict(sd: dict, arrays: dict, prefix: str) -> dict:
    """Arrays/tensors go to the archive; JSON-able scalars stay in meta."""
    kinds = {}
    for k, v in sd.items():
        if isinstance(v, torch.Tensor):
            arrays[f"{prefix}{k}"] = _np(v)
            kinds[k] = "tensor"
        elif isinstance(v, np.ndarray):
            arrays[f"{prefix}{k}"] = v
            kinds[k] = "array"
        else:
            kinds[k] = ["json", v]
    return kinds


def _decode_state_dict(kinds: dict, data, prefix: str, device) -> dict:
    sd = {}
    for k, kind in kinds.items():
        if kind == "tensor":
            sd[k] = torch.from_numpy(np.array(data[f"{prefix}{k}"])).to(device)
        elif kind == "array":
            sd[k] = np.array(data[f"{prefix}{k}"])
        else:
            sd[k] = kind[1]
    return sd


def write_restart(directory, arrays: dict, integrator_name: str, integrator_state: dict,
                  neighbor_state: Optional[dict], step: int, cfg, n_neighbor_builds: int = 0,
                  name: str = RESTART_NAME) -> Path:
    """Atomically write ``directory/name``; the one it replaces becomes ``restart.prev.npz``.

    ``arrays`` holds the global (gathered) positions, velocities, masses, numbers,
    ids, cell and pbc.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = {k: _np(v) for k, v in arrays.items()}
    meta = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "config_hash": config_hash(cfg),
        "physics_config": physics_config(cfg),
        "integrator": integrator_name,
        "integrator_state": _encode_state_dict(integrator_state or {}, out, "integ/"),
        "neighbor_state": _encode_state_dict(
            {k: v for k, v in (neighbor_state or {}).items() if v is not None}, out, "nl/"),
        "n_neighbor_builds": int(n_neighbor_builds),
    }
    out["meta"] = np.array(json.dumps(meta))
    final = directory / name
    tmp = directory / f".{name}.tmp.{os.getpid()}"
    with open(tmp, "wb") as fh:
        np.savez(fh, **out)
        fh.flush()
        os.fsync(fh.fileno())
    if final.exists():
        os.replace(final, directory / PREVIOUS_NAME)
    os.replace(tmp, final)
    try:  # make the renames durable
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return final


class Restart:
    """A loaded restart file."""

    def __init__(self, path: Path, device="cpu"):
        self.path = Path(path)
        with np.load(self.path, allow_pickle=False) as data:
            self.meta = json.loads(str(data["meta"]))
            if self.meta.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"{self.path}: restart format version {self.meta.get('format_version')} "
                                 f"is not {FORMAT_VERSION}; it was written by another atomsim version")
            self.arrays = {k: np.array(data[k]) for k in
                           ("positions", "velocities", "masses", "numbers", "ids", "cell", "pbc")}
            if "fixed" in data.files:  # optional: only runs with a dynamics.fix group
                self.arrays["fixed"] = np.array(data["fixed"])
            self.integrator_state = _decode_state_dict(self.meta["integrator_state"], data, "integ/", device)
            self.neighbor_state = _decode_state_dict(self.meta["neighbor_state"], data, "nl/", device)

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    def check_config(self, cfg) -> None:
        """Refuse a restart written under different physics, naming the keys that changed."""
        if self.meta["config_hash"] == config_hash(cfg):
            return
        diff = config_differences(self.meta["physics_config"], physics_config(cfg))
        raise ValueError(
            f"--resume: {self.path} was written with a different configuration "
            f"(changed: {', '.join(diff) or 'unknown'}); only output.*, dynamics.steps, "
            "parallel.* and potential.device may change on resume. Undo the change or start "
            "a new run in another output.directory."
        )

    def to_state(self, device="cpu", comm=None):
        """An MDState built straight from the arrays (no ase.Atoms round trip: v*m/m is not v)."""
        from .comm import Comm
        from .state import MDState

        t = lambda a, dt=torch.float64: torch.from_numpy(np.array(a)).to(device=device, dtype=dt)  # noqa: E731
        a = self.arrays
        return MDState(
            positions=t(a["positions"]), velocities=t(a["velocities"]), masses=t(a["masses"]),
            numbers=t(a["numbers"], torch.int64), ids=t(a["ids"], torch.int64), cell=t(a["cell"]),
            pbc=tuple(bool(p) for p in a["pbc"]), n_atoms_global=int(len(a["ids"])),
            step=self.step, comm=comm or Comm(),
            fixed=t(a["fixed"], torch.bool) if "fixed" in a else None,
        )


def find_restart(directory, device="cpu") -> Restart:
    """The newest readable restart (highest step) in ``directory``."""
    directory = Path(directory)
    found, errors = [], []
    for name in (RESTART_NAME, PREVIOUS_NAME):
        p = directory / name
        if p.exists():
            try:
                found.append(Restart(p, device))
            except Exception as exc:  # a torn or foreign file: try the other one
                errors.append(f"{p}: {exc}")
    if not found:
        why = f" ({'; '.join(errors)})" if errors else ""
        raise ValueError(f"--resume: no readable restart file in output.directory {str(directory)!r}{why}; "
                         "run without --resume first, or point output.directory at the earlier run")
    return max(found, key=lambda r: r.step)
