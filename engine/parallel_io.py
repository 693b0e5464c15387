"""Per-rank output shards: restarts and trajectory frames that no rank gathers.

A *shard set* is one file per rank holding that rank's owned atoms, sorted by
global id, in safetensors format (a JSON header plus raw little-endian arrays:
numpy, torch, Rust and C++ read it; measured faster than npz and HDF5 here,
see docs/io.md), plus one small JSON *manifest* written by rank 0 last, naming
every shard with its atom count, byte size, per-array CRC32 and the fractional
bounding box of its atoms. A set is valid only once its manifest is in place,
so a crash while shards are being written leaves the previous set untouched.

Restarts (``output.directory``)::

    restart.json, restart.prev.json        manifests (newest, previous)
    restart.shards/<set>/shard-RRRRR-of-NNNNN.safetensors

Sets that neither manifest names are deleted after a new manifest is in place.
Trajectory frames::

    trajectory.shards/SSSSSSSSSS.json      one manifest per frame (step)
    trajectory.shards/SSSSSSSSSS/shard-RRRRR-of-NNNNN.safetensors

``atomsim convert`` merges them into extxyz / ASE .traj / H5MD for viewers.
A restart is read on any rank count: each rank opens only the shards whose
bounding box meets its sub-domain, one at a time, and keeps the atoms it owns.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
import zlib
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from .errors import InputError

FORMAT = "atomsim-shards"
FORMAT_VERSION = 1
RESTART_MANIFEST = "restart.json"
RESTART_PREVIOUS = "restart.prev.json"
RESTART_SETS = "restart.shards"
TRAJECTORY_SHARDS = "trajectory.shards"
BLOWUP_SHARDS = "blowup.shards"  # the failing frame of a stopped sharded run
OUTPUT_MODES = ("auto", "gather", "sharded")

# Per-atom arrays of a restart shard (``nl_positions``: the neighbor list's reference positions).
RESTART_KEYS = ("ids", "positions", "velocities", "masses", "numbers", "fixed", "nl_positions")


class ShardError(InputError):
    """A shard set that cannot be read: the message names the manifest or shard and why."""


def use_shards(setting: str, n_ranks: int) -> bool:
    """``output.parallel``: ``sharded`` always, ``gather`` never, ``auto`` whenever several ranks run."""
    if setting not in OUTPUT_MODES:
        raise InputError(f"output.parallel: {setting!r} is not one of {', '.join(OUTPUT_MODES)}")
    return setting == "sharded" or (setting == "auto" and n_ranks > 1)


def shard_name(rank: int, size: int) -> str:
    return f"shard-{rank:05d}-of-{size:05d}.safetensors"


def _crc(a: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(a)).cast("B"))


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # not every file system lets a directory be synced
        pass


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _frac_bounds(cell, positions: np.ndarray) -> tuple:
    """Bounds of the atoms' fractional coordinates (not wrapped) from their Cartesian extent: interval
    arithmetic, exact for an orthorhombic cell, a little wider otherwise; six column reductions."""
    inv = np.linalg.inv(np.asarray(cell, dtype=float))
    a = positions.min(0)[:, None] * inv
    b = positions.max(0)[:, None] * inv
    return np.minimum(a, b).sum(0).tolist(), np.maximum(a, b).sum(0).tolist()


def sorted_by_id(arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The rows ordered by ``ids`` (no copy when they already are, as a rank's state is)."""
    ids = arrays["ids"]
    if ids.shape[0] < 2 or bool(np.all(ids[1:] > ids[:-1])):
        return arrays
    order = np.argsort(ids, kind="stable")
    return {k: v[order] for k, v in arrays.items()}


_ST_DTYPES = {"float64": "F64", "float32": "F32", "int64": "I64", "int32": "I32", "int8": "I8",
              "uint8": "U8", "bool": "BOOL"}


def _write_safetensors(path: Path, data: Dict[str, np.ndarray], metadata: Dict[str, str],
                       groups: Sequence[Optional[np.ndarray]] = (None,)) -> List[Dict[str, int]]:
    """The safetensors layout (u64 header length, JSON header, raw arrays) streamed from the arrays.

    Each array is written as its row ``groups`` one after the other (index arrays; None: all rows),
    one group of one array at a time, so at most one array's group is copied (``save_file`` of the
    safetensors library serialises the whole shard in memory first). Returns the CRC32 of every
    array's rows per group. Read back by the safetensors library too; fsync'ed before returning.
    """
    header: Dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for k, v in data.items():
        n = sum(v.shape[0] if g is None else g.shape[0] for g in groups)
        nbytes = n * (v.nbytes // max(v.shape[0], 1))
        header[k] = {"dtype": _ST_DTYPES[v.dtype.name], "shape": [n, *v.shape[1:]],
                     "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    crcs: List[Dict[str, int]] = [{} for _ in groups]
    with open(path, "wb") as fh:
        fh.write(len(blob).to_bytes(8, "little"))
        fh.write(blob)
        for k, v in data.items():
            for j, g in enumerate(groups):
                block = np.ascontiguousarray(v if g is None else v[g])
                if block.nbytes:
                    fh.write(memoryview(block).cast("B"))
                crcs[j][k] = _crc(block)
                del block
        fh.flush()
        os.fsync(fh.fileno())
    return crcs


_NP_DTYPES = {v: k for k, v in _ST_DTYPES.items()}


def _read_rows(fh, header: dict, start: int, key: str, r0: int, r1: int) -> np.ndarray:
    """Rows [r0, r1) of one array of an open safetensors file: one seek, one sequential read."""
    h = header[key]
    dtype = np.dtype(_NP_DTYPES[h["dtype"]]).newbyteorder("<")
    shape = list(h["shape"])
    per_row = int(np.prod(shape[1:], dtype=np.int64))
    fh.seek(start + h["data_offsets"][0] + r0 * per_row * dtype.itemsize)
    count = (r1 - r0) * per_row
    a = np.fromfile(fh, dtype=dtype, count=count) if count else np.zeros(0, dtype)
    if a.shape[0] != count:
        raise EOFError(f"array {key!r} ends early (truncated shard)")
    return a.reshape([r1 - r0] + shape[1:])


def write_shard(folder: Path, rank: int, size: int, arrays: Dict[str, np.ndarray], cell, pbc,
                domain: Optional["SubDomain"] = None) -> dict:
    """Write this rank's shard atomically (temp file, fsync, rename); return its manifest entry.

    ``domain``: this rank's sub-domain. The atoms inside it now are stored first, then the rest
    (atoms that drifted out since the last list build), each part sorted by id with its own box and
    CRC32s: a resume on the same decomposition reads a neighbour's shard only for its drifted atoms.
    The inside part's box is the min/max of the wrapped fractional coordinates that decided
    ownership (``wrapped``: a reader tests it with the owner rule itself, exactly).
    """
    data = sorted_by_id(arrays)
    n = int(data["ids"].shape[0])
    groups: List[Optional[np.ndarray]] = [None]
    boxes = []  # (frac_lo, frac_hi, wrapped) per group
    if domain is not None and n:
        frac = domain.decomp.wrap(data["positions"])[0]
        mask = domain.decomp.owner_of(frac) == domain.decomp.rank
        if mask.any():
            boxes.append((frac[mask].min(0).tolist(), frac[mask].max(0).tolist(), True))
        del frac
        if mask.any() and not mask.all():
            groups = [np.flatnonzero(mask), np.flatnonzero(~mask)]
        elif not mask.any():
            boxes = []
    if len(boxes) < len(groups) and n:  # the drifted atoms (or all, without a sub-domain)
        pos = data["positions"] if groups[-1] is None else data["positions"][groups[-1]]
        boxes.append((*_frac_bounds(cell, pos), False))
    name = shard_name(rank, size)
    tmp = folder / f".{name}.tmp.{os.getpid()}"
    crcs = _write_safetensors(tmp, data, {"format": FORMAT, "rank": str(rank), "of": str(size)}, groups)
    os.replace(tmp, folder / name)
    parts, r0 = [], 0
    for g, crc, (lo, hi, wrapped) in zip(groups, crcs, boxes):
        r1 = r0 + (n if g is None else g.shape[0])
        parts.append({"rows": [r0, r1], "frac_lo": lo, "frac_hi": hi, "wrapped": wrapped, "crc32": crc})
        r0 = r1
    ids = data["ids"]
    return {"file": name, "rank": rank, "n_atoms": n, "bytes": (folder / name).stat().st_size,
            "arrays": list(data), "parts": parts,
            "id_min": int(ids.min()) if n else None, "id_max": int(ids.max()) if n else None}


def write_json_atomic(path: Path, obj: dict, previous: Optional[Path] = None) -> None:
    """Write ``path`` atomically; the file it replaces becomes ``previous`` (when given)."""
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    if previous is not None and path.exists():
        os.replace(path, previous)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_shard_set(comm, folder: Path, arrays: Dict[str, np.ndarray], cell, pbc,
                    manifest: dict, manifest_path: Path, previous: Optional[Path] = None,
                    domain: Optional["SubDomain"] = None) -> Path:
    """Every rank writes its shard into ``folder``; then rank 0 writes the manifest. Collective.

    ``manifest`` (rank 0's) gets ``shards``, ``n_shards``, ``n_atoms`` and ``folder`` added.
    Returns ``manifest_path`` once the manifest is in place on every rank.
    """
    folder.mkdir(parents=True, exist_ok=True)
    info = write_shard(folder, comm.rank, comm.size, arrays, cell, pbc, domain)
    infos = comm.gather(info)  # also: every shard is on disk before the manifest names it
    if comm.rank == 0:
        manifest = dict(manifest, format=FORMAT, format_version=FORMAT_VERSION, n_shards=comm.size,
                        n_atoms=sum(i["n_atoms"] for i in infos),
                        folder=os.path.relpath(folder, manifest_path.parent), shards=infos,
                        written_unix=time.time())
        write_manifest(manifest_path, manifest, previous)
    comm.barrier()
    return manifest_path


def write_manifest(path: Path, manifest: dict, previous: Optional[Path]) -> None:
    """The last act of writing a shard set (its own function so tests can make it fail)."""
    write_json_atomic(path, manifest, previous)


# -- reading ---------------------------------------------------------------------
def read_manifest(path: Path) -> dict:
    """A manifest, checked against its shards on disk (present, sizes); ShardError names the problem."""
    path = Path(path)
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ShardError(f"{path}: unreadable manifest ({type(exc).__name__}: {exc})") from exc
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ShardError(f"{path}: not an {FORMAT} manifest")
    if m.get("format_version") != FORMAT_VERSION:
        raise ShardError(f"{path}: shard format version {m.get('format_version')} is not {FORMAT_VERSION}; "
                         "it was written by another atomsim version")
    shards = m.get("shards")
    if not isinstance(shards, list) or len(shards) != m.get("n_shards"):
        raise ShardError(f"{path}: lists {len(shards or [])} shards but says n_shards={m.get('n_shards')}")
    if sum(int(s["n_atoms"]) for s in shards) != m.get("n_atoms"):
        raise ShardError(f"{path}: its shards hold {sum(int(s['n_atoms']) for s in shards)} atoms, "
                         f"the manifest says {m.get('n_atoms')}")
    folder = path.parent / m["folder"]
    try:  # one directory listing, not a stat per shard (every rank opens the manifest)
        present = set(os.listdir(folder))
    except OSError as exc:
        raise ShardError(f"{path}: its shard folder {folder} is unreadable or missing ({exc})") from exc
    for s in shards:
        if sum(r1 - r0 for r0, r1 in (part["rows"] for part in s["parts"])) != s["n_atoms"]:
            raise ShardError(f"{path}: the parts of shard {s['file']} do not add up to its {s['n_atoms']} atoms")
        if s["file"] not in present:
            raise ShardError(f"{path}: shard {folder / s['file']} is missing")
    m["_path"] = str(path)
    return m


def shard_paths(manifest: dict) -> List[Path]:
    folder = Path(manifest["_path"]).parent / manifest["folder"]
    return [folder / s["file"] for s in manifest["shards"]]


def read_shard(manifest: dict, k: int, keys: Optional[Sequence[str]] = None,
               rows: Optional[Callable[[dict], np.ndarray]] = None,
               parts: Optional[Callable[[dict], bool]] = None) -> Dict[str, np.ndarray]:
    """Arrays of shard ``k``, each part's rows checked against the manifest's CRC32s.

    ``parts(part) -> bool`` picks the parts to read (None: all); ``rows(arrays) -> mask`` keeps some
    rows of each, seeing the arrays read so far in ``keys`` order (put ``positions`` first).
    """
    info = manifest["shards"][k]
    path = shard_paths(manifest)[k]
    keys = [key for key in (keys if keys is not None else info["arrays"]) if key in info["arrays"]]
    pieces = []
    size = path.stat().st_size if path.exists() else None
    if size != info["bytes"]:
        raise ShardError(f"{manifest['_path']}: shard {path} has {size} bytes, the manifest says {info['bytes']} "
                         "(missing, replaced or partly written; an older restart: restart.prev.json)")
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header, start = json.loads(fh.read(size)), 8 + size
            for part in info["parts"]:
                if parts is not None and not parts(part):
                    continue
                r0, r1 = part["rows"]
                out: Dict[str, np.ndarray] = {}
                mask = None
                for key in keys:
                    a = _read_rows(fh, header, start, key, r0, r1)
                    if _crc(a) != part["crc32"].get(key):
                        raise ShardError(f"{manifest['_path']}: shard {path} array {key!r} fails its CRC32 "
                                         "check (damaged or replaced)")
                    out[key] = a if mask is None else a[mask]
                    if rows is not None and mask is None:  # the first array read decides the rows kept
                        mask = rows(out)
                        out = {kk: v[mask] for kk, v in out.items()}
                pieces.append(out)
    except ShardError:
        raise
    except Exception as exc:  # a torn header or file
        raise ShardError(f"{manifest['_path']}: shard {path} is unreadable "
                         f"({type(exc).__name__}: {exc})") from exc
    if not pieces:
        return {}
    return pieces[0] if len(pieces) == 1 else {key: np.concatenate([p[key] for p in pieces]) for key in pieces[0]}


def merged(manifest: dict, keys: Optional[Sequence[str]] = None, progress: Optional[Callable] = None
           ) -> Dict[str, np.ndarray]:
    """Every shard's arrays concatenated and sorted by id (the whole system: for converting, small runs)."""
    parts = []
    for k in range(len(manifest["shards"])):
        parts.append(read_shard(manifest, k, keys))
        if progress is not None:
            progress(k + 1, len(manifest["shards"]))
    keys_all = list(dict.fromkeys(key for p in parts for key in p))
    out = {}
    for key in keys_all:
        lacking = [k for k, p in enumerate(parts) if key not in p and p["ids"].shape[0] > 0]
        if lacking:
            raise ShardError(f"{manifest['_path']}: array {key!r} is missing from shard(s) "
                             f"{', '.join(manifest['shards'][k]['file'] for k in lacking)}")
        have = [p[key] for p in parts if key in p]
        out[key] = have[0] if len(have) == 1 else np.concatenate(have)
    return sorted_by_id(out)


class SubDomain:
    """Which atoms (and shards) the calling rank owns under the run's decomposition (``parallel.grid``)."""

    def __init__(self, cell, pbc, comm, grid=None):
        from .domain import Decomposition

        self.decomp = Decomposition(np.asarray(cell, float), pbc, comm.size, comm.rank, grid)

    def may_own(self, part: dict) -> bool:
        """False when none of a shard part's atoms can be ours (from its fractional bounding box).

        Conservative by a hair (1e-9 in fractional units): an extra read costs I/O only,
        the rows kept are decided exactly by :meth:`mask`.
        """
        d, eps = self.decomp, 1e-9
        if part.get("wrapped"):  # the owner rule is monotone in each coordinate; the margin covers
            # the last bit a matrix product of another shape may round differently
            lo, hi = (np.asarray(d.coords_of(int(d.owner_of(np.asarray([part[k]]) + m)[0])))
                      for k, m in (("frac_lo", -1e-12), ("frac_hi", 1e-12)))
            return bool(np.all((lo <= d.coords) & (np.asarray(d.coords) <= hi)))
        for k in range(3):
            lo, hi = float(part["frac_lo"][k]), float(part["frac_hi"][k])
            a, b = d.lo[k] - eps, d.hi[k] + eps
            if not d.pbc[k]:  # atoms outside [0, 1) belong to the edge ranks
                a = -np.inf if d.coords[k] == 0 else a
                b = np.inf if d.coords[k] == d.dims[k] - 1 else b
                hit = lo <= b and hi >= a
            elif hi - lo >= 1.0:
                hit = True
            else:  # shift the box into [0, 2): its wrapped image is [lo, hi] and maybe [0, hi - 1]
                shift = np.floor(lo)
                lo, hi = lo - shift, hi - shift
                hit = (lo <= b and hi >= a) or (hi >= 1.0 and hi - 1.0 >= a)
            if not hit:
                return False
        return True

    def mask(self, arrays: dict) -> np.ndarray:
        frac, _ = self.decomp.wrap(arrays["positions"])
        return self.decomp.owner_of(frac) == self.decomp.rank


# -- restarts ----------------------------------------------------------------------
def restart_set_folder(directory: Path, step: int, token: str) -> Path:
    return Path(directory) / RESTART_SETS / f"step{step:010d}-{token}"


def write_sharded_restart(comm, directory, arrays: Dict[str, np.ndarray], meta: dict, cell, pbc,
                          grid=None) -> Path:
    """This rank's atoms as one shard of a new restart set; rank 0 writes the manifest last. Collective.

    ``meta`` holds the global scalars (step, config hash, integrator state, ...); ``grid``: the run's
    rank grid (``parallel.grid``; None: balanced), whose sub-domains split each shard into the atoms
    inside and those that drifted out (see :func:`write_shard`).
    The previous manifest becomes ``restart.prev.json``; sets neither names are then deleted.
    """
    directory = Path(directory)
    token = comm.bcast(uuid.uuid4().hex[:8] if comm.rank == 0 else None)
    folder = restart_set_folder(directory, int(meta["step"]), token)
    man = dict(meta, kind="restart", cell=np.asarray(cell, float).tolist(), pbc=[bool(p) for p in pbc],
               rng="counter-based (seed, step, atom id): no state to save")
    domain = SubDomain(cell, pbc, comm, grid) if comm.size > 1 else None
    path = write_shard_set(comm, folder, arrays, cell, pbc, man, directory / RESTART_MANIFEST,
                           directory / RESTART_PREVIOUS, domain)
    if comm.rank == 0:
        _collect_restart_sets(directory)
    return path


def _collect_restart_sets(directory: Path) -> None:
    """Delete restart sets that neither manifest names (older sets, sets of a crashed write)."""
    keep = set()
    for name in (RESTART_MANIFEST, RESTART_PREVIOUS):
        try:
            keep.add(Path(json.loads((directory / name).read_text())["folder"]).name)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    root = directory / RESTART_SETS
    for sub in root.iterdir() if root.exists() else ():
        if sub.name not in keep:
            shutil.rmtree(sub, ignore_errors=True)


def remove_sharded_output(directory) -> None:
    """A fresh run: no sharded restart or trajectory of an older run may be resumed or appended to."""
    directory = Path(directory)
    for name in (RESTART_MANIFEST, RESTART_PREVIOUS):
        (directory / name).unlink(missing_ok=True)
    for name in (RESTART_SETS, TRAJECTORY_SHARDS, BLOWUP_SHARDS):
        shutil.rmtree(directory / name, ignore_errors=True)


# -- trajectories ------------------------------------------------------------------
def frame_manifests(directory) -> List[Path]:
    """The frame manifests of ``directory/trajectory.shards`` (or of a frames folder itself), by step."""
    directory = Path(directory)
    root = directory / TRAJECTORY_SHARDS if (directory / TRAJECTORY_SHARDS).is_dir() else directory
    return sorted(p for p in root.glob("*.json") if p.stem.isdigit())


def drop_frames_after(directory, step: int) -> None:
    """Delete the sharded frames written after ``step`` (a resumed run writes them again)."""
    for m in frame_manifests(directory):
        if int(m.stem) > step:
            m.unlink()
            shutil.rmtree(m.with_suffix(""), ignore_errors=True)


class ShardedTrajectory:
    """Trajectory frames as shard sets (``output.parallel``): each rank writes its own atoms. Collective."""

    def __init__(self, directory, timestep_fs: float, comm, *, fmt: str, append: bool,
                 resume_step: Optional[int], per_atom: Sequence[str], folder: str = TRAJECTORY_SHARDS):
        self.root = Path(directory) / folder
        self.timestep_fs = timestep_fs
        self.comm = comm
        self.fmt = fmt
        self.per_atom = tuple(per_atom)
        if comm.rank == 0:
            if not append:
                shutil.rmtree(self.root, ignore_errors=True)
            elif resume_step is not None:  # a resumed run writes the frames after its restart again
                drop_frames_after(directory, resume_step)
            self.root.mkdir(parents=True, exist_ok=True)
        comm.barrier()

    def write(self, state, stresses: Optional[np.ndarray] = None) -> None:
        """One frame: this rank's owned atoms (``stresses``: theirs, (n, 6) eV/Å^3) as a shard."""
        arrays = {k: _np(getattr(state, k)) for k in ("ids", "positions", "velocities", "masses", "numbers")}
        if state.forces is not None:
            arrays["forces"] = _np(state.forces)
        if state.fixed is not None:
            arrays["fixed"] = _np(state.fixed).astype(bool)
        if "energies" in self.per_atom and state.energies is not None:
            arrays["energies"] = np.asarray(_np(state.energies), dtype=np.float64)
        if stresses is not None:
            arrays["stresses"] = np.asarray(stresses, dtype=np.float64)
        step = int(state.step)
        cell = _np(state.cell).astype(float)
        meta = {"kind": "trajectory-frame", "step": step, "time_ps": step * self.timestep_fs * 1e-3,
                "timestep_fs": self.timestep_fs, "energy": float(state.energy), "cell": cell.tolist(),
                "pbc": [bool(p) for p in state.pbc], "trajectory_format": self.fmt,
                "per_atom": list(self.per_atom)}
        write_shard_set(self.comm, self.root / f"{step:010d}", arrays, cell, state.pbc, meta,
                        self.root / f"{step:010d}.json")


def state_from_arrays(a: Dict[str, np.ndarray], manifest: dict):
    """An MDState (whole system, CPU) from merged shard arrays, for the ordinary file writers."""
    from .state import MDState

    t = lambda x, dt=torch.float64: torch.from_numpy(np.ascontiguousarray(x)).to(dt)  # noqa: E731
    return MDState(positions=t(a["positions"]), velocities=t(a["velocities"]), masses=t(a["masses"]),
                   numbers=t(a["numbers"], torch.int64), ids=t(a["ids"], torch.int64),
                   cell=torch.tensor(manifest["cell"], dtype=torch.float64), pbc=tuple(manifest["pbc"]),
                   n_atoms_global=int(a["ids"].shape[0]), step=int(manifest["step"]),
                   energy=float(manifest.get("energy", 0.0)),
                   forces=t(a["forces"]) if "forces" in a else None,
                   energies=np.asarray(a["energies"]) if "energies" in a else None,
                   fixed=torch.from_numpy(np.asarray(a["fixed"], dtype=bool)) if "fixed" in a else None)


def iter_frames(path) -> Iterator[dict]:
    """Manifests (checked) of a sharded trajectory folder / output directory, or of one manifest file."""
    path = Path(path)
    paths = [path] if path.suffix == ".json" else frame_manifests(path)
    for p in paths:
        yield read_manifest(p)


# -- merging for viewers (`atomsim convert`) ----------------------------------------------
CONVERT_FORMATS = {".extxyz": "extxyz", ".xyz": "extxyz", ".traj": "traj", ".h5md": "h5md"}


def _source_manifests(source: Path) -> List[Path]:
    """The manifests ``source`` names: a manifest file, a trajectory.shards folder, or an output directory."""
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise ShardError(f"convert: {source} does not exist")
    frames = frame_manifests(source)
    if frames:
        return frames
    if (source / RESTART_MANIFEST).exists():
        return [source / RESTART_MANIFEST]
    raise ShardError(f"convert: {source} holds no sharded output (no {TRAJECTORY_SHARDS}/*.json frame "
                     f"manifests, no {RESTART_MANIFEST})")


def convert(source, output, progress: Optional[Callable[[str], None]] = None) -> dict:
    """Merge sharded frames (or a sharded restart) into one extxyz / ASE .traj / H5MD file, atoms by id.

    Each frame is merged in this process (the whole frame at once: viewers need it whole).
    Returns ``{"frames": n, "atoms": n_atoms, "output": path}``; ShardError on a missing shard,
    a manifest that does not match its shards, or a damaged shard.
    """
    from ase.constraints import FixAtoms
    from ase.io import write

    from .trajectory import AseTrajWriter, H5MDWriter, TrajectoryWriter

    source, output = Path(source), Path(output)
    fmt = CONVERT_FORMATS.get(output.suffix)
    if fmt is None:
        raise InputError(f"convert: output {output} must end in one of {', '.join(CONVERT_FORMATS)}")
    paths = _source_manifests(source)
    say = progress or (lambda _msg: None)
    writer = None
    output.parent.mkdir(parents=True, exist_ok=True)
    output.unlink(missing_ok=True)
    n_atoms = 0
    for i, p in enumerate(paths):
        m = read_manifest(p)
        a = merged(m, progress=lambda k, n, _i=i: say(f"frame {_i + 1}/{len(paths)}: shard {k}/{n}"))
        if a["ids"].shape[0] != m["n_atoms"] or np.unique(a["ids"]).shape[0] != m["n_atoms"]:
            raise ShardError(f"{p}: its shards hold {np.unique(a['ids']).shape[0]} distinct atom ids, "
                             f"the manifest says {m['n_atoms']}")
        n_atoms = int(m["n_atoms"])
        state = state_from_arrays(a, m)
        if m.get("kind") == "restart":
            if fmt == "h5md":
                raise InputError("convert: a restart converts to .extxyz or .traj (it has no forces/energies)")
            atoms = state.to_atoms()
            if state.fixed is not None and bool(state.fixed.any()):
                atoms.set_constraint(FixAtoms(mask=state.fixed.numpy()))
            atoms.info["step"] = int(m["step"])
            write(output, atoms, format="extxyz" if fmt == "extxyz" else "traj", parallel=False)
        else:
            if writer is None:
                cls = {"extxyz": TrajectoryWriter, "traj": AseTrajWriter, "h5md": H5MDWriter}[fmt]
                writer = cls(output, float(m["timestep_fs"]), enabled=True, append=False,
                             per_atom=m.get("per_atom", ()))
            writer.write(state, stresses=a.get("stresses"))
        say(f"frame {i + 1}/{len(paths)}: step {m['step']}, {n_atoms} atoms -> {output}")
    return {"frames": len(paths), "atoms": n_atoms, "output": str(output)}
