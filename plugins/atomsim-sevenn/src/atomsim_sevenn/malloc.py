"""glibc malloc settings that keep SevenNet's large temporaries in the heap.

Why: one SevenNet-0 force call allocates and frees many tensors of tens of MB
(per-edge tensor-product weights and messages). With glibc's defaults each
such buffer is mmap'ed, zero-faulted page by page and munmap'ed again on
every call: on this project's 2-core CPU one force call on 256 Cu atoms (1
thread) took 4.3 CPU s with glibc's defaults and 3.3 s with these settings,
for sevenn's own calculator and for atomsim alike (benchmarks/sevenn/bench_md.py
measures the MD run). Raising the mmap threshold,
trim threshold and top pad keeps freed memory in the heap for reuse. The same
effect is available to any program through the environment:
``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296:glibc.malloc.top_pad=268435456``.

It is process-wide: the plugin applies it once, when a model is loaded,
unless ``ATOMSIM_SEVENN_MALLOC=0`` or ``potential.params.malloc_tuning: false``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_SETTINGS = ((_M_MMAP_THRESHOLD, 32 * 1024 * 1024),  # glibc's largest allowed value on 64-bit
             (_M_TRIM_THRESHOLD, 2**31 - 1),  # mallopt takes a C int
             (_M_TOP_PAD, 256 * 1024 * 1024))
_applied = False


def tune_glibc_malloc() -> bool:
    """Apply the settings once (True if glibc accepted them; False elsewhere or when disabled)."""
    global _applied
    if _applied:
        return True
    if os.environ.get("ATOMSIM_SEVENN_MALLOC", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt): nothing to do
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _applied = all(mallopt(param, value) == 1 for param, value in _SETTINGS)
    return _applied
