"""The embedded SQLite cluster-state backend (``teleport.storage.type: sqlite``, alias ``dir``).

How it works:

* The database is ``<path>/sqlite.db`` (``path`` defaults to ``<data_dir>/backend``), in WAL
  mode with ``synchronous=FULL``: a write returns only after its commit reached the disk.
* One writer thread owns the read-write connection and runs every write. Writes that queue
  up while a commit is in progress are committed together (group commit): each runs in its
  own SAVEPOINT, so a refused write (``AlreadyExists`` ...) leaves nothing behind, and the
  batch is acknowledged only after its single COMMIT, with one wake-up of each waiting event loop
  for the whole batch. A ``keep_alive`` is one ``UPDATE ... RETURNING`` that writes nothing
  when it fails, so it needs no SAVEPOINT.
* Reads run on a small thread pool, one read connection per thread; WAL lets them proceed
  while the writer commits. The asyncio loop never touches SQLite.
* Revisions come from a counter in the ``meta`` table, bumped once per write in the same
  transaction, so they increase across restarts (and are never reused after a delete).
* The writer thread tracks the earliest expiry and, when it passes, deletes the expired
  rows and emits ``DELETE`` events for them.
* Watchers get events in commit order on the asyncio loop that created them
  (``loop.call_soon_threadsafe`` from the writer thread). A write's events are queued to the
  watchers before the write itself is acknowledged.
* Every write also records its events in the ``events`` table (seq, writer, op, key, value,
  expires, revision, time) in the same transaction, as Teleport's SQLite ("lite") backend
  does. A poller thread per backend checks ``PRAGMA data_version`` every
  :data:`POLL_INTERVAL` seconds (it changes only when another connection committed) and hands
  the watchers the rows other processes wrote (a row names its writer; this process's own
  were delivered already). The writer prunes rows older than :data:`EVENTS_KEEP` seconds; a
  poller that finds rows it never saw pruned closes its watchers (they re-read and watch
  again, as after any watcher loss).

Both processes of a graceful reload (``SIGHUP``: the old one drains while the new one serves,
:mod:`teleport_core.process`) open the same database, and share it safely: SQLite's WAL locks
let one writer commit at a time (``BEGIN IMMEDIATE``, waiting up to :data:`BUSY_TIMEOUT_MS`)
while readers go on; the writer re-reads the revision counter inside each transaction, so
revisions stay unique and increasing across both; expired rows are reaped by whichever
writer sees them first (a delete finds the row or not, inside its transaction); and a write
in one process reaches the other's watchers through the events table (a ``tctl lock``
handled by the new auth server ends a session on the draining old node). Two unrelated
``teleport start`` cannot get there: the data_dir lock refuses the second. Within one process
the database is opened once (a second open raises ``DataDirLocked``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import logging
import os
import pathlib
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs

from teleport_core.config.reader import SectionReader
from teleport_core.errors import (
    AlreadyExists,
    CompareFailed,
    DataDirLocked,
    NotFound,
    TeleportError,
)
from teleport_core.state.backend import (
    DEFAULT_WATCHER_QUEUE,
    Action,
    Backend,
    BufferedWatcher,
    Condition,
    ConditionKind,
    Event,
    Item,
    OpType,
    Watcher,
)
from teleport_core.state.backends.sqlite_index import SqliteRecordingIndex

__all__ = ["SqliteBackend", "SqliteOptions", "SqliteWatcher", "open_backend", "parse_options"]

T = TypeVar("T")
log = logging.getLogger(__name__)

DB_NAME = "sqlite.db"
DEFAULT_DIR = "backend"
SCHEMA_VERSION = 1
MAX_BATCH = 256  # writes committed together at most
REAP_BATCH = 1000  # expired rows deleted per reaper transaction
REAP_RETRY_US = 1_000_000  # after a failed reap, try again this much later
MAX_REAP_WAIT = 1.0  # seconds; the writer re-reads the wall clock at least this often
READER_THREADS = 2
BUSY_TIMEOUT_MS = 30_000
POLL_INTERVAL = 0.1  # seconds between the poller's looks at PRAGMA data_version
EVENTS_KEEP = 600  # seconds the events table keeps a row (another process's poller reads it)
PRUNE_EVERY = 60  # seconds between prunes of the events table
IDLE_WAIT = 1.0  # seconds an idle writer waits before looking at expiries other processes wrote
_OP_CODE = {OpType.PUT: 1, OpType.DELETE: 2}
_CODE_OP = {code: op for op, code in _OP_CODE.items()}
_OPEN: set[str] = set()  # databases open in this process
_OPEN_LOCK = threading.Lock()

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)
_INT64_MAX = (1 << 63) - 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key BLOB PRIMARY KEY NOT NULL,
    value BLOB NOT NULL,
    expires INTEGER,
    revision INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    writer TEXT NOT NULL,
    op INTEGER NOT NULL,
    key BLOB NOT NULL,
    value BLOB,
    expires INTEGER,
    revision INTEGER NOT NULL,
    created INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_created ON events (created);
"""


# -- options ------------------------------------------------------------------------------------


@attrs.frozen
class SqliteOptions:
    """The sqlite keys of ``teleport.storage``.

    ``path``: directory holding the database; None means ``<data_dir>/backend`` and a
    relative path is taken relative to ``data_dir``.
    """

    path: pathlib.Path | None = None


def parse_options(reader: SectionReader) -> SqliteOptions:
    """Read ``teleport.storage.path``."""
    return SqliteOptions(path=reader.path_value("path", None))


async def open_backend(options: SqliteOptions | None, data_dir: pathlib.Path) -> SqliteBackend:
    """Open (creating if needed) the database directory and start the writer thread."""
    options = options or SqliteOptions()
    directory = pathlib.Path(data_dir) / (options.path if options.path is not None else DEFAULT_DIR)
    return await asyncio.to_thread(SqliteBackend.open_sync, directory)


# -- conversions --------------------------------------------------------------------------------


def _show(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")


def _now_us() -> int:
    return time.time_ns() // 1000


def _to_us(when: dt.datetime | None) -> int | None:
    if when is None:
        return None
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("expires must be a timezone-aware datetime (UTC)")
    return (when - _EPOCH) // _MICROSECOND


def _from_us(micros: int | None) -> dt.datetime | None:
    return None if micros is None else _EPOCH + dt.timedelta(microseconds=micros)


def _check_key(key: object) -> bytes:
    if not isinstance(key, bytes):
        raise TypeError(f"keys are bytes, got {type(key).__name__}")
    if not key:
        raise ValueError("keys must not be empty")
    return key


def _check_item(item: Item) -> Item:
    _check_key(item.key)
    if not isinstance(item.value, bytes):
        raise TypeError(f"values are bytes, got {type(item.value).__name__}")
    micros = _to_us(item.expires)
    if micros is not None and not -_INT64_MAX <= micros <= _INT64_MAX:
        raise ValueError("expires is out of range")
    return item


def _row_item(key: bytes, value: bytes, expires: int | None, revision: int) -> Item:
    return Item(bytes(key), bytes(value), _from_us(expires), str(revision))


def _live(expires: int | None, now: int) -> bool:
    return expires is None or expires > now


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _connect(path: pathlib.Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


# -- writes ---------------------------------------------------------------------------------------


class _Tx:
    """One write, run by the writer thread inside the batch transaction."""

    def __init__(self, conn: sqlite3.Connection, backend: SqliteBackend) -> None:
        self.conn = conn
        self.backend = backend
        self.now = _now_us()
        self.revision_before = backend._revision
        self.rev = 0
        self.events: list[Event] = []
        self.earliest: int | None = None

    def revision(self) -> int:
        """This write's revision, allocated on first use."""
        if not self.rev:
            self.backend._revision += 1
            self.rev = self.backend._revision
        return self.rev

    def live(self, key: bytes) -> tuple[bytes, int | None, int] | None:
        """``(value, expires, revision)`` of the live item at ``key``, None when absent or expired."""
        row = self.conn.execute("SELECT value, expires, revision FROM kv WHERE key = ?", (key,)).fetchone()
        if row is None or not _live(row[1], self.now):
            return None
        return bytes(row[0]), row[1], int(row[2])

    def put(self, item: Item) -> Item:
        expires = _to_us(item.expires)
        rev = self.revision()
        self.conn.execute(
            "INSERT OR REPLACE INTO kv (key, value, expires, revision) VALUES (?, ?, ?, ?)",
            (item.key, item.value, expires, rev),
        )
        stored = Item(item.key, item.value, _from_us(expires), str(rev))
        self.events.append(Event(OpType.PUT, stored))
        if expires is not None and (self.earliest is None or expires < self.earliest):
            self.earliest = expires
        return stored

    def touch(self, key: bytes, expires: dt.datetime) -> Item:
        """Move the live item at ``key`` to expire at ``expires`` (a new revision, the value kept), in
        one statement; ``NotFound`` (nothing written, the revision given back) when there is none."""
        expires_us = _to_us(expires)
        rev = self.revision()
        row = self.conn.execute(
            "UPDATE kv SET expires = ?, revision = ? WHERE key = ? AND (expires IS NULL OR expires > ?) "
            "RETURNING value", (expires_us, rev, key, self.now)).fetchone()
        if row is None:
            self.backend._revision = self.revision_before
            self.rev = 0
            raise NotFound(f"key {_show(key)} is not found")
        stored = Item(key, bytes(row[0]), _from_us(expires_us), str(rev))
        self.events.append(Event(OpType.PUT, stored))
        if expires_us is not None and (self.earliest is None or expires_us < self.earliest):
            self.earliest = expires_us
        return stored

    def delete(self, key: bytes) -> bool:
        """Delete the row at ``key`` (live or expired); True when there was one."""
        cursor = self.conn.execute("DELETE FROM kv WHERE key = ?", (key,))
        if cursor.rowcount <= 0:
            return False
        self.events.append(Event(OpType.DELETE, Item(key, b"", revision=str(self.revision()))))
        return True

    def check(self, condition: Condition) -> bool:
        row = self.live(_check_key(condition.key))
        kind = condition.kind
        if kind is ConditionKind.EXISTS:
            return row is not None
        if kind is ConditionKind.NOT_EXISTS:
            return row is None
        if kind is ConditionKind.REVISION:
            return row is not None and str(row[2]) == condition.revision
        if kind is ConditionKind.VALUE:
            return row is not None and row[0] == condition.value
        raise ValueError(f"unknown condition kind {kind!r}")


@attrs.define
class _Job:
    fn: Callable[[_Tx], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    #: False: ``fn`` writes nothing before it can fail (it raises before its one statement, or the
    #: statement fails the whole batch), so it runs without a SAVEPOINT of its own (keep_alive)
    savepoint: bool = True


def _settle_all(outcomes: Sequence[tuple[_Job, bool, Any]]) -> None:
    """Complete the jobs' futures from the writer thread: one wake-up per event loop for the whole
    batch, not one per job (a cancelled future is left alone)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, bool, Any]]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)

    def apply(settled: list[tuple[_Job, bool, Any]]) -> None:
        for job, ok, value in settled:
            if job.future.done():
                continue
            if ok:
                job.future.set_result(value)
            else:
                job.future.set_exception(value)

    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(apply, settled)


# -- watchers -------------------------------------------------------------------------------------


class SqliteWatcher(BufferedWatcher):
    """Events for some prefixes, fed by the writer thread after each commit."""

    def __init__(
        self,
        backend: SqliteBackend,
        prefixes: tuple[bytes, ...],
        queue_size: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(prefixes, queue_size, loop)
        self._backend = backend

    # Called from the writer thread.
    def _deliver(self, events: list[Event]) -> None:
        if not self._push_threadsafe(events):  # the watcher's loop is closed
            self._backend._unregister(self)

    def _on_shut(self) -> None:
        self._backend._unregister(self)

    async def close(self) -> None:
        self._shut_threadsafe("watcher closed")


# -- the backend ----------------------------------------------------------------------------------


class SqliteBackend(Backend):
    """Cluster state in one SQLite database. Open with :func:`open_backend`."""

    def __init__(self, directory: pathlib.Path, conn: sqlite3.Connection, open_key: str) -> None:
        self.directory = directory
        self.db_path = directory / DB_NAME
        self._conn = conn
        self._open_key = open_key
        self._writer_id = uuid.uuid4().hex  # names this backend's rows in the events table
        seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        self._seen_seq: int = int(seq[0]) if seq else 0  # the last events row the poller looked at
        self._last_prune = 0
        self._foreign_lock = threading.Lock()
        self._foreign_expiry: int | None = None  # the earliest expiry another process wrote
        row = conn.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()
        top = conn.execute("SELECT max(revision) FROM kv").fetchone()[0]
        self._revision: int = max(int(row[0]), int(top or 0))
        self._next_expiry: int | None = conn.execute(
            "SELECT min(expires) FROM kv WHERE expires IS NOT NULL"
        ).fetchone()[0]
        self._closed = False
        self._close_done = threading.Event()
        self._submit_lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._watch_lock = threading.Lock()
        self._watchers: set[SqliteWatcher] = set()
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._readers = concurrent.futures.ThreadPoolExecutor(READER_THREADS, thread_name_prefix="sqlite-read")
        self._writer = threading.Thread(target=self._writer_main, name=f"sqlite-writer {directory}", daemon=True)
        self._writer.start()
        self._stop_poll = threading.Event()
        self._poller = threading.Thread(target=self._poll_main, name=f"sqlite-poll {directory}", daemon=True)
        self._poller.start()

    @classmethod
    def open_sync(cls, directory: pathlib.Path) -> SqliteBackend:
        """Create or open the database in ``directory`` (blocking; :func:`open_backend` runs it in a thread)."""
        created = not directory.exists()
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if created:
            os.chmod(directory, 0o700)
        key = str(directory.resolve())
        with _OPEN_LOCK:
            if key in _OPEN:
                raise DataDirLocked(f"sqlite backend {directory} is in use: it is already open in this process")
            _OPEN.add(key)
        try:
            conn = cls._prepare(directory)
            try:
                return cls(directory, conn, key)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            with _OPEN_LOCK:
                _OPEN.discard(key)
            raise

    @staticmethod
    def _prepare(directory: pathlib.Path) -> sqlite3.Connection:
        db = directory / DB_NAME
        fd = os.open(db, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        os.close(fd)
        conn = _connect(db)
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise TeleportError(f"sqlite backend {db}: cannot enable WAL journal mode (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA journal_size_limit = 67108864")
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', ?), ('revision', 0)",
                (SCHEMA_VERSION,),
            )
            conn.execute("COMMIT")
            version = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()[0]
            if int(version) != SCHEMA_VERSION:
                raise TeleportError(
                    f"sqlite backend {db}: schema version {version} is not supported (expected {SCHEMA_VERSION})"
                )
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.chmod(f"{db}{suffix}", 0o600)
            _fsync_dir(directory)
            _fsync_dir(directory.parent)
        except BaseException:
            conn.close()
            raise
        return conn

    # -- plumbing -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise TeleportError(f"sqlite backend {self.directory} is closed")

    async def _write(self, fn: Callable[[_Tx], T], *, savepoint: bool = True) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._submit_lock:
            self._check_open()
            self._jobs.put(_Job(fn, loop, future, savepoint))
        return await future

    async def _read(self, fn: Callable[[sqlite3.Connection, int], T]) -> T:
        self._check_open()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._readers, self._run_read, fn)
        except RuntimeError:
            if self._closed:
                raise TeleportError(f"sqlite backend {self.directory} is closed") from None
            raise

    def _run_read(self, fn: Callable[[sqlite3.Connection, int], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.db_path)
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._watch_lock:
                self._reader_conns.append(conn)
        return fn(conn, _now_us())

    # -- the poller thread: other processes' writes ----------------------------------------------

    def _poll_main(self) -> None:
        conn: sqlite3.Connection | None = None
        version = None
        while not self._stop_poll.wait(POLL_INTERVAL):
            try:
                if conn is None:
                    conn = _connect(self.db_path)
                    conn.execute("PRAGMA query_only = ON")
                current = conn.execute("PRAGMA data_version").fetchone()[0]
                if current == version:
                    continue
                version = current
                self._poll_events(conn)
            except sqlite3.Error as exc:
                log.warning("sqlite backend %s: reading other processes' events failed: %s", self.directory, exc)
        if conn is not None:
            conn.close()

    def _poll_events(self, conn: sqlite3.Connection) -> None:
        rows = conn.execute(
            "SELECT seq, writer, op, key, value, expires, revision FROM events WHERE seq > ? ORDER BY seq",
            (self._seen_seq,),
        ).fetchall()
        if not rows:
            return
        if rows[0][0] > self._seen_seq + 1:  # pruned before we read them: the watchers missed writes
            oldest = conn.execute("SELECT min(seq) FROM events").fetchone()[0]
            if oldest is not None and oldest > self._seen_seq + 1:
                with self._watch_lock:
                    watchers = list(self._watchers)
                    self._watchers.clear()
                for watcher in watchers:
                    watcher._shut_threadsafe("events written by another process were pruned before they were read")
        self._seen_seq = int(rows[-1][0])
        foreign: list[Event] = []
        earliest: int | None = None
        for _, writer, op, key, value, expires, revision in rows:
            if writer == self._writer_id:
                continue  # ours: delivered by the writer already
            item = Item(bytes(key), bytes(value or b""), _from_us(expires), str(revision))
            foreign.append(Event(_CODE_OP[int(op)], item))
            if expires is not None and (earliest is None or expires < earliest):
                earliest = expires
        if earliest is not None:
            with self._foreign_lock:
                if self._foreign_expiry is None or earliest < self._foreign_expiry:
                    self._foreign_expiry = earliest
        self._dispatch(foreign)

    def _unregister(self, watcher: SqliteWatcher) -> None:
        with self._watch_lock:
            self._watchers.discard(watcher)

    def _dispatch(self, events: list[Event]) -> None:
        if not events:
            return
        with self._watch_lock:
            watchers = list(self._watchers)
        for watcher in watchers:
            matching = [e for e in events if watcher.matches(e.item.key)]
            if matching:
                watcher._deliver(matching)

    # -- the writer thread ------------------------------------------------------------------------

    def _writer_main(self) -> None:
        try:
            stop = False
            while not stop:
                try:
                    job = self._jobs.get(timeout=self._reap_wait())
                except queue.Empty:
                    self._merge_foreign_expiry()
                    if self._next_expiry is not None and self._next_expiry <= _now_us():
                        self._reap()
                    continue
                if job is None:
                    break
                batch = [job]
                while len(batch) < MAX_BATCH:
                    try:
                        more = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True
                        break
                    batch.append(more)
                self._run_batch(batch)
                if self._next_expiry is not None and self._next_expiry <= _now_us():
                    self._reap()
        finally:
            self._conn.close()

    def _reap_wait(self) -> float:
        if self._next_expiry is None:
            return IDLE_WAIT  # then look at what other processes wrote
        return min(MAX_REAP_WAIT, max(0.0, (self._next_expiry - _now_us()) / 1e6))

    def _merge_foreign_expiry(self) -> None:
        with self._foreign_lock:
            foreign, self._foreign_expiry = self._foreign_expiry, None
        if foreign is not None and (self._next_expiry is None or foreign < self._next_expiry):
            self._next_expiry = foreign

    def _sync_revision(self, conn: sqlite3.Connection) -> None:
        """Inside a write transaction: catch up with revisions another process allocated."""
        row = conn.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()
        if row is not None and int(row[0]) > self._revision:
            self._revision = int(row[0])

    def _record(self, conn: sqlite3.Connection, events: list[Event]) -> None:
        """Inside the write transaction: the events table rows of ``events``; prune old rows."""
        now = _now_us()
        if events:
            conn.executemany(
                "INSERT INTO events (writer, op, key, value, expires, revision, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(self._writer_id, _OP_CODE[e.type], e.item.key, e.item.value if e.type is OpType.PUT else None,
                  _to_us(e.item.expires), int(e.item.revision), now) for e in events],
            )
        if now - self._last_prune >= PRUNE_EVERY * 1_000_000:
            conn.execute("DELETE FROM events WHERE created < ?", (now - EVENTS_KEEP * 1_000_000,))
            self._last_prune = now

    def _run_batch(self, batch: list[_Job]) -> None:
        conn = self._conn
        start_revision = self._revision
        outcomes: list[tuple[bool, Any]] = []
        events: list[Event] = []
        earliest: int | None = None
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._sync_revision(conn)
            start_revision = self._revision
            for job in batch:
                tx = _Tx(conn, self)
                if job.savepoint:
                    conn.execute("SAVEPOINT job")
                try:
                    value = job.fn(tx)
                except (TeleportError, ValueError, TypeError) as exc:  # a refused write: undo just this one
                    if job.savepoint:
                        conn.execute("ROLLBACK TO job")
                        conn.execute("RELEASE job")
                    self._revision = tx.revision_before
                    outcomes.append((False, exc))
                    continue
                if job.savepoint:
                    conn.execute("RELEASE job")
                outcomes.append((True, value))
                events.extend(tx.events)
                if tx.earliest is not None and (earliest is None or tx.earliest < earliest):
                    earliest = tx.earliest
            if self._revision != start_revision:
                conn.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (self._revision,))
            self._record(conn, events)
            conn.execute("COMMIT")
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._revision = start_revision
            log.error("sqlite backend %s: write failed: %s", self.directory, exc)
            _settle_all([(job, False, TeleportError(f"sqlite backend {self.directory}: write failed: {exc}"))
                         for job in batch])
            return
        if earliest is not None and (self._next_expiry is None or earliest < self._next_expiry):
            self._next_expiry = earliest
        self._dispatch(events)  # before acknowledging, so a watcher has seen the write when it returns
        _settle_all([(job, ok, value) for job, (ok, value) in zip(batch, outcomes, strict=True)])

    def _reap(self) -> None:
        """Delete expired rows (a batch at a time) and tell the watchers."""
        conn = self._conn
        now = _now_us()
        start_revision = self._revision
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._sync_revision(conn)
            start_revision = self._revision
            rows = conn.execute(
                "SELECT key FROM kv WHERE expires IS NOT NULL AND expires <= ? ORDER BY expires LIMIT ?",
                (now, REAP_BATCH),
            ).fetchall()
            events: list[Event] = []
            if rows:
                self._revision += 1
                revision = str(self._revision)
                conn.executemany("DELETE FROM kv WHERE key = ?", rows)
                conn.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (self._revision,))
                events = [Event(OpType.DELETE, Item(bytes(row[0]), b"", revision=revision)) for row in rows]
                self._record(conn, events)
            following = conn.execute("SELECT min(expires) FROM kv WHERE expires IS NOT NULL").fetchone()[0]
            conn.execute("COMMIT")
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._revision = start_revision
            self._next_expiry = now + REAP_RETRY_US
            log.error("sqlite backend %s: deleting expired items failed: %s", self.directory, exc)
            return
        self._next_expiry = following
        self._dispatch(events)

    # -- reads ------------------------------------------------------------------------------------

    async def get(self, key: bytes) -> Item:
        _check_key(key)

        def read(conn: sqlite3.Connection, now: int) -> Item:
            row = conn.execute("SELECT value, expires, revision FROM kv WHERE key = ?", (key,)).fetchone()
            if row is None or not _live(row[1], now):
                raise NotFound(f"key {_show(key)} is not found")
            return _row_item(key, *row)

        return await self._read(read)

    async def get_range(self, start: bytes, end: bytes, limit: int = 0) -> list[Item]:
        if not isinstance(start, bytes) or not isinstance(end, bytes):
            raise TypeError("range bounds are bytes")
        if limit < 0:
            raise ValueError("limit must not be negative")

        def read(conn: sqlite3.Connection, now: int) -> list[Item]:
            sql = "SELECT key, value, expires, revision FROM kv WHERE key >= ? AND (expires IS NULL OR expires > ?)"
            args: list[Any] = [start, now]
            if end:
                sql += " AND key < ?"
                args.append(end)
            sql += " ORDER BY key LIMIT ?"
            args.append(limit if limit > 0 else -1)
            return [_row_item(*row) for row in conn.execute(sql, args)]

        return await self._read(read)

    # -- writes -----------------------------------------------------------------------------------

    async def put(self, item: Item) -> Item:
        _check_item(item)
        return await self._write(lambda tx: tx.put(item))

    async def create(self, item: Item) -> Item:
        _check_item(item)

        def op(tx: _Tx) -> Item:
            if tx.live(item.key) is not None:
                raise AlreadyExists(f"key {_show(item.key)} already exists")
            return tx.put(item)

        return await self._write(op)

    async def update(self, item: Item) -> Item:
        _check_item(item)

        def op(tx: _Tx) -> Item:
            if tx.live(item.key) is None:
                raise NotFound(f"key {_show(item.key)} is not found")
            return tx.put(item)

        return await self._write(op)

    async def compare_and_swap(self, expected: Item, replace: Item) -> Item:
        _check_key(expected.key)
        _check_item(replace)
        if expected.key != replace.key:
            raise ValueError("compare_and_swap: expected and replace must have the same key")

        def op(tx: _Tx) -> Item:
            row = tx.live(replace.key)
            if row is None:
                raise NotFound(f"key {_show(replace.key)} is not found")
            if row[0] != expected.value:
                raise CompareFailed(f"key {_show(replace.key)}: value is not the expected one")
            return tx.put(replace)

        return await self._write(op)

    async def conditional_update(self, item: Item) -> Item:
        _check_item(item)

        def op(tx: _Tx) -> Item:
            row = tx.live(item.key)
            if row is None or str(row[2]) != item.revision:
                raise CompareFailed(f"key {_show(item.key)}: revision is not {item.revision!r}")
            return tx.put(item)

        return await self._write(op)

    async def delete(self, key: bytes) -> None:
        _check_key(key)

        def op(tx: _Tx) -> None:
            if tx.live(key) is None:
                raise NotFound(f"key {_show(key)} is not found")
            tx.delete(key)

        await self._write(op)

    async def conditional_delete(self, key: bytes, revision: str) -> None:
        _check_key(key)

        def op(tx: _Tx) -> None:
            row = tx.live(key)
            if row is None or str(row[2]) != revision:
                raise CompareFailed(f"key {_show(key)}: revision is not {revision!r}")
            tx.delete(key)

        await self._write(op)

    async def delete_range(self, start: bytes, end: bytes) -> int:
        if not isinstance(start, bytes) or not isinstance(end, bytes):
            raise TypeError("range bounds are bytes")

        def op(tx: _Tx) -> int:
            where, args = ("key >= ? AND key < ?", (start, end)) if end else ("key >= ?", (start,))
            rows = tx.conn.execute(f"SELECT key, expires FROM kv WHERE {where} ORDER BY key", args).fetchall()  # noqa: S608
            if not rows:
                return 0
            tx.conn.execute(f"DELETE FROM kv WHERE {where}", args)  # noqa: S608
            revision = str(tx.revision())
            tx.events.extend(Event(OpType.DELETE, Item(bytes(k), b"", revision=revision)) for k, _ in rows)
            return sum(1 for _, expires in rows if _live(expires, tx.now))

        return await self._write(op)

    async def keep_alive(self, key: bytes, expires: dt.datetime) -> Item:
        _check_key(key)
        _check_item(Item(key, b"", expires))

        def op(tx: _Tx) -> Item:
            return tx.touch(key, expires)

        return await self._write(op, savepoint=False)  # one statement, or nothing written

    async def atomic_write(self, conditions: Sequence[Condition], actions: Sequence[Action]) -> str:
        if not actions:
            raise ValueError("atomic_write needs at least one action")
        seen: set[bytes] = set()
        for action in actions:
            _check_key(action.key)
            if action.item is not None:
                _check_item(action.item)
                if action.item.key != action.key:
                    raise ValueError(f"action key {_show(action.key)} differs from its item's key")
            if action.key in seen:
                raise ValueError(f"key {_show(action.key)} appears in more than one action")
            seen.add(action.key)
        for condition in conditions:
            _check_key(condition.key)
        conditions, actions = tuple(conditions), tuple(actions)

        def op(tx: _Tx) -> str:
            for condition in conditions:
                if not tx.check(condition):
                    raise CompareFailed(f"condition {condition.kind.value} on key {_show(condition.key)} failed")
            revision = str(tx.revision())
            for action in actions:
                if action.item is None:
                    tx.delete(action.key)
                else:
                    tx.put(action.item)
            return revision

        return await self._write(op)

    # -- watchers and shutdown --------------------------------------------------------------------

    def watch(self, prefixes: Sequence[bytes], queue_size: int = DEFAULT_WATCHER_QUEUE) -> Watcher:
        """A watcher on the running loop for keys under ``prefixes`` (empty or ``b""``: every key)."""
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        for prefix in prefixes:
            if not isinstance(prefix, bytes):
                raise TypeError(f"prefixes are bytes, got {type(prefix).__name__}")
        loop = asyncio.get_running_loop()
        watcher = SqliteWatcher(self, tuple(prefixes), queue_size, loop)
        with self._watch_lock:
            self._check_open()
            self._watchers.add(watcher)
        return watcher

    def recording_index(self) -> SqliteRecordingIndex:
        """The FTS5 index of recordings beside the database (opened on first use; closed with the
        backend): :mod:`teleport_core.state.backends.sqlite_index`."""
        self._check_open()
        with self._submit_lock:
            index: SqliteRecordingIndex | None = getattr(self, "_recording_index", None)
            if index is None:
                index = self._recording_index = SqliteRecordingIndex(self.directory)
            return index

    async def close(self) -> None:
        """Finish queued writes, close every watcher and the connections (idempotent)."""
        index: SqliteRecordingIndex | None = getattr(self, "_recording_index", None)
        if index is not None:
            await index.close()
        with self._submit_lock:
            first = not self._closed
            self._closed = True
            if first:
                self._jobs.put(None)
        if not first:
            await asyncio.to_thread(self._close_done.wait)  # another caller is closing it
            return
        # Shielded: a cancelled close() still releases the connections and the lock.
        await asyncio.shield(asyncio.ensure_future(self._release()))

    async def _release(self) -> None:
        try:
            self._stop_poll.set()
            await asyncio.to_thread(self._poller.join)
            await asyncio.to_thread(self._writer.join)
            with self._watch_lock:
                watchers = list(self._watchers)
                self._watchers.clear()
            for watcher in watchers:
                watcher._shut_threadsafe("backend closed")
            await asyncio.to_thread(self._readers.shutdown, True)
            with self._watch_lock:
                conns, self._reader_conns = self._reader_conns, []
            for conn in conns:
                conn.close()
        finally:
            with _OPEN_LOCK:
                _OPEN.discard(self._open_key)
            self._close_done.set()
