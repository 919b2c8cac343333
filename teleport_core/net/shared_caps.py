"""``max_connections`` of an HTTPS listener (:class:`~teleport_core.net.tlsserver.TLSServer`):
:class:`ConnectionCap` counts one process's open connections in memory; :class:`SharedConnectionCap`
counts them in a file every process serving the same listening socket on this host shares (auth
worker processes, and both generations of them during a graceful reload), so the cap configured is
the cap of the host, not of each process.

The shared file is a header (with the sum of the counts), :data:`SLOTS` counts (one per process:
how many connections it has open) and, after them, one *liveness byte* per slot. A process claims a
slot when it opens the file: the first slot whose liveness byte it can lock (an
open-file-description lock, ``F_OFD_SETLK``, held for the process's life and dropped by the kernel
when the process ends, however it ends); its count is taken out of the sum then. An admission locks
the counts (``fcntl.lockf``, at most :data:`~teleport_core.net.shared_rates.LOCK_WAIT`), reads the
sum, refuses when it is at the cap, else writes its own count and the sum one higher (a close, one
lower): a lock, a read, two writes and an unlock, about 12 µs of CPU each (docs/scaling.md). A
process that died leaves its count behind: when the sum reaches the cap, the slots whose liveness
byte nobody holds (``F_OFD_GETLK``) are zeroed before the decision, and a process claiming such a
slot zeroes it. A process's own count is kept in memory and its slot is a copy: a close that cannot
lock the file in time leaves the copy high (the host admits fewer, never more) until the next
admission or close writes it. Counters that cannot be read in time refuse: a cap that cannot count
denies.

One event loop calls a cap (the listener's): neither class takes a thread lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
from pathlib import Path

from teleport_core.errors import TeleportError
from teleport_core.logs import get_logger
from teleport_core.net.limits import Refused
from teleport_core.net.shared_rates import SharedFileBusy, laid_out, lock_bounded, open_shared

log = get_logger("limits")

MAGIC = b"TPCAPS01"
SLOTS = 256  # processes counted at once: a graceful reload runs two generations of up to 64 auth processes
_HEADER = struct.Struct("<8sI4xQ")  # magic, slots, connections open in all (the counts' sum)
_TOTAL_AT = 16
_COUNT = struct.Struct("<Q")
_COUNTS = struct.Struct(f"<{SLOTS}Q")  # open connections per slot
TABLE = _HEADER.size + _COUNTS.size  # the bytes an admission locks; the liveness bytes follow
SIZE = TABLE + SLOTS
_FLOCK = struct.Struct("@hhqqi4x")  # struct flock: l_type, l_whence, l_start, l_len, l_pid


class ConnectionCap:
    """At most ``limit`` connections of one listener open at once, counted in this process."""

    def __init__(self, limit: int, name: str) -> None:
        self.limit = limit
        self.name = name
        self.open = 0  # this process's connections admitted and not released

    def admit(self) -> None:
        """Count one more connection, or :class:`~teleport_core.net.limits.Refused` (the reason)."""
        if self.open >= self.limit:
            raise Refused(f"{self.name}: {self.limit} connections (max_connections) are open")
        self.open += 1

    def release(self) -> None:
        """One admitted connection ended."""
        self.open = max(0, self.open - 1)

    def close(self) -> None:
        """The listener is gone."""


def _flock(kind: int, offset: int) -> bytes:
    return _FLOCK.pack(kind, os.SEEK_SET, offset, 1, 0)


class SharedConnectionCap(ConnectionCap):
    """At most ``limit`` connections open at once in every process that shares ``path`` (see the
    module docstring). Opening claims a slot: :class:`~teleport_core.errors.TeleportError` when
    :data:`SLOTS` live processes hold them all."""

    def __init__(self, limit: int, name: str, path: Path) -> None:
        super().__init__(limit, name)
        self.path = path
        self._fd = open_shared(path)
        try:
            laid_out(self._fd, _HEADER, SIZE, lambda h: h[0] == MAGIC and h[1] == SLOTS,
                     lambda: _HEADER.pack(MAGIC, SLOTS, 0), lock_length=TABLE)
            self.slot = self._claim()
        except BaseException:
            os.close(self._fd)
            raise
        self._published = 0  # ``open`` as this process's slot shows it (higher while a release is not written)

    def _claim(self) -> int:
        """Hold the first slot no live process holds, and take its count out of the total."""
        fcntl.lockf(self._fd, fcntl.LOCK_EX, TABLE, 0)
        try:
            for slot in range(SLOTS):
                try:
                    fcntl.fcntl(self._fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_WRLCK, TABLE + slot))
                except (BlockingIOError, PermissionError):
                    continue  # a live process's
                left = self._read(self._slot_at(slot))
                self._write(_TOTAL_AT, max(0, self._read(_TOTAL_AT) - left))
                self._write(self._slot_at(slot), 0)
                return slot
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, TABLE, 0)
        raise TeleportError(f"{self.path}: all {SLOTS} connection count slots are held by live processes")

    @staticmethod
    def _slot_at(slot: int) -> int:
        return _HEADER.size + _COUNT.size * slot

    def _read(self, offset: int) -> int:
        return int(_COUNT.unpack(os.pread(self._fd, _COUNT.size, offset))[0])

    def _write(self, offset: int, value: int) -> None:
        os.pwrite(self._fd, _COUNT.pack(value), offset)

    def _alive(self, slot: int) -> bool:
        """Whether a process holds ``slot`` (its liveness byte is locked by another open file)."""
        answer = fcntl.fcntl(self._fd, fcntl.F_OFD_GETLK, _flock(fcntl.F_WRLCK, TABLE + slot))
        return bool(_FLOCK.unpack(answer)[0] != fcntl.F_UNLCK)

    def _lock(self) -> None:
        lock_bounded(self._fd, TABLE, 0, f"{self.path}: the connection counts")

    def _unlock(self) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN, TABLE, 0)

    def admit(self) -> None:
        """As :meth:`ConnectionCap.admit`, counting every process's connections; refused as well
        when the counts cannot be read in time."""
        if self._fd < 0:
            raise Refused(f"{self.name}: the listener is closing")
        try:
            self._lock()
        except (SharedFileBusy, OSError) as exc:
            log.error("shared connection count unavailable; refusing", path=str(self.path), error=str(exc))
            raise Refused(f"{self.name}: the connection count of this host's processes is unavailable "
                          "(max_connections)") from None
        try:
            total = self._read(_TOTAL_AT) + self.open - self._published  # with this process's count as it is
            if total >= self.limit:
                total = self._sweep() + self.open
            if total >= self.limit:
                self._publish(total)
                raise Refused(f"{self.name}: {self.limit} connections (max_connections) are open in this "
                              "host's processes")
            self.open += 1
            self._publish(total + 1)
        finally:
            self._unlock()

    def _sweep(self) -> int:
        """Zero the counts of slots no live process holds; the other live processes' connections."""
        counts = _COUNTS.unpack(os.pread(self._fd, _COUNTS.size, _HEADER.size))
        others = 0
        for slot, count in enumerate(counts):
            if not count or slot == self.slot:
                continue
            if self._alive(slot):
                others += count
            else:
                self._write(self._slot_at(slot), 0)
                log.info("reset the connection count of a process that ended", path=str(self.path), slot=slot,
                         connections=count)
        return others

    def _publish(self, total: int) -> None:
        """Write ``open`` to this process's slot and ``total`` as the sum (the counts are locked)."""
        if self.open != self._published:
            self._write(self._slot_at(self.slot), self.open)
            self._published = self.open
        self._write(_TOTAL_AT, total)

    def release(self) -> None:
        """As :meth:`ConnectionCap.release`; written to the file now, or by the next admission or
        release when the counts stay locked (the file shows one more meanwhile)."""
        super().release()
        if self._fd < 0:
            return
        try:
            self._lock()
        except (SharedFileBusy, OSError) as exc:
            log.warning("shared connection count unavailable; the release is written later", path=str(self.path),
                        error=str(exc))
            return
        try:
            self._publish(max(0, self._read(_TOTAL_AT) + self.open - self._published))
        finally:
            self._unlock()

    def close(self) -> None:
        """Give the slot up: its count is taken out, and the kernel drops the liveness lock with the file."""
        if self._fd < 0:
            return
        self.open = 0
        with contextlib.suppress(SharedFileBusy, OSError):  # else the next process short of room resets it
            self._lock()
            try:
                self._publish(max(0, self._read(_TOTAL_AT) - self._published))
            finally:
                self._unlock()
        os.close(self._fd)
        self._fd = -1


def host_connections(path: Path) -> int:
    """The connections the live processes counting in ``path`` have open (diagnostics and tests)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
    try:
        counts = _COUNTS.unpack(os.pread(fd, _COUNTS.size, _HEADER.size))
        live = 0
        for slot, count in enumerate(counts):
            if count:
                answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock(fcntl.F_RDLCK, TABLE + slot))
                live += count if _FLOCK.unpack(answer)[0] != fcntl.F_UNLCK else 0
        return live
    finally:
        os.close(fd)
