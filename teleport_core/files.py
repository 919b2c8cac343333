"""Writing files safely: atomically (temp file, fsync, rename, fsync the directory), with the
final mode set before any byte is written. Private material is 0600 from the moment it exists.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_private(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Atomically write ``data`` (a key, token, identity ...) to ``path`` with mode 0600.

    The content goes to a new temporary file in the same directory, created with
    ``O_CREAT|O_EXCL|O_NOFOLLOW`` and mode 0600 before any byte is written, then renamed over
    ``path``; readers see the old file or the whole new one, never a partial or wider-mode file.
    """
    _write_atomic(Path(path), data.encode() if isinstance(data, str) else data, 0o600)


def write_public(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Atomically write public data (a certificate or public key) to ``path`` with mode 0644."""
    _write_atomic(Path(path), data.encode() if isinstance(data, str) else data, 0o644)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    directory = path.parent
    tmp = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, mode)
    try:
        try:
            # The umask may have narrowed ``mode``; make it exact before any data is written.
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
