"""The data directory lock: one ``teleport start`` per ``data_dir``.

The lock is an exclusive ``flock`` on ``data_dir/teleport.lock``, which holds the owner's
pid. The kernel drops it when the owner exits or is killed, so a stale file never blocks a
restart.

A graceful reload (``SIGHUP``/``SIGUSR2``, :mod:`teleport_core.process`) hands the lock to the
new process: the old one passes its descriptor (``TELEPORT_DATA_DIR_LOCK_FD``), and since an
``flock`` belongs to the open file, not to a process, both hold the same lock. The new process
adopts it only when the descriptor is that very file, locked (:func:`lock_data_dir`'s
``inherited``). An unrelated process opens the file anew and is still refused. A shared lock is
never unlocked explicitly (that would unlock it for the other holder too): each holder just
closes its descriptor, and the kernel drops the lock when the last one is gone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

from teleport_core.errors import DataDirLocked, TeleportError

LOCK_FILE = "teleport.lock"


class DataDirLock:
    """A held data_dir lock; :meth:`close` (or leaving the ``with`` block) releases it."""

    def __init__(self, data_dir: Path, fd: int, *, shared: bool = False) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = fd
        self.shared = shared  # another process holds the same lock (a reload): close, never unlock

    @property
    def fd(self) -> int | None:
        """The lock's descriptor (to hand to the new process of a reload)."""
        return self._fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def close(self) -> None:
        """Release the lock (idempotent). The file stays; its pid is cleared."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self.shared:  # the other holder keeps it: the kernel drops it with the last descriptor
            os.close(fd)
            return
        try:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DataDirLock({str(self.data_dir)!r}, held={self.held})"


def _holder_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _adopt(path: Path, fd: int) -> bool:
    """Whether ``fd`` (handed over by a reload) is the lock file at ``path``, and locked."""
    try:
        held, here = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    if (held.st_dev, held.st_ino) != (here.st_dev, here.st_ino):
        return False
    probe = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:  # a new open file must be refused: the lock is really held (by us and the old process)
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(probe)
    return False


def lock_data_dir(data_dir: Path, inherited: int | None = None) -> DataDirLock:
    """Create ``data_dir`` (mode 0700) if missing and lock it for this process.

    ``inherited`` is the descriptor of the lock the old process of a reload handed over: when
    it is this data_dir's lock file, and locked, it is adopted (shared with the old process);
    otherwise it is closed and the lock is taken as usual.

    Raises :class:`DataDirLocked` naming the holder's pid when another process (or another
    lock in this one) holds it, and :class:`TeleportError` when the directory or the lock file
    cannot be created.
    """
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise TeleportError(f"data_dir {data_dir} exists and is not a directory") from None
    except OSError as exc:
        raise TeleportError(f"cannot create data_dir {data_dir}: {exc.strerror or exc}") from None
    path = data_dir / LOCK_FILE
    if inherited is not None:
        if _adopt(path, inherited):
            os.set_inheritable(inherited, False)
            with contextlib.suppress(OSError):
                os.ftruncate(inherited, 0)
                os.pwrite(inherited, f"{os.getpid()}\n".encode("ascii"), 0)
            return DataDirLock(data_dir, inherited, shared=True)
        with contextlib.suppress(OSError):
            os.close(inherited)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise TeleportError(f"cannot open lock file {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        pid = _holder_pid(fd)
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise TeleportError(f"cannot lock {path}: {exc.strerror or exc}") from None
        holder = f"another teleport process (pid {pid})" if pid else "another teleport process"
        raise DataDirLocked(
            f"{holder} is already using data_dir {data_dir}; stop it first or use another data_dir"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError as exc:
        os.close(fd)
        raise TeleportError(f"cannot write lock file {path}: {exc.strerror or exc}") from None
    return DataDirLock(data_dir, fd)
