"""The C allocator's thresholds for processes that move bulk data (``teleport start``, ``tsh``).

Every SSH packet and socket read is a fresh Python ``bytes`` of up to 256 KiB. glibc serves
blocks over ``M_MMAP_THRESHOLD`` (128 KiB until its dynamic adjustment catches up) with a new
``mmap`` and gives them back on free, and it trims the heap's top whenever more than
``M_TRIM_THRESHOLD`` is free: each packet then costs page faults, zeroed pages and a ``munmap``.
``perf`` on ``tsh ssh`` put a third of its CPU there; with the thresholds below ``tsh`` used
1.9 s of CPU per GiB sent instead of 4.2 s. Large blocks are reused instead; a process keeps
at most ``TRIM_THRESHOLD`` of freed memory for later.

Same effect as ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` in the environment, which,
when set, win. Nothing happens on a C library without ``mallopt`` (musl, macOS)."""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 64 * 1024 * 1024


def keep_large_blocks() -> bool:
    """Serve blocks up to ``MMAP_THRESHOLD`` from the heap and keep up to ``TRIM_THRESHOLD``
    free; True when the C library took both settings."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the symbols the process already has: its C library
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
