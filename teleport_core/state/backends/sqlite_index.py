"""The recordings index of the embedded SQLite backend: SQLite FTS5 with the trigram tokenizer.

One database file beside the backend's, ``<backend dir>/recordings_index.sqlite`` (0600, WAL),
so the processes that share the backend share the index too. Tables:

* ``recording_text``: an FTS5 table of the text (``tokenize='trigram'``: any run of three or
  more characters matches, inside words too, case-insensitively; ``/etc/passwd`` is found by
  ``passwd``);
* ``recordings``: session ID -> its FTS row, whether its text was cut at the cap, when indexed.

Search text is always one FTS5 phrase (a string in double quotes, inner quotes doubled), so
operators (``AND``, ``NEAR``, ``*``, ``^``, column filters) are plain text. Snippets come from
FTS5's ``snippet()`` (64 tokens, about 66 characters with trigrams) with private-use markers
turned into highlight ranges; the markers are removed from indexed text.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from teleport_core.errors import TeleportError
from teleport_core.state.recording_index import RecordingIndex, SearchUnsupported, Snippet

INDEX_NAME = "recordings_index.sqlite"
SCHEMA_VERSION = 1
_OPEN, _CLOSE, _ELLIPSIS = "\ue000", "\ue001", "\u2026"
_SNIPPET_TOKENS = 64
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS recording_text USING fts5(body, tokenize='trigram');
CREATE TABLE IF NOT EXISTS recordings (
    sid TEXT PRIMARY KEY,
    text_row INTEGER NOT NULL,
    truncated INTEGER NOT NULL DEFAULT 0,
    indexed_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS recordings_row ON recordings (text_row)
"""
T = TypeVar("T")


def phrase_query(phrase: str) -> str:
    """``phrase`` as one FTS5 string: nothing in it is query syntax."""
    return '"' + phrase.replace('"', '""') + '"'


def _snippet(marked: str) -> Snippet:
    """A snippet from FTS5's ``snippet()`` output: markers out, their places as ranges."""
    text: list[str] = []
    ranges: list[tuple[int, int]] = []
    start = -1
    size = 0
    for char in marked:
        if char == _OPEN:
            start = size
        elif char == _CLOSE:
            if start >= 0 and size > start:
                ranges.append((start, size))
            start = -1
        else:
            text.append(char)
            size += 1
    return Snippet("".join(text), tuple(ranges))


class SqliteRecordingIndex(RecordingIndex):
    """FTS5 in ``directory / INDEX_NAME`` (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / INDEX_NAME
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    def _open(self) -> sqlite3.Connection:
        if self._closed:
            raise TeleportError(f"recordings index {self.path} is closed")
        if self._conn is not None:
            return self._conn
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        os.close(fd)
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # the index can be rebuilt (tctl recordings reindex)
            try:
                conn.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', ?)",
                             (str(SCHEMA_VERSION),))
                conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if "trigram" in str(exc) or "fts5" in str(exc):
                    raise SearchUnsupported(
                        f"recordings cannot be searched: this SQLite ({sqlite3.sqlite_version}) lacks FTS5 or its "
                        "trigram tokenizer (SQLite 3.34 or later has both)") from None
                raise
            version = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()[0]
            if int(version) != SCHEMA_VERSION:
                raise TeleportError(f"recordings index {self.path}: schema version {version} is not supported "
                                    f"(expected {SCHEMA_VERSION}); remove the file and run tctl recordings reindex")
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.chmod(f"{self.path}{suffix}", 0o600)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            with self._lock:
                return fn(self._open())

        return await asyncio.to_thread(call)

    async def put(self, sid: str, text: str, *, truncated: bool = False) -> None:
        body = text.replace(_OPEN, "\ufffd").replace(_CLOSE, "\ufffd")
        when = dt.datetime.now(dt.UTC).isoformat()

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                old = conn.execute("SELECT text_row FROM recordings WHERE sid = ?", (sid,)).fetchone()
                if old is not None:
                    conn.execute("DELETE FROM recording_text WHERE rowid = ?", (old[0],))
                row = conn.execute("INSERT INTO recording_text (body) VALUES (?)", (body,)).lastrowid
                conn.execute("INSERT OR REPLACE INTO recordings (sid, text_row, truncated, indexed_at) "
                             "VALUES (?, ?, ?, ?)", (sid, row, int(truncated), when))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        await self._run(write)

    async def delete(self, sid: str) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                old = conn.execute("SELECT text_row FROM recordings WHERE sid = ?", (sid,)).fetchone()
                if old is not None:
                    conn.execute("DELETE FROM recording_text WHERE rowid = ?", (old[0],))
                    conn.execute("DELETE FROM recordings WHERE sid = ?", (sid,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        await self._run(write)

    async def indexed(self, sid: str) -> bool:
        return await self._run(
            lambda conn: conn.execute("SELECT 1 FROM recordings WHERE sid = ?", (sid,)).fetchone() is not None)

    async def count(self) -> int:
        return await self._run(lambda conn: int(conn.execute("SELECT count(*) FROM recordings").fetchone()[0]))

    async def search(self, phrase: str, limit: int) -> list[str]:
        query = phrase_query(phrase)

        def read(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT r.sid FROM recording_text JOIN recordings r ON r.text_row = recording_text.rowid "
                "WHERE recording_text MATCH ? ORDER BY recording_text.rowid DESC LIMIT ?", (query, limit))
            return [str(row[0]) for row in rows]

        return await self._run(read)

    async def snippets(self, phrase: str, sids: Sequence[str]) -> dict[str, Snippet]:
        query = phrase_query(phrase)
        wanted = list(dict.fromkeys(sids))

        def read(conn: sqlite3.Connection) -> dict[str, Snippet]:
            found: dict[str, Snippet] = {}
            for start in range(0, len(wanted), 500):
                batch = wanted[start:start + 500]
                marks = ",".join("?" * len(batch))
                rows = conn.execute(
                    f"SELECT r.sid, snippet(recording_text, 0, ?, ?, ?, ?) FROM recording_text "  # noqa: S608
                    f"JOIN recordings r ON r.text_row = recording_text.rowid "
                    f"WHERE recording_text MATCH ? AND r.sid IN ({marks})",
                    (_OPEN, _CLOSE, _ELLIPSIS, _SNIPPET_TOKENS, query, *batch))
                for sid, marked in rows:
                    found[str(sid)] = _snippet(str(marked))
            return found

        return await self._run(read)

    async def close(self) -> None:
        def shut() -> None:
            with self._lock:
                self._closed = True
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await asyncio.to_thread(shut)
