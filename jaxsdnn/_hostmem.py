"""Host memory: keep freed buffers for reuse (glibc ``mallopt``), set once at import.

XLA:CPU allocates the temporaries of every call afresh. A training step keeps every layer's
input for the backward pass (120 layers x 4 MB at batch 1000), and glibc hands such blocks back
to the kernel when they are freed, so every step page-faults them in again: 343,000 minor faults
per loss-and-gradient call of the 120-layer Graph Challenge network at batch 1000 on this
project's 2-core machine, and none with these settings (on 60 layers the call went from 4.3x to
3.3-3.7x the forward pass). Asking glibc to serve large blocks from its heap
(``M_MMAP_MAX = 0``), to keep freed memory (``M_TRIM_THRESHOLD``) and to use one arena (XLA's
worker threads would otherwise each map their own) removes most of those faults. The settings
only act on allocations made after them, and the arena limit only before the worker threads
start: hence at import of :mod:`jaxsdnn`, before any device is used.

The price: the process keeps its peak heap until it exits, and one arena serialises
allocations across threads (XLA's hot loops do not allocate). Set ``JAXSDNN_KEEP_HOST_MEMORY=0``
to leave the allocator alone. Elsewhere than Linux with glibc this does nothing, and under a
preloaded jemalloc or tcmalloc it has no effect.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_host_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NO_TRIM = -1  # never give freed memory at the top of the heap back

_applied: bool | None = None


def keep_freed_host_memory() -> bool:
    """Applies the settings above once; returns whether they are in force."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("JAXSDNN_KEEP_HOST_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, _NO_TRIM) == 1
    ok &= mallopt(_M_ARENA_MAX, 1) == 1
    _applied = bool(ok)
    return _applied
