"""The allocator thresholds and pipe capacity that bulk-data processes (``teleport start``,
``tsh``) set for themselves: teleport_core/net/allocator.py and teleport_core/net/pipes.py."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap

import pytest

from teleport_core.net.pipes import PIPE_SIZE, grow_pipe

F_GETPIPE_SZ = 1032

# a 1 MiB block from C malloc: how many more blocks glibc serves with mmap (mallinfo2.hblks) after it
PROBE = textwrap.dedent("""
    import ctypes, sys
    from teleport_core.net.allocator import keep_large_blocks

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.mallinfo2.restype = MallInfo2
    took = keep_large_blocks() if sys.argv[1] == "tune" else None
    before = libc.mallinfo2().hblks
    block = libc.malloc(1 << 20)
    print(took, libc.mallinfo2().hblks - before)
""")


def probe(mode: str, **env: str) -> str:
    if "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or "").lower():
        pytest.skip("mallopt thresholds are glibc's")
    result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env)
    return result.stdout.strip()


def test_large_blocks_come_from_the_heap_once_tuned() -> None:
    assert probe("default") == "None 1"  # glibc's default: a 1 MiB block is its own mmap
    assert probe("tune") == "True 0"


def test_the_environment_wins_over_the_built_in_thresholds() -> None:
    assert probe("tune", MALLOC_MMAP_THRESHOLD_="131072") == "False 1"


def test_grow_pipe_raises_a_pipe_to_one_mib() -> None:
    read, write = os.pipe()
    try:
        assert fcntl.fcntl(read, F_GETPIPE_SZ) == 65536
        grow_pipe(write)
        assert fcntl.fcntl(read, F_GETPIPE_SZ) == PIPE_SIZE
        os.write(write, b"x" * 300_000)  # more than the default capacity, without a reader
    finally:
        os.close(read)
        os.close(write)


def test_grow_pipe_leaves_anything_else_alone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with open(tmp_path / "file", "wb") as handle:
        grow_pipe(handle.fileno())  # not a pipe: the system says EBADF, nothing changes
        handle.write(b"data")
    assert (tmp_path / "file").read_bytes() == b"data"
