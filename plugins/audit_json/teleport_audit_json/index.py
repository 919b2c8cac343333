"""The search index of one day file: an SQLite sidecar ``<day file>.index`` next to it.

Each event line is one row ``(time code, byte offset, uid, event type, user, sid)``, the
last four as 64-bit hashes of their text (so rows stay small and fixed-width; a collision
only adds a candidate, which the exact filter after decoding drops). B-tree indexes on
``(type | user | sid, time code, offset)`` let a filtered page read only its own events, and
a page starts with one index seek, so a fresh process answers without scanning the log.

The log is the truth and the index is derived from it: ``meta`` records how many bytes of
the log the rows cover (``size``), the log's inode and the last bytes of that prefix. When a
day file is opened, an index that does not match (another inode, a log shorter than
``size``, different bytes, an unreadable or corrupt database) is deleted and rebuilt by one
scan of the log, and the lines past ``size`` are scanned and added. So the sidecar needs no
fsync of its own (WAL mode, ``synchronous=NORMAL``): a crash loses at most rows the next
open re-reads from the log. Where the sidecar cannot be written (a read-only directory, a
full disk), the index lives in memory (``:memory:``), built the same way.

The writer hands each batch's rows to :meth:`DayIndex.add` (memory only, no SQL);
:meth:`DayIndex.flush` inserts them in one transaction, from the sink's indexer thread or
before a search reads. Dedup keeps every row of the most recent time codes in memory
(:attr:`DayIndex.recent`), so only an event older than that window costs a query.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import attrs

from teleport_audit_json.lines import _STR, LINE, Encoded, day_line_pattern, decode, tc_from_ms, tc_from_text

log = logging.getLogger("teleport.audit")

SCHEMA_VERSION = "1"
SUFFIX = ".index"
SCAN_CHUNK = 4 << 20
RECENT_CODES = 4096  # time codes whose rows dedup keeps in memory
CHECK_BYTES = 64  # bytes before ``size`` recorded to recognise the same log
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ev(
    code INTEGER NOT NULL, off INTEGER NOT NULL, uid INTEGER NOT NULL,
    typ INTEGER NOT NULL, usr INTEGER NOT NULL, sid INTEGER NOT NULL,
    PRIMARY KEY(code, off)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ev_typ ON ev(typ, code, off);
CREATE INDEX IF NOT EXISTS ev_usr ON ev(usr, code, off);
CREATE INDEX IF NOT EXISTS ev_sid ON ev(sid, code, off);
"""
_FIELD = {name: re.compile(rb'"' + name + rb'":"(' + _STR + rb')"') for name in (b"user", b"sid")}
_EVENT = re.compile(rb'^\{"event":"(' + _STR + rb')"')
_UID = re.compile(rb'"uid":"(' + _STR + rb')"')

Row = tuple[int, int, int, int, int, int]  # code, offset, uid, type, user, sid (hashes)


@lru_cache(maxsize=65536)
def text_hash(text: str) -> int:
    """A stable signed 64-bit hash of ``text`` (SQLite integers are signed 64-bit)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                          "little", signed=True)


def uid_hash(uid: str) -> int:
    """:func:`text_hash` without the cache (uids do not repeat)."""
    return int.from_bytes(hashlib.blake2b(uid.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                          "little", signed=True)


def row_of(code: int, offset: int, uid: str, event: str, user: str, sid: str) -> Row:
    return code, offset, uid_hash(uid), text_hash(event), text_hash(user), text_hash(sid)


def _json_string(raw: bytes) -> str:
    return raw.decode("ascii") if b"\\" not in raw else str(json.loads(b'"' + raw + b'"'))


def _field(line: bytes, name: bytes) -> str | None:
    """The text of top-level ``name`` in a line this sink wrote, "" if absent, None if unsure."""
    count = line.count(b'"' + name + b'":')
    if count == 0:
        return ""
    if count > 1:
        return None  # also inside a nested object or a key: decode the line
    match = _FIELD[name].search(line)
    return _json_string(match.group(1)) if match else None  # not a string: decode


def line_record(line: bytes) -> Encoded | None:
    """The :class:`Encoded` of a line exactly as this sink encodes events (newline included),
    read without decoding it, as :meth:`DayIndex.scan` reads lines; None when it is not such a
    line or a field is ambiguous (nested ``user``/``sid``): decode it then. A NaN or infinity
    (which the sink refuses to write) is not such a line either.

    A line without escapes (most: no backslash, so no string holds a quote) is read with a few
    ``find`` calls (:func:`_plain_record`); any other, or one that path is unsure of, with the
    regular expressions. Both give the same answer."""
    if b"\\" not in line and line.isascii() and b"NaN" not in line and b"Infinity" not in line:
        record = _plain_record(line)
        if record is not None:
            return record
    return _line_record_slowly(line)


_PLAIN_TIME = re.compile(rb'","time":"(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d\.\d{3})Z"([,}])')


def _plain_field(line: bytes, key: bytes) -> str | None:
    """:func:`_field` of a line without escapes (``key`` is ``b'"name":'``)."""
    at = line.find(key)
    if at < 0:
        return ""
    start = at + len(key)
    if line.find(key, start) >= 0 or line[start:start + 1] != b'"':
        return None
    end = line.find(b'"', start + 1)
    return line[start + 1:end].decode("ascii") if end > 0 else None


def _plain_record(line: bytes) -> Encoded | None:
    """:func:`line_record` of an ASCII line without backslashes; None when unsure."""
    if not line.startswith(b'{"event":"') or not line.endswith(b"}\n") or line.find(b"\n") != len(line) - 1:
        return None
    event_end = line.find(b'"', 10)
    if line[event_end:event_end + 10] != b'","code":"':
        return None
    code_end = line.find(b'"', event_end + 10)
    if line[code_end:code_end + 9] != b'","uid":"':
        return None
    uid_end = line.find(b'"', code_end + 9)
    time = _PLAIN_TIME.match(line, uid_end)
    if uid_end == code_end + 9 or time is None or (time.group(3) == b"}" and time.end() != len(line) - 1):
        return None
    user, sid = _plain_field(line, b'"user":'), _plain_field(line, b'"sid":')
    if user is None or sid is None:
        return None
    try:
        day = dt.date.fromisoformat(time.group(1).decode("ascii"))
    except ValueError:
        return None
    return Encoded(line, line[code_end + 9:uid_end].decode("ascii"), day, tc_from_text(time.group(2)),
                   line[10:event_end].decode("ascii"), user, sid)


def _line_record_slowly(line: bytes) -> Encoded | None:
    """:func:`line_record` by the regular expressions (any line)."""
    match = LINE.fullmatch(line)
    if match is None or not match.group(1) or b"NaN" in line or b"Infinity" in line:
        return None  # no uid: the sink refuses it (decoded, it raises)
    user, sid, event = _field(line, b"user"), _field(line, b"sid"), _EVENT.match(line)
    if user is None or sid is None or event is None:
        return None
    try:
        day = dt.date.fromisoformat(match.group(2).decode("ascii"))
    except ValueError:
        return None
    return Encoded(line, _json_string(match.group(1)), day, tc_from_text(match.group(3)),
                   _json_string(event.group(1)), user, sid)


@attrs.define
class Filter:
    """What a search can ask the index: hashes of its types, user and sid (None: any)."""

    types: tuple[int, ...] = ()
    user: int | None = None
    sid: int | None = None

    @classmethod
    def of(cls, types: Iterable[str], user: str, sid: str) -> Filter:
        return cls(tuple(sorted({text_hash(t) for t in types})), text_hash(user) if user else None,
                   text_hash(sid) if sid else None)


class IndexBroken(Exception):
    """The sidecar cannot be used: it is rebuilt, or replaced by an index in memory."""


def _unlink_sidecar(path: Path) -> None:
    for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def _connect_file(path: Path) -> sqlite3.Connection:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # SQLite gives its -wal and -shm files the database's mode
    finally:
        os.close(fd)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    try:
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA cache_size=-1024")
        conn.executescript(_SCHEMA)
    except BaseException:
        conn.close()
        raise
    return conn


def _connect_memory() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    conn.executescript(_SCHEMA)
    return conn


class DayIndex:
    """The rows of one day file (see the module docstring). Thread-safe.

    ``size`` is the end of the last complete line indexed (rows in the database or pending);
    ``lines`` counts the lines in those bytes.
    """

    def __init__(self, path: Path, day: dt.date, fd: int, st: os.stat_result) -> None:
        self.path = path
        self.day = day
        self.identity = (st.st_dev, st.st_ino)
        self.pattern = day_line_pattern(day)
        self.midnight = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
        self.sidecar = path.with_name(path.name + SUFFIX)
        self.db_lock = threading.Lock()  # the connection, and flushing
        self.lock = threading.Lock()  # pending, recent, size, lines, count
        self.pending: list[Row] = []
        self.recent: dict[int, list[tuple[int, int]]] = {}  # code -> (uid hash, offset), codes >= floor
        self.floor = 0
        self.size = 0
        self.lines = 0
        self.count = 0
        self.committed = 0  # size covered by the database's rows
        self.torn_at = -1  # offset of the incomplete last line already reported
        self.bad: set[int] = set()  # offsets of lines already reported as invalid when read
        self.in_memory = False
        self.conn = self._open(fd, st)

    def __len__(self) -> int:
        return self.count

    # -- opening --

    def _open(self, fd: int, st: os.stat_result) -> sqlite3.Connection:
        for attempt in range(2):
            conn: sqlite3.Connection | None = None
            try:
                conn = _connect_file(self.sidecar)
                if self._load(conn, fd, st):
                    return conn
                self._reset(conn)
                return conn
            except (OSError, sqlite3.Error) as exc:
                if conn is not None:
                    conn.close()
                if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError) \
                        and attempt == 0:
                    log.warning("audit index %s is corrupt (%s): rebuilding it from the log", self.sidecar, exc)
                    with contextlib.suppress(OSError):
                        _unlink_sidecar(self.sidecar)
                    continue
                if isinstance(exc, sqlite3.OperationalError) and attempt == 0 and "malformed" in str(exc):
                    with contextlib.suppress(OSError):
                        _unlink_sidecar(self.sidecar)
                    continue
                if not (isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError)):
                    log.warning("audit index %s cannot be used (%s): indexing %s in memory", self.sidecar, exc,
                                self.path)
                break
        self.in_memory = True
        return _connect_memory()

    def _load(self, conn: sqlite3.Connection, fd: int, st: os.stat_result) -> bool:
        """Take the database's state if it indexes a prefix of this log; False if it does not."""
        meta = dict(conn.execute("SELECT k, v FROM meta").fetchall())
        if not meta:
            return False
        try:
            size, lines, count = int(meta["size"]), int(meta["lines"]), int(meta["count"])
            ok = (meta["version"] == SCHEMA_VERSION and int(meta["ino"]) == st.st_ino and size <= st.st_size
                  and meta["check"] == _check_bytes(fd, size))
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            log.info("audit index %s does not match %s: rebuilding it from the log", self.sidecar, self.path)
            return False
        self.size = self.committed = size
        self.lines, self.count = lines, count
        row = conn.execute("SELECT max(code) FROM ev").fetchone()
        self.floor = (row[0] + 1) if row and row[0] is not None else 0
        return True

    def _reset(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM ev")
            conn.execute("DELETE FROM meta")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.size = self.committed = self.lines = self.count = self.floor = 0

    def _to_memory(self, exc: BaseException) -> None:
        """The sidecar failed while in use: index in memory from scratch (call with db_lock held)."""
        log.warning("audit index %s failed (%s): indexing %s in memory", self.sidecar, exc, self.path)
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()
        self.conn = _connect_memory()
        self.in_memory = True
        with self.lock:
            self.pending = []
            self.recent = {}
            self.size = self.committed = self.lines = self.count = self.floor = 0
            self.torn_at = -1
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            self.scan(fd, os.fstat(fd).st_size)  # the rows it had, again
        finally:
            os.close(fd)

    # -- adding --

    def add(self, rows: list[Row], end: int, lines: int) -> None:
        """Rows of lines just appended at ``self.size`` up to ``end``."""
        with self.lock:
            self._add(rows)
            self.size = end
            self.lines += lines

    def _add(self, rows: list[Row]) -> None:
        self.pending.extend(rows)
        self.count += len(rows)
        recent, floor = self.recent, self.floor
        for row in rows:
            if row[0] >= floor:
                recent.setdefault(row[0], []).append((row[2], row[1]))
        if len(recent) > RECENT_CODES:
            codes = sorted(recent)
            self.floor = codes[len(codes) // 2]
            for code in codes[: len(codes) // 2]:
                del recent[code]

    def clashes(self, keys: list[tuple[int, int]]) -> dict[int, list[int]]:
        """For each (time code, uid hash) of ``keys`` that some indexed line has: its position in
        ``keys`` -> the offsets of those lines (a batch's dedup check, under one lock)."""
        found: dict[int, list[int]] = {}
        older: list[int] = []
        with self.lock:
            floor, recent = self.floor, self.recent
            for i, (code, uid) in enumerate(keys):
                if code < floor:
                    older.append(i)
                    continue
                rows = recent.get(code)
                if rows:
                    offsets = [off for h, off in rows if h == uid]
                    if offsets:
                        found[i] = offsets
        for i in older:
            offsets = self.offsets_of(*keys[i])
            if offsets:
                found[i] = offsets
        return found

    def offsets_of(self, code: int, uid: int) -> list[int]:
        """Offsets of the lines at ``code`` whose uid hashes to ``uid``."""
        with self.lock:
            if code >= self.floor:
                return [off for h, off in self.recent.get(code, ()) if h == uid]
        with self.db_lock:
            self._flush()
            found = self.conn.execute("SELECT off FROM ev WHERE code = ? AND uid = ?", (code, uid)).fetchall()
        return [off for (off,) in found]

    def flush(self) -> None:
        with self.db_lock:
            self._flush()

    def _flush(self) -> None:
        """Insert pending rows (call with ``db_lock`` held)."""
        with self.lock:
            rows, self.pending = self.pending, []
            size, lines, count = self.size, self.lines, self.count
        if not rows and size == self.committed:
            return
        try:
            self._insert(rows, size, lines, count)
        except sqlite3.Error as exc:
            if self.in_memory:
                raise
            self._to_memory(exc)  # rebuilt from the log by the next scan
        else:
            self.committed = size

    def _insert(self, rows: list[Row], size: int, lines: int, count: int) -> None:
        conn = self.conn
        check = ""
        if not self.in_memory:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                check = _check_bytes(fd, size)
            finally:
                os.close(fd)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR IGNORE INTO ev VALUES (?, ?, ?, ?, ?, ?)", rows)
            conn.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [("version", SCHEMA_VERSION), ("ino", self.identity[1]), ("size", size), ("lines", lines),
                 ("count", count), ("check", check)],
            )
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def pending_rows(self) -> int:
        with self.lock:
            return len(self.pending)

    def release(self) -> None:
        """Flush what is pending, leaving the connection to whoever still reads through it."""
        with self.db_lock, contextlib.suppress(sqlite3.Error, OSError):
            self._flush()

    def close(self) -> None:
        with self.db_lock:
            with contextlib.suppress(sqlite3.Error):
                self._flush()
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()

    # -- reading --

    def keys(
        self, where: Filter, typ: int | None, after: tuple[int, int], high: int, end: int, limit: int
    ) -> list[tuple[int, int]]:
        """Up to ``limit`` (code, offset) after ``after``, with code below ``high`` and offset
        below ``end``, in order; ``typ`` is one of the filter's types (None: any type)."""
        clauses, params = ["(code, off) > (?, ?)", "code < ?", "off < ?"], [after[0], after[1], high, end]
        index = ""
        if where.sid is not None:
            index, clauses, params = "ev_sid", ["sid = ?", *clauses], [where.sid, *params]
        if where.user is not None:
            if not index:
                index = "ev_usr"
            clauses.append("usr = ?")
            params.append(where.user)
        if typ is not None:
            if not index:
                index = "ev_typ"
            clauses.append("typ = ?")
            params.append(typ)
        # only fixed column and index names are joined in; every value is a parameter
        sql = (f"SELECT code, off FROM ev {'INDEXED BY ' + index if index else ''} "  # noqa: S608
               f"WHERE {' AND '.join(clauses)} ORDER BY code, off LIMIT ?")
        with self.db_lock:
            self._flush()
            try:
                return self.conn.execute(sql, (*params, limit)).fetchall()
            except sqlite3.DatabaseError as exc:  # corrupted under us: answer from memory
                if self.in_memory:
                    raise
                self._to_memory(exc)
                return self.conn.execute(sql, (*params, limit)).fetchall()

    # -- scanning the log --

    def scan(self, fd: int, file_size: int) -> int:
        """Index the complete lines between ``self.size`` and ``file_size``; the new size."""
        with self.lock:
            start = self.size
        rows: list[Row] = []
        pos, want, lines = start, SCAN_CHUNK, 0
        while pos < file_size:
            chunk = os.pread(fd, min(want, file_size - pos), pos)
            if not chunk:
                break
            end = chunk.rfind(b"\n") + 1
            if end == 0:
                if pos + len(chunk) >= file_size:
                    break
                want *= 2  # one line longer than the chunk
                continue
            want = SCAN_CHUNK
            self._scan_chunk(chunk, end, pos, lines + self.lines, rows)
            lines += chunk.count(b"\n", 0, end)
            pos += end
        rows.sort()
        with self.lock:
            if self.size == start:  # nobody indexed these lines meanwhile
                self._add(rows)
                self.size = pos
                self.lines += lines
            return self.size

    def _scan_chunk(self, chunk: bytes, end: int, base: int, lines: int, rows: list[Row]) -> None:
        expected = 0
        append = rows.append
        for match in self.pattern.finditer(chunk, 0, end):  # the hot loop of indexing: kept tight
            start, stop = match.span()
            if start != expected:
                self._scan_slowly(chunk, expected, start, base, lines, rows)
            line = chunk[start:stop]
            user, sid, event = _field(line, b"user"), _field(line, b"sid"), _EVENT.match(line)
            uid = _UID.search(line)
            if user is None or sid is None or event is None or uid is None:
                self._scan_slowly(chunk, start, stop, base, lines, rows)
            else:
                code = int(match.group(1).translate(None, b":."))
                append(row_of(code, base + start, _json_string(uid.group(1)), _json_string(event.group(1)),
                              user, sid))
            expected = stop
        if expected != end:
            self._scan_slowly(chunk, expected, end, base, lines, rows)

    def _scan_slowly(self, chunk: bytes, start: int, end: int, base: int, lines: int, rows: list[Row]) -> None:
        """Decode the lines in ``chunk[start:end]`` one by one (those not written by this sink)."""
        while start < end:
            stop = chunk.index(b"\n", start)
            line_no = lines + chunk.count(b"\n", 0, start) + 1
            try:
                event = decode(chunk[start:stop])
            except ValueError as exc:
                log.warning("audit log %s line %d is not a valid event (%s): skipped", self.path, line_no, exc)
            else:
                if event.time.date() == self.day:
                    millis = (event.time - self.midnight) // dt.timedelta(milliseconds=1)
                    rows.append(row_of(tc_from_ms(millis), base + start, event.uid, event.event, event.user,
                                       event.sid))
                else:
                    log.warning(
                        "audit log %s line %d holds an event of %s, not of the file's day: skipped",
                        self.path,
                        line_no,
                        event.time.date(),
                    )
            start = stop + 1


def _check_bytes(fd: int, size: int) -> str:
    """The last :data:`CHECK_BYTES` bytes before ``size`` (hex), to recognise the same log."""
    start = max(0, size - CHECK_BYTES)
    return os.pread(fd, size - start, start).hex()
