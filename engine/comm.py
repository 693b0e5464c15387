"""The one communicator: every collective and point-to-point operation of the engine and training.

Everything that crosses ranks (sums over atoms, the rebuild vote, migration,
ghost exchanges, gathering the system for output, gradient sums in training,
aborting the job) goes through a :class:`Comm`, so the same code is correct
on one rank and on many. ``Comm()`` is the serial case: size 1, no mpi4py
import, and every operation is what MPI would do on one rank (a message to
oneself comes back unchanged). ``Comm(mpi4py_communicator)`` runs over MPI;
this module is the only place in the package that touches mpi4py.

:func:`world_comm` is the one launch detector: it returns the world Comm when
an MPI launcher started several ranks, else the serial one.
"""
from __future__ import annotations

import os
import sys
import traceback
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

# environment variables set by MPI launchers (MPICH/hydra, Open MPI, PMIx, Slurm, MVAPICH)
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_SIZE", "SLURM_NTASKS")
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")
# this process's rank among the ranks on its node (MPICH/hydra, Open MPI, MVAPICH, Slurm, Cray PALS)
_LOCAL_RANK_VARS = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK",
                    "SLURM_LOCALID", "PALS_LOCAL_RANKID")


class Comm:
    """Collectives and point-to-point messages over an mpi4py communicator, or serial (size 1).

    Reductions take floats, ints, numpy arrays and torch tensors (arrays go
    through buffer ``Allreduce``); object operations (``bcast``, ``gather``,
    ``alltoall``, ``sendrecv``) pickle; ``exchange``/``send``/``recv`` move raw
    numpy buffers without pickling (the per-step halo traffic).
    """

    def __init__(self, mpi_comm=None):
        self._comm = mpi_comm
        if mpi_comm is None:
            self._MPI = None
            self.rank, self.size = 0, 1
        else:
            from mpi4py import MPI

            self._MPI = MPI
            self.rank, self.size = int(mpi_comm.Get_rank()), int(mpi_comm.Get_size())

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        return f"Comm(rank={self.rank}, size={self.size}{'' if self._comm is None else ', MPI'})"

    # -- reductions -----------------------------------------------------------
    def allreduce_sum(self, x, out: Optional[np.ndarray] = None):
        """Sum over ranks; ``out`` (numpy input only) receives the result without an allocation."""
        return self._reduce(x, "SUM", out)

    def allreduce_max(self, x, out: Optional[np.ndarray] = None):
        return self._reduce(x, "MAX", out)

    def allreduce_min(self, x, out: Optional[np.ndarray] = None):
        return self._reduce(x, "MIN", out)

    def _reduce(self, x, op: str, out: Optional[np.ndarray]):
        if self._comm is None:
            if out is not None:
                out[...] = x
                return out
            return x
        mpi_op = getattr(self._MPI, op)
        if isinstance(x, np.ndarray):
            if out is None:
                out = np.empty_like(x)
            self._comm.Allreduce(np.ascontiguousarray(x), out, op=mpi_op)
            return out
        if type(x).__module__.startswith("torch"):
            import torch

            if isinstance(x, torch.Tensor):
                wide = x.dtype in (torch.bfloat16, torch.float16)  # no MPI type: reduce in float32
                arr = x.detach().to("cpu", torch.float32 if wide else x.dtype).contiguous().numpy()
                res = np.empty_like(arr)
                self._comm.Allreduce(arr, res, op=mpi_op)
                return torch.from_numpy(res).to(device=x.device, dtype=x.dtype)
        return self._comm.allreduce(x, op=mpi_op)

    def split(self, color: Optional[int], key: int = 0) -> Optional["Comm"]:
        """A Comm over the ranks that pass the same ``color`` (None: this rank joins none). Collective.

        Ranks are ordered by ``key`` then by their rank here (MPI_Comm_split); tools run a job
        on part of the ranks with it (a 2-rank case inside a 4-rank launch).
        """
        if self._comm is None:
            return None if color is None else self
        sub = self._comm.Split(self._MPI.UNDEFINED if color is None else int(color), int(key))
        return None if sub == self._MPI.COMM_NULL else Comm(sub)

    def local_rank(self) -> int:
        """This rank's index among the ranks on its node (what picks its GPU). Collective on first use.

        The launcher's variable when it sets one (every rank sees its own), else the rank in an
        MPI_COMM_TYPE_SHARED split of this communicator; 0 on one rank.
        """
        cached = self.__dict__.get("_local_rank")
        if cached is None:
            cached = local_rank_from_env()
            if cached is None:
                cached = 0 if self._comm is None else int(
                    self._comm.Split_type(self._MPI.COMM_TYPE_SHARED, key=self.rank).Get_rank())
            self._local_rank = cached
        return cached

    # -- objects --------------------------------------------------------------
    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj if self._comm is None else self._comm.bcast(obj, root=root)

    def barrier(self) -> None:
        if self._comm is not None:
            self._comm.Barrier()

    def gather(self, obj: Any, root: int = 0) -> Optional[List[Any]]:
        """Every rank's ``obj`` in rank order on ``root``; None elsewhere."""
        if self._comm is None:
            return [obj]
        return self._comm.gather(obj, root=root)

    def allgather(self, obj: Any) -> List[Any]:
        return [obj] if self._comm is None else self._comm.allgather(obj)

    def alltoall(self, objs: List[Any]) -> List[Any]:
        """``objs[r]`` goes to rank r; returns what each rank sent here, in rank order."""
        if len(objs) != self.size:
            raise ValueError(f"alltoall needs one entry per rank ({self.size}), got {len(objs)}")
        return list(objs) if self._comm is None else self._comm.alltoall(objs)

    def sendrecv(self, obj: Any, dest: Optional[int], source: Optional[int], tag: int = 0) -> Any:
        """Send ``obj`` to ``dest`` and receive from ``source`` at once; None means no partner."""
        if self._comm is None:
            self._check_self(dest, source)
            return obj if source is not None else None
        MPI = self._MPI
        return self._comm.sendrecv(obj, dest=MPI.PROC_NULL if dest is None else dest, sendtag=tag,
                                   source=MPI.PROC_NULL if source is None else source, recvtag=tag)

    def gather_by_id(self, ids: np.ndarray, root: int = 0,
                     **arrays: Optional[np.ndarray]) -> Optional[Dict[str, np.ndarray]]:
        """Every rank's rows concatenated and sorted by id on ``root`` (None elsewhere). Collective.

        The result holds ``ids`` and each named array; an array that is None
        on any rank is left out. The layout is that of a 1-rank run, so output
        written from it does not depend on the rank count.
        """
        part = {k: np.asarray(v) for k, v in arrays.items() if v is not None}
        part["ids"] = np.asarray(ids)
        parts = self.gather(part, root=root)
        if parts is None:
            return None
        order = np.argsort(np.concatenate([p["ids"] for p in parts]), kind="stable")
        keys = ["ids"] + [k for k in arrays if all(k in p for p in parts)]
        return {k: np.concatenate([p[k] for p in parts])[order] for k in keys}

    # -- raw buffers ----------------------------------------------------------
    def exchange(self, send: Mapping[int, np.ndarray], recv: Mapping[int, np.ndarray], tag: int = 0) -> None:
        """Nonblocking all-at-once exchange of byte buffers: ``send[r]`` to rank r, ``recv[r]`` filled from r.

        Every receive is posted before any send, then all complete together.
        """
        if self._comm is None:  # only messages to oneself: copy the bytes, as MPI would
            for r, buf in recv.items():
                self._check_self(r, r)
                src = memoryview(np.ascontiguousarray(send[r])).cast("B")
                dst = memoryview(buf).cast("B")
                if src.nbytes != dst.nbytes:
                    raise ValueError(f"exchange: {src.nbytes} bytes sent into a {dst.nbytes}-byte buffer")
                dst[:] = src
            return
        self.exchange_wait(self.exchange_start(send, recv, tag))

    def exchange_start(self, send: Mapping[int, Any], recv: Mapping[int, Any], tag: int = 0) -> list:
        """:meth:`exchange` without the wait: post the receives, then the sends; returns the requests.

        Buffers are numpy arrays, or device arrays a CUDA-aware MPI takes (engine/halo_staging.py);
        neither may be touched until :meth:`exchange_wait`. Serial: the copy is done here.
        """
        if self._comm is None:
            self.exchange(send, recv, tag)
            return []
        MPI = self._MPI
        reqs = [self._comm.Irecv([buf, MPI.BYTE], source=r, tag=tag) for r, buf in recv.items()]
        reqs += [self._comm.Isend([buf, MPI.BYTE], dest=r, tag=tag) for r, buf in send.items()]
        return reqs

    def exchange_wait(self, requests: list) -> None:
        """Complete the requests of :meth:`exchange_start`."""
        if requests:
            self._MPI.Request.Waitall(requests)

    def send(self, buf: np.ndarray, dest: int, tag: int = 0) -> None:
        """Blocking send of a numpy buffer (as bytes)."""
        self._check_mpi("send")
        self._comm.Send([buf, self._MPI.BYTE], dest=dest, tag=tag)

    def recv(self, buf: np.ndarray, source: int, tag: int = 0) -> None:
        """Blocking receive into a numpy buffer (as bytes)."""
        self._check_mpi("recv")
        self._comm.Recv([buf, self._MPI.BYTE], source=source, tag=tag)

    def _check_self(self, *peers: Optional[int]) -> None:
        if any(p not in (None, 0) for p in peers):
            raise ValueError(f"a serial Comm has only rank 0, not {peers}")

    def _check_mpi(self, what: str) -> None:
        if self._comm is None:  # a blocking message to oneself would deadlock under MPI too
            raise RuntimeError(f"Comm.{what}: a blocking message needs another rank")

    # -- ending the job -------------------------------------------------------
    def abort(self, exit_code: int = 1, message: Optional[str] = None, *, cause: bool = True) -> None:
        """End every rank now with ``exit_code`` (``[rank r/N] message`` on stderr first).

        MPI_Abort passes the code to ``mpiexec``'s exit status, so 2 (input
        error) and 3 (stopped run) reach the caller as in a serial run. Serial:
        raises SystemExit(exit_code). ``cause=False``: this rank only noticed another
        rank's end (an MPI error), so the watchdogs still name the rank that died.
        """
        if message is not None:
            sys.stderr.write(f"{self.prefix}{message}\n")
        sys.stderr.flush()
        sys.stdout.flush()
        if self._comm is None:
            raise SystemExit(exit_code)
        _tell_watchdog(b"aborted" if cause else b"lost a peer")  # this rank said why it ends
        self._comm.Abort(int(exit_code))

    def lost_peer(self, exc: BaseException) -> bool:
        """An MPI error: another rank is gone, and this rank's end is the consequence, not the cause
        (its abort then leaves the naming of the dead rank to that rank's watchdog)."""
        return self._MPI is not None and isinstance(exc, self._MPI.Exception)

    @property
    def prefix(self) -> str:
        return f"[rank {self.rank}/{self.size}] " if self.size > 1 else ""

    def install_abort_handler(self) -> None:
        """Make an uncaught exception on this rank end every rank (no-op on one rank).

        Without it, a rank that dies leaves the others waiting in a collective
        forever. The exit status follows the exception type as in the CLI
        (engine.errors.exit_status: 2 input error, 3 stopped run, 1 else).
        """
        if self.size == 1:
            return

        def hook(exc_type, exc, tb):
            from .errors import exit_status

            code = 130 if issubclass(exc_type, KeyboardInterrupt) else exit_status(exc)
            # an MPI error here means a peer is gone: the consequence, not the cause
            lost_peer = self.lost_peer(exc)
            try:
                text = "".join(traceback.format_exception(exc_type, exc, tb))
                sys.stderr.write("".join(self.prefix + line + "\n" for line in text.rstrip().splitlines()))
                why = "lost contact with another rank; " if lost_peer else ""
                sys.stderr.write(f"{self.prefix}{why}aborting all ranks (exit status {code}): "
                                 f"{exc_type.__name__}: {exc}\n")
            finally:
                self.abort(code, cause=not lost_peer)

        sys.excepthook = hook

    def watch_for_silent_death(self, folder) -> None:
        """Name the rank when one dies without a word (SIGKILL, the OOM killer, a crash in C code).

        ``mpiexec`` then ends the job naming a process ID at best, often the wrong one
        (the first it reaps after killing the others). Each rank starts a tiny watchdog
        process in its own session, holding the read end of a pipe whose write end only
        this rank has: a clean exit or an abort with a message writes to it first, a
        silent death closes it. Watchdogs of ranks that died silently note the moment in
        ``folder`` (shared by the ranks: the output directory); the earliest, the rank
        that died first, the others being ended by ``mpiexec`` after it, prints one line
        naming its rank, PID and host. No-op on one rank or where it cannot start.
        """
        global _WATCHDOG_FD
        if self.size == 1:
            return
        import atexit
        import socket
        import subprocess
        import uuid

        # the bcast first, on every rank: a rank already watched (an earlier job on another
        # communicator of this process) must not leave the others waiting in it
        job = self.bcast(uuid.uuid4().hex[:12] if self.rank == 0 else None)
        if _WATCHDOG_FD is not None:
            return
        folder = os.path.abspath(os.fspath(folder))
        try:
            os.makedirs(folder, exist_ok=True)
            read_end, write_end = os.pipe()
            subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(read_end), str(self.rank), str(self.size),
                 str(os.getpid()), socket.gethostname(), folder, job],
                pass_fds=(read_end,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        except OSError:  # a watchdog is a courtesy: a run must not fail for want of one
            return
        os.close(read_end)
        _WATCHDOG_FD = write_end
        atexit.register(_tell_watchdog, b"exited")


_WATCHDOG_FD: Optional[int] = None

# Runs as `python -I -S -c` beside each rank (see Comm.watch_for_silent_death): standard library only.
_WATCHDOG = r"""
import glob, os, sys, time
fd, rank, size, pid, host, folder, job = sys.argv[1:8]
said = b""
while True:  # blocks until the rank writes (it ends with a word) or dies (end of file)
    chunk = os.read(int(fd), 64)
    if not chunk:
        break
    said += chunk
reported = os.path.join(folder, f".atomsim-reported.{job}")
if said:
    if said.startswith(b"aborted"):  # this rank named its own failure: the others' watchdogs stay quiet
        open(reported, "w").close()
        time.sleep(5.0)
        os.remove(reported)
    sys.exit(0)
mark = os.path.join(folder, f".atomsim-died.{job}.rank{rank}")
with open(mark, "w") as fh:
    fh.write(repr(time.time()))
time.sleep(1.0)  # the other watchdogs of this job note their ranks' ends meanwhile
died = {}
for path in glob.glob(os.path.join(folder, f".atomsim-died.{job}.rank*")):
    try:
        died[int(path.rsplit("rank", 1)[1])] = float(open(path).read())
    except (OSError, ValueError):
        pass
first = min(died, key=lambda r: (died[r], r)) if died else int(rank)
if first == int(rank) and not os.path.exists(reported):
    later = sorted(r for r in died if r != first)
    also = f"; rank(s) {', '.join(map(str, later))} ended after it" if later else ""
    sys.stderr.write(f"atomsim: rank {rank}/{size} (pid {pid} on {host}) died without a message (killed, out of "
                     f"memory, or crashed outside Python){also}. mpiexec ends the job; `--resume` continues from "
                     f"the last restart.\n")
    sys.stderr.flush()
    time.sleep(1.0)
    for path in glob.glob(os.path.join(folder, f".atomsim-died.{job}.rank*")):
        try:
            os.remove(path)
        except OSError:
            pass
"""


def _tell_watchdog(word: bytes) -> None:
    """This rank ends with a word (clean exit or a reported abort): its watchdog stays quiet."""
    if _WATCHDOG_FD is None:
        return
    try:
        os.write(_WATCHDOG_FD, word)
    except OSError:
        pass


# -- the launch -----------------------------------------------------------------
def launched_under_mpi() -> bool:
    """True when an MPI launcher started this process with more than one rank (no MPI init)."""
    for key in _SIZE_VARS:
        try:
            if int(os.environ.get(key, "1")) > 1:
                return True
        except ValueError:
            pass
    return False


def launch_rank() -> int:
    """This process's rank from the launcher's environment (0 when not launched by MPI; no MPI init)."""
    for var in _RANK_VARS:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def local_rank_from_env(env: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """The node-local rank a launcher exported (see ``_LOCAL_RANK_VARS``), or None."""
    env = os.environ if env is None else env
    for var in _LOCAL_RANK_VARS:
        value = env.get(var, "").strip()
        if value.isdigit():
            return int(value)
    return None


def bind_device(device: str, local_rank: int, device_count: int) -> str:
    """One rank per GPU: ``"cuda"`` -> ``"cuda:{local_rank % device_count}"``.

    Why: every rank of a node otherwise lands on cuda:0. An explicit ``"cuda:N"`` and ``"cpu"``
    are kept as given (the user chose); more ranks than GPUs share them round robin.
    """
    if device != "cuda":
        return device
    if device_count < 1:
        raise ValueError("potential.device is 'cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")
    return f"cuda:{int(local_rank) % int(device_count)}"


def rank_device(device: str, comm: Optional["Comm"] = None) -> str:
    """``device`` for this rank under MPI (see :func:`bind_device`), made torch's current CUDA device."""
    if device != "cuda":
        return device
    import torch

    comm = as_comm(comm)
    if comm.size == 1:  # one rank: torch's current device, as before
        return device
    bound = bind_device(device, comm.local_rank(), torch.cuda.device_count())
    torch.cuda.set_device(torch.device(bound))
    return bound


_WORLD: Optional[Comm] = None


def world_comm() -> Comm:
    """The world Comm over MPI_COMM_WORLD when launched on several ranks, else the serial Comm.

    The same object on every call. Initialises MPI only when a launcher
    started several ranks.
    """
    global _WORLD
    if _WORLD is None:
        comm = None
        if launched_under_mpi():
            from mpi4py import MPI

            if MPI.COMM_WORLD.Get_size() > 1:
                comm = Comm(MPI.COMM_WORLD)
        _WORLD = comm if comm is not None else Comm()
    return _WORLD


def running_world() -> Optional[Comm]:
    """The world Comm if this process has already started MPI on several ranks, else None.

    Never initialises MPI (error reporting must not start it just to ask).
    """
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized():
        return None
    if mpi.COMM_WORLD.Get_size() == 1:
        return None
    return _WORLD if _WORLD is not None and _WORLD.size > 1 else Comm(mpi.COMM_WORLD)


def as_comm(comm=None) -> Comm:
    """A Comm from None (the world), a Comm, or an mpi4py communicator."""
    if comm is None:
        return world_comm()
    if isinstance(comm, Comm):
        return comm
    return Comm(comm)


def compute_dims(size: int, ndims: int = 3) -> Tuple[int, ...]:
    """A balanced grid of ``size`` ranks in ``ndims`` dimensions (MPI_Dims_create)."""
    if size == 1:
        return (1,) * ndims
    from mpi4py import MPI

    return tuple(int(g) for g in MPI.Compute_dims(size, ndims))
