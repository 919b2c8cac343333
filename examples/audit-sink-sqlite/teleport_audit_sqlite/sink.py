"""An audit sink that keeps events in one SQLite file: ``sqlite:///var/lib/teleport/audit.db``."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

from teleport_core.errors import ConfigError
from teleport_core.state.audit import AuditEvent, AuditPage, AuditQuery, AuditSink

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    uid     TEXT PRIMARY KEY,  -- an event emitted twice is stored once
    time_us INTEGER NOT NULL,  -- microseconds since the Unix epoch
    event   TEXT NOT NULL,
    user    TEXT NOT NULL,
    sid     TEXT NOT NULL,
    data    TEXT NOT NULL      -- the whole event as JSON
);
CREATE INDEX IF NOT EXISTS events_by_time ON events (time_us, uid);
"""
# Pages are ordered by (time_us, uid); a cursor is the last row's "time_us:uid".
SEARCH = """
SELECT time_us, uid, data FROM events
WHERE time_us >= :since AND time_us < :until
  AND (:types = '[]' OR event IN (SELECT value FROM json_each(:types)))
  AND (:user = '' OR user = :user)
  AND (:sid = '' OR sid = :sid)
  AND (time_us, uid) > (:after_time, :after_uid)
ORDER BY time_us, uid
LIMIT :limit
"""
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def micros(when: dt.datetime) -> int:
    return (when - EPOCH) // dt.timedelta(microseconds=1)


async def open_sink(uri: str, data_dir: Path) -> SqliteAuditSink:
    """The factory named in the plugin's ``AuditSinkSpec``."""
    parts = urlsplit(uri)
    path = unquote(parts.path)
    if parts.netloc or parts.query or parts.fragment or not path.startswith("/"):
        raise ConfigError(
            "teleport.storage.audit_events_uri", f"expected sqlite:///absolute/path/audit.db, got {uri!r}"
        )
    return await asyncio.to_thread(SqliteAuditSink, Path(path))


class SqliteAuditSink(AuditSink):
    """One connection, used by one worker thread at a time so the event loop never blocks."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.touch(mode=0o600)  # SQLite gives the -wal and -shm files the same mode
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # every commit is fsynced: durable on return
        self._db.executescript(SCHEMA)

    async def emit(self, event: AuditEvent) -> None:
        await asyncio.to_thread(self._insert, event)

    def _insert(self, event: AuditEvent) -> None:
        row = (event.uid, micros(event.time), event.event, event.user, event.sid, json.dumps(event.to_dict()))
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?)", row)

    async def search(self, query: AuditQuery) -> AuditPage:
        return await asyncio.to_thread(self._select, query)

    def _select(self, query: AuditQuery) -> AuditPage:
        if query.limit < 1:
            raise ValueError(f"limit must be positive, got {query.limit}")
        after_time, after_uid = micros(query.since) - 1, ""
        if query.cursor:
            time_text, _, after_uid = query.cursor.partition(":")
            if not time_text.lstrip("-").isdigit():
                raise ValueError(f"bad cursor {query.cursor!r}")
            after_time = int(time_text)
        params = {
            "since": micros(query.since),
            "until": micros(query.until),
            "types": json.dumps(query.event_types),
            "user": query.user,
            "sid": query.sid,
            "after_time": after_time,
            "after_uid": after_uid,
            "limit": query.limit + 1,  # one row more than asked tells whether another page exists
        }
        with self._lock:
            rows = self._db.execute(SEARCH, params).fetchall()
        page = rows[: query.limit]
        cursor = f"{page[-1][0]}:{page[-1][1]}" if len(rows) > query.limit else ""
        return AuditPage(tuple(AuditEvent.from_dict(json.loads(row[2])) for row in page), cursor)

    async def close(self) -> None:
        def close() -> None:
            with self._lock:
                self._db.close()

        await asyncio.to_thread(close)
