"""A :class:`~teleport_core.net.limits.RateLimiter` whose buckets live in a file that several
processes on one host share (auth worker processes, the two processes of a graceful reload), so a
source gets one allowance per host, not one per process.

The file is a fixed table (a header and :data:`SLOTS` slots in groups of :data:`WAYS`): a source's
group is chosen by a keyed hash of its address (BLAKE2b, 16 bytes; the key is random per file, so
nobody can aim many addresses at one group), and within the group its slot is the one holding its
digest, else an empty one, else the one refilled longest ago (forgotten, as the in-memory limiter
forgets its oldest sources). Each take locks only its group's bytes (``fcntl.lockf``), reads the
group, charges the source's buckets with the same arithmetic as the in-memory limiter
(:func:`~teleport_core.net.limits.charge`) and writes the slot back: a few system calls, no
thread hand-off (the callers are rare: failed joins and handshakes). Times are
``time.monotonic()``, the host's ``CLOCK_MONOTONIC``, which every process on the host reads alike;
a file left from an earlier boot (times in the future) counts as refilled now.

The file is created 0600 (its folder is the data_dir's); a file whose header does not match (an
older layout, another ``rates`` config, a short file) is laid out again, which forgets the buckets
(they refill within a period anyway)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from teleport_core.config.limits import Rate
from teleport_core.logs import get_logger
from teleport_core.net.limits import Buckets, RateLimiter, charge, refunded

log = get_logger("limits")

MAGIC = b"TPRATES1"
SLOTS = 8192  # sources remembered at once (the in-memory limiter keeps 10,000)
WAYS = 8  # slots per group: a source's slot is one of its group's
_HEADER = struct.Struct("<8sII16s")  # magic, rates, slots, hash key
_DIGEST = 16
_SLOT_HEAD = struct.Struct("<16sB7x")  # the source's digest (all zero: empty), refusing now
LOCK_WAIT = 0.05  # seconds a take waits for its group's lock before it refuses


class SharedFileBusy(Exception):
    """A shared file's bytes could not be locked in time."""


def open_shared(path: Path) -> int:
    """A descriptor of the host-shared file ``path`` (read and write): created 0600, never opened
    through a symlink, not inherited by child processes."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o600)


def laid_out(fd: int, header: struct.Struct, size: int, fits: Callable[[tuple[Any, ...]], bool],
             fresh: Callable[[], bytes], lock_length: int = 0) -> bytes:
    """The header of the shared file ``fd``, read under an exclusive lock of its first
    ``lock_length`` bytes (0: all of it); a file of another size, or whose unpacked header does not
    ``fits``, is laid out again first: zeroed to ``size`` bytes, with the header ``fresh()``."""
    fcntl.lockf(fd, fcntl.LOCK_EX, lock_length, 0)
    try:
        head = os.pread(fd, header.size, 0)
        if len(head) == header.size and os.fstat(fd).st_size == size and fits(header.unpack(head)):
            return head
        head = fresh()
        os.ftruncate(fd, 0)
        os.ftruncate(fd, size)  # every byte zero
        os.pwrite(fd, head, 0)
        os.fsync(fd)
        return head
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN, lock_length, 0)


def lock_bounded(fd: int, length: int, offset: int, what: str, wait: float = LOCK_WAIT) -> None:
    """Lock ``length`` bytes of ``fd`` at ``offset`` (``fcntl.lockf``), waiting at most ``wait``
    seconds (another process holds them for a few system calls; one that stopped holding them must
    not stall this one): :class:`SharedFileBusy` naming ``what`` after that."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, length, offset)
            return
        except (BlockingIOError, PermissionError):
            if time.monotonic() >= deadline:
                raise SharedFileBusy(f"{what} stayed locked for {wait}s") from None
            time.sleep(0.0005)


class SharedRateLimiter(RateLimiter):
    """Per-source token buckets kept in ``path``, shared by every process that opens it."""

    def __init__(self, rates: tuple[Rate, ...], path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        # not RateLimiter.__init__: its in-memory buckets would go unused here
        self.rates = rates
        self._clock = clock
        self.path = path
        self._bucket = struct.Struct("<" + "dd" * len(rates))
        self._slot = _SLOT_HEAD.size + self._bucket.size
        self._thread_lock = threading.Lock()  # lockf locks are per process: threads take turns here
        self._fd = open_shared(path)
        try:
            self._key = self._layout()
        except BaseException:
            os.close(self._fd)
            raise

    def close(self) -> None:
        """Close the file (the buckets stay in it for the other processes)."""
        with self._thread_lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _layout(self) -> bytes:
        """The file's hash key; lays the file out first when its header does not fit this config."""
        head = laid_out(self._fd, _HEADER, _HEADER.size + SLOTS * self._slot,
                        lambda h: h[0] == MAGIC and h[1] == len(self.rates) and h[2] == SLOTS,
                        lambda: _HEADER.pack(MAGIC, len(self.rates), SLOTS, secrets.token_bytes(16)))
        return bytes(_HEADER.unpack(head)[3])

    def _group(self, source: str) -> tuple[bytes, int]:
        digest = hashlib.blake2b(source.encode(), digest_size=_DIGEST, key=self._key).digest()
        group = int.from_bytes(digest[:8], "little") % (SLOTS // WAYS)
        return digest, _HEADER.size + group * WAYS * self._slot

    def _update(self, source: str, change: Callable[[Buckets | None, bool], tuple[Buckets, bool] | None]) -> None:
        """Run ``change(buckets or None, refusing)`` on ``source``'s slot under its group's lock;
        a result is written back (to the source's slot, or the slot it takes over)."""
        digest, offset = self._group(source)
        length = WAYS * self._slot
        with self._thread_lock:
            if self._fd < 0:
                raise ValueError(f"rate limiter {self.path} is closed")
            lock_bounded(self._fd, length, offset, f"{self.path}: a group")
            try:
                data = os.pread(self._fd, length, offset)
                found, free, oldest, oldest_time = -1, -1, 0, float("inf")
                for way in range(WAYS):
                    at = way * self._slot
                    owner, _ = _SLOT_HEAD.unpack_from(data, at)
                    if owner == digest:
                        found = way
                        break
                    if owner == bytes(_DIGEST):
                        free = way if free < 0 else free
                        continue
                    stamp = max(self._bucket.unpack_from(data, at + _SLOT_HEAD.size)[1::2])
                    if stamp < oldest_time:
                        oldest, oldest_time = way, stamp
                if found >= 0:
                    at = found * self._slot
                    refusing = bool(_SLOT_HEAD.unpack_from(data, at)[1])
                    values = self._bucket.unpack_from(data, at + _SLOT_HEAD.size)
                    result = change([(values[i], values[i + 1]) for i in range(0, len(values), 2)], refusing)
                    way = found
                else:
                    result = change(None, False)
                    way = free if free >= 0 else oldest
                if result is not None:
                    buckets, refusing = result
                    flat = [number for bucket in buckets for number in bucket]
                    os.pwrite(self._fd, _SLOT_HEAD.pack(digest, refusing) + self._bucket.pack(*flat),
                              offset + way * self._slot)
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN, length, offset)

    def take(self, source: str) -> tuple[float, bool]:
        """As :meth:`RateLimiter.take`; when the file cannot be read in time, the attempt is refused
        (a second's wait, not counted as a new burst): a limiter that cannot count denies."""
        try:
            return self._take(source)
        except (SharedFileBusy, OSError) as exc:
            log.error("shared rate limiter unavailable; refusing", path=str(self.path), error=str(exc))
            return 1.0, False

    def _take(self, source: str) -> tuple[float, bool]:
        now = self._clock()
        outcome: list[tuple[float, bool]] = []

        def change(buckets: Buckets | None, refusing: bool) -> tuple[Buckets, bool]:
            charged, wait = charge(self.rates, buckets or [(float(r.burst), now) for r in self.rates], now)
            outcome.append((wait, wait > 0 and not refusing))
            return charged, wait > 0

        self._update(source, change)
        return outcome[0]

    def refund(self, source: str) -> None:
        """As :meth:`RateLimiter.refund` (a refund that cannot be written is dropped: it only ever
        gives a token back)."""
        def change(buckets: Buckets | None, refusing: bool) -> tuple[Buckets, bool] | None:
            return None if buckets is None else (refunded(self.rates, buckets), refusing)

        try:
            self._update(source, change)
        except (SharedFileBusy, OSError) as exc:
            log.warning("shared rate limiter unavailable; refund dropped", path=str(self.path), error=str(exc))
