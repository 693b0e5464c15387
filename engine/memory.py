"""Memory per atom, measured by the run itself: peak RSS per owned atom and where the bytes are.

Why: the mission's systems are limited by memory per atom, not by speed, so a run states what it
holds. ``peak RSS`` is the operating system's high-water mark of the process
(``resource.getrusage``); the breakdown counts the bytes of the arrays the engine keeps per rank:

- ``state``: positions, velocities, forces, masses, numbers, ids, fixed (and the force provider's
  per-atom copies: list reference positions, images, species of owned + ghost atoms; and the
  run's last good state, kept for blow-up recovery);
- ``neighbor_list``: pair indices, cell shifts, CSR offsets, reference positions, cached shifts;
- ``ghosts``: their bookkeeping and halo plan, plus one refreshed copy of their positions;
- ``model``: what a force evaluation adds on top (edge vectors, activations kept for autograd,
  temporaries), measured as the rise of peak RSS over the RSS before the first evaluation, less
  what that evaluation built to keep (the list, the ghosts, the provider's copies).

``baseline`` is the RSS before the system was built (interpreter, torch, numba, the model).
"""
from __future__ import annotations

import ctypes
import os
import resource
import sys
from typing import Dict, Optional

import numpy as np
import torch

_KIB = 1024 if sys.platform != "darwin" else 1  # ru_maxrss: KiB on Linux, bytes on macOS


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def limit_heap_growth(threshold: int = 1 << 20) -> bool:
    """Arrays over ``threshold`` bytes get their own mappings, handed back to the system when freed.

    Why: glibc's dynamic threshold rises to 32 MiB after the first large free, so the arrays one
    force evaluation frees stay in the heap and the next peak stacks on them. Measured for the
    bundled GNN on 2 ranks (benchmarks/results/memory_gnn_*_2r_*mmap*.json): 4.9e4 atoms
    37.6 -> 28.2 kB peak per owned atom with 1 MiB. A ``MALLOC_MMAP_THRESHOLD_`` set by the user
    wins; a no-op where the C library has no ``mallopt`` (not glibc). Returns whether it was set.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        return bool(ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False


def peak_rss() -> int:
    """The process's peak resident set size so far, bytes."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * _KIB


def current_rss() -> int:
    """The process's resident set size now, bytes (Linux /proc; else the peak)."""
    try:
        with open("/proc/self/statm") as fh:
            import os

            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss()


def nbytes(*objs) -> int:
    """Bytes held by tensors / arrays (None and non-arrays count 0)."""
    total = 0
    for a in objs:
        if isinstance(a, torch.Tensor):  # the storage: a broadcast view costs its one row, a slice its base
            total += a.untyped_storage().nbytes()
        elif isinstance(a, np.ndarray):
            total += a.nbytes
    return total


def _state_bytes(state) -> int:
    return nbytes(state.positions, state.velocities, state.forces, state.masses, state.numbers, state.ids,
                  state.fixed, state.energies)


def _provider_bytes(forces) -> int:
    return nbytes(*(getattr(forces, k, None) for k in ("_ref_owned", "_image", "_numbers")))


def breakdown(state, forces, kept: Optional[dict] = None) -> Dict[str, int]:
    """Bytes this rank holds by part (see the module docstring), without the model's transient.

    ``kept``: the run's last good state (``{"state": MDState, "neighbor": {name: tensor}}``, kept
    for blow-up recovery), counted under state.
    """
    st = _state_bytes(state) + _provider_bytes(forces)
    if kept:
        st += _state_bytes(kept["state"]) + nbytes(*kept.get("neighbor", {}).values())
    nl = getattr(forces, "nlist", None)
    nlb = 0
    if nl is not None:
        # a compact list expands receivers only on demand: count them only if they exist (no expansion here)
        receivers = nl.__dict__["_receivers"] if "_receivers" in nl.__dict__ else nl.receivers
        nlb = nbytes(receivers, nl.senders, nl.cell_shifts, nl.row_ptr, nl.reference_positions)
        cache = getattr(forces, "_shift_cache", None)
        if isinstance(cache, tuple):
            nlb += nbytes(*cache)
    ghosts = getattr(forces, "ghosts", None)
    gb = 0 if ghosts is None else ghosts.nbytes + ghosts.n * 3 * 8
    return {"state": st, "neighbor_list": nlb, "ghosts": gb}


class MemoryMeter:
    """Peak RSS per owned atom over the ranks, with the breakdown; ``mark_*`` around the first evaluation."""

    def __init__(self, comm):
        self.comm = comm
        self.baseline = current_rss()
        self.before_model: Optional[int] = None
        self.model = 0

    def mark_before_forces(self) -> None:
        self.before_model = current_rss()

    def mark_after_forces(self) -> None:
        if self.before_model is not None:
            self.model = max(peak_rss() - self.before_model, 0)

    def per_atom(self, n_owned: int) -> float:
        """Max over ranks of this rank's peak RSS / its owned atoms (collective)."""
        return float(self.comm.allreduce_max(peak_rss() / max(int(n_owned), 1)))

    def report(self, state, forces, kept: Optional[dict] = None) -> dict:
        """The figures of every rank reduced to the worst rank's (collective).

        The first evaluation also built the neighbor list, the ghosts and the provider's copies:
        those are counted in their parts, so ``model`` is the rest of the rise of the peak.
        """
        n = max(state.n_local, 1)
        parts = breakdown(state, forces, kept)
        built = parts["neighbor_list"] + parts["ghosts"] + _provider_bytes(forces)
        parts["model"] = max(self.model - built, 0)
        local = np.array([peak_rss(), peak_rss() / n, (peak_rss() - self.baseline) / n, self.baseline]
                         + [parts[k] / n for k in ("state", "neighbor_list", "ghosts", "model")])
        worst = self.comm.allreduce_max(local)
        keys = ("peak_rss_B", "peak_rss_B_per_atom", "above_baseline_B_per_atom", "baseline_B",
                "state_B_per_atom", "neighbor_list_B_per_atom", "ghosts_B_per_atom", "model_B_per_atom")
        out = dict(zip(keys, (float(x) for x in worst)))
        out["ranks"] = self.comm.size
        out["n_owned_max"] = int(self.comm.allreduce_max(state.n_local))
        return out


def format_report(r: dict) -> str:
    """One line for the terminal."""
    return (f"memory: peak RSS {r['peak_rss_B'] / 2**20:.0f} MiB per rank, "
            f"{r['peak_rss_B_per_atom']:.0f} B per owned atom "
            f"({r['above_baseline_B_per_atom']:.0f} above the "
            f"{r['baseline_B'] / 2**20:.0f} MiB baseline): state {r['state_B_per_atom']:.0f}, neighbor list "
            f"{r['neighbor_list_B_per_atom']:.0f}, ghosts {r['ghosts_B_per_atom']:.0f}, model "
            f"{r['model_B_per_atom']:.0f} B/atom (worst rank each)")
