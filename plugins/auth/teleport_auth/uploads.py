"""Who may upload a session recording (``PUT /v1/sessions/{sid}/recording``), and how often.

A recording belongs to the node that ran the session: the one whose ``session.start`` audit
event (``server_id``) names the session ID. Only that host (the host UUID of its certificate)
may upload it, and only once: an upload for a session another host started, or for a session
with no ``session.start`` in the audit log, is refused (403, audited); a second upload with
different content is refused too (409, audited), so a stored recording is never replaced.
Uploading the same bytes again answers 200 without writing (``"unchanged": true``): a node
that crashed after its upload but before deleting its local copy re-uploads it at its next
start, and that must succeed.

Nodes emit audit events only with their own ``server_id`` (checked by the events endpoint),
so a host cannot claim another host's session by forging its ``session.start``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

from teleport_core.audit import AuditLog, AuditQuery
from teleport_core.errors import AlreadyExists, NotFound
from teleport_core.sessions import SessionStorage

OWNER_WINDOW = dt.timedelta(days=31)
"""How far back the ``session.start`` of an uploaded session is looked for (sessions longer than
this cannot upload; certificates live at most 30h, but a session may outlive its certificate)."""


AROUND_START = dt.timedelta(hours=1)
"""The window searched around the session start the recording's header gives (both come from
the node's clock, so an hour is generous)."""
HEADER_MAX = 64 * 1024


def header_start(head: bytes) -> dt.datetime | None:
    """The ``timestamp`` of an asciicast v2 header line at the start of ``head`` (None if absent).

    Only narrows the audit search: a wrong value makes the uploader's own upload fail, nothing else.
    """
    line = head.split(b"\n", 1)[0]
    try:
        value = json.loads(line).get("timestamp")
        return dt.datetime.fromtimestamp(float(value), dt.UTC) if value is not None else None
    except (ValueError, TypeError, AttributeError, OverflowError, OSError):
        return None


async def session_hosts(audit: AuditLog, sid: str, started: dt.datetime | None = None,
                        now: dt.datetime | None = None) -> set[str]:
    """The ``server_id`` of every ``session.start`` event of ``sid`` (normally exactly one),
    searched within an hour of ``started`` when known, else over the last :data:`OWNER_WINDOW`."""
    moment = now or dt.datetime.now(dt.UTC)
    if started is not None:
        since, until = started - AROUND_START, started + AROUND_START
    else:
        since, until = moment - OWNER_WINDOW, moment + dt.timedelta(minutes=5)
    query = AuditQuery(since=since, until=until, event_types=("session.start",), sid=sid, limit=100)
    page = await audit.search(query)
    return {str(event.fields.get("server_id", "")) for event in page.events}


def upload_refusal(hosts: set[str], uploader: str, sid: str) -> str:
    """Why ``uploader`` (a host UUID, empty for a non-host identity) may not upload ``sid``, or ""."""
    if not uploader:
        return f"only the node that ran session {sid} may upload its recording"
    if not hosts:
        return f"no session.start of session {sid} is in the audit log: nothing to upload a recording for"
    if hosts != {uploader}:
        return f"session {sid} was not started by host {uploader}: only the node that ran it may upload its recording"
    return ""


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


class UploadGate:
    """Stores a recording once: identical re-uploads are no-ops, different ones are refused.

    One upload per session ID at a time within this auth server (a lock per session ID).
    """

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # sid -> (lock, users)

    @contextlib.contextmanager
    def _tmpdir(self) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="teleport-upload-check-") as tmp:
            yield Path(tmp)

    async def store(self, storage: SessionStorage, sid: str, path: Path) -> bool:
        """Store ``path`` as ``sid``'s recording; False when the same bytes were already stored.

        Raises :class:`AlreadyExists` when a different recording of ``sid`` is stored.
        """
        lock, users = self._locks.get(sid, (asyncio.Lock(), 0))
        self._locks[sid] = (lock, users + 1)
        try:
            async with lock:
                return await self._store(storage, sid, path)
        finally:
            lock, users = self._locks[sid]
            if users == 1:
                del self._locks[sid]
            else:
                self._locks[sid] = (lock, users - 1)

    async def _store(self, storage: SessionStorage, sid: str, path: Path) -> bool:
        digest = await asyncio.to_thread(_digest, path)
        with self._tmpdir() as tmp:
            existing = tmp / "existing.cast"
            try:
                await storage.download(sid, existing)
            except NotFound:
                await storage.upload(sid, path)
                return True
            if await asyncio.to_thread(_digest, existing) == digest:
                return False
        raise AlreadyExists(f"a different recording of session {sid} is already stored: recordings are never replaced")
