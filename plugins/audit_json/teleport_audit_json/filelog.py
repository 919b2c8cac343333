"""The ``file://`` audit sink: JSON lines on local disk, one file per UTC day and server.

``file:///var/lib/teleport/log`` (optionally ``?server_id=NAME``) stores each event as one
line (see :mod:`teleport_audit_json.lines`) in::

    <dir>/<server-id>/YYYY-MM-DD.00:00:00.log

``server-id`` is the URI's ``server_id`` or else the host name. The day is the UTC day of
the event's ``time`` (not of the moment it is written). Directories are created 0700 and
files 0600; nothing is created until the first event is written, so reading tools can open
the sink without write access.

Durability: a dedicated writer thread takes every event queued so far, appends the batch to
its day file with one ``write`` and one ``fsync`` (group commit), and only then lets the
``emit`` calls return; a new file's directory is fsynced too. Concurrent emitters share one
fsync, so throughput grows with concurrency, and no file I/O runs on the event loop. Before
its next batch the writer waits until the event loops it woke have run the emitters they
resumed up to their next ``await`` (not for a fixed time), so an emitter that emits again at
once joins the next batch instead of trailing it in a batch of its own. A crash
can leave at most a torn (newline-less) last line: readers skip it with a warning naming
file and line, and the next append first terminates it with a newline, so later events
never merge into it. An append that fails (a full disk, an I/O error) is cut back off the
file, so it leaves no partial line behind: the events are retried whole once space returns.
Writers of the same file (one per server id) serialise on ``flock``.

Dedup: an event is a duplicate when its day file already holds the same ``uid`` at the same
millisecond. A re-emitted event carries its original ``time``, so this check is exact for
every redelivery however late and survives reopening: the rows of the most recent time
codes are kept in memory, and an older one is looked up in the index. Two events that share a uid but differ in
time are different events. Dedup is per server directory; searches also drop a uid seen
twice at the same millisecond (copies under two server ids).

Search reads every server directory under ``<dir>``, opening only the day files that
overlap the time range. Each day file has an index (:mod:`teleport_audit_json.index`): an
SQLite sidecar ``<day file>.index`` with a row per event (time code, byte offset, hashes of
uid, type, user and sid) and B-tree indexes by type, user and sid, each ordered by time, so a
filtered page reads only its own lines and a fresh process reads no more than that. The log
is the truth: a sidecar that is missing, torn, corrupt or behind the log is rebuilt or
caught up from it, and the writer adds its rows after the fsync, in memory, for the indexer
thread to insert. Results are ordered by (time, server id, file offset); the cursor is the
position of a page's last event, so paging is complete and stable while events are appended.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import fcntl
import heapq
import itertools
import logging
import os
import re
import socket
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs

from teleport_audit_json.index import DayIndex, Filter, Row, line_record, text_hash, uid_hash
from teleport_audit_json.lines import (
    CANONICAL_TIME,
    DAY_MS,
    Encoded,
    decode,
    decode_record,
    encode,
    tc_from_ms,
    uid_of,
)
from teleport_core.errors import ConfigError, TeleportError
from teleport_core.state.audit import (
    AuditError,
    AuditEvent,
    AuditLines,
    AuditPage,
    AuditQuery,
    AuditSink,
    format_time,
    record_line,
    record_time,
)

log = logging.getLogger("teleport.audit")

CONFIG_KEY = "teleport.storage.audit_events_uri"
DIR_MODE = 0o700
FILE_MODE = 0o600
OFFSET_MASK = (1 << 36) - 1
MAX_FILE_SIZE = 1 << 36  # 64 GiB per server and day
END_CODE = 1 << 40  # above every time code
INDEX_BUDGET = 8_000_000  # rows of the day-file indexes kept open (LRU beyond)
MAX_OPEN_INDEXES = 64  # day-file indexes (SQLite connections) kept open
FLUSH_ROWS = 4096  # the indexer flushes an index once this many rows wait
ROUND_WAIT = 0.02  # seconds the writer waits at most for a loop to run the emitters it woke
FLUSH_DELAY = 0.2  # seconds rows may wait for the indexer when fewer are pending
SCAN_CHUNK = 4 << 20
MIN_READ = 4096
MAX_READ = 1 << 20
# A read away from the last one: most events fit (a line past it is read on); a page of one user's
# events reads lines tens of kB apart, and copying 4 KiB per line was a third of a search's time.
SPARSE_READ = 1024
LISTING_SETTLE_NS = 2_000_000_000  # a listing is reused once its directory is this old
SERVER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
DAY_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.00:00:00\.log$")
_CURSOR = re.compile(r"^[A-Za-z0-9_-]{1,400}$")
_EXAMPLE = "expected file:///absolute/directory or file:///absolute/directory?server_id=NAME"


class InvalidCursor(TeleportError, ValueError):
    """A search cursor that this sink did not issue."""


def day_file_name(day: dt.date) -> str:
    return f"{day.isoformat()}.00:00:00.log"


def parse_uri(uri: str) -> tuple[Path, str | None]:
    """The directory and server id (None: use the host name) of a ``file://`` URI."""
    if any(ord(c) < 32 or ord(c) == 127 for c in uri):
        raise ConfigError(CONFIG_KEY, f"{_EXAMPLE}: {uri!r} contains a control character")
    parts = urlsplit(uri)
    if parts.scheme != "file":
        raise ConfigError(CONFIG_KEY, f"{_EXAMPLE}, got {uri!r}")
    if parts.netloc not in ("", "localhost"):
        raise ConfigError(
            CONFIG_KEY,
            f"{_EXAMPLE} (three slashes): {uri!r} names the host {parts.netloc!r}; relative paths are not allowed",
        )
    if parts.fragment or uri.endswith("#"):
        raise ConfigError(CONFIG_KEY, f"{_EXAMPLE}: {uri!r} has a fragment")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise ConfigError(CONFIG_KEY, f"{_EXAMPLE}: the path {path!r} in {uri!r} is relative")
    if "\x00" in path:
        raise ConfigError(CONFIG_KEY, f"{_EXAMPLE}: {uri!r} contains a NUL byte")
    server_id: str | None = None
    if parts.query:
        try:
            pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise ConfigError(CONFIG_KEY, f"{_EXAMPLE}: cannot parse the query {parts.query!r} of {uri!r}") from None
        for key, value in pairs:
            if key != "server_id":
                raise ConfigError(CONFIG_KEY, f"{_EXAMPLE}: unknown option {key!r} in {uri!r}")
            if server_id is not None:
                raise ConfigError(CONFIG_KEY, f"{_EXAMPLE}: server_id is given twice in {uri!r}")
            if not SERVER_ID.match(value):
                raise ConfigError(
                    CONFIG_KEY,
                    f"{_EXAMPLE}: server_id {value!r} in {uri!r} must be letters, digits, '.', '_' or '-' "
                    "and start with a letter or digit",
                )
            server_id = value
    return Path(path), server_id


def _check_directory(directory: Path) -> None:
    """Refuse a directory that cannot be used, at open, without creating anything: one that
    is not a directory, or whose nearest existing ancestor is not a writable directory."""
    if directory.exists() and not directory.is_dir():
        raise ConfigError(CONFIG_KEY, f"{directory} exists and is not a directory")
    ancestor = directory
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor == directory:
        return
    if not ancestor.is_dir():
        raise ConfigError(CONFIG_KEY, f"cannot create {directory}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(CONFIG_KEY, f"cannot create {directory}: {ancestor} is not writable by this user")


async def open_sink(uri: str, data_dir: Path) -> FileAuditLog:
    """Factory of the ``file`` scheme (``data_dir`` is unused: the URI names the directory)."""
    directory, server_id = parse_uri(uri)
    if server_id is None:
        server_id = socket.gethostname()
        if not SERVER_ID.match(server_id):
            raise ConfigError(
                CONFIG_KEY, f"the host name {server_id!r} cannot name a directory: add ?server_id=NAME to {uri!r}"
            )
    await asyncio.to_thread(_check_directory, directory)
    return FileAuditLog(directory, server_id)


# -- positions and cursors --------------------------------------------------------------------


@attrs.frozen
class Position:
    """Where an event is in the search order: day, then (time code, server id, byte offset)."""

    day: dt.date
    code: int
    server: str
    offset: int

    @property
    def key(self) -> tuple[int, str, int]:
        """The order within a day."""
        return self.code, self.server, self.offset

    def encode(self) -> str:
        raw = f"1 {self.day.isoformat()} {self.code} {self.offset} {self.server}"
        return base64.urlsafe_b64encode(raw.encode("ascii")).decode("ascii").rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Position:
        """The position a cursor names; :class:`InvalidCursor` for anything this sink did not issue."""
        try:
            if not _CURSOR.match(text):
                raise ValueError("bad characters")
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
            version, day, code, offset, server = raw.split(" ")
            if version != "1" or not (code.isdigit() and offset.isdigit()) or not SERVER_ID.match(server):
                raise ValueError("bad fields")
            position = cls(dt.date.fromisoformat(day), int(code), server, int(offset))
            if position.code >= 240_000_000 or position.offset > OFFSET_MASK:
                raise ValueError("out of range")
            return position
        except (ValueError, UnicodeDecodeError, binascii.Error):
            raise InvalidCursor(f"invalid audit search cursor {text[:80]!r}") from None


# -- the per-file index ------------------------------------------------------------------------


def _read_line(fd: int, offset: int) -> bytes:
    """The line at ``offset`` without its newline (empty at end of file)."""
    data = os.pread(fd, MIN_READ, offset)
    while b"\n" not in data:
        more = os.pread(fd, max(len(data), MIN_READ), offset + len(data))
        if not more:
            return b""
        data += more
    return data[: data.index(b"\n")]


def _line_number(fd: int, offset: int) -> int:
    """The 1-based number of the line starting at ``offset``."""
    count, pos = 0, 0
    while pos < offset:
        chunk = os.pread(fd, min(SCAN_CHUNK, offset - pos), pos)
        if not chunk:
            break
        count += chunk.count(b"\n")
        pos += len(chunk)
    return count + 1


def _lock_held(fd: int) -> bool:
    """True when another open file holds an exclusive ``flock`` on the file (a write in progress)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


# -- reading ----------------------------------------------------------------------------------


class _LineReader:
    """Reads lines by offset, reading ahead further while reads are sequential."""

    def __init__(self, fd: int, limit: int) -> None:
        self.fd = fd
        self.limit = limit
        self.buf = b""
        self.start = 0
        self.block = SPARSE_READ

    def line(self, offset: int) -> bytes | None:
        # one call per event a search reads, most of them far apart: the sparse path is kept short
        buf = self.buf
        rel = offset - self.start
        if 0 <= rel < len(buf):
            nl = buf.find(b"\n", rel)
            if nl >= 0:
                return buf[rel:nl]
            want = self.block = min(max(self.block, MIN_READ) * 4, MAX_READ)  # sequential: read ahead more
        elif rel < 0 or rel > len(buf) + MIN_READ:
            want = self.block = SPARSE_READ
        else:
            want = self.block = min(max(self.block, MIN_READ) * 4, MAX_READ)
        if want > self.limit - offset:
            want = self.limit - offset
            if want <= 0:
                return None  # the file changed under the index
        data = os.pread(self.fd, want, offset)
        nl = data.find(b"\n")
        while nl < 0:
            if offset + len(data) >= self.limit:
                return None  # the file changed under the index
            want = min(max(len(data), self.block), self.limit - offset - len(data))
            more = os.pread(self.fd, want, offset + len(data))
            if not more:
                return None
            nl = more.find(b"\n")
            if nl >= 0:
                nl += len(data)
            data += more
        self.buf, self.start = data, offset
        return data[:nl]


@attrs.define
class _Source:
    server: str
    path: Path
    fd: int
    index: DayIndex
    reader: _LineReader


@attrs.define
class _Pending:
    """Events waiting for the writer (one ``emit``'s, or one ``emit_lines`` batch), and the
    future their emitter awaits on ``loop``."""

    records: list[Encoded]
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[None]


def _settle(results: list[tuple[asyncio.Future[None], str]]) -> None:
    """Resolve emitters' futures (on their loop): an empty error means stored."""
    for future, error in results:
        if future.done():  # the emitter was cancelled
            continue
        if error:
            future.set_exception(AuditError(error))
        else:
            future.set_result(None)


def _settle_all(batch: list[_Pending], error: str) -> None:
    for pending in batch:
        with contextlib.suppress(RuntimeError):
            pending.loop.call_soon_threadsafe(_settle, [(pending.done, error)])


@attrs.define
class _PathState:
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    unsynced: bool = False  # a write failed: fsync before acknowledging anything in this file
    dir_unsynced: bool = False  # created, but its directory entry is not yet fsynced


@attrs.define
class _Listing:
    key: tuple[int, int, int]
    settled: bool
    names: tuple[Any, ...]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(path: Path) -> None:
    """Create ``path`` and missing parents 0700, each made durable in its parent."""
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(directory, DIR_MODE)
        _fsync_dir(directory.parent)


def _floor_ms(when: dt.datetime) -> int:
    return (when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(milliseconds=1)


def _ceil_ms(when: dt.datetime) -> int:
    return -((dt.datetime(1970, 1, 1, tzinfo=dt.UTC) - when) // dt.timedelta(milliseconds=1))


def _day_start_ms(day: dt.date) -> int:
    return (day - dt.date(1970, 1, 1)).days * DAY_MS


# -- the sink ---------------------------------------------------------------------------------


class FileAuditLog(AuditSink):
    """JSON-lines audit log under ``directory``, written as ``server_id``."""

    def __init__(self, directory: Path, server_id: str) -> None:
        self.directory = directory
        self.server_id = server_id
        self.server_dir = directory / server_id
        self._lock = threading.Lock()  # guards the three caches below
        self._indexes: OrderedDict[Path, DayIndex] = OrderedDict()
        self._paths: dict[Path, _PathState] = {}
        self._listings: dict[Path, _Listing] = {}
        self._queue_lock = threading.Lock()  # emitters take it bare (a C-level ``with``: cheaper per event)
        self._queue_cond = threading.Condition(self._queue_lock)
        self._queue: list[_Pending] = []
        self._rounds = 0  # batches whose emitters' loops have not run them yet
        self._direct = 0  # emit_lines_now calls storing now (guarded by _queue_lock)
        self._writer: threading.Thread | None = None
        self._indexer: threading.Thread | None = None
        self._index_wake = threading.Event()  # set: the indexer should flush now
        self._closed = False

    def __repr__(self) -> str:
        return f"FileAuditLog({str(self.directory)!r}, server_id={self.server_id!r})"

    # -- writing --

    async def emit(self, event: AuditEvent) -> None:
        # A cancelled emitter stops waiting, but its event is queued and will be written.
        await self._enqueue([encode(event)])

    async def emit_lines(self, lines: Sequence[bytes]) -> None:
        """Store events given as their lines (the audit spool's, encoded as this sink encodes):
        a line this sink would write is stored as it is, without decoding (its uid, time and
        filtered fields read as the index's scan reads them); any other is decoded and encoded
        (:class:`AuditError` if it cannot be stored), and one that is not an event is skipped
        with a warning. One group commit for the batch, durable when this returns."""
        records = self._records(lines)
        if records:
            await self._enqueue(records)

    lines_now = True

    def emit_lines_now(self, lines: Sequence[bytes], events: Sequence[AuditEvent] | None = None) -> None:
        """:meth:`emit_lines` in the calling thread (the audit spool's writer, right after its own
        fsync): the batch is appended and fsynced there, under the same per-file lock and ``flock``
        as the writer thread's batches, de-duplicated by uid the same way. With ``events`` (what
        the lines are), a line's uid, time and filtered fields are the event's, as :meth:`emit`
        takes them, instead of read back from the line. :class:`AuditError` when it cannot be stored."""
        records = self._records(lines) if events is None else self._records_of_events(lines, events)
        if not records:
            return
        with self._queue_lock:
            if self._closed:
                raise AuditError(f"audit log {self.directory} is closed")
            self._start_threads()  # the indexer inserts these rows too
            self._direct += 1
        try:
            errors = self._store(records)
        finally:
            with self._queue_lock:
                self._direct -= 1
                if self._closed:  # close() waits for the stores under way
                    self._queue_cond.notify_all()
        if errors:
            raise AuditError("; ".join(errors[day] for day in sorted(errors)))

    def _records_of_events(self, lines: Sequence[bytes], events: Sequence[AuditEvent]) -> list[Encoded]:
        """:meth:`_records` of lines whose events are known (``lines[i] == event_line(events[i])``)."""
        records = []
        for line, event in zip(lines, events, strict=True):
            try:
                records.append(encode(event, line))
            except AuditError:  # not storable as it is: as the sender's emit_lines would take the line
                records.extend(self._records([line]))
        return records

    def _records(self, lines: Sequence[bytes]) -> list[Encoded]:
        """The :class:`Encoded` of each line that is an event (see :meth:`emit_lines`)."""
        records = []
        for line in lines:
            record = line_record(line)
            if record is None:
                try:
                    record = encode(decode(line.rstrip(b"\n")))
                except ValueError as exc:  # never written by the spool (a corrupt line): not an event
                    log.warning("audit log %s: skipping a line that is not an event (%s)", self.directory, exc)
                    continue
            records.append(record)
        return records

    def _enqueue(self, records: list[Encoded]) -> asyncio.Future[None]:
        """Queue ``records`` for the writer; the future it resolves once they are on disk (a
        plain function, not a coroutine: one coroutine less to create and resume per event)."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        with self._queue_lock:
            if self._closed:
                raise AuditError(f"audit log {self.directory} is closed")
            self._queue.append(_Pending(records, loop, done))
            if self._writer is None:
                self._start_threads()
            # Wake the writer for the first event of a batch only: with more queued it was woken
            # already or sees them before it waits; during a round, the round's end wakes it.
            if not self._rounds and len(self._queue) == 1:
                self._queue_cond.notify()
        return done

    def _start_threads(self) -> None:
        """Start the writer and indexer threads (with ``_queue_lock`` held), once."""
        if self._writer is None:
            self._writer = threading.Thread(target=self._run_writer, name="audit-json-writer", daemon=True)
            self._writer.start()
            self._indexer = threading.Thread(target=self._run_indexer, name="audit-json-indexer", daemon=True)
            self._indexer.start()

    def _wait_direct(self) -> None:
        """Wait until no :meth:`emit_lines_now` is storing (at close, before the indexes close)."""
        with self._queue_cond:
            while self._direct:
                self._queue_cond.wait()

    def _run_writer(self) -> None:
        while True:
            with self._queue_cond:
                while (not self._queue or self._rounds) and not self._closed:
                    if not self._queue:
                        self._queue_cond.wait()
                    elif not self._queue_cond.wait(ROUND_WAIT):
                        self._rounds = 0  # a loop that stopped running: write what is queued
                if not self._queue:
                    return
                batch, self._queue = self._queue, []
            try:
                self._write_batch(batch)
            except BaseException as exc:  # never leave emitters waiting on a dead writer
                log.exception("audit log %s: the writer failed", self.directory)
                _settle_all(batch, f"audit log {self.directory}: the writer failed: {exc!r}")

    def _store(self, records: list[Encoded]) -> dict[dt.date, str]:
        """Append ``records`` to their day files, durably; the error of each day that failed."""
        by_day: dict[dt.date, list[Encoded]] = {}
        for record in records:
            by_day.setdefault(record.day, []).append(record)
        errors: dict[dt.date, str] = {}
        for day, day_records in by_day.items():
            path = self.server_dir / day_file_name(day)
            try:
                self._append(path, day, day_records)
            except Exception as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                errors[day] = f"cannot write audit log {path}: {reason}"
                log.error("%s", errors[day])
        return errors

    def _write_batch(self, batch: list[_Pending]) -> None:
        errors = self._store([record for pending in batch for record in pending.records])
        outcomes: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None], str]]] = {}
        for pending in batch:
            error = ""
            if errors:  # the errors of the days its events fall on
                days = sorted({record.day for record in pending.records})
                error = "; ".join(errors[day] for day in days if day in errors)
            results = outcomes.get(pending.loop)
            if results is None:
                results = outcomes[pending.loop] = []
            results.append((pending.done, error))
        for loop, results in outcomes.items():  # one wake-up per event loop and batch
            with self._queue_cond:
                self._rounds += 1
            try:
                loop.call_soon_threadsafe(self._settle_round, results)
            except RuntimeError:  # the loop has ended: nobody is waiting
                self._round_done()

    def _settle_round(self, results: list[tuple[asyncio.Future[None], str]]) -> None:
        """Wake a batch's emitters, and tell the writer once they have run (on their loop).

        Resolving the futures schedules the emitters' tasks; :meth:`_round_done`, scheduled
        after them, runs once each has run up to its next ``await``: an emitter that emits
        again has queued its next event by then, so the next batch takes them all together
        (group commit without a timed wait: the writer waits only for work already runnable).
        """
        try:
            _settle(results)
        finally:
            asyncio.get_running_loop().call_soon(self._round_done)

    def _round_done(self) -> None:
        with self._queue_cond:
            self._rounds = max(0, self._rounds - 1)
            self._queue_cond.notify()  # the writer, its only waiter

    def _open_append(self, path: Path) -> tuple[int, bool]:
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
        for attempt in range(2):
            try:
                try:
                    fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
                except FileExistsError:
                    return os.open(path, flags), False
            except FileNotFoundError:
                if attempt:
                    raise
                _make_dirs(path.parent)
                continue
            os.fchmod(fd, FILE_MODE)  # exactly 0600 whatever the umask
            return fd, True
        raise AssertionError("unreachable")

    def _append(self, path: Path, day: dt.date, records: list[Encoded]) -> None:
        """Append the records not stored yet; durable when this returns."""
        state = self._state(path)
        with state.lock:
            fd, created = self._open_append(path)
            try:
                state.dir_unsynced |= created
                fcntl.flock(fd, fcntl.LOCK_EX)
                st = os.fstat(fd)
                index = self._index(path, day, fd, st, report_torn=False)
                if state.unsynced:
                    os.fsync(fd)
                    state.unsynced = False
                fresh, hashes = self._not_stored(fd, index, records)
                if fresh:
                    self._write(fd, path, state, index, st.st_size, fresh, hashes)
                if state.dir_unsynced:
                    _fsync_dir(path.parent)
                    state.dir_unsynced = False
            finally:
                os.close(fd)  # releases the flock

    def _not_stored(self, fd: int, index: DayIndex, records: list[Encoded]) -> tuple[list[Encoded], list[int]]:
        """The records not in the file yet (nor earlier in ``records``), and their uid hashes."""
        hashes = [uid_hash(record.uid) for record in records]
        keys = [(record.code, h) for record, h in zip(records, hashes, strict=True)]
        clashes = index.clashes(keys)  # one lock for the batch; usually none: nothing to read
        if not clashes and len(set(keys)) == len(keys):
            return records, hashes
        fresh: list[Encoded] = []
        fresh_hashes: list[int] = []
        seen: set[tuple[int, str]] = set()
        for i, record in enumerate(records):
            if (record.code, record.uid) in seen:
                continue
            seen.add((record.code, record.uid))
            if any(uid_of(_read_line(fd, offset)) == record.uid for offset in clashes.get(i, ())):
                continue
            fresh.append(record)
            fresh_hashes.append(hashes[i])
        return fresh, fresh_hashes

    def _write(
        self, fd: int, path: Path, state: _PathState, index: DayIndex, end: int, fresh: list[Encoded], hashes: list[int]
    ) -> None:
        prefix = b""
        if end > index.size:  # a torn last line: end it so the next event starts on a line of its own
            prefix = b"\n"
            log.warning(
                "audit log %s line %d is incomplete (%d bytes, a torn write): terminated it before appending",
                path,
                index.lines + 1,
                end - index.size,
            )
        data = prefix + b"".join([record.line for record in fresh])
        if end + len(data) > MAX_FILE_SIZE:
            raise AuditError(f"audit log {path} would exceed {MAX_FILE_SIZE >> 30} GiB")
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except BaseException:
            state.unsynced = True
            # a failed append (disk full, I/O error) leaves no partial line: cut back to the size before
            with contextlib.suppress(OSError):
                os.ftruncate(fd, end)
            self._forget(path)
            raise
        offset = end + len(prefix)
        rows: list[Row] = []
        append = rows.append
        for record, uid in zip(fresh, hashes, strict=True):  # the writer's per-event loop: kept tight
            append((record.code, offset, uid, text_hash(record.event), text_hash(record.user), text_hash(record.sid)))
            offset += len(record.line)
        index.add(rows, offset, len(fresh) + len(prefix))
        index.torn_at = -1
        if index.pending_rows() >= FLUSH_ROWS:
            self._index_wake.set()

    # -- indexes --

    def _state(self, path: Path) -> _PathState:
        with self._lock:
            state = self._paths.get(path)
            if state is None:
                state = self._paths[path] = _PathState()
            return state

    def _forget(self, path: Path) -> None:
        with self._lock:
            index = self._indexes.pop(path, None)
        if index is not None:
            index.release()

    def _index(self, path: Path, day: dt.date, fd: int, st: os.stat_result, *, report_torn: bool) -> DayIndex:
        """The up-to-date index of ``path`` (open as ``fd``); call with the path's lock held."""
        identity = (st.st_dev, st.st_ino)
        with self._lock:
            index = self._indexes.get(path)
        if index is None or index.identity != identity or st.st_size < index.size:
            if index is not None:
                index.release()
            index = DayIndex(path, day, fd, st)
        if st.st_size > index.size:
            size = index.scan(fd, st.st_size)
            if size < st.st_size and report_torn and index.torn_at != size and not _lock_held(fd):
                index.torn_at = size
                log.warning(
                    "audit log %s line %d is incomplete (%d bytes without a newline, a torn write): skipped",
                    path,
                    index.lines + 1,
                    st.st_size - size,
                )
        evicted: list[DayIndex] = []
        with self._lock:
            self._indexes[path] = index
            self._indexes.move_to_end(path)
            total = sum(len(i) for i in self._indexes.values())
            if total > INDEX_BUDGET or len(self._indexes) > MAX_OPEN_INDEXES:
                evicted = self._evict(total, keep=path)
        for old in evicted:
            old.release()
        return index

    def _evict(self, total: int, keep: Path) -> list[DayIndex]:
        """Drop least recently used indexes down to the budget; call with ``_lock`` held.

        The indexes of this server's files of today and yesterday (UTC) stay: the writer
        needs them (their recent rows are what dedup checks without a query).
        """
        recent = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
        evicted: list[DayIndex] = []
        for path, index in list(self._indexes.items()):
            if total <= INDEX_BUDGET and len(self._indexes) <= MAX_OPEN_INDEXES:
                break
            if path == keep or (path.parent == self.server_dir and index.day >= recent):
                continue
            del self._indexes[path]
            evicted.append(index)
            total -= len(index)
        return evicted

    def _run_indexer(self) -> None:
        """Insert the rows the writer queued into the indexes, in big transactions."""
        while not self._closed:
            self._index_wake.wait(FLUSH_DELAY)
            self._index_wake.clear()
            with self._lock:
                indexes = list(self._indexes.values())
            for index in indexes:
                if index.pending_rows():
                    try:
                        index.flush()
                    except Exception:  # an index in memory that failed: searches flush and report it
                        log.exception("audit index of %s: flushing failed", index.path)

    # -- searching --

    async def search(self, query: AuditQuery) -> AuditPage:
        return await asyncio.to_thread(self._search, query)

    async def search_lines(self, query: AuditQuery) -> AuditLines:
        """:meth:`search`'s page as its lines are stored, without building events. A line whose
        ``time`` is not written as :func:`format_time` writes it (another writer's) is encoded again."""
        return await asyncio.to_thread(self._search_lines, query)

    def _search(self, query: AuditQuery) -> AuditPage:
        found, cursor = self._page(query)
        return AuditPage(tuple([AuditEvent.from_dict(record, when) for _, record, when in found]), cursor)

    def _search_lines(self, query: AuditQuery) -> AuditLines:
        found, cursor = self._page(query)
        lines: list[bytes] = []
        records: list[dict[str, Any]] = []
        for line, record, when in found:
            if CANONICAL_TIME.fullmatch(record["time"]) is None:
                record["time"] = format_time(when)
                line = record_line(record)
            lines.append(line)
            records.append(record)
        return AuditLines(tuple(lines), tuple(records), cursor)

    def _page(self, query: AuditQuery) -> tuple[list[tuple[bytes, dict[str, Any], dt.datetime]], str]:
        """The (line, record, time) of each event of ``query``'s page, and its ``next_cursor``."""
        if query.limit < 1:
            raise ValueError(f"limit must be positive, got {query.limit}")
        after = Position.decode(query.cursor) if query.cursor else None
        low, high = _floor_ms(query.since), _ceil_ms(query.until)
        found: list[tuple[bytes, dict[str, Any], dt.datetime]] = []
        last: tuple[dt.date, tuple[int, str, int]] | None = None  # day, (code, server, offset) of the last event
        for day, files in self._days(low, high, after.day if after else None):
            with contextlib.closing(self._scan_day(day, files, low, high, after, query)) as rows:
                for position, line, record, when in rows:
                    if len(found) == query.limit:
                        assert last is not None
                        return found, Position(last[0], *last[1]).encode()
                    found.append((line, record, when))
                    last = day, position
        return found, ""

    def _days(self, low: int, high: int, first: dt.date | None) -> list[tuple[dt.date, list[tuple[str, Path]]]]:
        """The day files overlapping ``[low, high)`` ms, from day ``first`` on, by day then server."""
        by_day: dict[dt.date, list[tuple[str, Path]]] = {}
        for server in self._list(self.directory, servers=True):
            server_dir = self.directory / server
            for day in self._list(server_dir, servers=False):
                start = _day_start_ms(day)
                if start < high and start + DAY_MS > low and (first is None or day >= first):
                    by_day.setdefault(day, []).append((server, server_dir / day_file_name(day)))
        return sorted((day, sorted(files)) for day, files in by_day.items())

    def _list(self, directory: Path, *, servers: bool) -> tuple[Any, ...]:
        """Server ids (``servers``) or days of the day files in ``directory``, cached until it changes."""
        try:
            st = os.stat(directory)
        except (FileNotFoundError, NotADirectoryError):
            return ()
        key = (st.st_dev, st.st_ino, st.st_mtime_ns)
        with self._lock:
            cached = self._listings.get(directory)
        if cached is not None and cached.key == key and cached.settled:
            return cached.names
        settled = time.time_ns() - st.st_mtime_ns > LISTING_SETTLE_NS
        names: list[Any] = []
        with os.scandir(directory) as entries:
            for entry in entries:
                if servers:
                    if SERVER_ID.match(entry.name) and entry.is_dir(follow_symlinks=False):
                        names.append(entry.name)
                    continue
                match = DAY_FILE.match(entry.name)
                if match and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(ValueError):
                        names.append(dt.date.fromisoformat(match.group(1)))
        result = tuple(sorted(names))
        with self._lock:
            self._listings[directory] = _Listing(key, settled, result)
        return result

    def _open_source(self, server: str, path: Path, day: dt.date) -> _Source | None:
        state = self._state(path)
        with state.lock:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except FileNotFoundError:
                return None
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise TeleportError(f"audit log {path} is not a regular file")
                index = self._index(path, day, fd, st, report_torn=True)
                return _Source(server, path, fd, index, _LineReader(fd, index.size))
            except BaseException:
                os.close(fd)
                raise

    def _scan_day(
        self,
        day: dt.date,
        files: list[tuple[str, Path]],
        low: int,
        high: int,
        after: Position | None,
        query: AuditQuery,
    ) -> Generator[tuple[tuple[int, str, int], bytes, dict[str, Any], dt.datetime], None, None]:
        """(position, line, record, time) of the matching events of ``day`` in order, after ``after``;
        a uid twice in one millisecond once."""
        start = _day_start_ms(day)
        first_code = tc_from_ms(max(low - start, 0))
        # the previous page's last event, while this day's events may still come before it
        after_key = after.key if after is not None and after.day == day else None
        if after_key is not None:
            first_code = max(first_code, after_key[0])
        high_code = END_CODE if high - start >= DAY_MS else tc_from_ms(high - start)
        where = Filter.of(query.event_types, query.user, query.sid)
        sources: list[_Source] = []
        try:
            for server, path in files:
                source = self._open_source(server, path, day)
                if source is not None:
                    sources.append(source)
            seen_code, seen = -1, set[str]()  # the uids of time code seen_code
            chunk = min(query.limit + 16, 4096)
            rows = self._rows(sources, where, first_code, high_code, chunk)
            matches = query.matches_record
            for (code, offset), source in rows:
                line = source.reader.line(offset)
                if line is None:
                    continue
                try:
                    record = decode_record(line)
                    when = record_time(record)
                except ValueError as exc:
                    self._report_bad(source, offset, str(exc))
                    continue
                if not matches(record, when):
                    continue
                uid = record["uid"]
                if code != seen_code:
                    seen_code, seen = code, {uid}
                elif uid in seen:
                    continue
                else:
                    seen.add(uid)
                key = code, source.server, offset
                if after_key is not None:
                    if key <= after_key:
                        continue  # returned by an earlier page; read only to know its uid
                    after_key = None  # rows come in key order: every later one is past it too
                yield key, line, record, when
        finally:
            for source in sources:
                os.close(source.fd)

    @staticmethod
    def _chunks(
        source: _Source, where: Filter, typ: int | None, first: int, high: int, chunk: int
    ) -> Iterator[list[tuple[int, int]]]:
        """(code, offset) of ``source``'s rows from time code ``first`` to ``high``, by chunks."""
        after = (first, -1)
        while True:
            rows = source.index.keys(where, typ, after, high, source.reader.limit, chunk)
            yield rows
            if len(rows) < chunk:
                return
            after = rows[-1]
            chunk = min(chunk * 4, 8192)

    @classmethod
    def _rows(
        cls, sources: list[_Source], where: Filter, first: int, high: int, chunk: int
    ) -> Iterator[tuple[tuple[int, int], _Source]]:
        """((time code, offset), source) of the indexed rows in range that match ``where`` (by hashes:
        the caller checks the decoded event), ordered by time code, server, offset."""
        types: tuple[int | None, ...] = where.types or (None,)
        if len(sources) == 1 and len(types) == 1:  # the common case: no Python frame per row
            [source] = sources
            keys = itertools.chain.from_iterable(cls._chunks(source, where, types[0], first, high, chunk))
            return zip(keys, itertools.repeat(source))

        def entries(rank: int, source: _Source, typ: int | None) -> Iterator[tuple[int, int, int, _Source]]:
            for rows in cls._chunks(source, where, typ, first, high, chunk):
                for code, offset in rows:
                    yield code, rank, offset, source

        # sources are sorted by server, so rank orders a time code's rows by server
        streams = [entries(rank, source, typ) for rank, source in enumerate(sources) for typ in types]
        return (((code, offset), source) for code, _, offset, source in heapq.merge(*streams))

    @staticmethod
    def _report_bad(source: _Source, offset: int, reason: str) -> None:
        if offset in source.index.bad:
            return
        source.index.bad.add(offset)
        line_no = _line_number(source.fd, offset)
        log.warning("audit log %s line %d is not a valid event (%s): skipped", source.path, line_no, reason)

    # -- closing --

    async def close(self) -> None:
        with self._queue_cond:
            self._closed = True
            writer, indexer = self._writer, self._indexer
            self._queue_cond.notify_all()
        self._index_wake.set()
        await asyncio.to_thread(self._wait_direct)
        if writer is not None:
            await asyncio.to_thread(writer.join)
        if indexer is not None:
            await asyncio.to_thread(indexer.join)
        with self._lock:
            indexes = list(self._indexes.values())
            self._indexes.clear()
            self._listings.clear()
        for index in indexes:
            await asyncio.to_thread(index.close)
