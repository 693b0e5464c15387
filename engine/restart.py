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

Runs on several ranks write *sharded* restarts instead (``output.parallel``,
engine/parallel_io.py): ``restart.json`` (a manifest with the global scalars
below) plus one safetensors shard of owned atoms per rank. :func:`find_restart`
reads either kind, the newest usable one; :class:`ShardedRestart` reads shards on
any rank count, each rank only the atoms it owns.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .errors import InputError

FORMAT_VERSION = 1
RESTART_NAME = "restart.npz"
PREVIOUS_NAME = "restart.prev.npz"

# Keys that do not change the trajectory: where output goes, how long to run,
# how ranks are laid out (multi-rank results equal 1-rank ones to round-off), how often the host
# reads the device-side checks (a failed check replays from the last verified step: same trajectory).
_NON_PHYSICS = {("output",), ("dynamics", "steps"), ("parallel",), ("potential", "device"),
                ("neighbor", "check_every")}


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


class RestartError(InputError):
    """A restart file that cannot be resumed from; the message names the file and why."""


class RestartFallbackWarning(UserWarning):
    """The newest restart file was unusable and an older one is resumed from instead."""


_ARRAYS = ("positions", "velocities", "masses", "numbers", "ids", "cell", "pbc")
_META_KEYS = ("format_version", "step", "config_hash", "physics_config", "integrator", "integrator_state",
              "neighbor_state")


def _finite_json(v) -> bool:
    """No NaN/inf anywhere in a JSON value (json.loads accepts NaN and Infinity)."""
    if isinstance(v, float):
        return bool(np.isfinite(v))
    if isinstance(v, dict):
        return all(_finite_json(x) for x in v.values())
    if isinstance(v, (list, tuple)):
        return all(_finite_json(x) for x in v)
    return True


class Restart:
    """A loaded restart file; raises :class:`RestartError` (which file, why) when it is unusable:
    unreadable or truncated, another format version, keys missing, non-finite numbers."""

    def __init__(self, path: Path, device="cpu"):
        self.path = Path(path)
        try:
            self._load(device)
        except RestartError:
            raise
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:  # torn write, not an .npz
            raise RestartError(f"{self.path}: unreadable (truncated or not a restart archive: "
                               f"{type(exc).__name__}: {exc})") from exc
        except KeyError as exc:
            raise RestartError(f"{self.path}: incomplete, key {exc} is missing") from exc

    def _why(self, what: str) -> RestartError:
        return RestartError(f"{self.path}: {what}")

    def _load(self, device) -> None:
        with open(self.path, "rb") as fh, np.load(fh, allow_pickle=False) as data:  # closed on any error
            if "meta" not in data.files:
                raise self._why("incomplete, key 'meta' is missing")
            self.meta = json.loads(str(data["meta"]))
            if not isinstance(self.meta, dict):
                raise self._why("its 'meta' entry is not a JSON object")
            if "format_version" not in self.meta:
                raise self._why("incomplete, missing format_version in its 'meta' entry")
            if self.meta.get("format_version") != FORMAT_VERSION:
                raise self._why(f"restart format version {self.meta.get('format_version')} is not "
                                f"{FORMAT_VERSION}; it was written by another atomsim version")
            missing = [k for k in _META_KEYS if k not in self.meta]
            missing += [k for k in _ARRAYS if k not in data.files]
            if missing:
                raise self._why(f"incomplete, missing {', '.join(missing)}")
            self.arrays = {k: np.array(data[k]) for k in _ARRAYS}
            if "fixed" in data.files:  # optional: only runs with a dynamics.fix group
                self.arrays["fixed"] = np.array(data["fixed"])
            self.integrator_state = _decode_state_dict(self.meta["integrator_state"], data, "integ/", device)
            self.neighbor_state = _decode_state_dict(self.meta["neighbor_state"], data, "nl/", device)
        self._check_contents()

    def _check_contents(self) -> None:
        """Shapes that fit together and finite numbers: a NaN would otherwise only show steps later."""
        a = self.arrays
        n = len(a["ids"])
        for k in ("positions", "velocities"):
            if a[k].shape != (n, 3):
                raise self._why(f"{k} has shape {a[k].shape}, expected ({n}, 3) for {n} atoms")
        if a["cell"].shape != (3, 3):
            raise self._why(f"cell has shape {a['cell'].shape}, expected (3, 3)")
        arrays = {k: v for k, v in a.items() if k in ("positions", "velocities", "masses", "cell")}
        arrays.update({f"integrator state {k}": v for k, v in self.integrator_state.items()
                       if isinstance(v, (np.ndarray, torch.Tensor))})
        arrays.update({f"neighbor-list {k}": v for k, v in self.neighbor_state.items()
                       if isinstance(v, (np.ndarray, torch.Tensor))})
        arrays.update({f"integrator state {k}": v for k, v in self.integrator_state.items()
                       if not isinstance(v, (np.ndarray, torch.Tensor)) and not _finite_json(v)})
        for k, v in arrays.items():
            if not isinstance(v, (np.ndarray, torch.Tensor)):  # a JSON value with a NaN in it
                raise self._why(f"{k} contains NaN or infinite values")
            v = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
            if v.dtype.kind in "fc" and not np.isfinite(v).all():
                raise self._why(f"{k} contains NaN or infinite values")
        if not isinstance(self.meta["step"], int) or self.meta["step"] < 0:
            raise self._why(f"step {self.meta['step']!r} is not a non-negative integer")

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
            "parallel.*, neighbor.check_every and potential.device may change on resume. Undo the change or start "
            "a new run in another output.directory."
        )

    def to_state(self, device="cpu", comm=None, owner=None):
        """An MDState built straight from the arrays (no ase.Atoms round trip: v*m/m is not v).

        Every atom, whatever ``owner`` says (the single file holds them all; the force
        provider's ``prepare`` keeps a rank's own).
        """
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


def _json_state(sd: dict) -> dict:
    """Integrator state as JSON (a sharded restart's manifest): arrays become tagged lists."""
    out = {}
    for k, v in (sd or {}).items():
        if isinstance(v, (torch.Tensor, np.ndarray)):
            a = _np(v)
            out[k] = ["tensor" if isinstance(v, torch.Tensor) else "array", str(a.dtype), a.tolist()]
        else:
            out[k] = ["json", v]
    return out


def _from_json_state(kinds: dict, device) -> dict:
    sd = {}
    for k, (kind, *rest) in kinds.items():
        if kind == "json":
            sd[k] = rest[0]
        else:
            a = np.asarray(rest[1], dtype=rest[0])
            sd[k] = torch.from_numpy(a).to(device) if kind == "tensor" else a
    return sd


def restart_meta(cfg, integrator_name: str, integrator_state: dict, step: int, n_neighbor_builds: int,
                 neighbor_cell=None) -> dict:
    """The global scalars of a sharded restart (its manifest holds them; atoms are in the shards)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        creator = version("atomsim")
    except PackageNotFoundError:
        creator = "unknown"
    return {"restart_version": FORMAT_VERSION, "step": int(step), "config_hash": config_hash(cfg),
            "physics_config": physics_config(cfg), "integrator": integrator_name,
            "integrator_state": _json_state(integrator_state), "n_neighbor_builds": int(n_neighbor_builds),
            "neighbor_cell": None if neighbor_cell is None else _np(neighbor_cell).astype(float).tolist(),
            "atomsim_version": creator}


class ShardedRestart(Restart):
    """A sharded restart (``restart.json`` + per-rank shards), checked on open: manifest, shard files,
    sizes, global scalars. Atoms are read by :meth:`to_state`, on any rank count (CRC32-checked)."""

    def __init__(self, path: Path, device="cpu"):
        from .parallel_io import ShardError, read_manifest

        self.path = Path(path)
        try:
            self.meta = read_manifest(self.path)
        except ShardError as exc:
            raise RestartError(str(exc)) from exc
        missing = [k for k in ("step", "config_hash", "physics_config", "integrator", "integrator_state",
                               "cell", "pbc", "restart_version") if k not in self.meta]
        if missing:
            raise self._why(f"incomplete, missing {', '.join(missing)}")
        if self.meta["restart_version"] != FORMAT_VERSION:
            raise self._why(f"restart format version {self.meta['restart_version']} is not {FORMAT_VERSION}")
        if not isinstance(self.meta["step"], int) or self.meta["step"] < 0:
            raise self._why(f"step {self.meta['step']!r} is not a non-negative integer")
        if not _finite_json([self.meta["cell"], self.meta["integrator_state"]]):
            raise self._why("cell or integrator state contains NaN or infinite values")
        self.integrator_state = _from_json_state(self.meta["integrator_state"], device)
        cell = self.meta.get("neighbor_cell")
        self.neighbor_state = {} if cell is None else {"cell": torch.tensor(cell, dtype=torch.float64)}
        self._arrays = None  # atoms stay in the shards until to_state (or .arrays)

    @property
    def arrays(self) -> dict:
        """The whole system, sorted by id, like a single-file restart's arrays (small runs, tests)."""
        if self._arrays is None:
            st = self.to_state()
            np_ = lambda t: t.numpy()  # noqa: E731
            self._arrays = {k: np_(getattr(st, k)) for k in ("positions", "velocities", "masses", "numbers",
                                                                 "ids", "cell")}
            self._arrays["pbc"] = np.asarray(st.pbc)
            if st.fixed is not None:
                self._arrays["fixed"] = np_(st.fixed)
        return self._arrays

    def to_state(self, device="cpu", comm=None, owner=None):
        """This rank's atoms (``owner``: an ``engine.parallel_io.SubDomain``; None: every atom), by id.

        Shards are read one at a time, only those whose bounding box meets the sub-domain,
        so no rank holds more than its own atoms plus one shard. Fills ``neighbor_state``
        with these atoms' list reference positions and ids.
        """
        from .comm import Comm
        from .parallel_io import read_shard, sorted_by_id
        from .state import MDState

        keys = ("positions", "ids", "velocities", "masses", "numbers", "fixed", "nl_positions")
        parts = []
        for k in range(len(self.meta["shards"])):
            try:
                got = read_shard(self.meta, k, keys, rows=None if owner is None else owner.mask,
                                 parts=None if owner is None else owner.may_own)
            except InputError as exc:
                raise RestartError(str(exc)) from exc
            if got:
                parts.append(got)
        empty = {"positions": np.zeros((0, 3)), "velocities": np.zeros((0, 3)), "masses": np.zeros(0),
                 "ids": np.zeros(0, np.int64), "numbers": np.zeros(0, np.int64)}
        a = {}
        for key in keys:
            have = [p[key] for p in parts if key in p]
            if key in ("fixed", "nl_positions"):
                if not any(key in info["arrays"] for info in self.meta["shards"]):
                    continue
                if len(have) != len(parts):
                    raise self._why(f"array {key!r} is in some shards and not in others")
                have = have or [np.zeros((0, 3)) if key == "nl_positions" else np.zeros(0, bool)]
            a[key] = (have[0] if len(have) == 1 else np.concatenate(have)) if have else empty[key]
        a = sorted_by_id(a)
        for key in ("positions", "velocities", "masses", "nl_positions"):
            if key in a and not np.isfinite(a[key]).all():
                raise self._why(f"{key} contains NaN or infinite values")
        def t(x, dt=torch.float64):
            return torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=dt)

        if "nl_positions" in a and "cell" in self.neighbor_state:
            self.neighbor_state.update(positions=t(a["nl_positions"]), ids=t(a["ids"], torch.int64))
        return MDState(
            positions=t(a["positions"]), velocities=t(a["velocities"]), masses=t(a["masses"]),
            numbers=t(a["numbers"], torch.int64), ids=t(a["ids"], torch.int64),
            cell=torch.tensor(self.meta["cell"], dtype=torch.float64, device=device),
            pbc=tuple(bool(p) for p in self.meta["pbc"]), n_atoms_global=int(self.meta["n_atoms"]),
            step=self.step, comm=comm or Comm(), fixed=t(a["fixed"], torch.bool) if "fixed" in a else None)


def has_restart(directory) -> bool:
    """Whether ``directory`` holds a restart of either kind (usable or not)."""
    from .parallel_io import RESTART_MANIFEST, RESTART_PREVIOUS

    return any((Path(directory) / n).exists() for n in (RESTART_NAME, PREVIOUS_NAME, RESTART_MANIFEST,
                                                         RESTART_PREVIOUS))


def find_restart(directory, device="cpu") -> Restart:
    """The newest usable restart in ``directory``: ``restart.npz``, else ``restart.prev.npz``.

    Sharded restarts (``restart.json``, ``restart.prev.json``) are candidates too; the one
    with the highest step wins.

    An unusable ``restart.npz`` (a crash mid-write, a damaged disk) is reported -- which file and why,
    as a :class:`RestartFallbackWarning` and in the returned restart's ``skipped`` -- before the
    previous one is used; if no file is usable, :class:`RestartError` (an InputError: exit status 2)
    names every file tried and why.
    """
    directory = Path(directory)
    from .parallel_io import RESTART_MANIFEST, RESTART_PREVIOUS

    found, errors = [], []
    for name, kind in ((RESTART_MANIFEST, ShardedRestart), (RESTART_NAME, Restart),
                       (RESTART_PREVIOUS, ShardedRestart), (PREVIOUS_NAME, Restart)):
        p = directory / name
        if p.exists():
            try:
                found.append(kind(p, device))
            except RestartError as exc:
                errors.append(str(exc))
    if not found:
        if errors:
            raise RestartError(f"--resume: no usable restart file in output.directory {str(directory)!r}: "
                               + "; ".join(errors)
                               + ". Restore one of them or start a new run without --resume")
        raise RestartError(f"--resume: no readable restart file in output.directory {str(directory)!r}; "
                           "run without --resume first, or point output.directory at the earlier run")
    chosen = max(found, key=lambda r: r.step)
    chosen.skipped = errors
    for why in errors:
        warnings.warn(f"--resume: skipping {why}; resuming from {chosen.path} (step {chosen.step})",
                      RestartFallbackWarning, stacklevel=2)
    return chosen
