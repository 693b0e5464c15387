"""One place that sets every thread pool of the process: torch, numba, BLAS and OpenMP.

Why: an MD step runs torch ops (intra-op pool, MKL inside torch), numba kernels (numba's own
OpenMP/TBB/workqueue pool) and numpy/scipy BLAS (OpenBLAS) one after the other. Each library
picks its own default (torch: physical cores; numba: ``os.cpu_count()``; OpenBLAS: cores at load
time), and starting numba's OpenMP layer used to reset OpenMP's count behind torch's back. Pools
that disagree oversubscribe the cores (two 2-thread pools spinning on 2 cores) or leave cores
idle. :func:`configure_threads` sets them all to the same ``n``; :func:`thread_report` reads back
what each pool actually uses (the test checks they agree).

``atomsim run`` (``parallel.threads``), the ASE calculator (``threads=``), training
(``threads:``) and the benchmarks call :func:`configure_threads`; nothing else in the package
calls ``torch.set_num_threads`` or ``numba.set_num_threads``.
"""
from __future__ import annotations

import os
import socket
from typing import Optional, Union

import torch

ThreadSetting = Union[int, str, None]

# atoms per thread below which an extra thread costs more in synchronisation than it gains
# (a 108-atom step on 2 busy cores ran ~15x slower on 2 threads than on 1)
MIN_ATOMS_PER_THREAD = 1000

_configured: Optional[int] = None


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity: a batch scheduler's or taskset's mask)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _env_threads() -> Optional[int]:
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    try:
        return max(1, int(value.split(",")[0])) if value else None
    except ValueError:
        return None


def resolve_threads(setting: ThreadSetting = "auto", atoms_per_rank: Optional[int] = None,
                    ranks_per_node: int = 1) -> int:
    """The thread count a setting means: an integer >= 1 as given; ``"auto"`` (or None) means
    ``OMP_NUM_THREADS`` when the user set it, else the cores available to this process divided
    among the ranks on this node (so MPI ranks do not oversubscribe it), and no more than one
    thread per ``MIN_ATOMS_PER_THREAD`` atoms when ``atoms_per_rank`` is given.
    """
    if setting is None or setting == "auto":
        env = _env_threads()
        if env is not None:
            return env
        n = max(1, available_cores() // max(1, int(ranks_per_node)))
        if atoms_per_rank is not None:
            n = max(1, min(n, int(atoms_per_rank) // MIN_ATOMS_PER_THREAD))
        return n
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ValueError(f"threads must be 'auto' or an integer >= 1; got {setting!r}")
    return setting


def ranks_per_node(comm) -> int:
    """MPI ranks sharing this rank's host; ``comm``: engine/comm.py's Comm (or anything with
    ``rank``, ``size`` and ``allgather``). A collective: every rank must call it."""
    if comm is None or comm.size <= 1:
        return 1
    hosts = comm.allgather(socket.gethostname())
    return hosts.count(hosts[comm.rank])


def configure_threads(setting: ThreadSetting = "auto", atoms_per_rank: Optional[int] = None,
                      ranks_per_node: int = 1) -> int:
    """Set torch (intra-op; inter-op at the first call), numba, BLAS and OpenMP pools to one count.

    ``setting`` as in :func:`resolve_threads`. Returns the count set. Numba is capped at
    ``numba.config.NUMBA_NUM_THREADS`` (its pool size, fixed at import) and OpenBLAS at the
    threads it was built for; :func:`thread_report` shows what each pool took.
    """
    global _configured
    n = resolve_threads(setting, atoms_per_rank, ranks_per_node)
    try:  # numba first: launching its OpenMP layer can reset OpenMP's (and so torch's) count
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n, user_api="blas")  # not as a context: the limit stays
        threadpool_limits(limits=n, user_api="openmp")
    except ImportError:
        pass
    torch.set_num_threads(n)
    if _configured is None and torch.get_num_interop_threads() != n:
        try:  # the first call only: torch allows it once, before any inter-op (torch.jit.fork) work
            torch.set_num_interop_threads(n)
        except RuntimeError:
            pass
    _configured = n
    return n


def configured_threads() -> Optional[int]:
    """The count the last :func:`configure_threads` set in this process, None before any."""
    return _configured


def thread_report() -> dict:
    """What each pool uses now: torch intra/inter-op, numba, and every BLAS/OpenMP library
    loaded (``threadpoolctl.threadpool_info``: internal_api, num_threads, file name)."""
    report: dict = {"torch": torch.get_num_threads(), "torch_interop": torch.get_num_interop_threads()}
    try:
        import numba

        report["numba"] = numba.get_num_threads()
    except ImportError:
        report["numba"] = None
    try:
        from threadpoolctl import threadpool_info

        report["pools"] = [{"user_api": p["user_api"], "internal_api": p["internal_api"],
                            "num_threads": p["num_threads"], "library": os.path.basename(p["filepath"])}
                           for p in threadpool_info()]
    except ImportError:
        report["pools"] = []
    return report


__all__ = ["MIN_ATOMS_PER_THREAD", "available_cores", "resolve_threads", "ranks_per_node",
           "configure_threads", "configured_threads", "thread_report"]
