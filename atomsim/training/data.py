"""Training-data plumbing: fast reading of (compressed) extxyz, a parse cache, chemistry families.

Why a module of its own: ASE given a ``.xz`` path decompresses through a slow file wrapper (a
12k-frame set took > 10 min); decompressing into memory first and parsing from a StringIO takes
seconds. Structures are fixed during training, so their neighbor graphs are computed once and may
be cached next to the training output (``data_cache.npz``), so a resumed run skips the parse.

Chemistry families (:func:`chemistry_family`), first rule that matches wins:

1. ``noble gases``: any of He, Ne, Ar, Kr, Xe, Rn.
2. ``molecular/H-containing``: any H, or only molecule-forming non-metals (N, O, F, Cl, Br, I; e.g.
   solid O2, N-F); these are the bonded-molecule chemistries.
3. ``oxides``: O with at least one other element (metal or not).
4. ``halides``: F, Cl, Br or I with at least one other element.
5. ``metals``: every element a metal (alkali, alkaline earth, transition, lanthanide, actinide,
   Al, Ga, In, Tl, Sn, Pb, Bi).
6. ``covalent``: the rest, i.e. containing B, C, N, Si, P, S, Ge, As, Se, Sb or Te without O or a
   halogen (elemental semiconductors, carbides, nitrides, pnictides, chalcogenides).

The data set's own ``family`` field (the chemistry of the element pair its generator drew) is kept
next to this, and ``config_type`` (the generator) groups errors by structure kind.
"""
from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

FAMILIES = ("metals", "oxides", "halides", "covalent", "molecular/H-containing", "noble gases")
NOBLE = frozenset({"He", "Ne", "Ar", "Kr", "Xe", "Rn"})
HALOGENS = frozenset({"F", "Cl", "Br", "I"})
MOLECULAR_NONMETALS = frozenset({"H", "N", "O"}) | HALOGENS
COVALENT = frozenset({"B", "C", "N", "Si", "P", "S", "Ge", "As", "Se", "Sb", "Te", "At", "Po"})
NONMETALS = NOBLE | HALOGENS | COVALENT | {"H", "O"}

_OPENERS = {".xz": lzma.open, ".lzma": lzma.open, ".gz": gzip.open, ".bz2": bz2.open}


def chemistry_family(symbols: Iterable[str]) -> str:
    """The family of a structure from its set of element symbols (rules in the module docstring)."""
    els = set(symbols)
    if not els:
        raise ValueError("chemistry_family: no elements")
    if els & NOBLE:
        return "noble gases"
    if "H" in els or els <= MOLECULAR_NONMETALS:
        return "molecular/H-containing"
    if "O" in els:
        return "oxides"
    if els & HALOGENS:
        return "halides"
    if not els & NONMETALS:
        return "metals"
    return "covalent"


def read_frames(path: str | Path, index: str = ":") -> list:
    """ASE Atoms from an extxyz file, plain or compressed (.xz/.lzma, .gz, .bz2 by extension).

    Compressed files are decompressed into memory and parsed from a StringIO: the same frames as
    ASE on the plain file, much faster than handing ASE the compressed path.
    """
    from ase.io import read

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"data: {path} is not a file")
    opener = _OPENERS.get(p.suffix.lower())
    if opener is None:
        frames = read(str(p), index=index)
    else:
        with opener(p, "rt") as fh:
            text = fh.read()
        fmt = "extxyz"
        frames = read(io.StringIO(text), index=index, format=fmt)
    return frames if isinstance(frames, list) else [frames]


# --------------------------------------------------------------------------- parse cache
def cache_key(path: str | Path, **params) -> str:
    """Identifies a parse: file name, size, modification time and the parse parameters."""
    st = Path(path).stat()
    blob = json.dumps({"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                       **params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_samples(samples: Sequence, path: str | Path, key: str) -> None:
    """Write samples (atomsim.training.trainer.Sample) as flat arrays in one .npz (atomic replace)."""
    n_at = np.array([s.n_atoms for s in samples], dtype=np.int64)
    n_ed = np.array([int(s.receivers.shape[0]) for s in samples], dtype=np.int64)
    has_s = np.array([s.stress is not None for s in samples])
    stress = np.stack([s.stress.numpy() if s.stress is not None else np.zeros((3, 3)) for s in samples])
    meta = [[s.system, s.family, s.config_type, s.data_family] for s in samples]
    tmp = Path(f"{path}.{os.getpid()}.tmp.npz")  # unique per process, then an atomic rename
    np.savez(
        tmp, key=np.array(key), n_atoms=n_at, n_edges=n_ed,
        numbers=np.concatenate([s.numbers.numpy() for s in samples]).astype(np.int16),
        vectors=np.concatenate([s.vectors.numpy() for s in samples]),
        receivers=np.concatenate([s.receivers.numpy() for s in samples]).astype(np.int32),
        senders=np.concatenate([s.senders.numpy() for s in samples]).astype(np.int32),
        energy=np.array([s.energy for s in samples]), forces=np.concatenate([s.forces.numpy() for s in samples]),
        stress=stress, has_stress=has_s, volume=np.array([s.volume for s in samples]),
        meta=np.array(json.dumps(meta)),
    )
    tmp.replace(path)


def load_samples(path: str | Path, key: str):
    """Samples from :func:`save_samples`, or None when the file is absent or was made for other data."""
    import torch

    from .trainer import Sample

    p = Path(path)
    if not p.is_file():
        return None
    try:
        z = np.load(p)
        if str(z["key"]) != key:
            return None
        arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError):
        return None
    meta = json.loads(str(arrays["meta"]))
    a_off = np.concatenate([[0], np.cumsum(arrays["n_atoms"])])
    e_off = np.concatenate([[0], np.cumsum(arrays["n_edges"])])
    numbers = torch.from_numpy(arrays["numbers"].astype(np.int64))
    vectors, forces = torch.from_numpy(arrays["vectors"]), torch.from_numpy(arrays["forces"])
    recv = torch.from_numpy(arrays["receivers"].astype(np.int64))
    send = torch.from_numpy(arrays["senders"].astype(np.int64))
    out = []
    for k, (system, family, config_type, data_family) in enumerate(meta):
        a0, a1, e0, e1 = a_off[k], a_off[k + 1], e_off[k], e_off[k + 1]
        out.append(Sample(
            numbers=numbers[a0:a1], vectors=vectors[e0:e1], receivers=recv[e0:e1], senders=send[e0:e1],
            energy=float(arrays["energy"][k]), forces=forces[a0:a1],
            stress=torch.from_numpy(arrays["stress"][k].copy()) if arrays["has_stress"][k] else None,
            volume=float(arrays["volume"][k]), system=system, family=family, config_type=config_type,
            data_family=data_family))
    return out


# --------------------------------------------------------------------------- splits and metrics
def split_by_structure(n: int, val_fraction: float, test_fraction: float, seed: int,
                       max_structures: int | None = None) -> dict[str, np.ndarray]:
    """Disjoint train/val/test index sets over whole structures, fixed by ``seed``."""
    perm = np.random.default_rng(seed).permutation(n)
    if max_structures:
        perm = perm[:max_structures]
    m = len(perm)
    n_test = int(round(test_fraction * m))
    n_val = int(round(val_fraction * m))
    return {"test": perm[:n_test], "val": perm[n_test:n_test + n_val], "train": perm[n_test + n_val:]}


def error_summary(e_true: np.ndarray, e_pred: np.ndarray, f_true: np.ndarray, f_pred: np.ndarray,
                  n_atoms: np.ndarray) -> dict:
    """MAE/RMSE of energy per atom (meV/atom) and force components (meV/Å)."""
    de = np.abs(np.asarray(e_true) - np.asarray(e_pred))
    df = np.abs(np.asarray(f_true) - np.asarray(f_pred)).ravel()
    return {"n_structures": int(len(de)), "n_atoms": int(np.sum(n_atoms)),
            "energy_mae_meV_per_atom": 1000 * float(de.mean()),
            "energy_rmse_meV_per_atom": 1000 * float(np.sqrt((de**2).mean())),
            "force_mae_meV_per_A": 1000 * float(df.mean()) if df.size else float("nan"),
            "force_rmse_meV_per_A": 1000 * float(np.sqrt((df**2).mean())) if df.size else float("nan")}


def grouped_errors(rows: Sequence[tuple], group: int) -> dict[str, dict]:
    """:func:`error_summary` per value of ``row[group]`` over evaluate()'s rows.

    A row is (system, n_atoms, E_ref/atom, E_model/atom, F_ref, F_model, family, config_type).
    """
    out = {}
    for name in sorted({r[group] for r in rows}):
        rs = [r for r in rows if r[group] == name]
        out[name] = error_summary(np.array([r[2] for r in rs]), np.array([r[3] for r in rs]),
                                  np.concatenate([r[4].ravel() for r in rs]),
                                  np.concatenate([r[5].ravel() for r in rs]), np.array([r[1] for r in rs]))
    return out


class ActiveClock:
    """Seconds of training time: wall time minus gaps in which the process did not run (SIGSTOP).

    A step whose wall time exceeds ``pause_s`` while the process used under a fifth of it in CPU
    counts only its CPU time, so a paused run neither ends early nor reports a false ETA.
    """

    def __init__(self, start: float = 0.0, pause_s: float = 30.0):
        self.total, self.pause_s = float(start), pause_s
        self._wall, self._cpu = time.time(), time.process_time()

    def tick(self) -> float:
        wall, cpu = time.time(), time.process_time()
        dw, dc = wall - self._wall, cpu - self._cpu
        self._wall, self._cpu = wall, cpu
        self.total += dc if (dw > self.pause_s and dc < 0.2 * dw) else dw
        return self.total
