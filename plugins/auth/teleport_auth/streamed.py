"""Completing streamed recordings (``session_recording: node-sync`` / ``proxy-sync``).

:func:`finish` assembles a session's chunks into its recording and marks its record uploaded (the
``complete`` endpoint, for the host that ran the session, and :func:`complete_lost`).

:func:`complete_lost` (every :data:`SWEEP_EVERY` seconds, :func:`sweep`): a session still running
in its record, streamed, started more than :data:`LOST_AFTER` ago, whose host has no heartbeat
(its inventory entry expired, 10 minutes after its last heartbeat, or was removed; the host is the
record's owner: the node, or for an agentless node's session the proxy that ``forwarded_by``
names, whose ``/proxies/`` entry is looked at, since an agentless node never heartbeats) lost its host
for good as far as auth can tell: auth completes its recording from what it received, marked
``partial``. Its host, should it come back, ends the session (``node_restart``) and finds the
recording complete; by then it had ended the session itself (it gives up after 30 s without auth).
A session that ended more than :data:`LOST_AFTER` ago with its recording still in chunks (its host
could not complete it) is completed the same way.

The sessions in progress are indexed in cluster state, ``/streamed_sessions/<sid>`` (written with
chunk 0, removed at completion), so a sweep reads that short range, never every session record.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from typing import Any

from teleport_auth.presence import PROXIES_PREFIX
from teleport_auth.recording_search import index_later
from teleport_auth.session_records import PENDING, SessionRecord, records_of
from teleport_core.errors import NotFound, TeleportError
from teleport_core.recording.stream import SYNC_MODES
from teleport_core.state.audit import new_event
from teleport_core.state.backend import Item, range_end
from teleport_core.state.sessions import Completed, SessionStorage

SWEEP_EVERY = 60.0
LOST_AFTER = dt.timedelta(minutes=10)
STREAMED_PREFIX = b"/streamed_sessions/"
#: in-progress sessions one sweep looks at, at most
SWEEP_MAX = 10_000


async def streaming(service: Any, sid: str) -> None:
    """Index a session whose recording streams (its chunk 0 arrived)."""
    await service.backend.put(Item(STREAMED_PREFIX + sid.encode(), b""))


async def finish(service: Any, storage: SessionStorage, record: SessionRecord, partial: bool,
                 by: str = "") -> Completed:
    """Assemble ``record``'s chunks into its recording, mark it uploaded (``partial``) and audit
    ``session.upload``; ``by``: who completed it when not its host (``auth``)."""
    done = await storage.complete(record.sid)
    with contextlib.suppress(NotFound):
        await service.backend.delete(STREAMED_PREFIX + record.sid.encode())
    if done.sha256:  # "": another completer (an auth server, the host's retry) assembled it first
        await records_of(service).uploaded(record.sid, done.size, done.sha256, partial=partial)
        index_later(service, record.sid)  # searchable by its text, as an uploaded recording
        await service.emit(new_event("session.upload", sid=record.sid, size=done.size, chunks=done.chunks,
                                     partial=partial, server_id=record.server_id,
                                     cluster_name=service.cluster_name, completed_by=by or "host"))
    return done


async def complete_lost(service: Any, now: dt.datetime | None = None) -> list[str]:
    """Complete the streamed recordings whose host was lost (see the module docstring); their IDs."""
    now = now or dt.datetime.now(dt.UTC)
    storage = await service.ctx.resources.session_storage()
    if not storage.streaming:
        return []
    items = await service.backend.get_range(STREAMED_PREFIX, range_end(STREAMED_PREFIX), limit=SWEEP_MAX)
    records = records_of(service)
    completed: list[str] = []
    for item in items:
        record = await records.get(item.key[len(STREAMED_PREFIX):].decode())
        if record is None or record.recording.state != PENDING:  # completed: a stale index entry
            with contextlib.suppress(NotFound):
                await service.backend.delete(item.key)
            continue
        if record.session_recording not in SYNC_MODES:
            continue
        if record.end is not None:  # ended, never completed (its host could not reach auth for long)
            if now - record.end <= LOST_AFTER:
                continue
        elif now - record.start <= LOST_AFTER or await _heartbeats(service, record):
            continue  # its host is alive: the session may run on
        try:
            if not await storage.list_chunks(record.sid):
                continue  # nothing received: nothing to complete
            await finish(service, storage, record, partial=True, by="auth")
        except TeleportError as exc:
            service.log.warning("cannot complete the streamed recording of a lost session", sid=record.sid,
                                error=str(exc))
            continue
        service.log.warning("completed the streamed recording of a session whose host was lost", sid=record.sid,
                            server_id=record.server_id)
        completed.append(record.sid)
    return completed


async def _heartbeats(service: Any, record: SessionRecord) -> bool:
    """Whether the host that owns ``record`` still heartbeats: the proxy that forwarded an
    agentless node's session (its ``/proxies/`` entry), else the node (its inventory entry)."""
    try:
        if record.forwarded_by:
            await service.backend.get(PROXIES_PREFIX + record.forwarded_by.encode())
        else:
            await service.presence.get_node(record.server_id)
    except NotFound:
        return False
    return True


async def sweep(service: Any, every: float = SWEEP_EVERY) -> None:
    """Run :func:`complete_lost` every ``every`` seconds until cancelled."""
    while True:
        await asyncio.sleep(every)
        with contextlib.suppress(TeleportError):
            await complete_lost(service)

