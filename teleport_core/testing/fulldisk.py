"""Real full filesystems for tests: :func:`small_tmpfs` mounts one (root only), :func:`fill` fills it.

::

    with small_tmpfs(tmp_path / "audit") as directory:
        filler = fill(directory)   # every further write fails with ENOSPC
        ...
        filler.unlink()            # space returns
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from teleport_core.testing.prerequisites import missing


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "1m") -> Iterator[Path]:
    """Mount a tmpfs of ``size`` on ``path`` (created) for the ``with`` block, then unmount it
    (lazily, so a process still holding a file there does not stop the test's cleanup).
    Skips the test (fails it under CI) when not root or when mounting is not allowed."""
    if os.geteuid() != 0:
        missing("mounting a small tmpfs (a real full filesystem) needs root")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        missing("mount and umount are not installed")
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        missing(f"cannot mount a tmpfs on {path}: {result.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(directory: Path, name: str = "filler") -> Path:
    """Write ``directory/name`` until its filesystem is full (``ENOSPC`` even for one byte); its path."""
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        chunk = 1 << 16
        while chunk:
            try:
                os.write(fd, b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk //= 2
    finally:
        os.close(fd)
    return path


def free_bytes(directory: Path, amount: int, name: str = "filler") -> None:
    """Give back ``amount`` bytes of a full filesystem by shortening the filler :func:`fill` wrote."""
    path = directory / name
    os.truncate(path, max(0, path.stat().st_size - amount))
