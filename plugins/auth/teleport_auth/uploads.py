"""Who may upload a session recording (``PUT /v1/sessions/{sid}/recording``), and what a refusal leaves.

A recording belongs to the node that ran the session: the owner of its session record in
cluster state (:mod:`teleport_auth.session_records`, written when auth accepted the node's
``session.start``), so every auth server sharing the backend decides alike. Answers:

* **200** stored, or ``"unchanged": true`` for the same bytes again (a node that crashed after its
  upload but before deleting its local copy re-uploads it at its next start; an identical
  re-upload also restores a recording the storage lost). The record is marked uploaded (size,
  SHA-256).
* **404** no record of the session has reached auth yet (the node's ``session.start`` may still
  be in its spool): *transient*, the node retries with backoff.
* **403** the caller is not a host, or another host owns the session: *permanent*.
* **409** a different recording of the session is stored: *permanent*; a stored recording is
  never replaced.

Permanent refusals are audited (``auth`` failure, T3007W) and, for a host, kept under
``/upload_refusals/<host uuid>/<sid>`` (reason, status, time, size; the newest
:data:`MAX_REFUSALS_PER_HOST` per host), listed by ``tctl recordings ls --refused``.

Nodes emit audit events only with their own ``server_id`` (checked by the events endpoint), so a
host cannot claim another host's session by forging its ``session.start``.

Two uploads of one session at the same moment are serialized around "is one stored? then store":
by a lock per session ID in the process and, with auth worker processes (``auth_service.workers``
above 1), by an ``flock`` on ``<data_dir>/log/upload-locks/<sid>.lock`` every process on the host
takes (:func:`session_lock`): one is stored, the other compared with it. An upload that waits for
that lock longer than :data:`UPLOAD_LOCK_WAIT` gets a 412, which the node retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs

from teleport_auth.session_records import SessionRecord
from teleport_core.errors import AlreadyExists, CompareFailed, NotFound
from teleport_core.state.audit import format_time, parse_time
from teleport_core.state.backend import Backend, Item, range_end
from teleport_core.state.sessions import SessionStorage, check_session_id

REFUSALS_PREFIX = b"/upload_refusals/"
MAX_REFUSALS_PER_HOST = 1000
UPLOAD_LOCKS_DIR = "upload-locks"  # under data_dir/log: one lock file per session being uploaded
UPLOAD_LOCK_WAIT = 120.0  # seconds an upload waits for another process's upload of the session (then 412)
LOCK_POLL, MAX_LOCK_POLL = 0.01, 0.25  # seconds between tries for that lock (doubling)


def no_record(sid: str) -> NotFound:
    """The transient 404 of an upload whose session record is not in cluster state (yet)."""
    return NotFound(f"no record of session {sid} has reached auth yet: its session.start may still be on "
                    "its way (retry later)")


def upload_refusal(record: SessionRecord | None, uploader: str, sid: str) -> str:
    """Why ``uploader`` (a host UUID, empty for a non-host identity) may not upload ``sid`` (whose
    record is ``record``), or ""."""
    if not uploader:
        return f"only the node that ran session {sid} may upload its recording"
    if record is None or record.owner != uploader:  # the proxy that forwarded an agentless node's session
        return f"session {sid} was not started by host {uploader}: only the node that ran it may upload its recording"
    return ""


def digest(path: Path) -> str:
    """The SHA-256 of a file, hex."""
    sha = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


@attrs.frozen
class UploadRefusal:
    """A permanent refusal of a host's upload."""

    host: str
    sid: str
    reason: str
    status: int
    time: dt.datetime
    size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "sid": self.sid, "reason": self.reason, "status": self.status,
                "time": format_time(self.time), "size": self.size}

    @classmethod
    def decode(cls, item: Item) -> UploadRefusal:
        data = json.loads(item.value)
        return cls(str(data["host"]), str(data["sid"]), str(data.get("reason", "")), int(data.get("status", 0)),
                   parse_time(str(data["time"])), int(data.get("size", 0)))


def _host_prefix(host: str) -> bytes:
    return REFUSALS_PREFIX + host.encode() + b"/"


class UploadRefusals:
    """The permanent upload refusals in cluster state, per host (the newest
    :data:`MAX_REFUSALS_PER_HOST`; older ones are dropped)."""

    def __init__(self, backend: Backend, cap: int = MAX_REFUSALS_PER_HOST) -> None:
        self.backend = backend
        self.cap = cap

    async def add(self, refusal: UploadRefusal) -> None:
        prefix = _host_prefix(refusal.host)
        await self.backend.put(Item(prefix + refusal.sid.encode(), json.dumps(refusal.to_dict()).encode()))
        items = await self.backend.get_range(prefix, range_end(prefix))
        if len(items) <= self.cap:
            return
        items.sort(key=lambda item: (UploadRefusal.decode(item).time, item.key))
        for item in items[: len(items) - self.cap]:
            with contextlib.suppress(NotFound, CompareFailed):
                await self.backend.conditional_delete(item.key, item.revision)

    async def list(self, host: str = "") -> list[UploadRefusal]:
        """Every kept refusal (of ``host`` when given), newest first."""
        prefix = _host_prefix(host) if host else REFUSALS_PREFIX
        found: list[UploadRefusal] = []
        start = prefix
        while True:
            page = await self.backend.get_range(start, range_end(prefix), limit=1000)
            found.extend(UploadRefusal.decode(item) for item in page)
            if len(page) < 1000:
                break
            start = page[-1].key + b"\x00"
        found.sort(key=lambda r: (r.time, r.host, r.sid), reverse=True)
        return found


def _try_lock(path: Path) -> int | None:
    """``flock`` the file at ``path`` (created 0600) without waiting: the open descriptor holding
    it, or None while another holds it. A file its holder removed between our open and our lock is
    not the lock any more (:func:`_unlock`): then the file now at ``path`` is tried."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        held = os.fstat(fd)
        try:
            now = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            now = None
        if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            return fd
        os.close(fd)


def _unlock(path: Path, fd: int) -> None:
    """Remove the lock file while still holding it (so it never piles up), then release it."""
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    finally:
        os.close(fd)


def _unlock_late(path: Path, attempt: asyncio.Future[int | None]) -> None:
    """A lock taken by a thread after its caller was cancelled: release it at once."""
    if not attempt.cancelled() and attempt.exception() is None:
        fd = attempt.result()
        if fd is not None:
            _unlock(path, fd)


@contextlib.asynccontextmanager
async def session_lock(directory: Path, sid: str, wait: float = UPLOAD_LOCK_WAIT) -> AsyncIterator[None]:
    """Hold the lock every auth process on this host takes for ``sid``'s upload (an ``flock`` on
    ``directory/<sid>.lock``; the event loop never blocks on it). :class:`CompareFailed` (412: the
    node retries) when another process held it for ``wait`` seconds."""
    path = directory / f"{check_session_id(sid)}.lock"
    await asyncio.to_thread(os.makedirs, directory, 0o700, True)
    deadline = time.monotonic() + wait
    delay = LOCK_POLL
    while True:
        attempt = asyncio.ensure_future(asyncio.to_thread(_try_lock, path))
        try:
            fd = await asyncio.shield(attempt)
        except asyncio.CancelledError:
            attempt.add_done_callback(lambda done: _unlock_late(path, done))
            raise
        if fd is not None:
            break
        if time.monotonic() >= deadline:
            raise CompareFailed(f"another upload of session {sid} is still in progress; retry later")
        await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
        delay = min(delay * 2, MAX_LOCK_POLL)
    try:
        yield
    finally:
        await asyncio.shield(asyncio.to_thread(_unlock, path, fd))


class UploadGate:
    """Stores a recording once: identical re-uploads are no-ops, different ones are refused.

    One upload per session ID at a time within this auth server (a lock per session ID) and, with
    ``lock_dir`` (auth worker processes), across the processes on this host (:func:`session_lock`).
    """

    def __init__(self, lock_dir: Path | None = None, wait: float = UPLOAD_LOCK_WAIT) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # sid -> (lock, users)
        self.lock_dir = lock_dir
        self.wait = wait

    @contextlib.contextmanager
    def _tmpdir(self) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="teleport-upload-check-") as tmp:
            yield Path(tmp)

    async def store(self, storage: SessionStorage, sid: str, path: Path, sha256: str) -> bool:
        """Store ``path`` (whose SHA-256 is ``sha256``) as ``sid``'s recording; False when the same
        bytes were already stored. Raises :class:`AlreadyExists` when a different recording of
        ``sid`` is stored.
        """
        lock, users = self._locks.get(sid, (asyncio.Lock(), 0))
        self._locks[sid] = (lock, users + 1)
        try:
            async with lock:
                if self.lock_dir is None:
                    return await self._store(storage, sid, path, sha256)
                async with session_lock(self.lock_dir, sid, self.wait):
                    return await self._store(storage, sid, path, sha256)
        finally:
            lock, users = self._locks[sid]
            if users == 1:
                del self._locks[sid]
            else:
                self._locks[sid] = (lock, users - 1)

    async def _store(self, storage: SessionStorage, sid: str, path: Path, sha256: str) -> bool:
        with self._tmpdir() as tmp:
            existing = tmp / "existing.cast"
            try:
                await storage.download(sid, existing)
            except NotFound:
                await storage.upload(sid, path)
                return True
            if await asyncio.to_thread(digest, existing) == sha256:
                return False
        raise AlreadyExists(f"a different recording of session {sid} is already stored: recordings are never replaced")
