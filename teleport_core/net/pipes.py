"""Pipe capacity: Linux pipes hold 64 KiB by default, so a reader gets at most 64 KiB per
``read`` and wakes up four times per 256 KiB SSH packet. Node sessions and ``tsh`` raise the
pipes they read and write to 1 MiB (``tsh ssh``: 215-225 -> 240-275 MiB/s sending 1 GiB)."""

from __future__ import annotations

import contextlib
import fcntl

F_SETPIPE_SZ = 1031  # Linux; not in Python's fcntl module before 3.10 on every platform
PIPE_SIZE = 1 << 20  # /proc/sys/fs/pipe-max-size is 1 MiB by default: unprivileged processes may ask this much


def grow_pipe(fd: int) -> None:
    """Raise the capacity of the pipe ``fd`` to 1 MiB; does nothing when ``fd`` is not a pipe or
    the system refuses (another OS, a lower ``pipe-max-size``, the user's pipe quota)."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
