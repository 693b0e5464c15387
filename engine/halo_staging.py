"""Halo messages from wherever the tensors live: host views, CUDA-aware MPI, or pinned host staging.

Why: with one rank per GPU the ghost rows (positions every step, features every layer, forces
back) live on the device. A CUDA-aware MPI takes device buffers as they are; any other MPI (the
mpich wheel) needs the bytes on the host, and pinned (page-locked) host buffers make those
copies asynchronous DMA. Buffers are kept per peer and direction and reused between steps (an
exchange's shape changes only at a rebuild), so a step allocates no host memory. Exchanges are
split into :meth:`HaloStaging.begin` (copies queued, receives and sends posted) and
:meth:`HaloStaging.finish` (wait, copy in), so a caller can do interior work in between.
On CPU tensors ``host`` mode hands MPI zero-copy numpy views; ``pinned`` mode runs the staging
path with pinning a no-op (what the CPU tests exercise).
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .comm import Comm

MODES = ("auto", "host", "pinned", "cuda-aware")


def cuda_aware_mpi() -> bool:
    """Whether the MPI library takes CUDA device buffers.

    ``ATOMSIM_CUDA_AWARE_MPI=1/0`` decides when set (a site knows its MPI); else the library is
    asked through ``MPIX_Query_cuda_support`` (Open MPI, MPICH >= 4) when it exports it. No
    answer means no: staging through the host is always correct.
    """
    forced = os.environ.get("ATOMSIM_CUDA_AWARE_MPI", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    try:
        query = ctypes.CDLL(None).MPIX_Query_cuda_support
        query.restype = ctypes.c_int
        return bool(query())
    except (OSError, AttributeError):
        return False


@dataclass
class Pending:
    """One exchange in flight: MPI requests and where the received bytes go."""

    requests: list
    recv: Dict[int, Tensor]  # peer -> uint8 buffer (host or device) holding the message
    shapes: Dict[int, Tuple[int, ...]]
    dtype: torch.dtype
    device: torch.device
    mode: str
    keep: list = field(default_factory=list)  # send buffers that must live until the wait


class HaloStaging:
    """Per-peer byte buffers for one ghost plan's exchanges, reused between steps."""

    def __init__(self, comm: Comm, mode: Optional[str] = None):
        mode = (mode or os.environ.get("ATOMSIM_HALO_STAGING", "auto")).strip().lower()
        if mode not in MODES:
            raise ValueError(f"ATOMSIM_HALO_STAGING={mode!r}: use one of {', '.join(MODES)}")
        self.comm = comm
        self.mode = mode
        self._host: Dict[tuple, Tensor] = {}
        self._copied: Optional[object] = None  # CUDA event: the last copies out of the host buffers done
        self._cuda_aware: Optional[bool] = None  # cuda_aware_mpi(), asked once (not per exchange)
        self.modes_used: set = set()

    def mode_for(self, like: Tensor) -> str:
        """``host`` (CPU tensors), ``cuda-aware`` (device buffers to MPI) or ``pinned`` (staged)."""
        if self.mode == "pinned":
            return "pinned"
        if like.device.type == "cpu":
            return "host"
        if self.mode == "host":
            return "pinned"  # device tensors always reach MPI through the host
        if self._cuda_aware is None and self.mode != "cuda-aware" and self.comm.size > 1:
            self._cuda_aware = cuda_aware_mpi()  # an environment read and a dlsym: not every exchange
        if self.mode == "cuda-aware" or (self.comm.size > 1 and self._cuda_aware):
            return "cuda-aware" if self.comm.size > 1 else "pinned"
        return "pinned"

    def _buffer(self, key: tuple, nbytes: int) -> Tensor:
        """A reused host byte buffer of at least ``nbytes`` (pinned when CUDA exists)."""
        buf = self._host.get(key)
        if buf is None or buf.numel() < nbytes:
            size = max(nbytes, 1) if buf is None else max(nbytes, int(buf.numel() * 1.25))
            buf = torch.empty(size, dtype=torch.uint8, pin_memory=torch.cuda.is_available())
            self._host[key] = buf
        return buf[:nbytes]

    @property
    def nbytes(self) -> int:
        """Host bytes held for staging (memory accounting)."""
        return sum(int(b.numel()) for b in self._host.values())

    def begin(self, send: Dict[int, Tensor], recv_shapes: Dict[int, tuple], like: Tensor, tag: int) -> Pending:
        """Queue the copies to the host (if any), post every receive, then every send."""
        mode = self.mode_for(like)
        self.modes_used.add(mode)
        item = like.element_size()
        if self._copied is not None:  # the previous exchange's copies out of these buffers are done
            self._copied.synchronize()
            self._copied = None
        recv: Dict[int, Tensor] = {}
        for r, shape in recv_shapes.items():
            n = int(np.prod(shape)) * item
            if mode == "cuda-aware":
                recv[r] = torch.empty(n, dtype=torch.uint8, device=like.device)
            elif mode == "pinned":
                recv[r] = self._buffer(("recv", r), n)
            else:  # host: fresh numpy-backed buffers are what the result views
                recv[r] = torch.empty(n, dtype=torch.uint8)
        out: Dict[int, Tensor] = {}
        for r, t in send.items():
            raw = t.detach().contiguous().view(torch.uint8).reshape(-1)
            if mode == "pinned":
                buf = self._buffer(("send", r), raw.numel())
                buf.copy_(raw, non_blocking=True)  # DMA from the device; plain copy on CPU
                out[r] = buf
            else:
                out[r] = raw
        if mode != "host" and like.device.type == "cuda":
            torch.cuda.current_stream(like.device).synchronize()  # the bytes are in place before MPI reads
        reqs = self.comm.exchange_start({r: _mpi_view(b) for r, b in out.items()},
                                        {r: _mpi_view(b) for r, b in recv.items()}, tag=tag)
        return Pending(reqs, recv, dict(recv_shapes), like.dtype, like.device, mode, keep=list(out.values()))

    def finish(self, p: Pending) -> Dict[int, Tensor]:
        """Wait for the exchange; the received rows as tensors on the caller's device (consume at once:
        in ``pinned`` mode the next exchange reuses the host buffers)."""
        self.comm.exchange_wait(p.requests)
        res = {}
        for r, buf in p.recv.items():
            if p.mode == "pinned" and p.device.type != "cpu":
                dev = torch.empty(buf.numel(), dtype=torch.uint8, device=p.device)
                dev.copy_(buf, non_blocking=True)
                buf = dev
            elif p.mode == "pinned":
                buf = buf.clone()  # CPU: the host buffer is reused by the next exchange
            res[r] = buf.view(p.dtype).reshape(p.shapes[r])
        if p.mode == "pinned" and p.device.type == "cuda":
            self._copied = torch.cuda.Event()
            self._copied.record(torch.cuda.current_stream(p.device))
        return res


def _mpi_view(buf: Tensor):
    """What MPI reads or writes: a numpy view of a host tensor, the tensor itself on a device."""
    return buf.numpy() if buf.device.type == "cpu" else buf
