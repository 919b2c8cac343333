"""Catching up with other processes' writes before trusting an in-memory snapshot.

Auth answers roles, locks and users from memory while a backend watcher runs, and another
process's write reaches that watcher only at the backend's next poll (SQLite: every 0.1 s).
With several auth worker processes on one host (``auth_service.workers``) a ``tctl lock``
answered by worker A must hold for the very next certificate worker B issues, so B calls
:meth:`ChangeFeed.catch_up` before it trusts a snapshot:

1. ``PRAGMA data_version`` on the feed's own read-only connection (no disk read: it changes
   exactly when another connection, of any process, committed since the last call);
2. only when it changed, the ``events`` rows committed since the last catch-up (the SQLite
   backend writes one row per changed key in the same transaction as the change, and writers
   commit one at a time, so the rows' ``seq`` follows commit order); every registered
   prefix that one of those keys falls under gets its ``invalidate()`` call, at once, before
   the caller goes on. Rows pruned before this feed read them (a gap in ``seq``) invalidate
   every prefix.

Why that is enough: when catch-up *k* reads ``data_version`` at time *t*, every commit before
*t* has been handed to the invalidators, either by this call's query (it runs after *t*) or,
when the value did not change, by an earlier call (no commit happened in between). A lock
committed before a request arrived was therefore applied before the request's checks run; the
caches themselves re-read after an invalidation and never mark a read valid that raced one.

Runs on the event loop's thread (one PRAGMA when nothing changed; a small indexed query when
something did). Backends other than SQLite have no such marker here: :func:`open_change_feed`
returns None for them.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
READ_TIMEOUT = 5.0  # seconds a read waits for SQLite's WAL lock (a checkpoint restart; rare)


class ChangeFeed:
    """``watch(prefix, invalidate)`` once per snapshot; ``catch_up()`` before trusting one."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self._conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=READ_TIMEOUT,
                                     isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._watches: list[tuple[bytes, Callable[[], None]]] = []
        self._version = self._data_version()
        row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        self._seq = int(row[0]) if row else 0
        self.catch_ups = 0  # catch-ups that found other writes (diagnostics)

    def watch(self, prefix: bytes, invalidate: Callable[[], None]) -> None:
        """Call ``invalidate()`` from :meth:`catch_up` for every change under ``prefix``."""
        self._watches.append((prefix, invalidate))

    def _data_version(self) -> int:
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def catch_up(self) -> None:
        """Hand every commit made so far, by any process, to the invalidators of its prefix. When
        the database cannot be read here, every snapshot is invalidated (the caches then read the
        backend itself, which is the truth) and the next call looks again."""
        with self._lock:
            try:
                version = self._data_version()
                if version == self._version:
                    return
                rows = self._conn.execute("SELECT seq, key FROM events WHERE seq > ? ORDER BY seq",
                                          (self._seq,)).fetchall()
            except sqlite3.Error as exc:
                log.warning("change feed of %s cannot be read (%s): caches re-read the backend", self.db_path, exc)
                rows, hit = [], {id(fn): fn for _, fn in self._watches}
            else:
                self._version = version
                hit = {}
            if not rows:
                for fn in hit.values():
                    fn()
                return
            self.catch_ups += 1
            if int(rows[0][0]) != self._seq + 1:  # rows we never read were pruned: assume anything changed
                hit = {id(fn): fn for _, fn in self._watches}
            else:
                for _, key in rows:
                    for prefix, fn in self._watches:
                        if bytes(key).startswith(prefix):
                            hit[id(fn)] = fn
            self._seq = int(rows[-1][0])
        for fn in hit.values():
            fn()

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_change_feed(backend: Any) -> ChangeFeed | None:
    """The change feed of ``backend``'s database (SQLite), None when the backend has no change marker."""
    from teleport_core.state.backends.sqlite import SqliteBackend

    inner = getattr(backend, "inner", backend)  # a metered wrapper (teleport_core.state.metered)
    if not isinstance(inner, SqliteBackend):
        return None
    return ChangeFeed(inner.db_path)
